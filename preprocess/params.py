"""Every parameter of the 2016 preprocessing, in one place.

The values are those of Tóth & Czeba's BirdCLEF 2016 system (see ORIGINAL.md facts in the
README). A `SpectrogramParams` is stored as JSON with every HDF5 dataset and every trained
model, and prediction reads it back from there, so training and prediction can never drift.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SpectrogramParams:
    sample_rate: int = 16000  # Hz, after SoX resampling
    nfft: int = 512  # samples per FFT window (32 ms)
    hop: int = 256  # samples between frames (NFFT - overlap 256)
    window: str = "hann-symmetric"  # np.hanning(nfft), as matplotlib's mlab.specgram uses
    n_bins: int = 200  # lowest frequency bins kept: 0 .. 6.2 kHz
    log_floor: float = 1e-10  # PSD floor before log10, so digital silence stays finite
    n_band_edges: int = 20  # ceil(linspace(0, n_bins, n_band_edges)): 19 frequency bands
    cell_frames: int = 30  # frames per noise-filter cell (0.48 s)
    top_k: int = 10  # a cell's loudness: mean of its top_k largest values
    threshold_factor: float = 1.5  # keep a cell if top-k mean >= (band mean + std) * factor
    empty_frame_fraction: float = 0.95  # drop a frame when more than this share is zero
    chunk_frames: int = 310  # frames per training example (4.96 s)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SpectrogramParams:
        """Parse stored parameters; unknown or missing keys are an error, not a guess."""
        values = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown, missing = set(values) - names, names - set(values)
        if unknown or missing:
            raise ValueError(
                f"stored preprocessing parameters do not match this version: "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        return cls(**values)

    @property
    def chunk_seconds(self) -> float:
        return (self.chunk_frames * self.hop) / self.sample_rate
