"""The spectrogram, filter and chunks against known answers and against the 2016 reference.

`tests/reference_2016.py` is the published algorithm written directly (mlab.specgram, per-cell
loops). Ours must equal it to float32 rounding, mask and frame choice included.
"""

import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
from matplotlib import mlab

from preprocess import spectrogram
from preprocess.audio import read_wav, to_sample_rate
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import (
    band_edges,
    extract_chunks,
    filter_noise,
    frame_count,
    log_spectrogram,
    noise_mask,
    split_chunks,
    stream_chunks,
)
from tests import reference_2016 as reference

PARAMS = SpectrogramParams()
RATE = PARAMS.sample_rate
TONE_HZ = 2125  # bin 68 of 512 at 16 kHz


def assert_matches_reference(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal to float32 rounding of the float64 reference, with the same zeros (same mask)."""
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours == 0, theirs == 0)
    np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=1e-9)


def noise(seconds: float, std: float = 300.0, seed: int = 0) -> np.ndarray:
    n_samples = round(seconds * RATE)
    return np.random.default_rng(seed).normal(0, std, n_samples).astype(np.float32)


def tone_in_noise() -> tuple[np.ndarray, slice]:
    """20 s of noise, a tone from 5 s to 15 s; returns samples and the frames wholly in the tone.

    The tone sits on bin 68, mid-band (band 6 = bins 64..73), so it keeps that band's cells only
    and dilation adds the bands either side. 0.1 s fades keep its edges from clicking across
    the whole spectrum."""
    samples = noise(20)
    t = np.arange(5 * RATE, 15 * RATE)
    fade = np.hanning(2 * RATE // 10)
    envelope = np.ones(t.size)
    envelope[: fade.size // 2], envelope[-fade.size // 2 :] = np.split(fade, 2)
    samples[t] += 5000 * envelope * np.sin(2 * np.pi * TONE_HZ * t / RATE)
    first = 5 * RATE // PARAMS.hop  # first frame that lies wholly inside the tone
    last = (15 * RATE - PARAMS.nfft) // PARAMS.hop
    return samples, slice(first, last + 1)


# ---------------------------------------------------------------- spectrogram


def test_log_spectrogram_is_mlab_specgram():
    samples = noise(3, seed=1)
    samples[:2000] = 0  # digital silence: PSD 0, -inf in 2016, log10(floor) here
    ours = log_spectrogram(samples, PARAMS)
    theirs = reference.log_spectrogram(samples, log_floor=PARAMS.log_floor)
    assert_matches_reference(ours, theirs)


@pytest.mark.parametrize(
    ("n_samples", "frames"),
    [(1, 1), (300, 1), (511, 1), (512, 1), (767, 1), (768, 2), (512 + 256 * 620, 621)],
)
def test_frame_counts(n_samples, frames):
    samples = noise(n_samples / RATE, seed=n_samples)
    assert frame_count(n_samples, PARAMS) == frames
    spec = log_spectrogram(samples, PARAMS)
    assert spec.shape == (PARAMS.n_bins, frames)
    assert_matches_reference(spec, reference.log_spectrogram(samples, PARAMS.log_floor))


def test_blocks_do_not_change_the_result():
    samples = noise(2, seed=2)
    whole = log_spectrogram(samples, PARAMS, block_frames=10**6)
    np.testing.assert_array_equal(log_spectrogram(samples, PARAMS, block_frames=7), whole)


def test_memory_stays_blockwise():
    samples, _ = tone_in_noise()
    samples = np.tile(samples, 30)  # 10 min: a whole-signal (frames, 512) float64 is 150 MB
    tracemalloc.start()
    spec = log_spectrogram(samples, PARAMS)
    spec_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    chunks, _ = extract_chunks(samples, PARAMS)
    extract_peak = tracemalloc.get_traced_memory()[1] - spec.nbytes - chunks.nbytes
    tracemalloc.stop()
    assert spec_peak - spec.nbytes < 20 * 2**20
    # the spectrogram, the chunks and small change, nothing the size of all frames x nfft
    assert extract_peak < 1.25 * spec.nbytes + chunks.nbytes + 20 * 2**20


def test_nyquist_bin_is_not_doubled():
    params = SpectrogramParams(n_bins=PARAMS.nfft // 2 + 1)  # every bin, Nyquist included
    samples = noise(1, seed=4)
    psd, _, _ = mlab.specgram(samples, NFFT=params.nfft, Fs=RATE, noverlap=params.nfft - params.hop)
    np.testing.assert_allclose(log_spectrogram(samples, params), np.log10(psd), rtol=2e-7)


def test_silence_is_finite_and_drops_everything():
    samples = np.zeros(10 * RATE, dtype=np.float32)
    spec = log_spectrogram(samples, PARAMS)
    assert np.all(spec == np.float32(np.log10(PARAMS.log_floor)))
    with np.errstate(divide="ignore"):
        assert np.isneginf(reference.log_spectrogram(samples)).all()  # what 2016 gave
    chunks, n_frames = extract_chunks(samples, PARAMS)
    # every frame would go, so the all-zero masked spectrogram is kept whole
    assert n_frames == frame_count(samples.size, PARAMS) == 624
    assert chunks.shape == (3, PARAMS.n_bins, PARAMS.chunk_frames)
    assert np.all(chunks == 0)


# ---------------------------------------------------------------- noise filter


def test_tone_keeps_its_cells_and_noise_cells_drop():
    samples, tone_frames = tone_in_noise()
    spec = log_spectrogram(samples, PARAMS)
    mask = noise_mask(spec, PARAMS)
    tone_bin = TONE_HZ * PARAMS.nfft // RATE
    assert mask[tone_bin, tone_frames].all()
    edges = band_edges(PARAMS)
    tone_band = np.searchsorted(edges, tone_bin, side="right") - 1
    far_from_tone = np.r_[0 : edges[tone_band - 1], edges[tone_band + 2] : PARAMS.n_bins]
    assert not mask[far_from_tone].any()
    quiet = slice(0, tone_frames.start - 2 * PARAMS.cell_frames)
    assert not mask[:, quiet].any()

    filtered = filter_noise(spec, PARAMS)
    kept_columns = mask.any(axis=0)
    assert filtered.shape == (PARAMS.n_bins, kept_columns.sum())
    np.testing.assert_array_equal(filtered, np.where(mask, spec, 0)[:, kept_columns])
    assert_matches_reference(filtered, reference.noise_filter(spec.astype(np.float64)))


@pytest.mark.parametrize("n_frames", [1, 29, 30, 31, 59, 61, 400])
def test_filter_matches_reference_on_random_spectrograms(n_frames):
    """Partial last cells and recordings shorter than one cell, on a spectrogram with loud
    patches; each band and cell edge is exercised."""
    rng = np.random.default_rng(n_frames)
    spec = rng.normal(0.5, 1.0, (PARAMS.n_bins, n_frames)).astype(np.float32)
    for _ in range(max(1, n_frames // 40)):
        row, col = rng.integers(0, PARAMS.n_bins - 20), rng.integers(0, n_frames)
        spec[row : row + 20, col : col + 15] += 4
    assert_matches_reference(filter_noise(spec, PARAMS), reference.noise_filter(spec))


def test_filter_blocks_do_not_change_the_result(monkeypatch):
    """The filter regroups its cells FILTER_BLOCK_CELLS at a time; blocks of 1 and 3 cells
    give the same mask, bit for bit, also for bands of another height and a partial cell."""
    rng = np.random.default_rng(9)
    for params, n_frames in ((PARAMS, 700), (SpectrogramParams(n_bins=57, n_band_edges=9), 95)):
        spec = rng.normal(0.5, 1.0, (params.n_bins, n_frames)).astype(np.float32)
        spec[20:40, 100:130] += 4
        whole = filter_noise(spec, params)
        for block_cells in (1, 3):
            monkeypatch.setattr(spectrogram, "FILTER_BLOCK_CELLS", block_cells)
            np.testing.assert_array_equal(filter_noise(spec, params), whole)
        monkeypatch.undo()


def test_frames_of_zeros_in_kept_cells_are_removed_too():
    """A frame counts as empty by its values, not only by the mask."""
    spec = np.random.default_rng(5).normal(1.0, 1.0, (PARAMS.n_bins, 120)).astype(np.float32)
    spec[:, 30:60] += 5  # loud: these cells and their neighbours stay
    spec[5:, 45] = 0  # 195 zeros in one loud frame
    filtered = filter_noise(spec, PARAMS)
    assert_matches_reference(filtered, reference.noise_filter(spec))
    assert filtered.shape[1] < 120


def test_all_dropped_keeps_the_masked_spectrogram_whole():
    spec = np.full((PARAMS.n_bins, 50), -3.0, dtype=np.float32)  # every cell mean < 0
    filtered = filter_noise(spec, PARAMS)
    assert filtered.shape == spec.shape and np.all(filtered == 0)


# ---------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    ("n_frames", "n_chunks"), [(1, 1), (309, 1), (310, 1), (311, 2), (620, 2), (621, 3)]
)
def test_chunk_counts_and_positions(n_frames, n_chunks):
    spec = np.tile(np.arange(1, n_frames + 1, dtype=np.float32), (PARAMS.n_bins, 1))
    chunks = split_chunks(spec, PARAMS)
    assert chunks.shape == (n_chunks, PARAMS.n_bins, PARAMS.chunk_frames)
    assert chunks.dtype == np.float32
    length = PARAMS.chunk_frames
    if n_frames < length:  # zero-padded at the end
        np.testing.assert_array_equal(chunks[0, 0, :n_frames], spec[0])
        assert np.all(chunks[0, :, n_frames:] == 0)
    else:  # consecutive windows, the last one aligned to the end
        np.testing.assert_array_equal(chunks[0, 0], np.arange(1, length + 1))
        np.testing.assert_array_equal(chunks[-1, 0], np.arange(n_frames - length + 1, n_frames + 1))
    np.testing.assert_array_equal(chunks, reference.chunks(spec))


def test_audio_shorter_than_one_window():
    samples = noise(200 / RATE, seed=6)
    chunks, n_frames = extract_chunks(samples, PARAMS)
    assert n_frames == 1
    assert chunks.shape == (1, PARAMS.n_bins, PARAMS.chunk_frames)
    theirs, their_frames = reference.extract_chunks(samples, log_floor=PARAMS.log_floor)
    assert their_frames == 1
    assert_matches_reference(chunks, theirs)


def test_tone_extraction_matches_reference():
    samples, _ = tone_in_noise()
    chunks, n_frames = extract_chunks(samples, PARAMS)
    theirs, their_frames = reference.extract_chunks(samples)
    assert n_frames == their_frames and 0 < n_frames < frame_count(samples.size, PARAMS)
    assert chunks.shape[0] == -(-n_frames // PARAMS.chunk_frames)
    assert_matches_reference(chunks, theirs)


# ---------------------------------------------------------------- streaming


def in_pieces(samples: np.ndarray, piece_samples: int):
    """A `stream_chunks` source: the samples in consecutive pieces, afresh on each call."""
    return lambda: (samples[i : i + piece_samples] for i in range(0, samples.size, piece_samples))


def assert_streams_like_extract(samples: np.ndarray, block_cells=(1, 2, 3, 64)) -> None:
    """stream_chunks == extract_chunks exactly, whatever the block, piece and slice sizes: with
    blocks of 1 to 3 cells every cell border is a block border somewhere."""
    expected = extract_chunks(samples, PARAMS)
    for cells in block_cells:
        for piece_samples, max_chunks in [(1000, 1), (77_777, 2), (samples.size, 32)]:
            source = in_pieces(samples, piece_samples)
            stream = stream_chunks(source, PARAMS, max_chunks, block_cells=cells)
            pieces = []
            with pytest.raises(StopIteration) as end:
                while True:
                    pieces.append(next(stream))
            assert all(1 <= len(piece) <= max_chunks for piece in pieces)
            np.testing.assert_array_equal(np.concatenate(pieces), expected.chunks)
            assert end.value.value == expected.n_frames


@pytest.mark.parametrize("n_frames", [1, 309, 310, 311, 620, 621])
def test_streaming_at_chunk_edges(n_frames):
    """A tone throughout keeps every frame, so the chunks' edges fall as in the name."""
    n_samples = PARAMS.nfft + PARAMS.hop * (n_frames - 1)
    tone = 5000 * np.sin(2 * np.pi * TONE_HZ * np.arange(n_samples) / RATE)
    samples = noise(n_samples / RATE, seed=n_frames) + tone.astype(np.float32)
    assert extract_chunks(samples, PARAMS).n_frames == n_frames
    assert_streams_like_extract(samples)


def test_streaming_short_silent_and_tone():
    assert_streams_like_extract(noise(200 / RATE, seed=8))  # shorter than one window
    silence = np.zeros(10 * RATE, dtype=np.float32)  # every frame removed: kept whole
    assert_streams_like_extract(silence)
    assert_streams_like_extract(tone_in_noise()[0])


def test_streaming_with_cells_kept_and_dropped_at_every_border():
    """Loud bursts of random lengths and pitches: dilation and removed frames meet the
    block borders in every way."""
    rng = np.random.default_rng(9)
    samples = noise(40, seed=9)
    t = np.arange(samples.size) / RATE
    for start in rng.uniform(0, 39, 25):
        burst = (t >= start) & (t < start + rng.uniform(0.05, 1.5))
        samples[burst] += 6000 * np.sin(2 * np.pi * rng.uniform(300, 6000) * t[burst])
    kept = extract_chunks(samples, PARAMS).n_frames
    assert 0.2 < kept / frame_count(samples.size, PARAMS) < 0.9
    assert_streams_like_extract(samples)


def test_streaming_memory_does_not_grow_with_the_recording():
    """3 and 20 minutes of audio made on the fly: the same few MB, not 0.3 GB per hour (slices
    of 4 chunks, as predict's of one batch, are 1 MB: both recordings fill them)."""

    def peak_bytes(minutes: int) -> int:
        def source():
            rng = np.random.default_rng(10)
            for _ in range(minutes * 2):  # 30 s pieces of noise with tone bursts
                samples = rng.normal(0, 300, 30 * RATE).astype(np.float32)
                samples[: 10 * RATE] += 5000 * np.sin(np.arange(10 * RATE) * 0.8)
                yield samples

        tracemalloc.start()
        n_chunks = sum(len(chunks) for chunks in stream_chunks(source, PARAMS, 4))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_chunks > minutes * 3
        return peak

    short, long = peak_bytes(3), peak_bytes(20)
    assert long < 40 * 2**20  # the 20 min spectrogram alone is 90 MB
    assert long < 1.2 * short


# ---------------------------------------------------------------- real recordings


@pytest.fixture(scope="module")
def real_16k(shared_data, tmp_path_factory):
    """{name: samples} of real recordings at 16 kHz, converted the way the pipeline does it."""
    sources = sorted((shared_data / "birds").rglob("*.wav"))
    sources += sorted((shared_data / "odd_formats").glob("*.wav"))
    sources += sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[::300]
    out = tmp_path_factory.mktemp("real_16k")
    recordings = {}
    for source in sources:
        if shutil.which("sox"):
            converted = out / source.name
            subprocess.run(
                ["sox", "-R", str(source), "-r", str(RATE), "-b", "16", "-c", "1", str(converted)],
                check=True,
                capture_output=True,
            )
            recordings[source.name] = read_wav(converted)[0]
        else:
            samples, rate = read_wav(source)
            recordings[source.name] = to_sample_rate(samples, rate, RATE)
    return recordings


def assert_extraction_matches(samples: np.ndarray, stream_block_cells=(2, 64)) -> int:
    """Ours against the reference given our PSD floor: real audio touches the floor (1e-10,
    five orders of magnitude below 16-bit quantisation noise) only in digital silence or by
    a rare chance cancellation, where 2016 had -inf or a meaningless -11. Streamed too."""
    chunks, n_frames = extract_chunks(samples, PARAMS)
    theirs, their_frames = reference.extract_chunks(samples, log_floor=PARAMS.log_floor)
    assert n_frames == their_frames
    assert chunks.shape[0] == -(-n_frames // PARAMS.chunk_frames)
    assert_matches_reference(chunks, theirs)
    assert_streams_like_extract(samples, stream_block_cells)
    return n_frames


def test_real_recordings_match_reference(real_16k):
    assert len(real_16k) >= 30
    shorter_than_a_chunk = floored = values = 0
    for samples in real_16k.values():
        with np.errstate(divide="ignore"):
            faithful = reference.log_spectrogram(samples)  # 2016 exactly, no floor
        floored += np.count_nonzero(faithful < np.log10(PARAMS.log_floor))
        values += faithful.size
        n_frames = assert_extraction_matches(samples)
        shorter_than_a_chunk += n_frames < PARAMS.chunk_frames
    if shutil.which("sox"):  # its `-R` conversion dithers: no digital silence is left
        assert floored / values < 1e-5  # the floor touches almost nothing in real audio
    # without SoX, soxr's undithered output keeps the recordings' digital silence (0.4 % of
    # the values here): the floor is met there, and the match above still holds
    assert shorter_than_a_chunk >= 5  # short clips (fsdd digits, odd formats) are covered


def test_real_recording_clipped_and_stereo(real_16k, shared_data, tmp_path):
    clipped = np.clip(real_16k["XC46092.wav"] * 8, -32768, 32767)
    assert np.mean(np.abs(clipped) == 32767) > 0.001
    assert_extraction_matches(clipped)

    stereo = shared_data / "birds" / "storm_petrel" / "XC663885.wav"
    stereo_16k = tmp_path / "stereo_16k.wav"
    if not shutil.which("sox"):
        pytest.skip("SoX not installed: cannot make a two-channel 16 kHz file")
    subprocess.run(
        ["sox", "-R", str(stereo), "-r", str(RATE), "-c", "2", str(stereo_16k)], check=True
    )
    samples, rate = read_wav(stereo_16k)  # channels averaged on reading
    assert rate == RATE
    assert assert_extraction_matches(samples) > PARAMS.chunk_frames


def test_real_recording_with_digital_silence(real_16k):
    song = real_16k["348.wav"]
    samples = np.concatenate([song[: 5 * RATE], np.zeros(3 * RATE, np.float32), song[5 * RATE :]])
    with np.errstate(divide="ignore"):
        assert np.isneginf(reference.log_spectrogram(samples)).any()  # 2016 gave -inf here
    chunks, _ = extract_chunks(samples, PARAMS)
    assert np.isfinite(chunks).all()
    assert_extraction_matches(samples)


def test_long_recording_matches_reference(real_16k):
    """Over 10 minutes: tiled real songs plus noise."""
    songs = np.concatenate([real_16k[name] for name in ("348.wav", "363.wav", "XC46092.wav")])
    repeats = -(-630 * RATE // songs.size)
    samples = np.tile(songs, repeats)[: 630 * RATE] + noise(630, std=50, seed=7)
    assert_extraction_matches(samples, stream_block_cells=(64,))  # 20 block borders
