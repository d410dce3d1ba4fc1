"""read_wav: every sample format onto the int16 scale, channels averaged, bad files named."""

import io
import itertools
import re
import struct
import sys
import warnings

import numpy as np
import pytest
import soundfile
from scipy.io import wavfile

from preprocess.audio import (
    TRUNCATED,
    AudioError,
    audio_seconds,
    decoded_blocks,
    pcm16_mono_header,
    read_wav,
    read_wav_blocks,
    stream_to_sample_rate,
    to_sample_rate,
)
from preprocess.resample import soxr_input

RAMP = np.array([-32768, -1000, 0, 1, 1000, 32767], dtype=np.int16)


def write_pcm24(path, rate: int, values: np.ndarray) -> None:
    """A 24-bit mono PCM wav (scipy cannot write one)."""
    data = values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 3, 3, 24)
    with open(path, "wb") as file:
        file.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        file.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        file.write(b"data" + struct.pack("<I", len(data)) + data)


def test_int16_is_read_as_is(tmp_path):
    path = tmp_path / "a.wav"
    wavfile.write(path, 16000, RAMP)
    samples, rate = read_wav(path)
    assert rate == 16000
    assert samples.dtype == np.float32 and type(samples) is np.ndarray
    np.testing.assert_array_equal(samples, RAMP)


