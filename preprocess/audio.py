"""Reading audio files onto the int16 sample scale the 2016 filter thresholds assume.

The 2016 scripts read 16-bit PCM with `scipy.io.wavfile`, which gives the raw integers
(-32768..32767), and the noise filter's thresholds depend on that scale. Every other sample
format is therefore brought to it here: wider integers are shifted down, 8-bit unsigned is
centred and shifted up, float wavs ([-1, 1]) are multiplied by 32768. Several channels are
averaged, as SoX does when it writes mono. A 16-bit PCM mono wav, what the resampler writes,
can also be read in blocks (`read_wav_blocks`), so that a long recording is never whole in
memory. The other formats (flac, ogg, mp3, aiff, ...) are SoX's to convert; without SoX,
`decoded_blocks` decodes them through libsndfile (the `soundfile` package) onto the same scale.
"""

from __future__ import annotations

import os
import struct
import warnings
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr
from scipy.io import wavfile

from preprocess.cli import describe

if TYPE_CHECKING:
    import soundfile

INT16_FULL_SCALE = 32768.0


# Every audio format the pipeline takes (SoX reads them all; without SoX, all but WavPack): the one
# list for metadata matching, the resampler (Python and shell) and prediction.
WAV_SUFFIXES = frozenset({".wav", ".wave"})
AUDIO_SUFFIXES = WAV_SUFFIXES | {
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".aif",
    ".aiff",
    ".aifc",
    ".au",
    ".caf",
    ".w64",
    ".wv",
}


# Audio that neither SoX nor libsndfile reads (AAC in MP4, Windows Media, WebM, AMR): such a
# file is named with this reason, where it would pass unseen among the files of other types
UNREADABLE_AUDIO_SUFFIXES = frozenset({".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr", ".3gp"})
UNREADABLE_AUDIO = (
    "a format neither SoX nor libsndfile reads: convert it first (ffmpeg -i IN OUT.wav)"
)


# read_wav's reason for any wav scipy cannot parse: a damaged header, an encoding it does not
# know (u-law, ADPCM), or another format named .wav
NOT_READABLE_WAV = "not a readable wav file"
TRUNCATED = "truncated: less data than its header announces"
# below it a header's rate is damage, not audio: resampled to 16 kHz, a 1 Hz file of 400 kB
# asked for 13 GB; at this floor a file grows at most 16 times
LOWEST_SAMPLE_RATE = 1000


def rate_problem(rate: int) -> str | None:
    """Why a header's sample rate (Hz) cannot be used, or None."""
    if rate <= 0:
        return f"invalid sample rate {rate}"
    if rate < LOWEST_SAMPLE_RATE:
        return f"sample rate {rate} Hz, below {LOWEST_SAMPLE_RATE} Hz: a damaged header?"
    return None


NO_LIBSNDFILE = "libsndfile, which decodes it, is not available"


