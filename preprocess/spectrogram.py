"""The front ends of both recipes: 2016 spectrogram or log-mel, noise filter, chunks, vectorised.

Samples (16 kHz, int16 scale) -> log spectrogram (n_bins, frames) -> noise filter -> chunks
(n_chunks, n_bins, chunk_frames). With the 2016 parameters the numbers match Tóth & Czeba's
scripts (matplotlib's `mlab.specgram` and a per-cell loop) to float32 rounding;
tests/reference_2016.py is that direct implementation and the tests compare against it. One
deliberate change: the PSD is floored at `params.log_floor` before log10, so digital silence
gives a finite value instead of -inf (and the filter's band statistics stay finite). The
modern recipe's parameters (preprocess/params.py) pass the same PSD through mel filters
(`frontend="logmel"`), skip the noise filter, and repeat clips shorter than a chunk.

Everything here runs on one core (`workers=1`): the pipeline parallelises over files. Memory beyond
the samples is the float32 spectrogram and its filtered copy (at most 0.2 GB each per audio hour in
the 2016 front end): the STFT runs in blocks of frames, and `chunk_slices` lets go of the
spectrogram once filtered and cuts the chunks a slice at a time. `stream_chunks` gives the same
chunks from audio read in pieces, in memory independent of its length, for a second STFT pass (none
without the noise filter). `chunk_slices` cuts a whole spectrogram into its chunks for training
and prediction alike (preprocess/extract.py), `window_chunks` into windows for prediction's
soundscape rankings. `extract_chunks` is the whole-recording reference that tests and benchmarks
compare both with.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import scipy.fft
import scipy.sparse

from preprocess.params import SpectrogramParams

# Frames per STFT block. Small enough that the float64 work arrays stay in cache and memory is
# bounded whatever the recording's length; the output does not depend on it.
BLOCK_FRAMES = 512
# Filter cells per block of `stream_chunks`: 64 cells of 30 frames are 31 s of audio, a 1.5 MB
# spectrogram block. The output does not depend on it.
STREAM_BLOCK_CELLS = 64
# Filter cells whose values the noise filter regroups at a time (`_cells`): 256 cells of 30
# frames and 200 bins are 6 MB, whatever the recording's length. The output does not depend
# on it.
FILTER_BLOCK_CELLS = 256


class Extraction(NamedTuple):
    """What `extract_chunks` returns; unpacks as `chunks, n_frames = extract_chunks(...)`."""

    chunks: np.ndarray  # (n_chunks, n_bins, chunk_frames) float32
    n_frames: int  # frames left after the noise filter (before chunking and padding)


def frame_count(n_samples: int, params: SpectrogramParams) -> int:
    """Frames mlab gives for n_samples: 1 + (n - nfft) // hop, and 1 below one window."""
    return 1 + (max(n_samples, params.nfft) - params.nfft) // params.hop


