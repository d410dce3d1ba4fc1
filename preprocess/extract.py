"""One recording file -> its chunks: the extraction entry point of load_data and predict.

Training (load_data.py) and prediction (predict.py) both call `recording_chunks`, so a
recording is read, turned into features and cut into chunks in one way only, whatever the
front end (preprocess/params.py). A 16 kHz 16-bit mono wav longer than STREAM_SECONDS is
streamed (`stream_chunks`: memory independent of its length); any other file is read whole
and its spectrogram cut in slices of max_chunks (`chunk_slices`, equal to `extract_chunks`).
Both commands extract in worker processes (preprocess/workers.py); `whole_recordings_chunks`
is prediction's task for a few.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NamedTuple

import numpy as np

from preprocess.audio import (
    AudioError,
    is_digital_silence,
    read_wav,
    read_wav_blocks,
    streamable_seconds,
    to_sample_rate,
)
from preprocess.params import SpectrogramParams
from preprocess.spectrogram import chunk_slices, log_spectrogram, stream_chunks, window_chunks
from preprocess.workers import FileChunks, hand_over

# Recordings longer than this are streamed by `stream_chunks` (prediction and load_data):
# memory bounded whatever their length, for twice the STFT work. Up to it, a recording is
# read whole and its spectrogram held, about 0.35 GB per audio hour.
STREAM_SECONDS = 600.0


class ChunkSource(NamedTuple):
    """What `recording_chunks` returns."""

    # arrays (<= max_chunks, n_bins, chunk_frames) float32 in time order (one per window with
    # window_seconds); returns (StopIteration.value) the frames after the noise filter
    pieces: Generator[np.ndarray, None, int]
    seconds: float  # the audio's duration
    sample_rate: int  # the file's


def recording_chunks(
    path: str | os.PathLike,
    params: SpectrogramParams,
    max_chunks: int,
    *,
    window_seconds: float | None = None,
    resample: bool = False,
) -> ChunkSource:
    """The chunks of one audio file, as `ChunkSource`.

    window_seconds: one piece per window of that length (`window_chunks`, for soundscape
    rankings) instead of pieces of at most max_chunks training chunks. resample: a wav at
    another rate than params.sample_rate is resampled in process (soxr); else it is an
    `AudioError`, as is any unreadable file. A streamed file is read only as the pieces are
    asked for, so its read errors come from the pieces.
    """
    seconds = streamable_seconds(path, params.sample_rate)
    if window_seconds is None and seconds > STREAM_SECONDS:
        pieces = stream_chunks(lambda: read_wav_blocks(path), params, max_chunks)
        return ChunkSource(pieces, seconds, params.sample_rate)
    samples, rate = read_wav(path)
    seconds = len(samples) / rate
    if rate != params.sample_rate:
        if not resample:
            raise AudioError(path, f"sample rate {rate} Hz, expected {params.sample_rate} Hz")
        samples = to_sample_rate(samples, rate, params.sample_rate)
        if len(samples) == 0:
            raise AudioError(path, f"too short to resample ({seconds}s)")
    log_spec = log_spectrogram(samples, params)
    del samples
    if window_seconds is not None:
        return ChunkSource(window_chunks(log_spec, params, window_seconds), seconds, rate)
    return ChunkSource(chunk_slices(log_spec, params, max_chunks), seconds, rate)


def values_vary(chunks: np.ndarray) -> bool:
    """Whether chunks hold more than one value: `no_sound`'s features_vary, which prediction
    asks of a recording's first piece, in a worker or in its own process alike."""
    return bool(chunks.min() < chunks.max())


def no_sound(path: str | os.PathLike, features_vary: bool) -> str | None:
    """Why a readable recording holds no sound to train on or rank, or None: digital silence.
    features_vary: whether its chunks (or the first of them) hold more than one value; only
    where they do not is the file read again to see whether every sample is zero (the 2016
    noise filter can empty a recording that has sound). Audio shorter than one spectrogram
    window is sound: `log_spectrogram` pads it to one frame."""
    if not features_vary and is_digital_silence(path):
        return "silent: every sample is zero"
    return None


def whole_recordings_chunks(
    paths: list[str | os.PathLike],
    params: SpectrogramParams,
    max_chunks: int,
    window_seconds: float | None = None,
    handoff_slot: str | None = None,
) -> tuple[list[np.ndarray] | FileChunks, list[tuple[int, float] | str]]:
    """`recording_chunks`' pieces of a few recordings all at once, as a worker process hands
    them to its parent: (`hand_over` of every piece of the recordings that hold sound, in
    order; per path, its (number of pieces, seconds), or why it gives nothing to rank: an
    unreadable file (an `AudioError` would not survive the trip) or `no_sound`, a pass over
    its chunks that the parent, busy feeding a GPU, is spared)."""
    pieces: list[np.ndarray] = []
    outcomes: list[tuple[int, float] | str] = []
    for path in paths:
        try:
            source = recording_chunks(path, params, max_chunks, window_seconds=window_seconds)
            recording = list(source.pieces)
            reason = no_sound(path, values_vary(recording[0]))
        except AudioError as error:
            reason = error.reason
        except Exception as error:  # a bug or resource failure: say which file triggered it
            raise RuntimeError(f"{path}: {type(error).__name__}: {error}") from None
        if reason:
            outcomes.append(reason)
        else:
            pieces += recording
            outcomes.append((len(recording), source.seconds))
    return hand_over(pieces, handoff_slot), outcomes