class AudioError(ValueError):
    """A file that is not usable audio; the message names the file and says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a wav file as mono float32 samples on the int16 scale.

    Returns (samples (n,) float32, sample_rate). Several channels are averaged. The data is
    memory-mapped where the format allows, so a long recording is converted without holding
    its raw integers in memory as well. Raises `AudioError` for a missing, empty, truncated,
    non-wav or zero-length file, or one with non-finite float samples.
    """
    try:
        if os.path.getsize(path) == 0:
            raise AudioError(path, "empty file")
        with warnings.catch_warnings():
            # chunks besides the samples (a float wav's PEAK, a recorder's metadata) are
            # skipped, as they should be: not worth a warning
            warnings.filterwarnings("ignore", "Chunk .* not understood", wavfile.WavFileWarning)
            try:
                rate, data = wavfile.read(path, mmap=True)
            except ValueError as error:
                if "mmap=True not compatible" not in str(error):  # 24-bit cannot be mapped
                    raise
                # scipy only warns of a truncated 24-bit file
                warnings.filterwarnings("error", "Reached EOF", wavfile.WavFileWarning)
                rate, data = wavfile.read(path)
    except (AudioError, MemoryError):
        raise
    except Exception as error:  # a damaged header trips scipy in many ways
        cut_short = isinstance(error, wavfile.WavFileWarning) or (
            "mmap length is greater than file size" in str(error)
        )
        if cut_short and is_streamed_wav(path):  # written to a pipe: libsndfile reads it all
            return _decoded_whole(path)
        if cut_short:
            raise AudioError(path, TRUNCATED) from error
        raise AudioError(path, f"{NOT_READABLE_WAV} ({describe(error)})") from error

    if data.size == 0:
        raise AudioError(path, "contains no samples")
    if problem := rate_problem(rate):
        raise AudioError(path, problem)
    offset, gain = _int16_scale(data.dtype)
    samples = data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32)
    if offset:
        samples -= offset
    if gain != 1:
        samples *= gain
    if data.dtype.kind == "f" and not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or infinite samples")
    return np.asarray(samples), int(rate)  # a plain array, not a memmap view


def pcm16_mono_header(path: str | os.PathLike) -> tuple[int, int]:
    """(sample_rate, n_samples) from the header of a 16-bit PCM mono wav.

    Raises `AudioError` for any other file, which `read_wav_blocks` cannot read (`read_wav`
    reads every format, or says what is wrong with the file), and for a sample rate that
    cannot be used (`rate_problem`).
    """
    try:
        with wave.open(os.fspath(path)) as audio:
            channels, width = audio.getnchannels(), audio.getsampwidth()
            rate, n_samples = audio.getframerate(), audio.getnframes()
        if n_samples == STREAMED_SIZE // 2:  # written to a pipe: the samples the file holds
            start, announced, size = wav_data_chunk(path)
            n_samples = (size - start) // 2 if announced == STREAMED_SIZE else n_samples
    except MemoryError:
        raise
    except Exception as error:  # a damaged header trips `wave` in many ways
        raise AudioError(path, f"not a 16-bit PCM mono wav ({describe(error)})") from error
    if (channels, width) != (1, 2):
        raise AudioError(path, f"{channels} channel(s) of {8 * width} bits, not 16-bit mono")
    if problem := rate_problem(rate):
        raise AudioError(path, problem)
    return rate, n_samples


def is_wav_at(path: str | os.PathLike, sample_rate: int) -> bool:
    """True for a 16-bit PCM mono wav at sample_rate: what the resampler writes."""
    try:
        return pcm16_mono_header(path)[0] == sample_rate
    except AudioError:
        return False


def streamable_seconds(path: str | os.PathLike, sample_rate: int) -> float:
    """Length in seconds of a 16-bit PCM mono wav at sample_rate, which `read_wav_blocks`
    can stream; 0 for any other file, which `read_wav` reads whole (or says what is wrong)."""
    try:
        rate, n_samples = pcm16_mono_header(path)
    except AudioError:
        return 0.0
    return n_samples / rate if rate == sample_rate else 0.0


def audio_seconds(path: str | os.PathLike) -> float:
    """Duration of a wav file: from the header of a 16-bit PCM mono wav, else by reading it.
    Raises `AudioError` for a file `read_wav` cannot read."""
    try:
        rate, n_samples = pcm16_mono_header(path)
    except AudioError:
        samples, rate = read_wav(path)
        return len(samples) / rate
    return n_samples / rate


def is_digital_silence(path: str | os.PathLike) -> bool:
    """Whether every sample of a readable wav is exactly zero: streamed in blocks where the
    format allows (`read_wav_blocks`), else read whole."""
    try:
        pcm16_mono_header(path)  # what read_wav_blocks streams (a generator: it raises late)
        blocks = read_wav_blocks(path)
    except AudioError:  # another format (stereo, 24-bit, float): read whole
        blocks = iter([read_wav(path)[0]])
    return not any(np.any(block) for block in blocks)


