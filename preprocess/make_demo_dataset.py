"""Generate the embedded demo dataset: SYNTHETIC bird-like recordings in BirdCLEF 2016 layout.

No download: every recording is made here from a fixed seed, so the same command always
writes the same files. Six made-up "species" sing frequency-modulated calls with their own
shapes (rising whistles, falling chips, trills, warbles, harmonic hoots, two-note calls),
rhythms and frequency ranges (0.5-6 kHz), over field-like noise (pink to brown noise, wind
rumble, insect buzz and stray chirps of no species), at quiet to loud levels on the int16
scale, 3-40 s long, some with stretches of digital silence and some with a second species
in the background. It exercises the whole pipeline; it says nothing about real bird song.

Layout, exactly as BirdCLEF 2016 ships (plus a ground-truth file for the test set):

    OUT/TrainingSet/wav/*.wav   44.1 kHz 16-bit mono
    OUT/TrainingSet/xml/*.xml   one <Audio> per recording, with ClassId, BackgroundSpecies, ...
    OUT/TestSet/wav/*.wav
    OUT/TestSet/xml/*.xml       test-style: no labels
    OUT/TestSet/ground_truth.csv  MediaId;ClassId;background1,background2 (class ids)

Usage:
    python preprocess/make_demo_dataset.py --out data/demo

By default 100 training and 10 test recordings per species (about 20 s on 2 cores): enough
for the BirdClef CNN to generalise after a few hundred training steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy.io import wavfile

from preprocess.cli import at_least, most_workers, run_command
from preprocess.paths import first_bytes, is_own_file, is_partial_of, write_text_atomically

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44100  # Hz, as BirdCLEF 2016 ships its wavs
MIN_SECONDS, MAX_SECONDS = 3.0, 40.0
BACKGROUND_SHARE = 0.15  # recordings with a second species in the background
SILENCE_SHARE = 0.25  # recordings with a stretch of digital silence
DISTRACTOR_SHARE = 0.4  # recordings with insect buzz or stray chirps of no species
HISS = (60.0, 200.0)  # range of the microphone hiss RMS, int16 scale
COMPLETE_MARKER = ".demo_complete.json"
README_START = "SYNTHETIC demo dataset made by preprocess/make_demo_dataset.py"
DEMO_ENTRIES = ("TrainingSet", "TestSet", "README.txt")  # besides the marker
OWN_FILES = ("README.txt", COMPLETE_MARKER)  # written whole (a temporary file, then renamed)


class DemoError(Exception):
    """An output folder the demo dataset cannot be written to; the message says why."""


FILE_PATTERN = "SYNTHETIC_DEMO_WAV_RN{media_id}"
DEMO_FILE_NAMES = {  # the folders of a demo set, and the names of the files in them
    folder: re.compile(re.escape(FILE_PATTERN.format(media_id="")) + rf"\d+\.{folder}")
    for folder in ("wav", "xml")
}
TRUTH_FILE = "ground_truth.csv"  # in TestSet/

TRAINING_FIELDS = (
    "MediaId",
    "FileName",
    "ClassId",
    "Date",
    "Time",
    "Locality",
    "Latitude",
    "Longitude",
    "Elevation",
    "Author",
    "AuthorID",
    "Content",
    "Comments",
    "Quality",
    "Year",
    "BackgroundSpecies",
    "Order",
    "Family",
    "Genus",
    "Species",
    "Sub-species",
    "VernacularNames",
)
TEST_FIELDS = (
    "MediaId",
    "FileName",
    "Date",
    "Time",
    "Locality",
    "Latitude",
    "Longitude",
    "Elevation",
    "Author",
    "AuthorID",
    "Year",
)


# ---------------------------------------------------------------------------------------
# Sound synthesis. Every song function takes the bout's time axis t (seconds from its start)
# and the singer's traits, and returns (frequency Hz, amplitude) tracks of the same shape.


def _tone(freq_hz: np.ndarray, amplitude: np.ndarray, harmonics: tuple[float, ...]) -> np.ndarray:
    """A frequency-modulated harmonic tone: sum_h w_h sin(h * phase), phase = integral of f."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / SAMPLE_RATE
    wave = sum(weight * np.sin(number * phase) for number, weight in enumerate(harmonics, 1))
    return amplitude * wave


