"""The modern recipe's front end: log-mel features, optional noise filter, chunk length,
short-clip padding, the stored parameters, and load_data's --recipe and options."""

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
import scipy.signal
from scipy.io import wavfile

from preprocess.dataset import compress_chunks, open_dataset
from preprocess.extract import recording_chunks
from preprocess.load_data import main as load_data_main
from preprocess.params import ADDED_FIELDS, MODERN, SpectrogramParams
from preprocess.spectrogram import (
    chunk_slices,
    extract_chunks,
    frame_count,
    frames_for_seconds,
    log_spectrogram,
    mel_filterbank,
    split_chunks,
    stream_chunks,
    window_chunks,
)

RATE = 16000
PARAMS_2016 = SpectrogramParams()
MODERN_5S = dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(5.0, MODERN))
# the 2016 parameter JSON exactly as the port wrote it before the modern recipe existed
JSON_2016 = (
    '{"cell_frames": 30, "chunk_frames": 310, "empty_frame_fraction": 0.95, "hop": 256, '
    '"log_floor": 1e-10, "n_band_edges": 20, "n_bins": 200, "nfft": 512, "sample_rate": 16000, '
    '"threshold_factor": 1.5, "top_k": 10, "window": "hann-symmetric"}'
)


def noisy_song(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with tone bursts at 16 kHz on the int16 scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    bursts = (np.sin(2 * np.pi * 0.9 * t) > 0.2) * np.sin(2 * np.pi * (1500 + 700 * t % 1) * t)
    return (300 * rng.standard_normal(t.size) + 6000 * bursts).astype(np.float32)


# ---------------------------------------------------------------- log-mel features


def slaney_mel(hz: float) -> float:
    return 3 * hz / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


def slaney_hz(mel: float) -> float:
    return 200 * mel / 3 if mel < 15 else 1000 * 6.4 ** ((mel - 15) / 27)


def direct_filterbank(n_mels: int, nfft: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangles written out band by band and bin by bin, each band's weights summing to 1."""
    low, high = slaney_mel(fmin), slaney_mel(fmax)
    centres = [slaney_hz(low + (high - low) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = np.zeros((n_mels, nfft // 2 + 1))
    for band in range(n_mels):
        left, centre, right = centres[band : band + 3]
        for k in range(nfft // 2 + 1):
            hz = k * RATE / nfft
            if left < hz <= centre:
                weights[band, k] = (hz - left) / (centre - left)
            elif centre < hz < right:
                weights[band, k] = (right - hz) / (right - centre)
        weights[band] /= weights[band].sum()
    return weights


@pytest.mark.parametrize(
    "params",
    [MODERN, dataclasses.replace(MODERN, n_bins=64, nfft=512, hop=256, fmin=50, fmax=7000)],
    ids=["modern", "64-bands"],
)
def test_log_mel_equals_an_independent_computation(params):
    """scipy.signal.stft's PSD (one-sided: doubled but DC and Nyquist), direct triangles,
    floor, log10."""
    samples = noisy_song(3.0)
    samples[: RATE // 2] = 0  # digital silence: the floor
    ours = log_spectrogram(samples, params, block_frames=37)  # blocks must not matter

    _, _, stft = scipy.signal.stft(
        samples.astype(np.float64),
        fs=RATE,
        window=np.hanning(params.nfft),
        nperseg=params.nfft,
        noverlap=params.nfft - params.hop,
        boundary=None,
        padded=False,
        detrend=False,
        scaling="psd",
    )
    psd = np.abs(stft) ** 2
    psd[1:-1] *= 2
    mel = direct_filterbank(params.n_bins, params.nfft, params.fmin, params.fmax) @ psd
    theirs = np.log10(np.maximum(mel, params.log_floor))

    assert ours.shape == (params.n_bins, frame_count(samples.size, params)) == theirs.shape
    assert ours.dtype == np.float32
    assert (ours[:, 0] == -10).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_mel_bands_are_weighted_means_of_the_psd():
    weights = mel_filterbank(MODERN)
    assert weights.shape == (128, MODERN.nfft // 2 + 1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # a tone lands in the band whose triangle peaks nearest to it, on the same log scale
    tone = 3000 * np.sin(2 * np.pi * 2000 * np.arange(RATE) / RATE)
    mel = log_spectrogram(tone, MODERN).mean(axis=1)
    peaks = np.argmax(weights, axis=1) * RATE / MODERN.nfft
    assert abs(peaks[np.argmax(mel)] - 2000) < 60
    # white noise: every band near the flat PSD's level, as the 2016 bins are
    white = np.random.default_rng(1).normal(0, 300, 10 * RATE)
    level = np.log10(2 * 300**2 / RATE)
    assert abs(np.median(log_spectrogram(white, MODERN)) - level) < 0.3
    assert abs(np.median(log_spectrogram(white, PARAMS_2016)) - level) < 0.3


def test_too_many_bands_for_the_fft_is_a_clear_error():
    with pytest.raises(ValueError, match="too narrow for nfft 256"):
        mel_filterbank(dataclasses.replace(MODERN, n_bins=128, nfft=256))


# ---------------------------------------------------------------- parameters


def test_2016_parameters_serialise_exactly_as_before_and_old_json_reads_as_2016():
    assert PARAMS_2016.to_json() == JSON_2016
    assert SpectrogramParams.from_json(JSON_2016) == PARAMS_2016
    assert set(ADDED_FIELDS) == {
        "frontend",
        "fmin",
        "fmax",
        "noise_filter",
        "padding",
        "drop_silence",
    }


def test_modern_parameters_round_trip():
    stored = json.loads(MODERN_5S.to_json())
    assert stored["frontend"] == "logmel" and stored["noise_filter"] is False
    assert "fmax" not in stored  # 2016's value, not written
    assert SpectrogramParams.from_json(MODERN_5S.to_json()) == MODERN_5S


def test_unknown_keys_and_values_are_errors():
    with pytest.raises(ValueError, match="unknown"):
        SpectrogramParams.from_json(json.dumps({**json.loads(JSON_2016), "n_mels": 64}))
    without_nfft = json.loads(JSON_2016)
    del without_nfft["nfft"]  # a field of 2016 itself: never guessed
    with pytest.raises(ValueError, match="missing"):
        SpectrogramParams.from_json(json.dumps(without_nfft))
    with pytest.raises(ValueError, match="frontend"):
        SpectrogramParams(frontend="mfcc")
    with pytest.raises(ValueError, match="padding"):
        SpectrogramParams(padding="reflect")
    stored = json.loads(JSON_2016)
    for name, value, message in [  # a damaged params.json: never a confident wrong answer
        ("threshold_factor", float("nan"), "not a finite number"),
        ("hop", 10**12, r"outside \[1, 1048576\]"),
        ("nfft", "512", "not of type int"),
        ("chunk_frames", True, "not of type int"),
        ("log_floor", 0.0, "outside"),
        ("empty_frame_fraction", 1.5, "outside"),
    ]:
        with pytest.raises(ValueError, match=f"{name} .*{message}"):
            SpectrogramParams.from_json(json.dumps({**stored, name: value}))


def test_frames_for_seconds_makes_a_clip_of_that_length_one_chunk():
    for seconds in (1.0, 2.5, 5.0):
        params = dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(seconds, MODERN))
        assert len(extract_chunks(noisy_song(seconds), params).chunks) == 1
        assert len(extract_chunks(noisy_song(seconds + 0.05), params).chunks) == 2


# ---------------------------------------------------------------- chunks


def test_short_clips_are_repeated_not_drowned_in_zeros():
    spec = np.arange(1, 11, dtype=np.float32)[None].repeat(3, axis=0)  # 10 frames
    params = dataclasses.replace(PARAMS_2016, n_bins=3, chunk_frames=25, padding="cyclic")
    (chunk,) = split_chunks(spec, params)
    np.testing.assert_array_equal(chunk[0], np.tile(np.arange(1, 11), 3)[:25])
    (zero_padded,) = split_chunks(spec, dataclasses.replace(params, padding="zero"))
    assert (zero_padded[:, 10:] == 0).all()

    clip = noisy_song(0.4)  # of a 5 s chunk
    (chunk,) = extract_chunks(clip, MODERN_5S).chunks
    assert chunk.min() > -9  # no floor values: every frame is the clip's
    own = log_spectrogram(clip, MODERN_5S)
    np.testing.assert_array_equal(chunk[:, own.shape[1] : 2 * own.shape[1]], own)


def test_without_the_noise_filter_chunks_are_the_whole_spectrogram():
    samples = noisy_song(12.0)
    chunks, n_frames = extract_chunks(samples, MODERN_5S)
    log_spec = log_spectrogram(samples, MODERN_5S)
    assert n_frames == log_spec.shape[1]
    np.testing.assert_array_equal(chunks, split_chunks(log_spec, MODERN_5S))
    np.testing.assert_array_equal(chunks[0], log_spec[:, : MODERN_5S.chunk_frames])
    quiet = np.random.default_rng(4).normal(0, 300, 12 * RATE)  # one loud second in noise
    quiet[RATE : 2 * RATE] += 8000 * np.sin(2 * np.pi * 3000 * np.arange(RATE) / RATE)
    filtered = dataclasses.replace(MODERN_5S, noise_filter=True, drop_silence=False)
    assert extract_chunks(quiet, filtered).n_frames < n_frames / 2  # the filter works on mels


def assert_streams_like(stream, expected) -> None:
    """Drain a `stream_chunks` generator: its pieces are expected.chunks and its return value
    expected.n_frames."""
    pieces = []
    with pytest.raises(StopIteration) as end:
        while True:
            pieces.append(next(stream))
    np.testing.assert_array_equal(np.concatenate(pieces), expected.chunks)
    assert end.value.value == expected.n_frames


@pytest.mark.parametrize("seconds", [0.01, 0.4, 5.0, 13.3])
@pytest.mark.parametrize("params", [MODERN_5S, dataclasses.replace(MODERN_5S, chunk_frames=47)])
def test_streaming_and_slices_equal_the_whole_extraction(seconds, params):
    """The three ways to cut a recording (whole, slices of a batch, streamed) agree."""
    samples = noisy_song(seconds, seed=3)
    expected = extract_chunks(samples, params)
    slices = chunk_slices(log_spectrogram(samples, params), params, 2)
    np.testing.assert_array_equal(np.concatenate(list(slices)), expected.chunks)
    for piece in (999, samples.size):
        source = lambda piece=piece: (samples[i : i + piece] for i in range(0, samples.size, piece))  # noqa: E731
        assert_streams_like(stream_chunks(source, params, 3, block_cells=2), expected)


def padded_with_silence() -> np.ndarray:
    """1 s of sound, 3 s of digital silence, 0.5 s of sound, 2 s of silence: an ESC-style
    clip padded with zeros."""
    zeros = np.zeros(RATE, dtype=np.float32)
    parts = [noisy_song(1.0, seed=7), zeros, zeros, zeros, noisy_song(0.5, seed=8), zeros, zeros]
    return np.concatenate(parts)


DROPPING = dataclasses.replace(MODERN_5S, drop_silence=True)


def test_digital_silence_is_dropped_before_chunking():
    samples = padded_with_silence()
    log_spec = log_spectrogram(samples, DROPPING)
    silent = (log_spec == -10).all(axis=0)
    assert 200 < silent.sum() < log_spec.shape[1] - 60  # the zeros, less the windows at edges
    chunks, n_frames = extract_chunks(samples, DROPPING)
    assert n_frames == (~silent).sum()
    assert len(chunks) == 1 and not (chunks[0] == -10).all(axis=0).any()  # sound repeated
    np.testing.assert_array_equal(chunks[0, :, :n_frames], log_spec[:, ~silent])
    assert extract_chunks(samples, MODERN_5S).n_frames == log_spec.shape[1]  # off: kept
    # nothing but silence: kept as it is, one chunk at the floor
    chunks, n_frames = extract_chunks(np.zeros(2 * RATE, dtype=np.float32), DROPPING)
    assert n_frames == frame_count(2 * RATE, DROPPING) and (chunks == -10).all()


@pytest.mark.parametrize("silence_only", [False, True])
def test_dropping_silence_streams_and_slices_like_the_whole(silence_only):
    samples = padded_with_silence()
    samples = np.tile(samples * (not silence_only), 3)  # 19.5 s
    params = dataclasses.replace(MODERN, chunk_frames=47, drop_silence=True)
    expected = extract_chunks(samples, params)
    slices = chunk_slices(log_spectrogram(samples, params), params, 2)
    np.testing.assert_array_equal(np.concatenate(list(slices)), expected.chunks)
    source = lambda: (samples[i : i + 5000] for i in range(0, samples.size, 5000))  # noqa: E731
    assert_streams_like(stream_chunks(source, params, 3, block_cells=2), expected)


def test_noise_filter_and_dropping_silence_do_not_combine():
    with pytest.raises(ValueError, match="without the noise filter"):
        dataclasses.replace(MODERN, noise_filter=True, drop_silence=True)


def test_soundscape_windows_without_the_filter():
    params = dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(1.0, MODERN))
    log_spec = log_spectrogram(noisy_song(12.0), params)
    windows = list(window_chunks(log_spec, params, 5.0))
    frames = [5 * RATE // params.hop] * 2 + [2 * RATE // params.hop]  # 0-5, 5-10, 10-12 s
    assert [len(w) for w in windows] == [-(-n // params.chunk_frames) for n in frames]
    assert all(w.shape[1:] == (params.n_bins, params.chunk_frames) for w in windows)


# ---------------------------------------------------------------- load_data.py


@pytest.fixture
def clips(tmp_path):
    """Seven wavs of 0.5-3 s (median 1.5 s), two classes, and their CSV."""
    folder = tmp_path / "clips"
    folder.mkdir()
    rows = ["file,label"]
    for index, seconds in enumerate([0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0]):
        name = f"clip{index}.wav"
        wavfile.write(folder / name, RATE, noisy_song(seconds, seed=index).astype(np.int16))
        rows.append(f"{name},{'ab'[index % 2]}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    return folder, tmp_path / "clips.csv"


def load(clips, out, *options) -> int:
    folder, labels = clips
    argv = ["--wav-dir", folder, "--csv", labels, "--out", out, "--workers", 1, *options]
    return load_data_main([str(arg) for arg in argv])


def stored_params(path) -> SpectrogramParams:
    with open_dataset(path) as dataset:
        return dataset.params


def test_recipe_modern_stores_its_front_end_and_the_automatic_chunk_length(clips, tmp_path):
    assert load(clips, tmp_path / "modern.h5", "--recipe", "modern") == 0
    params = stored_params(tmp_path / "modern.h5")
    assert params == dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(1.5, MODERN))
    durations = [0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0]
    frames = [frame_count(round(seconds * RATE), params) for seconds in durations]
    n_chunks = sum(-(-n // params.chunk_frames) for n in frames)
    assert n_chunks == 11  # clips up to the median one chunk, longer ones 2 or 3
    with h5py.File(tmp_path / "modern.h5") as h5:
        assert h5["X"].shape == (n_chunks, 128, params.chunk_frames, 1)
        first = h5["X"][0, :, :, 0]
    song = log_spectrogram(noisy_song(0.5, seed=0).astype(np.int16).astype(np.float32), params)
    (expected,) = split_chunks(song, params)
    np.testing.assert_array_equal(first, expected)


def test_options_override_the_recipe(clips, tmp_path):
    out = tmp_path / "custom.h5"
    options = ["--recipe", "modern", "--n-mels", "64", "--chunk-seconds", "2", "--hop", "256"]
    assert load(clips, out, *options, "--noise-filter", "on", "--padding", "zero") == 0
    params = stored_params(out)
    expected = dataclasses.replace(
        MODERN, n_bins=64, hop=256, noise_filter=True, padding="zero", drop_silence=False
    )
    assert params == dataclasses.replace(expected, chunk_frames=frames_for_seconds(2.0, expected))
    assert load(clips, tmp_path / "quiet.h5", "--recipe", "modern", "--drop-silence", "on") == 0
    assert stored_params(tmp_path / "quiet.h5").drop_silence is True
    assert load(clips, tmp_path / "mel.h5", "--frontend", "logmel") == 0
    params = stored_params(tmp_path / "mel.h5")
    assert (params.frontend, params.n_bins, params.noise_filter) == ("logmel", 128, True)


def test_the_2016_default_is_unchanged(clips, tmp_path):
    assert load(clips, tmp_path / "default.h5") == 0
    with h5py.File(tmp_path / "default.h5") as h5:
        assert h5.attrs["params"] == JSON_2016
        assert h5["X"].shape[1:] == (200, 310, 1)


def add_long_clips(clips) -> None:
    """Two clips of 4 and 5 s more: the median of the clips' durations moves from 1.5 to 2 s."""
    folder, labels = clips
    for index, seconds in [(7, 4.0), (8, 5.0)]:
        wavfile.write(
            folder / f"clip{index}.wav", RATE, noisy_song(seconds, index).astype(np.int16)
        )
    labels.write_text(labels.read_text() + "clip7.wav,a\nclip8.wav,b\n")


def test_a_rerun_with_files_added_keeps_the_automatic_chunk_length(clips, tmp_path):
    """Adding two long clips moves the median from 1.5 to 2 s; the rerun keeps OUT's 1.5 s
    chunks and adds the new recordings, where it refused OUT as built with other settings."""
    out = tmp_path / "modern.h5"
    assert load(clips, out, "--recipe", "modern") == 0
    add_long_clips(clips)
    assert load(clips, out, "--recipe", "modern") == 0
    assert stored_params(out).chunk_frames == frames_for_seconds(1.5, MODERN)
    with open_dataset(out) as dataset:
        assert len(dataset.recordings["MediaId"]) == 9
    assert load(clips, out, "--recipe", "modern", "--overwrite") == 0  # chosen anew
    assert stored_params(out).chunk_frames == frames_for_seconds(2.0, MODERN)


def test_a_rerun_after_a_kill_keeps_the_shards_automatic_chunk_length(clips, tmp_path):
    """Killed before OUT was written, files then added: the shard left behind (its length
    chosen on 7 clips, 1.5 s) sets the length, as OUT would."""
    first = tmp_path / "first.h5"
    assert load(clips, first, "--recipe", "modern") == 0
    out = tmp_path / "modern.h5"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    first.rename(parts / "part-killed-00000.h5")  # what a kill leaves: shards, no OUT
    add_long_clips(clips)
    assert load(clips, out, "--recipe", "modern") == 0
    assert stored_params(out).chunk_frames == frames_for_seconds(1.5, MODERN)
    with open_dataset(out) as dataset:
        assert len(dataset.recordings["MediaId"]) == 9


def test_a_test_set_takes_the_training_sets_parameters(clips, tmp_path, capsys):
    assert load(clips, tmp_path / "train.h5", "--recipe", "modern", "--chunk-seconds", "1") == 0
    assert load(clips, tmp_path / "test.h5", "--classes-from", tmp_path / "train.h5") == 0
    assert stored_params(tmp_path / "test.h5") == stored_params(tmp_path / "train.h5")
    other = ["--classes-from", tmp_path / "train.h5", "--recipe", "modern"]
    assert load(clips, tmp_path / "bad.h5", *other) == 2
    assert "give no --recipe or front-end options" in capsys.readouterr().err


def test_bad_front_end_options_are_clear_errors(clips, tmp_path, capsys):
    assert load(clips, tmp_path / "a.h5", "--n-mels", "64") == 2
    assert "error: --n-mels needs --frontend logmel" in capsys.readouterr().err
    assert load(clips, tmp_path / "b.h5", "--recipe", "modern", "--nfft", "128") == 2
    assert "too narrow for nfft 128" in capsys.readouterr().err
    assert load(clips, tmp_path / "b1.h5", "--nfft", "256") == 2  # 2016: 200 bins of 129
    assert "error: 200 bins, but nfft 256 gives 129" in capsys.readouterr().err
    few_bands = ["--recipe", "modern", "--n-mels", "12", "--noise-filter", "on"]
    assert load(clips, tmp_path / "b3.h5", *few_bands) == 2
    assert "12 bins are too few for the noise filter's 19" in capsys.readouterr().err
    begun = [path.name for path in tmp_path.glob("b*.h5*") if path.suffix != ".lock"]
    assert begun == []  # refused before any work: no dataset, no shards
    both = ["--recipe", "modern", "--noise-filter", "on", "--drop-silence", "on"]
    assert load(clips, tmp_path / "b2.h5", *both) == 2
    assert "drop_silence is for the front end without the noise filter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load(clips, tmp_path / "c.h5", "--chunk-seconds", "0")
    assert "expected seconds > 0 or auto" in capsys.readouterr().err


def test_real_bird_recordings_of_every_rate_and_layout(shared_data):
    """The modern front end on the real bird clips (22-48 kHz, mono and stereo, 1-23 s):
    finite features, a clip as long as a chunk is one chunk, longer ones cut as the frames say."""
    params = dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(3.0, MODERN))
    paths = sorted((shared_data / "birds").rglob("*.[wW][aA][vV]"))
    assert len(paths) >= 20
    for path in paths:
        pieces, seconds, rate = recording_chunks(path, params, 64, resample=True)
        chunks = np.concatenate(list(pieces))
        frames = frame_count(round(seconds * RATE), params)
        assert abs(len(chunks) - -(-frames // params.chunk_frames)) <= 1, path  # resampled length
        assert chunks.shape[1:] == (128, params.chunk_frames)
        assert np.isfinite(chunks).all() and chunks.min() >= -10


def test_chunks_of_both_recipes_compress_in_one_process():
    """The per-process scratch file of HDF5's filters is one per chunk shape: a 2016 and a
    modern chunk shape in one process (as in tests, or training's --noise-dir)."""
    for shape in ((200, 310), (128, 72), (200, 310)):
        chunks = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
        stored = compress_chunks(chunks, "blosc2-lz4")
        assert len(stored) == 2 and all(len(row.data) > 0 for row in stored)