def read_wav_blocks(path: str | os.PathLike, block_samples: int = 2**19) -> Iterator[np.ndarray]:
    """The samples of a 16-bit PCM mono wav in consecutive blocks of block_samples (the last
    one shorter): float32 (n,) on the int16 scale, concatenating to `read_wav`'s samples.

    Raises `AudioError` for any other file (see `pcm16_mono_header`), one without samples, and
    one with less data than its header announces: before the first block, so that no part of
    a truncated recording is used.
    """
    n_samples = pcm16_mono_header(path)[1]
    if n_samples == 0:
        raise AudioError(path, "contains no samples")
    try:
        with wave.open(os.fspath(path)) as audio:
            audio.setpos(n_samples - 1)  # a seek: the last sample is there, or the file is cut
            if len(audio.readframes(1)) < 2:
                raise AudioError(path, TRUNCATED)
            audio.rewind()
            for start in range(0, n_samples, block_samples):
                count = min(block_samples, n_samples - start)
                data = audio.readframes(count)
                if len(data) < 2 * count:
                    raise AudioError(path, TRUNCATED)
                yield np.frombuffer(data, dtype="<i2").astype(np.float32)
    except RuntimeError as error:  # wave's seek past its chunk: a size beyond the file's end
        raise AudioError(path, TRUNCATED) from error
    except (wave.Error, EOFError, OSError) as error:
        raise AudioError(path, f"{NOT_READABLE_WAV} ({error})") from error


# the data size of a wav written to a pipe (ffmpeg's, a recorder streaming): the samples run
# to the end of the file
STREAMED_SIZE = 0xFFFFFFFF