@pytest.mark.parametrize(
    "data",
    [
        RAMP.astype(np.int32) * 65536,  # 32-bit PCM
        (RAMP.astype(np.int32) // 256 + 128).astype(np.uint8),  # 8-bit PCM, unsigned
        RAMP.astype(np.float32) / 32768,  # float wav in [-1, 1]
        RAMP.astype(np.float64) / 32768,
    ],
    ids=["int32", "uint8", "float32", "float64"],
)
def test_other_formats_come_onto_the_int16_scale(tmp_path, data):
    path = tmp_path / "a.wav"
    wavfile.write(path, 8000, data)
    samples, _ = read_wav(path)
    # 8-bit keeps only the top byte of each value
    expected = (RAMP // 256) * 256 if data.dtype == np.uint8 else RAMP
    np.testing.assert_array_equal(samples, expected)


def test_24_bit(tmp_path):
    path = tmp_path / "a.wav"
    write_pcm24(path, 48000, RAMP.astype(np.int32) * 256 + 17)  # low byte below int16 resolution
    samples, rate = read_wav(path)
    assert rate == 48000
    np.testing.assert_allclose(samples, RAMP + 17 / 256)

    path.write_bytes(path.read_bytes()[:-6])  # scipy reads what is left, with a warning
    with pytest.raises(AudioError, match="a.wav: truncated"):
        read_wav(path)


def test_channels_are_averaged(tmp_path):
    path = tmp_path / "a.wav"
    channels = np.stack([RAMP, np.zeros_like(RAMP), RAMP // 2], axis=1)
    wavfile.write(path, 16000, channels)
    samples, _ = read_wav(path)
    np.testing.assert_allclose(samples, (RAMP + RAMP // 2.0) / 3, rtol=1e-6)


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    wavfile.write(buffer, 16000, samples)
    return buffer.getvalue()


GOOD = wav_bytes(np.arange(1000, dtype=np.int16))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.wav", b"", "empty file"),
        ("text.wav", b"this is not audio at all\n" * 20, "not a readable wav"),
        ("half_header.wav", GOOD[:30], "not a readable wav"),
        ("cut_data.wav", GOOD[:-500], "truncated"),
        ("no_samples.wav", wav_bytes(np.zeros(0, dtype=np.int16)), "no samples"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=reason) as caught:
        read_wav(path)
    assert name in str(caught.value)
    assert caught.value.path == path
    assert isinstance(caught.value, ValueError)


def test_any_damaged_header_byte_is_an_audio_error_or_a_reading(tmp_path):
    """Every byte of a wav header set to 0, 1, 0x80 or 0xFF: each reader returns or raises
    `AudioError`, never scipy's or `wave`'s own errors (a chunk size of 0x80 once gave
    UnboundLocalError and RuntimeError, a channel count of 0 ZeroDivisionError)."""
    path = tmp_path / "damaged.wav"
    for position, value in itertools.product(range(44), (0, 1, 0x80, 0xFF)):
        damaged = bytearray(GOOD)
        damaged[position] = value
        path.write_bytes(damaged)
        for reader in (read_wav, pcm16_mono_header, audio_seconds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", wavfile.WavFileWarning)
                try:
                    reader(path)
                except AudioError as error:
                    assert error.path == path


def pcm16_wav(path, rate: int, samples: np.ndarray, data_size=None, riff_size=None) -> None:
    """A 16-bit mono wav, its header's sizes as given (None: the true ones)."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    riff = 36 + len(data) if riff_size is None else riff_size
    size = len(data) if data_size is None else data_size
    path.write_bytes(b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data"
                     + struct.pack("<I", size) + data)  # fmt: skip


@pytest.mark.parametrize(
    ("sizes", "rate", "reason"),
    [
        ({"data_size": 0x7FFFFFFF}, 16000, TRUNCATED),  # a seek past the chunk: RuntimeError
        ({"data_size": 0x7FFFFFFF, "riff_size": 0xFFFFFFFF}, 16000, TRUNCATED),
        ({}, 0, "invalid sample rate 0"),  # audio_seconds divided by it
        ({}, 1, "sample rate 1 Hz, below 1000 Hz"),  # 16,000 samples out for each one in
    ],
)
def test_a_header_that_the_data_cannot_be_is_an_audio_error(tmp_path, sizes, rate, reason):
    path = tmp_path / "x.wav"
    pcm16_wav(path, rate, np.arange(3200) % 100, **sizes)
    readers = [read_wav, lambda p: list(read_wav_blocks(p))]
    if reason != TRUNCATED:  # a header's duration is what audio_seconds says, read or not
        readers.append(audio_seconds)
    for read in readers:
        with pytest.raises(AudioError, match=re.escape(reason)):
            read(path)
    if reason != TRUNCATED:  # (libsndfile reads up to the cut: resample checks the size)
        with pytest.raises(AudioError):  # libsndfile's own words for a rate of 0
            decoded_blocks(path)


def test_missing_and_non_finite_files(tmp_path):
    with pytest.raises(AudioError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    path = tmp_path / "nan.wav"
    wavfile.write(path, 16000, np.array([0.1, np.nan, 0.2], dtype=np.float32))
    with pytest.raises(AudioError, match="nan.wav: contains NaN"):
        read_wav(path)


def test_real_files_of_every_shape(shared_data):
    """300 kHz, stereo, 3 channels, 22.05-48 kHz: all mono float32 on the int16 scale."""
    paths = sorted((shared_data / "odd_formats").glob("*.wav"))
    paths += sorted((shared_data / "birds").rglob("*.wav"))
    assert len(paths) >= 20
    rates = set()
    for path in paths:
        samples, rate = read_wav(path)
        rates.add(rate)
        assert samples.ndim == 1 and samples.size > 0 and samples.dtype == np.float32
        assert np.isfinite(samples).all() and np.abs(samples).max() <= 32768
        assert np.abs(samples).max() > 100, f"{path} reads as near silence: wrong scale?"
    assert {300000, 44100, 22050, 32000, 10000} <= rates


def test_to_sample_rate_keeps_the_tone():
    rate, seconds = 44100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    tone = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    resampled = to_sample_rate(tone, rate, 16000)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(resampled[:16000]))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over one second
    assert np.abs(resampled[1000:-1000]).max() == pytest.approx(10000, rel=0.01)
    assert to_sample_rate(tone, rate, rate) is tone


@pytest.mark.parametrize(("rate", "target"), [(44100, 16000), (8000, 16000), (16000, 16000)])
def test_stream_to_sample_rate_gives_the_samples_of_resampling_at_once(rate, target):
    samples = np.random.default_rng(0).normal(0, 3000, 3 * rate).astype(np.float32)
    cuts = [0, 1, 4097, rate, 2 * rate + 13, len(samples)]  # blocks of odd sizes, one empty
    blocks = [samples[a:b] for a, b in itertools.pairwise(cuts)] + [samples[:0]]
    streamed = np.concatenate(list(stream_to_sample_rate(blocks, rate, target)))
    np.testing.assert_array_equal(streamed, to_sample_rate(samples, rate, target))


def test_decoded_blocks_put_every_format_on_the_int16_scale(tmp_path):
    """flac of 24 bits exactly (x / 2**23 * 32768), channels averaged, in blocks; the lossy
    formats close to it."""
    rate = 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    pcm24 = np.round(tone * 2**23).astype(np.int32)
    stereo = np.stack([pcm24, np.zeros_like(pcm24)], axis=1) * 256  # left-aligned in int32
    soundfile.write(tmp_path / "a.flac", stereo, rate, subtype="PCM_24")
    found_rate, blocks = decoded_blocks(tmp_path / "a.flac", block_frames=5000)
    blocks = list(blocks)
    assert found_rate == rate and [len(b) for b in blocks] == [5000] * 4 + [2050]
    expected = (pcm24 / 2**23 * 32768 / 2).astype(np.float32)
    np.testing.assert_allclose(np.concatenate(blocks), expected, atol=1e-3)
    for name, subtype in (("a.ogg", "VORBIS"), ("a.mp3", "MPEG_LAYER_III"), ("a.caf", "ALAC_16")):
        soundfile.write(tmp_path / name, tone, rate, subtype=subtype)
        samples = np.concatenate(list(decoded_blocks(tmp_path / name)[1]))
        assert abs(len(samples) - rate) <= 0.05 * rate, name
        assert np.abs(samples).max() == pytest.approx(0.5 * 32768, rel=0.05), name


def test_read_wav_skips_other_chunks_without_a_warning(tmp_path):
    """libsndfile's float wavs carry a PEAK chunk, recorders their metadata: scipy warns of
    each; the samples are what count."""
    soundfile.write(tmp_path / "float.wav", np.array([0.0, 0.5, -0.25]), 8000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, rate = read_wav(tmp_path / "float.wav")
    assert rate == 8000 and samples.tolist() == [0.0, 16384.0, -8192.0]


def test_without_libsndfile_only_other_formats_fail(tmp_path, monkeypatch):
    """A platform where libsndfile does not load: wavs read as ever; a flac is named."""
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import fails as without the library
    wavfile.write(tmp_path / "a.wav", 8000, RAMP)
    assert read_wav(tmp_path / "a.wav")[1] == 8000
    (tmp_path / "a.flac").write_bytes(b"fLaC")
    with pytest.raises(
        AudioError, match=r"a\.flac: libsndfile, which decodes it, is not available"
    ):
        decoded_blocks(tmp_path / "a.flac")
    header = b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x07\0\x01\0"  # u-law: scipy knows it not
    (tmp_path / "u-law.wav").write_bytes(header + bytes(40))
    with pytest.raises(AudioError, match=r"u-law\.wav: libsndfile, which decodes it, is not"):
        soxr_input(tmp_path / "u-law.wav")  # what to install, not only scipy's "unknown format"


def test_decoded_blocks_refuse_what_libsndfile_cannot_decode(tmp_path):
    (tmp_path / "junk.mp3").write_bytes(b"ID3 and then nothing an mp3 decoder takes" * 10)
    with pytest.raises(AudioError, match=r"junk\.mp3: not readable audio"):
        decoded_blocks(tmp_path / "junk.mp3")
    noise = np.random.default_rng(1).normal(0, 0.1, 44100)
    soundfile.write(tmp_path / "whole.flac", noise, 44100, subtype="PCM_16")
    whole = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=r"cut\.flac: damaged: decoding stopped at"):
        list(decoded_blocks(tmp_path / "cut.flac")[1])
    soundfile.write(tmp_path / "nan.aiff", np.array([0.0, np.nan, 0.1]), 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.aiff: contains NaN or infinite samples"):
        list(decoded_blocks(tmp_path / "nan.aiff")[1])


def as_streamed(path, to):
    """path's wav with the sizes a writer streaming to a pipe leaves (ffmpeg's): 0xFFFFFFFF."""
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"
    data[data.index(b"data") + 4 : data.index(b"data") + 8] = b"\xff\xff\xff\xff"
    to.write_bytes(bytes(data))


@pytest.mark.parametrize("channels", [1, 2])
def test_a_wav_written_to_a_pipe_is_read_to_its_end(tmp_path, channels):
    """Its header announces 0xFFFFFFFF bytes: all the file holds, not a file cut short."""
    values = (np.sin(np.arange(48000) / 7) * 9000).astype(np.int16)
    wavfile.write(tmp_path / "file.wav", 16000, np.stack([values] * channels, axis=-1).squeeze())
    as_streamed(tmp_path / "file.wav", tmp_path / "piped.wav")
    pcm16_wav(tmp_path / "data size only.wav", 16000, values, data_size=0xFFFFFFFF)
    assert len(read_wav(tmp_path / "data size only.wav")[0]) == 48000
    samples, rate = read_wav(tmp_path / "piped.wav")
    assert rate == 16000
    np.testing.assert_array_equal(samples, read_wav(tmp_path / "file.wav")[0])
    if channels == 1:
        assert pcm16_mono_header(tmp_path / "piped.wav") == (16000, 48000)
        streamed = np.concatenate(list(read_wav_blocks(tmp_path / "piped.wav", 10000)))
        np.testing.assert_array_equal(streamed, samples)