def frames_for_seconds(seconds: float, params: SpectrogramParams) -> int:
    """`frame_count` of `seconds` of audio: the chunk_frames that makes a clip of exactly that
    length one whole chunk."""
    return frame_count(round(seconds * params.sample_rate), params)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz (3 mels per 200 Hz), then
    logarithmic (27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3 / 200
    return np.where(hz < 1000, linear, 15 + np.log(np.maximum(hz, 1000) / 1000) * 27 / np.log(6.4))


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def mel_filterbank(params: SpectrogramParams) -> np.ndarray:
    """Triangular mel filters: (n_bins, nfft // 2 + 1) float64 weights over the FFT bins.

    n_bins bands equally spaced on `hz_to_mel` between fmin and fmax, each a triangle from its
    lower to its upper neighbour's centre, its weights scaled to sum 1: a band's value is a
    weighted mean of the PSD across it, so a flat PSD gives its value in every band and log10
    values stay on the scale of the 2016 PSD whatever nfft and the band widths.
    """
    edges = mel_to_hz(
        np.linspace(hz_to_mel(params.fmin), hz_to_mel(params.fmax), params.n_bins + 2)
    )
    freqs = np.arange(params.nfft // 2 + 1) * params.sample_rate / params.nfft
    rising = (freqs - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - freqs) / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    empty = np.flatnonzero(~weights.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{params.n_bins} mel bands are too narrow for nfft {params.nfft}: band(s) "
            f"{empty.tolist()} hold no FFT bin; use fewer bands, a larger nfft or a higher fmin"
        )
    return weights / weights.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=8)
def _mel_operator(params: SpectrogramParams) -> tuple[scipy.sparse.csr_array, int]:
    """`mel_filterbank` as a sparse matrix (n_bins, n_columns) over the FFT bins up to the
    last one any band uses, and n_columns. Sparse, not a dense matmul: a band spans a few bins,
    and a BLAS matmul of blocks this small spends more time starting threads (tens of ms on
    a busy machine) than multiplying."""
    weights = mel_filterbank(params)
    n_columns = int(np.flatnonzero(weights.any(axis=0))[-1]) + 1
    return scipy.sparse.csr_array(weights[:, :n_columns]), n_columns


def log_spectrogram(
    samples: np.ndarray, params: SpectrogramParams, *, block_frames: int = BLOCK_FRAMES
) -> np.ndarray:
    """The front end's log features of samples (n,) -> (n_bins, frames) float32.

    The PSD with mlab.specgram semantics: symmetric Hann window, no detrending, one-sided
    density |rfft|^2 / (Fs * sum(w^2)) with every bin but DC and Nyquist doubled. Then, by
    params.frontend, "psd2016": its lowest `n_bins` bins; "logmel": its `n_bins` mel bands
    (`mel_filterbank`); floored at `log_floor` and log10. Frames = 1 + (n - nfft) // hop; audio
    shorter than one window is zero-padded to one frame. Computed blockwise in float64 (float32
    FFTs are off by up to 1e-2 in log10 next to loud bins), so memory beyond the output stays
    a few MB.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected mono samples (n,) with n > 0, got shape {samples.shape}")
    if params.window != "hann-symmetric":
        raise ValueError(f"unsupported window {params.window!r}")
    nfft, n_bins = params.nfft, params.n_bins
    if params.frontend == "logmel":
        mel, n_columns = _mel_operator(params)
    else:
        check_psd_bins(params)
        n_columns = n_bins
    if samples.size < nfft:
        samples = np.pad(samples, (0, nfft - samples.size))

    window = np.hanning(nfft)
    # Density |rfft(x * w)|^2 / (Fs * sum(w^2)), doubled for every bin but DC and Nyquist (one
    # sided). The factor rides on the window, saving a pass; the two unpaired bins get half.
    scaled_window = window * np.sqrt(2.0 / (params.sample_rate * np.sum(window**2)))
    unpaired = [index for index in (0, nfft // 2) if index < n_columns]

    frames = np.lib.stride_tricks.sliding_window_view(samples, nfft)[:: params.hop]
    log_spec = np.empty((n_bins, len(frames)), dtype=np.float32)
    for start in range(0, len(frames), block_frames):
        windowed = frames[start : start + block_frames] * scaled_window  # (block, nfft) float64
        spectrum = scipy.fft.rfft(windowed, axis=1, overwrite_x=True, workers=1)[:, :n_columns]
        power = spectrum.real**2
        power += spectrum.imag**2
        power[:, unpaired] /= 2
        if params.frontend == "logmel":
            power = (mel @ power.T).T  # (block, n_bins)
        np.maximum(power, params.log_floor, out=power)
        log_spec[:, start : start + len(windowed)] = np.log10(power, out=power).T
    return log_spec


def check_front_end(params: SpectrogramParams) -> None:
    """ValueError, saying why, for parameters that no recording can be extracted with: mel
    bands too narrow for nfft, more PSD bins than nfft gives, or noise filter bands left
    empty by too few bins. A command says so once, before any worker starts."""
    if params.frontend == "logmel":
        mel_filterbank(params)
    else:
        check_psd_bins(params)
    if params.noise_filter:
        band_edges(params)


def check_psd_bins(params: SpectrogramParams) -> None:
    """ValueError unless the "psd2016" front end's n_bins lowest bins are among the
    nfft // 2 + 1 that the FFT gives."""
    if not 0 < params.n_bins <= params.nfft // 2 + 1:
        raise ValueError(
            f"{params.n_bins} bins, but nfft {params.nfft} gives {params.nfft // 2 + 1}"
        )


@functools.lru_cache(maxsize=8)
def band_edges(params: SpectrogramParams) -> np.ndarray:
    """Row borders of the filter's frequency bands: ceil(linspace(0, n_bins, n_band_edges))
    (read-only, computed once per parameters)."""
    edges = np.ceil(np.linspace(0, params.n_bins, params.n_band_edges)).astype(np.intp)
    if np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"{params.n_bins} bins are too few for the noise filter's "
            f"{params.n_band_edges - 1} frequency bands"
        )
    edges.flags.writeable = False
    return edges