def _notes(t: np.ndarray, period: float, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Position inside repeated notes: (progress 0..1 within the note, inside-note mask)."""
    progress = (t % period) / length
    return np.clip(progress, 0.0, 1.0), progress < 1.0


def _rising_whistle(t, pitch, tempo):
    progress, inside = _notes(t, 0.55 * tempo, 0.3 * tempo)
    freq = pitch * (1600 + 2000 * progress**1.5)
    return freq, inside * np.sin(np.pi * progress) ** 2


def _falling_chips(t, pitch, tempo):
    progress, inside = _notes(t, 0.14 * tempo, 0.07 * tempo)
    freq = pitch * (5200 - 2400 * progress)
    return freq, inside * np.sin(np.pi * progress)


def _trill(t, pitch, tempo):
    progress, inside = _notes(t, 0.04 * tempo, 0.016 * tempo)
    freq = pitch * 4100 * (1 - 0.08 * t / max(t[-1], 1e-3))
    return freq, inside * np.sin(np.pi * progress) ** 2


def _warble(t, pitch, tempo):
    freq = pitch * (2600 + 600 * np.sin(2 * np.pi * 8 / tempo * t))
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.08, 0.0, 1.0)
    return freq, fade


def _hoots(t, pitch, tempo):
    progress, inside = _notes(t, 0.6 * tempo, 0.35 * tempo)
    freq = pitch * (760 - 120 * progress)
    return freq, inside * np.sin(np.pi * progress) ** 0.5


def _two_notes(t, pitch, tempo):
    high = np.clip(t / (0.1 * tempo), 0.0, 1.0)  # progress through the high note
    low = np.clip((t / tempo - 0.16) / 0.18, 0.0, 1.0)  # and through the low one
    freq = np.where(t < 0.13 * tempo, 4600 * pitch, pitch * (1900 + 200 * low))
    return freq, np.sin(np.pi * high) ** 0.5 + np.sin(np.pi * low) ** 0.5


@dataclass(frozen=True)
class Species:
    class_id: str  # 6-letter code, like BirdCLEF's
    genus: str
    species: str
    family: str
    vernacular: str
    song: Callable[[np.ndarray, float, float], tuple[np.ndarray, np.ndarray]]
    harmonics: tuple[float, ...]
    bout_seconds: tuple[float, float]  # range of one bout's length (before the tempo)
    gap_seconds: tuple[float, float]  # range of the pause between bouts

    @property
    def scientific_name(self) -> str:
        return f"{self.genus} {self.species}"


SPECIES = (
    Species(
        "synrwh",
        "Fictornis",
        "ascendens",
        "Fictornithidae",
        "Synthetic Rising Whistler",
        _rising_whistle,
        (1.0, 0.25),
        (1.6, 3.3),
        (1.0, 4.0),
    ),
    Species(
        "synfch",
        "Fictornis",
        "descendens",
        "Fictornithidae",
        "Synthetic Falling Chipper",
        _falling_chips,
        (1.0, 0.15),
        (1.1, 2.1),
        (1.5, 4.0),
    ),
    Species(
        "syntrl",
        "Trillula",
        "rapida",
        "Trillulidae",
        "Synthetic Trill",
        _trill,
        (1.0,),
        (1.0, 2.5),
        (1.5, 5.0),
    ),
    Species(
        "synwrb",
        "Modulavis",
        "cantans",
        "Modulavidae",
        "Synthetic Warbler",
        _warble,
        (1.0, 0.4, 0.1),
        (0.8, 1.6),
        (0.8, 3.0),
    ),
    Species(
        "synhoo",
        "Bubonoides",
        "gravis",
        "Bubonoididae",
        "Synthetic Low Hooter",
        _hoots,
        (1.0, 0.6, 0.4, 0.25),
        (1.15, 1.2),
        (2.5, 5.0),
    ),
    Species(
        "syntwo",
        "Diphonia",
        "duplex",
        "Diphoniidae",
        "Synthetic Two-note Caller",
        _two_notes,
        (1.0, 0.2),
        (0.34, 0.34),
        (0.8, 2.0),
    ),
)


def sing(species: Species, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """One bird's bouts over n_samples, peak about 1; pitch and tempo vary per individual."""
    pitch, tempo = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
    out = np.zeros(n_samples)
    start = rng.uniform(0.0, 1.5)
    while True:
        bout = rng.uniform(*species.bout_seconds) * tempo
        first, count = int(start * SAMPLE_RATE), int(bout * SAMPLE_RATE)
        if first + count > n_samples:
            break
        t = np.arange(count) / SAMPLE_RATE
        freq, amplitude = species.song(t, pitch, tempo)
        loudness = rng.uniform(0.5, 1.0)  # the bird turns and moves
        out[first : first + count] += loudness * _tone(freq, amplitude, species.harmonics)
        start += bout + rng.uniform(*species.gap_seconds)
    if not out.any():  # shorter than one bout: sing a truncated one
        t = np.arange(n_samples) / SAMPLE_RATE
        freq, amplitude = species.song(t, pitch, tempo)
        out = _tone(freq, amplitude, species.harmonics)
    return out / max(np.abs(out).max(), 1e-9)


def _shaped_noise(rng: np.random.Generator, n_samples: int, *gains: Callable) -> list:
    """White noise shaped in the frequency domain by each gain(freqs_hz), each unit RMS.

    The shapes share one white spectrum (one FFT): cheap, and they occupy different bands.
    """
    n_fft = scipy.fft.next_fast_len(n_samples, real=True)
    spectrum = scipy.fft.rfft(rng.standard_normal(n_fft, dtype=np.float32))
    freqs = scipy.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    noises = [scipy.fft.irfft(spectrum * gain(freqs), n_fft)[:n_samples] for gain in gains]
    return [noise / max(noise.std(), 1e-12) for noise in noises]


def _slow_envelope(rng: np.random.Generator, n_samples: int, step_s: float) -> np.ndarray:
    """A smooth random envelope in [0, 1]: random knots every step_s, linearly joined."""
    knots = rng.uniform(0.0, 1.0, int(n_samples / SAMPLE_RATE / step_s) + 2)
    return np.interp(np.arange(n_samples) / (SAMPLE_RATE * step_s), np.arange(knots.size), knots)


def field_noise(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """Background of a field recording, unit RMS: 1/f^a noise (pink a=1 .. brown a=2) + wind."""
    slope = rng.uniform(1.0, 2.0)
    colored, wind = _shaped_noise(
        rng,
        n_samples,
        lambda f: np.maximum(f, 20.0) ** (-slope / 2),
        lambda f: 1 / (1 + (f / 150.0) ** 4),
    )
    gusts = _slow_envelope(rng, n_samples, 0.7) ** 2
    noise = colored + rng.uniform(0.0, 3.0) * gusts * wind
    return noise / noise.std()


def distractors(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """Sounds of no demo species, peak about 1: an insect buzz band and stray random chirps."""
    out = np.zeros(n_samples)
    low = rng.uniform(4500, 5300)
    (buzz,) = _shaped_noise(rng, n_samples, lambda f: ((f > low) & (f < low + 700)).astype(float))
    on = _slow_envelope(rng, n_samples, 2.0) > 0.6
    flutter = np.sin(2 * np.pi * rng.uniform(30, 60) * np.arange(n_samples) / SAMPLE_RATE)
    out += 0.3 * buzz * on * (0.6 + 0.4 * flutter)
    for _ in range(rng.integers(1, 6)):
        count = int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
        if count >= n_samples:
            break
        first = rng.integers(0, n_samples - count)
        f0, f1 = rng.uniform(1000, 5500, 2)
        freq = np.linspace(f0, f1, count)
        out[first : first + count] += _tone(freq, np.hanning(count), (1.0,))
    return out / max(np.abs(out).max(), 1e-9)


def make_recording(species: Species, background: Species | None, rng: np.random.Generator):
    """A synthetic field recording as int16 samples at SAMPLE_RATE."""
    seconds = float(np.exp(rng.uniform(np.log(MIN_SECONDS), np.log(MAX_SECONDS))))
    n_samples = int(seconds * SAMPLE_RATE)
    audio = sing(species, n_samples, rng)
    if background is not None:  # farther away: quieter
        audio += rng.uniform(0.15, 0.35) * sing(background, n_samples, rng)
    audio += rng.uniform(0.02, 0.15) * field_noise(rng, n_samples)
    if rng.random() < DISTRACTOR_SHARE:
        audio += rng.uniform(0.1, 0.4) * distractors(rng, n_samples)
    peak = np.exp(rng.uniform(np.log(1500), np.log(30000)))  # quiet to loud, int16 scale
    audio *= peak / max(np.abs(audio).max(), 1e-9)
    # the microphone's hiss, at a fixed level on the int16 scale whatever the gain. The 2016
    # filter drops a cell whose mean log10 PSD is below 0, so a sparse call survives only over
    # a floor near that level, as real field recordings have.
    audio += np.exp(rng.uniform(np.log(HISS[0]), np.log(HISS[1]))) * rng.standard_normal(
        n_samples, dtype=np.float32
    )
    if rng.random() < SILENCE_SHARE:  # the recorder paused: digital silence
        gap = int(rng.uniform(0.5, min(4.0, seconds / 3)) * SAMPLE_RATE)
        first = rng.integers(0, n_samples - gap)
        audio[first : first + gap] = 0.0
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------
# Metadata and layout


def _xml(fields: dict[str, str], names: tuple[str, ...]) -> bytes:
    """An <Audio> document with the given fields in order; empty ones self-closing."""
    root = ET.Element("Audio")
    for name in names:
        element = ET.SubElement(root, name)
        element.text = fields.get(name) or None
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _fields(media_id: int, species: Species, background: Species | None, rng) -> dict:
    return {
        "MediaId": str(media_id),
        "FileName": FILE_PATTERN.format(media_id=media_id) + ".wav",
        "ClassId": species.class_id,
        "Date": f"{rng.integers(2009, 2016)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        "Time": f"{rng.integers(4, 11):02d}:{rng.integers(0, 60):02d}",
        "Locality": f"Synthetic Reserve {rng.integers(1, 9)}",
        "Latitude": f"{rng.uniform(-30, 5):.4f}",
        "Longitude": f"{rng.uniform(-75, -40):.4f}",
        "Elevation": str(rng.integers(0, 2000)),
        "Author": "make_demo_dataset.py (synthetic)",
        "AuthorID": "synthetic",
        "Content": "song",
        "Comments": "SYNTHETIC recording generated by this project's demo; not real bird song.",
        "Quality": str(rng.integers(1, 6)),
        "Year": "BirdCLEF2016",
        "BackgroundSpecies": background.scientific_name if background else "",
        "Order": "Passeriformes",
        "Family": species.family,
        "Genus": species.genus,
        "Species": species.species,
        "Sub-species": "",
        "VernacularNames": species.vernacular,
    }


def _write_recording(job: tuple) -> tuple[int, Species, Species | None]:
    """Write one recording's wav and XML; job = (folder, names, media_id, species index,
    background index or None, rng)."""
    folder, names, media_id, species_index, background_index, rng = job
    species = SPECIES[species_index]
    background = None if background_index is None else SPECIES[background_index]
    samples = make_recording(species, background, rng)
    stem = FILE_PATTERN.format(media_id=media_id)
    wavfile.write(folder / "wav" / f"{stem}.wav", SAMPLE_RATE, samples)
    (folder / "xml" / f"{stem}.xml").write_bytes(
        _xml(_fields(media_id, species, background, rng), names)
    )
    return media_id, species, background


def _write_set(folder: Path, plan: list[tuple], names: tuple[str, ...], workers: int) -> list:
    """Write wav/ and xml/ for (media_id, species index, background index, rng) entries.

    Each recording has its own generator, so the files do not depend on the worker count.
    """
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    (folder / "xml").mkdir(parents=True, exist_ok=True)
    jobs = [(folder, names, *entry) for entry in plan]
    if workers == 1:
        return [_write_recording(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_write_recording, jobs, chunksize=4))


def _plan(seed: int, split: int, per_species: int, first_id: int):
    """Shuffled (media_id, species, background, rng) for one split; ids do not leak species."""
    order = np.random.default_rng([seed, split]).permutation(len(SPECIES) * per_species)
    plan = []
    for position, item in enumerate(order):
        species_index, copy = divmod(int(item), per_species)
        rng = np.random.default_rng([seed, split, species_index, copy])
        background = None
        if rng.random() < BACKGROUND_SHARE:
            background = int((species_index + rng.integers(1, len(SPECIES))) % len(SPECIES))
        plan.append((first_id + position, species_index, background, rng))
    return plan


def check_may_replace(out: Path) -> None:
    """DemoError unless out is missing, empty, or a demo dataset this tool made (its marker,
    or the README it writes first), holding nothing else and no link, down to the files in
    its folders (`foreign_entries`): only then are its TrainingSet/ and TestSet/ deleted and
    written anew. A real BirdCLEF folder has the same two folders."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} is not a folder: choose a new or empty folder for the demo")
    entries = list(out.iterdir()) if out.is_dir() else []
    cut_short = [  # writes of this tool's that a kill stopped: not counted, then removed
        entry
        for entry in entries
        if is_own_file(entry) and any(is_partial_of(entry.name, own) for own in OWN_FILES)
    ]
    entries = [entry for entry in entries if entry not in cut_short]
    readme = out / "README.txt"
    made_here = is_own_file(out / COMPLETE_MARKER) or (
        is_own_file(readme) and first_bytes(readme, len(README_START)) == README_START.encode()
    )
    if entries and not made_here:
        raise DemoError(
            f"{out} is not empty and holds no demo dataset made by this tool: choose a new or "
            "empty folder for the demo dataset (nothing in it was changed)"
        )
    for entry in entries:
        if entry.is_symlink():
            raise DemoError(f"{entry} is a link: the demo dataset is written only into {out}")
    leftovers = {entry.name for entry in entries} - {*DEMO_ENTRIES, COMPLETE_MARKER}
    if leftovers:
        raise DemoError(
            f"{out} holds other files ({', '.join(sorted(leftovers)[:3])}...): choose an empty "
            "folder for the demo dataset"
        )
    for part in ("TrainingSet", "TestSet"):
        foreign = next(foreign_entries(out / part), None)
        if foreign is not None:
            raise DemoError(
                f"{foreign} was not written by the demo: move it out of {out}, or choose "
                "another folder for the demo dataset (nothing in it was changed)"
            )
    for entry in cut_short:
        entry.unlink()


def foreign_entries(part: Path) -> Iterator[Path]:
    """Entries under a demo's TrainingSet/ or TestSet/ (part) that a demo run does not
    write: anything but the folders wav/ and xml/, their SYNTHETIC_DEMO_WAV_RN files and
    the test set's ground truth (or a temporary file of it), or a link. Rebuilding deletes
    part whole, so a user's file put there must stop it."""
    if not part.exists() or part.is_symlink():
        return
    for entry in part.iterdir():
        if entry.name in DEMO_FILE_NAMES and entry.is_dir() and not entry.is_symlink():
            own = DEMO_FILE_NAMES[entry.name]
            yield from (
                file
                for file in entry.iterdir()
                if not (is_own_file(file) and own.fullmatch(file.name))
            )
        elif not (
            part.name == "TestSet"
            and is_own_file(entry)
            and (entry.name == TRUTH_FILE or is_partial_of(entry.name, TRUTH_FILE))
        ):
            yield entry


def make_demo_dataset(
    out: Path,
    recordings_per_species: int = 100,
    test_per_species: int = 10,
    seed: int = 2016,
    workers: int | None = None,
) -> bool:
    """Write the demo dataset under out; returns False when an identical one is already there.

    workers: processes (default: all cores); the files are the same for any number.
    """
    workers = workers or os.cpu_count() or 1
    settings = {
        "recordings_per_species": recordings_per_species,
        "test_per_species": test_per_species,
        "seed": seed,
        "species": [s.class_id for s in SPECIES],
    }
    marker = out / COMPLETE_MARKER
    if is_own_file(marker) and json.loads(marker.read_text(encoding="utf-8")) == settings:
        logger.info("SYNTHETIC demo dataset already complete in %s, skipping", out)
        return False
    check_may_replace(out)
    marker.unlink(missing_ok=True)
    for part in ("TrainingSet", "TestSet"):
        if (out / part).exists():  # no link: check_may_replace refuses those
            shutil.rmtree(out / part)
    out.mkdir(parents=True, exist_ok=True)
    # first: it marks the folder as this tool's (`check_may_replace`), should the run stop
    write_text_atomically(
        out / "README.txt",
        f"{README_START} (seed {seed}): made-up bird-like species, not real recordings.\n",
    )
    n_train = len(SPECIES) * recordings_per_species
    train_plan = _plan(seed, 0, recordings_per_species, 1)
    train = _write_set(out / "TrainingSet", train_plan, TRAINING_FIELDS, workers)
    test_plan = _plan(seed, 1, test_per_species, n_train + 1)
    test = _write_set(out / "TestSet", test_plan, TEST_FIELDS, workers)
    truth = [
        f"{media_id};{species.class_id};{background.class_id if background else ''}\n"
        for media_id, species, background in test
    ]
    write_text_atomically(out / "TestSet" / TRUTH_FILE, "".join(truth))
    write_text_atomically(marker, json.dumps(settings))
    logger.info(
        "wrote %d training and %d test recordings of %d SYNTHETIC species to %s "
        "(made-up bird-like calls, not real recordings)",
        len(train),
        len(test),
        len(SPECIES),
        out,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the SYNTHETIC demo dataset (made-up bird-like species, not real "
        "recordings) in BirdCLEF 2016 layout: TrainingSet/{wav,xml}, TestSet/{wav,xml}, "
        "TestSet/ground_truth.csv. Deterministic; skipped when already complete."
    )
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument(
        "--recordings-per-species",
        type=at_least(1),
        default=100,
        help="training recordings per species (default 100: enough for the BirdClef CNN to "
        "generalise in a few minutes of CPU training)",
    )
    parser.add_argument(
        "--test-per-species",
        type=at_least(1),
        default=10,
        help="test recordings per species (default 10)",
    )
    parser.add_argument(
        "--workers", type=at_least(1, most_workers()), help="processes (default: all cores)"
    )
    parser.add_argument("--seed", type=at_least(0), default=2016)
    parser.add_argument("--verbose", action="store_true", help="tracebacks of errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> int:
        make_demo_dataset(
            args.out, args.recordings_per_species, args.test_per_species, args.seed, args.workers
        )
        return 0

    return run_command(run, args.verbose, (DemoError,))


if __name__ == "__main__":
    sys.exit(main())
