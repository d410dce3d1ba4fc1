"""Every preprocessing parameter, in one place.

The defaults are those of Tóth & Czeba's BirdCLEF 2016 system (README: "What is kept from 2016, and
what is fixed"); `MODERN` is the front end of `--recipe modern`. A `SpectrogramParams` is stored as
JSON with every HDF5 dataset and every trained model, and prediction reads it back from there, so
training and prediction can never drift.

Fields added after the 2016 port (`ADDED_FIELDS`) are written only when they differ from the
2016 value, so a 2016 parameter set serialises exactly as before (files and run folders made
earlier stay "the same job"), and stored JSON without them reads as 2016.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

FORMAT_VERSION = 1
# a field's annotation (a string: `from __future__ import annotations`) -> the types it takes
TYPES_OF = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
# field: (lowest, highest) any front end could use; beyond, a params.json is damaged
RANGES = {
    "sample_rate": (1, 10**6),
    "nfft": (2, 2**20),
    "hop": (1, 2**20),
    "n_bins": (1, 2**16),
    "n_band_edges": (2, 2**16),
    "cell_frames": (1, 10**6),
    "top_k": (1, 10**6),
    "chunk_frames": (1, 10**6),
    "log_floor": (1e-30, 1.0),
    "threshold_factor": (0.0, 1e6),
    "empty_frame_fraction": (0.0, 1.0),
}
FRONTENDS = ("psd2016", "logmel")
PADDINGS = ("zero", "cyclic")


@dataclass(frozen=True)
class SpectrogramParams:
    sample_rate: int = 16000  # Hz, after SoX resampling
    nfft: int = 512  # samples per FFT window (32 ms)
    hop: int = 256  # samples between frames (NFFT - overlap 256)
    window: str = "hann-symmetric"  # np.hanning(nfft), as matplotlib's mlab.specgram uses
    n_bins: int = 200  # rows of a chunk: lowest FFT bins kept (0 .. 6.2 kHz), or mel bands
    log_floor: float = 1e-10  # PSD floor before log10, so digital silence stays finite
    n_band_edges: int = 20  # ceil(linspace(0, n_bins, n_band_edges)): 19 frequency bands
    cell_frames: int = 30  # frames per noise-filter cell (0.48 s)
    top_k: int = 10  # a cell's loudness: mean of its top_k largest values
    threshold_factor: float = 1.5  # keep a cell if top-k mean >= (band mean + std) * factor
    empty_frame_fraction: float = 0.95  # drop a frame when more than this share is zero
    chunk_frames: int = 310  # frames per training example (4.96 s)
    # added for the modern recipe; the defaults are what 2016 did
    frontend: str = "psd2016"  # "psd2016": log10 PSD bins; "logmel": log10 mel band power
    fmin: float = 0.0  # Hz, lowest edge of the mel bands ("logmel" only)
    fmax: float = 8000.0  # Hz, highest edge of the mel bands ("logmel" only)
    noise_filter: bool = True  # the 2016 noise filter (cells, empty frames) before chunking
    padding: str = "zero"  # a recording shorter than a chunk: "zero" padded, or "cyclic" repeat
    drop_silence: bool = False  # drop frames of digital silence (exact zeros: padding)

    def __post_init__(self) -> None:
        self._check_types_and_ranges()
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend {self.frontend!r} is not one of {', '.join(FRONTENDS)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {', '.join(PADDINGS)}")
        if self.frontend == "logmel" and not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"mel bands need 0 <= fmin < fmax <= sample_rate / 2, "
                f"got {self.fmin}-{self.fmax} Hz"
            )
        if self.drop_silence and self.noise_filter:
            raise ValueError(
                "drop_silence is for the front end without the noise filter (the filter "
                "removes empty frames itself)"
            )

    def _check_types_and_ranges(self) -> None:
        """ValueError for a value of the wrong type, not finite, or far outside any front end
        (a damaged params.json would otherwise give a confident wrong prediction)."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.type
            expected = TYPES_OF[kind]
            if not isinstance(value, expected) or (kind != "bool" and isinstance(value, bool)):
                raise ValueError(f"{field.name} {value!r} is not of type {kind}")
            if kind == "float" and not math.isfinite(value):
                raise ValueError(f"{field.name} {value!r} is not a finite number")
        for name, (lowest, highest) in RANGES.items():
            value = getattr(self, name)
            if not lowest <= value <= highest:
                raise ValueError(f"{name} {value!r} is outside [{lowest}, {highest}]")

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        for name, value_2016 in ADDED_FIELDS.items():
            if values[name] == value_2016:
                del values[name]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SpectrogramParams:
        """Parse stored parameters. A missing field added after 2016 takes its 2016 value;
        an unknown or any other missing key is an error, not a guess."""
        values = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - names
        missing = names - set(values) - set(ADDED_FIELDS)
        if unknown or missing:
            raise ValueError(
                f"stored preprocessing parameters do not match this version: "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        return cls(**values)


ADDED_FIELDS = {
    name: getattr(SpectrogramParams, name)
    for name in ("frontend", "fmin", "fmax", "noise_filter", "padding", "drop_silence")
}

# The front end of `--recipe modern`: 128 log-mel bands over 0-8 kHz, 64 ms windows every
# 20 ms, no noise filter, short clips repeated; chunk_frames is then set from the chunk length
# (load_data.py --chunk-seconds, by default from the training recordings' durations). Digital
# silence is kept: dropping it measured no better on ESC-10 (BENCHMARKS.md).
MODERN = SpectrogramParams(
    frontend="logmel",
    n_bins=128,
    nfft=1024,
    hop=320,
    noise_filter=False,
    padding="cyclic",
)
MODERN_CHUNK_SECONDS = (1.0, 5.0)  # the automatic chunk length: median duration, clamped