@functools.lru_cache(maxsize=8)
def _band_groups(params: SpectrogramParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """The filter's bands grouped by height, [(bands (g,), their rows (g, h))]: one or two
    groups, as ceil(linspace) heights differ by 1 at most."""
    edges = band_edges(params)
    heights = np.diff(edges)
    groups = []
    for height in np.unique(heights):
        bands = np.flatnonzero(heights == height)
        groups.append((bands, edges[bands, None] + np.arange(height)))
    return groups


def _cells(
    log_spec: np.ndarray, params: SpectrogramParams
) -> Iterator[tuple[np.ndarray, slice, np.ndarray]]:
    """log_spec (n_bins, T) cut into its filter cells, cells from its first column on, one row
    of values per cell, FILTER_BLOCK_CELLS cells and the bands of one height at a time.

    Yields (bands (g,), the cells' indices (a slice), values (g, cells, h * width) float32)
    for g bands of h rows and cells of `width` frames: cell_frames, or the rest for a partial
    last cell, which comes alone. A cell's values are its band's rows one after the other (a
    C-ordered copy), the order the float32 cell sums are taken in.
    """
    cell_frames = params.cell_frames
    for first in range(0, log_spec.shape[1], FILTER_BLOCK_CELLS * cell_frames):
        block = log_spec[:, first : first + FILTER_BLOCK_CELLS * cell_frames]
        n_full = block.shape[1] // cell_frames
        rest = block.shape[1] - n_full * cell_frames
        for start, n_cells, width in ((0, n_full, cell_frames), (n_full, 1, rest)):
            if n_cells == 0 or width == 0:
                continue
            frames = block[:, start * cell_frames : start * cell_frames + n_cells * width]
            cells = slice(first // cell_frames + start, first // cell_frames + start + n_cells)
            for bands, rows in _band_groups(params):
                g, h = rows.shape
                values = frames[rows.ravel()].reshape(g, h, n_cells, width).transpose(0, 2, 1, 3)
                yield bands, cells, values.reshape(g, n_cells, h * width)


class _CellSums(NamedTuple):
    """The sums of a spectrogram's filter cells that the filter's statistics need."""

    cells: np.ndarray  # (bands, cells) float64: each cell's sum of values
    band_values: np.ndarray  # (bands,) float64: each band's sum of values
    band_squares: np.ndarray  # (bands,) float64: each band's sum of squared values


def _cell_sums(log_spec: np.ndarray, params: SpectrogramParams) -> _CellSums:
    """`_CellSums` of log_spec (n_bins, T), cells from its first column on."""
    n_bands, n_cells = len(band_edges(params)) - 1, -(-log_spec.shape[1] // params.cell_frames)
    sums = np.empty((n_bands, n_cells), dtype=np.float32)
    squares = np.empty((n_bands, n_cells), dtype=np.float32)
    for bands, cells, values in _cells(log_spec, params):
        # float32 sums over a cell's few hundred values (einsum: many SIMD accumulators),
        # float64 across cells: as exact as the float32 values themselves, and 3x faster than
        # float64
        rows = values.reshape(-1, values.shape[2])
        sums[bands, cells] = np.einsum("ij->i", rows).reshape(len(bands), -1)
        squares[bands, cells] = np.einsum("ij,ij->i", rows, rows).reshape(len(bands), -1)
    n_full = log_spec.shape[1] // params.cell_frames
    # float64 over the full cells, then the partial last one added: the order datasets were
    # always made in, so thresholds agree with them to the last bit
    band_squares = squares[:, :n_full].sum(axis=1, dtype=np.float64)
    band_squares += squares[:, n_full:].sum(axis=1, dtype=np.float64)
    sums = sums.astype(np.float64)
    return _CellSums(sums, sums.sum(axis=1), band_squares)


def _top_mean_reaches(values: np.ndarray, thresholds: np.ndarray, top_k: int) -> np.ndarray:
    """Cells' values (bands, cells, n) and their bands' thresholds (bands,) -> (bands, cells)
    bool: is the mean of each cell's top_k largest values >= its band's threshold?

    A cell with no value at or above the threshold cannot reach it and one with top_k such
    values must, so only the cells in between (typically a sixth) are sorted. A cell of fewer
    than top_k values averages all it has.
    """
    k = min(top_k, values.shape[2])
    above = (values >= thresholds[:, None, None]).sum(axis=2, dtype=np.int32)
    reaches = above >= k
    unsure = np.nonzero((above > 0) & ~reaches)
    top = np.sort(values[unsure], axis=1)[:, -k:]
    reaches[unsure] = top.mean(axis=1, dtype=np.float64) >= thresholds[unsure[0]]
    return reaches


def _band_threshold(value_sum, square_sum, n_values, params: SpectrogramParams):
    """(band mean + band population std) * threshold_factor, from the band's sum of values,
    sum of squares and count: floats, or float64 arrays (bands,) for all bands at once."""
    mean = value_sum / n_values
    # E[x^2] - mean^2: log10 values are O(10), so this loses no digits that matter
    std = np.sqrt(np.maximum(square_sum / n_values - mean**2, 0.0))
    return (mean + std) * params.threshold_factor


def _loud_cells(
    log_spec: np.ndarray, params: SpectrogramParams, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """The 2016 rule on every cell of log_spec (n_bins, T): (bands, cells) bool, True = keep
    the cell, not dilated. A cell is dropped when its mean is below 0 or the mean of its
    top_k largest values is below its band's threshold (`_band_threshold`).

    thresholds: (bands,) of the whole recording when log_spec is a block of it, cut at a
    cell border; None: the statistics of log_spec itself. All bands are handled at once,
    so a short recording costs a few dozen numpy calls, not a few per band.
    """
    sums = _cell_sums(log_spec, params)
    heights, n_frames = np.diff(band_edges(params)), log_spec.shape[1]
    if thresholds is None:
        n_values = heights * n_frames
        thresholds = _band_threshold(sums.band_values, sums.band_squares, n_values, params)
    borders = np.minimum(np.arange(sums.cells.shape[1] + 1) * params.cell_frames, n_frames)
    keep = sums.cells / np.outer(heights, np.diff(borders)) >= 0  # the cells' means
    for bands, cells, values in _cells(log_spec, params):  # again: memory stays bounded
        keep[bands, cells] &= _top_mean_reaches(values, thresholds[bands], params.top_k)
    return keep


def _dilate(keep: np.ndarray) -> np.ndarray:
    """Cross-shaped dilation of a (bands, cells) mask: a True cell sets its four neighbours."""
    grown = keep.copy()
    grown[1:] |= keep[:-1]
    grown[:-1] |= keep[1:]
    grown[:, 1:] |= keep[:, :-1]
    grown[:, :-1] |= keep[:, 1:]
    return grown


def cell_mask(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Which filter cells survive: (bands, cells) bool, after the cross-shaped dilation.

    log_spec: (n_bins, T). Bands are `band_edges`, cells `cell_frames` columns (the last may be
    narrower). A cell is dropped when its mean is below 0 or the mean of its `top_k` largest
    values is below (band mean + band std) * threshold_factor, band statistics over all frames
    (population std); then every kept cell also keeps its four neighbours.
    """
    if log_spec.shape[0] != params.n_bins:
        raise ValueError(f"expected ({params.n_bins}, frames), got shape {log_spec.shape}")
    return _dilate(_loud_cells(log_spec, params))


def _row_cells(cells: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """(bands, cells) cell mask -> (n_bins, cells): each band's row repeated for its bins."""
    return np.repeat(cells, np.diff(band_edges(params)), axis=0)


def noise_mask(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Keep-mask of the noise filter: (n_bins, T) bool, True where `cell_mask` keeps the cell."""
    frame_cells = np.arange(log_spec.shape[1]) // params.cell_frames
    return _row_cells(cell_mask(log_spec, params), params)[:, frame_cells]


def _nonempty_frames(
    log_spec: np.ndarray, row_cells: np.ndarray, params: SpectrogramParams
) -> np.ndarray:
    """Indices of the frames of log_spec (n_bins, T) that the filter does not count as empty,
    given `_row_cells` (n_bins, cells) of its cell mask; possibly none.

    A frame is empty when more than `empty_frame_fraction` of its masked values are 0: the
    rows of its dropped cells, plus values in kept cells that are 0 themselves (log10 PSD
    exactly 0: practically never, but 2016 counted them).
    """
    n_bins, n_frames = log_spec.shape
    frame_cells = np.arange(n_frames) // params.cell_frames
    zeros = np.count_nonzero(~row_cells, axis=0)[frame_cells]
    natural_zeros = log_spec == 0
    if natural_zeros.any():  # checked first: np.nonzero is slow even when there are none
        rows, frames = np.nonzero(natural_zeros)
        zero_is_kept = row_cells[rows, frame_cells[frames]]
        zeros += np.bincount(frames[zero_is_kept], minlength=n_frames)
    return np.flatnonzero(zeros / n_bins <= params.empty_frame_fraction)


def _filter_plan(log_spec: np.ndarray, params: SpectrogramParams) -> tuple[np.ndarray, np.ndarray]:
    """What the filter keeps of log_spec (n_bins, T), without building the masked copy.

    Returns (`_row_cells` of the cell mask (n_bins, cells), indices of the frames kept): the
    `_nonempty_frames`, or every frame when none is left.
    """
    row_cells = _row_cells(cell_mask(log_spec, params), params)
    kept = _nonempty_frames(log_spec, row_cells, params)
    return row_cells, kept if kept.size else np.arange(log_spec.shape[1])


def _masked_frames(
    log_spec: np.ndarray, row_cells: np.ndarray, frames: np.ndarray, cell_frames: int
) -> np.ndarray:
    """Columns `frames` of log_spec with the dropped cells set to 0: (n_bins, len(frames))."""
    out = np.take(log_spec, frames, axis=1, mode="clip")  # clip: no bounds buffer
    np.copyto(out, 0, where=~row_cells[:, frames // cell_frames])
    return out


def filter_noise(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """The 2016 noise filter: (n_bins, T) -> (n_bins, T') float32, a new array.

    Dropped cells are set to 0, then frames of which more than `empty_frame_fraction` of the
    values are 0 are removed; when that would remove every frame, the masked spectrogram is
    returned whole.
    """
    row_cells, kept = _filter_plan(log_spec, params)
    return _masked_frames(log_spec, row_cells, kept, params.cell_frames)


def _chunk_starts(n_frames: int, params: SpectrogramParams) -> np.ndarray:
    """First frame of each chunk: every chunk_frames, the last one moved back to end at T."""
    starts = np.arange(0, n_frames, params.chunk_frames)
    return np.minimum(starts, max(n_frames - params.chunk_frames, 0))


def pad_chunk(spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """A spectrogram (n_bins, T) shorter than one chunk -> one chunk (n_bins, chunk_frames):
    zero-padded at the end (params.padding "zero", 2016), or its frames repeated from the
    start until the chunk is full ("cyclic"), so a short clip is not drowned in silence."""
    n_bins, n_frames = spec.shape
    if params.padding == "cyclic":
        return np.take(spec, np.arange(params.chunk_frames) % n_frames, axis=1)
    return np.pad(spec, ((0, 0), (0, params.chunk_frames - n_frames)))


def split_chunks(spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """(n_bins, T) -> (ceil(T / chunk_frames), n_bins, chunk_frames) float32.

    Consecutive windows from frame 0; a partial last window is replaced by the last
    chunk_frames frames; a spectrogram shorter than one chunk is padded (`pad_chunk`).
    """
    n_bins, n_frames = spec.shape
    if n_frames == 0:
        raise ValueError("cannot chunk a spectrogram without frames")
    if n_frames < params.chunk_frames:
        return pad_chunk(spec, params)[None].astype(np.float32, copy=False)
    starts = _chunk_starts(n_frames, params)
    chunks = np.empty((starts.size, n_bins, params.chunk_frames), dtype=np.float32)
    for chunk, start in zip(chunks, starts, strict=True):
        chunk[:] = spec[:, start : start + params.chunk_frames]
    return chunks


def _silent_frames(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """(frames,) bool: frames of log_spec (n_bins, frames) at the floor in every row, that is
    windows of digital silence (exact zeros: padding, never a microphone's output)."""
    return (log_spec <= np.float32(np.log10(params.log_floor))).all(axis=0)


def drop_silence(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """log_spec (n_bins, frames) without its digitally silent frames (`_silent_frames`) when
    params.drop_silence, so a clip padded with zeros becomes the sound it holds (then padded
    by `pad_chunk`); a spectrogram of nothing but silence, or drop_silence off, is returned
    as it is."""
    if not params.drop_silence:
        return log_spec
    silent = _silent_frames(log_spec, params)
    return log_spec if silent.all() or not silent.any() else log_spec[:, ~silent]


def filtered_spectrogram(log_spec: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """What is cut into chunks: log_spec (n_bins, T) through the noise filter (`filter_noise`,
    params.noise_filter, 2016) or without its digital silence (`drop_silence`, when asked)."""
    if params.noise_filter:
        return filter_noise(log_spec, params)
    return drop_silence(log_spec, params)


def extract_chunks(samples: np.ndarray, params: SpectrogramParams) -> Extraction:
    """Samples (n,) at params.sample_rate, int16 scale -> `Extraction` (chunks, n_frames).

    chunks: (ceil(n_frames / chunk_frames), n_bins, chunk_frames) float32, the filtered log
    spectrogram cut into chunks (`split_chunks`); n_frames: the frames left after the filter.
    The whole recording's chunks at once: the pipeline cuts them a slice at a time
    (`chunk_slices`, `stream_chunks`), the same chunks.
    """
    filtered = filtered_spectrogram(log_spectrogram(samples, params), params)
    return Extraction(split_chunks(filtered, params), filtered.shape[1])


def _spectrogram_blocks(
    sample_blocks: Iterable[np.ndarray], params: SpectrogramParams, block_frames: int
) -> Iterator[np.ndarray]:
    """`log_spectrogram` of a signal given as consecutive pieces (any sizes), block_frames
    frames at a time: (n_bins, block_frames) float32 blocks, the last one narrower.

    Consecutive blocks share nfft - hop samples; the frames are those of the whole signal.
    """
    span = (block_frames - 1) * params.hop + params.nfft  # samples under block_frames frames
    pending = [np.zeros(0, dtype=np.float32)]  # samples from the next block's first frame on
    n_pending, any_block = 0, False
    for samples in sample_blocks:
        pending.append(samples)  # joined only once they fill a block: pieces may be tiny
        n_pending += samples.size
        if n_pending < span:
            continue
        rest = np.concatenate(pending)
        while rest.size >= span:
            yield log_spectrogram(rest[:span], params)
            rest = rest[block_frames * params.hop :]
            any_block = True
        pending, n_pending = [rest], rest.size
    rest = np.concatenate(pending)
    # the rest holds frames if it spans a window; a signal shorter than one window is padded
    if rest.size >= params.nfft or not any_block:
        yield log_spectrogram(rest, params)


def _filtered_blocks(
    log_spec_blocks: Iterable[np.ndarray],
    thresholds: np.ndarray,
    params: SpectrogramParams,
    *,
    remove_empty: bool,
) -> Iterator[np.ndarray]:
    """The noise filter on a spectrogram given as blocks cut at cell borders (n_bins, frames):
    yields each block's frames with the dropped cells set to 0, (n_bins, frames') float32,
    without the empty frames (`_nonempty_frames`) when remove_empty.

    thresholds: (bands,) of the whole spectrogram. The dilation reaches one cell into the
    neighbouring blocks, so a block is finished once the next one's cells are known.
    """
    no_cells = np.zeros((len(thresholds), 1), dtype=bool)  # beyond either end
    held, held_loud, before = None, None, no_cells  # a block, its cells, the column before it
    for block in itertools.chain(log_spec_blocks, [None]):
        loud = no_cells if block is None else _loud_cells(block, params, thresholds)
        if held is not None:
            grown = _dilate(np.concatenate([before, held_loud, loud[:, :1]], axis=1))[:, 1:-1]
            row_cells = _row_cells(grown, params)
            if remove_empty:
                frames = _nonempty_frames(held, row_cells, params)
            else:
                frames = np.arange(held.shape[1])
            yield _masked_frames(held, row_cells, frames, params.cell_frames)
            before = held_loud[:, -1:]
        held, held_loud = block, loud


def _chunk_stream(
    frame_blocks: Iterable[np.ndarray], params: SpectrogramParams, max_chunks: int
) -> Iterator[np.ndarray]:
    """`split_chunks` of the concatenated frame_blocks (n_bins, frames each), at most
    max_chunks at a time: (<= max_chunks, n_bins, chunk_frames) float32; nothing without frames.

    Holds at most max_chunks chunks and a block. A partial last window is completed from the
    end of the last full chunk, kept for that, as `split_chunks` ends on the last frames.
    """
    width = params.chunk_frames
    chunks: list[np.ndarray] = []  # (n_bins, width) each, not yielded yet
    last_full = None
    rest = np.zeros((params.n_bins, 0), dtype=np.float32)  # frames after the latest full chunk
    for block in frame_blocks:
        rest = np.concatenate([rest, block], axis=1)
        while rest.shape[1] >= width:
            last_full, rest = rest[:, :width], rest[:, width:]
            chunks.append(last_full)
            if len(chunks) == max_chunks:
                yield np.stack(chunks)
                chunks = []
    if rest.shape[1] and last_full is None:  # fewer frames than one chunk: padded
        chunks.append(pad_chunk(rest, params))
    elif rest.shape[1]:  # a partial last window: the last `width` frames instead
        chunks.append(np.concatenate([last_full[:, rest.shape[1] :], rest], axis=1))
    if chunks:
        yield np.stack(chunks)


def stream_chunks(
    sample_blocks: Callable[[], Iterable[np.ndarray]],
    params: SpectrogramParams,
    max_chunks: int,
    *,
    block_cells: int = STREAM_BLOCK_CELLS,
) -> Generator[np.ndarray, None, int]:
    """`extract_chunks` of a signal read in pieces, in memory independent of its length.

    sample_blocks() gives the samples (n,) at params.sample_rate, int16 scale, as consecutive
    1-D pieces of any size, afresh on each call. Yields arrays (<= max_chunks, n_bins,
    chunk_frames) float32 that concatenate to extract_chunks(all samples).chunks, then
    returns (as StopIteration.value) extract_chunks' n_frames.

    With the noise filter, the spectrogram is computed twice, block_cells filter cells at a
    time (without it, once): the first pass
    sums each band's values for the thresholds, the second filters and chunks. When the filter
    removes every frame, a third pass gives the masked spectrogram whole, as `filter_noise`.
    The band sums add the same float32 cell sums in float64 as `extract_chunks`, in another
    order: that is exact (24-bit cell sums, 53-bit totals) unless some cell sums to almost 0,
    and even then a cell decided differently would need its top-k mean within the last bit of
    the threshold.
    """
    block_frames = block_cells * params.cell_frames

    def log_spec_blocks() -> Iterator[np.ndarray]:
        return _spectrogram_blocks(sample_blocks(), params, block_frames)

    n_frames = 0

    def counted(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal n_frames
        for block in blocks:
            n_frames += block.shape[1]
            yield block

    if not params.noise_filter:  # one pass, the spectrogram's frames as they come
        blocks = log_spec_blocks()
        if params.drop_silence:
            blocks = (block[:, ~_silent_frames(block, params)] for block in blocks)
        yield from _chunk_stream(counted(blocks), params, max_chunks)
        if not n_frames:  # nothing but silence: keep it all, as `drop_silence` does
            yield from _chunk_stream(counted(log_spec_blocks()), params, max_chunks)
        return n_frames

    heights = np.diff(band_edges(params))
    sums = np.zeros((3, len(heights)))  # per band: sum of values, of squares, value count
    for block in log_spec_blocks():
        block_sums = _cell_sums(block, params)
        sums += block_sums.band_values, block_sums.band_squares, heights * block.shape[1]
    thresholds = _band_threshold(*sums, params)

    filtered = _filtered_blocks(log_spec_blocks(), thresholds, params, remove_empty=True)
    yield from _chunk_stream(counted(filtered), params, max_chunks)
    if not n_frames:  # every frame removed: keep them all, as `_filter_plan` does
        filtered = _filtered_blocks(log_spec_blocks(), thresholds, params, remove_empty=False)
        yield from _chunk_stream(counted(filtered), params, max_chunks)
    return n_frames


def chunk_slices(
    log_spec: np.ndarray, params: SpectrogramParams, max_chunks: int
) -> Generator[np.ndarray, None, int]:
    """A recording's chunks from its whole spectrogram, at most max_chunks at a time.

    log_spec (n_bins, frames) -> arrays (<= max_chunks, n_bins, chunk_frames) which,
    concatenated, equal `extract_chunks` of the recording: the noise filter (when
    params.noise_filter) runs on the whole recording, and the last slice starts early enough
    to end with the recording's last chunk_frames frames, just as `split_chunks` cuts the
    whole. Returns (as StopIteration.value) the frames after the filter, as extract_chunks.
    """
    filtered = filtered_spectrogram(log_spec, params)
    del log_spec  # the caller let go of it too: one spectrogram in memory, not two
    n_frames, step = filtered.shape[1], max_chunks * params.chunk_frames
    for start in range(0, n_frames, step):
        first = min(start, max(n_frames - params.chunk_frames, 0))
        yield split_chunks(filtered[:, first : start + step], params)
    return n_frames


def window_bounds(
    n_frames: int, frames_per_window: float, shortest_last: float
) -> list[tuple[int, int]]:
    """(first, end) frames of each window of a spectrogram of n_frames, in time order.

    Window w starts at round(w * frames_per_window); each ends where the next starts, the
    last at n_frames. A last window under shortest_last frames joins the one before it: the
    run file names windows in whole seconds, so a few frames left at the end would get an
    empty span. Every window has at least one frame when n_frames > 0.
    """
    n_windows = max(1, math.ceil(n_frames / frames_per_window))
    starts = [round(window * frames_per_window) for window in range(n_windows)]
    if len(starts) > 1 and n_frames - starts[-1] < shortest_last:
        starts.pop()
    return list(zip(starts, [*starts[1:], n_frames], strict=True))


def window_chunks(
    log_spec: np.ndarray, params: SpectrogramParams, window_seconds: float
) -> Generator[np.ndarray, None, int]:
    """Chunks of each window_seconds window, in time order, for soundscape rankings.

    With the noise filter, its mask comes from the whole recording (as in training); inside
    each window the frames the filter counts as empty are removed (without it, the silent
    frames, `drop_silence`). The rest of a window is cut like a recording (`split_chunks`:
    one padded chunk when it is shorter than chunk_frames). A last window under one second
    joins the one before it (`window_bounds`).
    Returns (as StopIteration.value) the spectrogram's frames.
    """
    n_frames = log_spec.shape[1]
    if params.noise_filter:
        log_spec = np.where(noise_mask(log_spec, params), log_spec, np.float32(0))
    frames_per_second = params.sample_rate / params.hop
    bounds = window_bounds(n_frames, window_seconds * frames_per_second, frames_per_second)
    for first, end in bounds:
        part = log_spec[:, first:end]
        if params.noise_filter:
            zeros = np.count_nonzero(part == 0, axis=0)
            empty = zeros / part.shape[0] > params.empty_frame_fraction
            part = part if empty.all() else part[:, ~empty]
        else:
            part = drop_silence(part, params)
        yield split_chunks(part, params)
    return n_frames