def wav_data_chunk(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(where its samples begin, the size its header announces, the file's size) of a RIFF
    wav's data chunk, or an RF64 wav's (whose data chunk says 0xFFFFFFFF and leaves its size
    to the ds64 chunk before it); None for a file that is neither or has none."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        header = file.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RF64") or header[8:] != b"WAVE":
            return None
        ds64_data_size = None
        position = 12
        while position + 8 <= size:
            file.seek(position)
            name, length = struct.unpack("<4sI", file.read(8))
            if name == b"ds64" and header[:4] == b"RF64" and length >= 16:
                _, ds64_data_size = struct.unpack("<QQ", file.read(16))  # RIFF size, data size
            if name == b"data":
                if ds64_data_size is not None and length == STREAMED_SIZE:
                    length = ds64_data_size
                return position + 8, length, size
            position += 8 + length + length % 2  # chunks are padded to even sizes
    return None


def wav_data_cut_short(path: str | os.PathLike) -> bool:
    """Whether a RIFF wav's data chunk announces more bytes than the file holds: a recording
    cut short, which libsndfile reads up to the cut without a word (read_wav refuses the
    encodings it reads). A size of 0 or STREAMED_SIZE, which a recorder stopped while
    streaming leaves, announces nothing."""
    chunk = wav_data_chunk(path)
    if chunk is None:
        return False
    start, announced, size = chunk
    return announced not in (0, STREAMED_SIZE) and start + announced > size


def is_streamed_wav(path: str | os.PathLike) -> bool:
    """Whether a wav's header announces STREAMED_SIZE bytes of samples: all the file holds."""
    try:
        chunk = wav_data_chunk(path)
    except OSError:
        return False
    return chunk is not None and chunk[1] == STREAMED_SIZE


def header_rate_problem(path: str | os.PathLike) -> str | None:
    """`rate_problem` of the sample rate in a file's header as libsndfile reads it; None where
    libsndfile cannot read the header (the decoder used then says what is wrong, if anything)."""
    try:
        import soundfile  # here: a platform without libsndfile still runs everything else

        return rate_problem(soundfile.info(os.fspath(path)).samplerate)
    except Exception:  # no libsndfile, a format it does not know, a damaged header
        return None


def decoded_blocks(
    path: str | os.PathLike, block_frames: int = 2**18
) -> tuple[int, Iterator[np.ndarray]]:
    """(sample_rate, blocks) of an audio file in any format libsndfile decodes (flac, ogg
    vorbis and opus, mp3, aiff, au, caf, w64, wav): mono float32 blocks (<= block_frames,) on
    the int16 scale (integer formats exactly: x / 2**(bits-1) * 32768), channels averaged.

    Raises `AudioError` for a file libsndfile cannot open or whose sample rate cannot be used
    (`rate_problem`), before any block; and from the blocks for one it cannot decode to the
    end (a truncated flac) or that holds NaN or infinite samples. libsndfile, like SoX, reads
    a truncated ogg or mp3 up to the cut.
    """
    try:
        # here, not at the top: a platform without libsndfile still runs everything else
        import soundfile
    except (ImportError, OSError) as error:
        reason = f"{NO_LIBSNDFILE} ({error})"
        raise AudioError(path, reason) from error
    try:
        audio = soundfile.SoundFile(os.fspath(path))
    except MemoryError:
        raise
    except Exception as error:  # libsndfile's "Format not recognised" and the like
        raise AudioError(path, f"not readable audio ({describe(error)})") from error
    if problem := rate_problem(audio.samplerate):
        audio.close()
        raise AudioError(path, problem)
    return audio.samplerate, _mono_blocks(path, audio, block_frames)


def _mono_blocks(
    path: str | os.PathLike, audio: soundfile.SoundFile, block_frames: int
) -> Iterator[np.ndarray]:
    """`decoded_blocks`' blocks of the open file audio, which it closes."""
    import soundfile

    with audio:
        while True:
            try:
                data = audio.read(block_frames, dtype="float32", always_2d=True)
            except soundfile.LibsndfileError as error:
                reason = f"damaged: decoding stopped at {audio.tell() / audio.samplerate:.1f} s"
                raise AudioError(path, f"{reason} ({describe(error)})") from error
            if not len(data):
                return
            block = data.mean(axis=1, dtype=np.float32) * np.float32(INT16_FULL_SCALE)
            if not np.isfinite(block).all():
                raise AudioError(path, "contains NaN or infinite samples")
            yield block


def _decoded_whole(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """`read_wav` of a file through libsndfile (`decoded_blocks`), whole."""
    rate, blocks = decoded_blocks(path)
    samples = np.concatenate([np.zeros(0, np.float32), *blocks])
    if samples.size == 0:
        raise AudioError(path, "contains no samples")
    return samples, rate


def _int16_scale(dtype: np.dtype) -> tuple[float, np.float32]:
    """(offset, gain) that bring wavfile's samples of this dtype onto the int16 scale."""
    kind, bits = dtype.kind, 8 * dtype.itemsize
    if kind == "u":  # 8-bit PCM is unsigned, centred on 128
        return 128.0, np.float32(256.0)
    if kind == "f":
        return 0.0, np.float32(INT16_FULL_SCALE)
    # signed PCM; 24-bit arrives left-aligned in int32, so one rule covers 16/24/32/64 bits
    return 0.0, np.float32(2.0 ** (16 - bits))


def to_sample_rate(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample mono samples (n,) with soxr ('HQ'), the fallback when SoX is not installed.

    Returns float32 (m,) on the same scale (not rounded to integers, unlike a 16-bit SoX
    output file); the input itself when the rates already agree.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (n,), got shape {samples.shape}")
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def stream_to_sample_rate(
    blocks: Iterable[np.ndarray], rate: int, target_rate: int
) -> Iterator[np.ndarray]:
    """Consecutive blocks of mono samples (n,) resampled with soxr's stream ('HQ'), for a
    recording too long to hold whole: float32 blocks that concatenate to `to_sample_rate`
    of the blocks' concatenation (the same samples)."""
    stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield stream.resample_chunk(np.asarray(block, dtype=np.float32))
    yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
