"""The published 2016 preprocessing, written plainly: test oracle and benchmark baseline.

A direct reading of ../shared/ORIGINAL.md, deliberately independent of `preprocess/`: it calls
matplotlib's `mlab.specgram` itself, hard-codes the published numbers instead of reading
`SpectrogramParams`, and loops over cells and frames the way the 2016 scripts did. It is slow
and makes no effort to be otherwise.

The one departure is opt-in: `log_floor`. Without it `log10` of digital silence is -inf, exactly
as in 2016 (and the band statistics turn into -inf/NaN); with it the PSD is clipped at the floor
first, which is what `preprocess.spectrogram` always does.
"""

from __future__ import annotations

import warnings

import numpy as np
from matplotlib import mlab

SAMPLE_RATE = 16000
NFFT = 512
OVERLAP = 256
N_BINS = 200
CELL_FRAMES = 30
CHUNK_FRAMES = 310


def log_spectrogram(samples: np.ndarray, log_floor: float | None = None) -> np.ndarray:
    """(200, frames) float64: log10 of mlab's PSD, lowest 200 bins."""
    with warnings.catch_warnings():
        # mlab warns when the signal is at most one window long; padding it is the point
        warnings.filterwarnings("ignore", message="Only one segment is calculated")
        psd, _, _ = mlab.specgram(samples, NFFT=NFFT, Fs=SAMPLE_RATE, noverlap=OVERLAP)
    psd = psd[:N_BINS]
    if log_floor is not None:
        psd = np.maximum(psd, log_floor)
    with np.errstate(divide="ignore"):
        return np.log10(psd)


def noise_filter(spec: np.ndarray) -> np.ndarray:
    """(200, T) -> (200, T'): drop quiet cells (set to 0), then remove frames that are >95% zero."""
    rows = np.ceil(np.linspace(0, N_BINS, 20)).astype(int)
    n_frames = spec.shape[1]
    cols = list(range(0, n_frames, CELL_FRAMES)) + [n_frames]
    n_bands, n_cells = len(rows) - 1, len(cols) - 1

    keep = np.zeros((n_bands, n_cells), dtype=bool)
    with np.errstate(invalid="ignore"):  # -inf bands of a silent recording without a floor
        for i in range(n_bands):
            band = spec[rows[i] : rows[i + 1], :]
            threshold = (np.mean(band) + np.std(band)) * 1.5
            for j in range(n_cells):
                cell = spec[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
                loudest = np.sort(cell, axis=None)[-10:]
                if np.mean(cell) < 0 or np.mean(loudest) < threshold:
                    continue
                keep[i, j] = True

    grown = keep.copy()
    for i in range(n_bands):
        for j in range(n_cells):
            if keep[i, j]:
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    if 0 <= i + di < n_bands and 0 <= j + dj < n_cells:
                        grown[i + di, j + dj] = True

    out = spec.copy()
    for i in range(n_bands):
        for j in range(n_cells):
            if not grown[i, j]:
                out[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = 0

    kept_frames = [t for t in range(n_frames) if np.sum(out[:, t] == 0) / N_BINS <= 0.95]
    if not kept_frames:
        return out
    return out[:, kept_frames]


def chunks(spec: np.ndarray) -> np.ndarray:
    """(200, T) -> (ceil(T / 310), 200, 310): 5 s windows, the last one aligned to the end."""
    n_frames = spec.shape[1]
    if n_frames < CHUNK_FRAMES:
        padded = np.zeros((spec.shape[0], CHUNK_FRAMES), dtype=spec.dtype)
        padded[:, :n_frames] = spec
        return padded[None]
    windows = []
    for start in range(0, n_frames, CHUNK_FRAMES):
        if start + CHUNK_FRAMES > n_frames:
            start = n_frames - CHUNK_FRAMES
        windows.append(spec[:, start : start + CHUNK_FRAMES])
    return np.stack(windows)


def extract_chunks(samples: np.ndarray, log_floor: float | None = None) -> tuple[np.ndarray, int]:
    """16 kHz samples on the int16 scale -> (chunks (n, 200, 310) float64, frames after filter)."""
    filtered = noise_filter(log_spectrogram(samples, log_floor))
    return chunks(filtered), filtered.shape[1]
