"""Resample wav files to 16 kHz 16-bit mono with soxr: the fallback when SoX is not installed.

    python preprocess/resample.py IN_DIR OUT_DIR [--jobs N]

preprocess/resample_wavs_to_16k.sh runs this by itself when `sox` is not on PATH. The contract
is the script's: IN_DIR/<path>.wav becomes OUT_DIR/<path>.wav, 16 kHz, 16-bit, channels
averaged; parallel; resumable (written to <path>.wav.part, renamed when complete; an existing
output is skipped unless its input is newer); a file that cannot be read is named with the
reason and skipped (a float wav with NaN samples too); exit status 0, 1 when some file failed,
2 for a usage error or an output folder it cannot write (`error: ...`, the traceback only with
--verbose).

Only wav can be read without SoX: flac, mp3, ogg, aiff and au inputs are reported as failed.
soxr's 'HQ' quality is the engine of SoX's default `rate` effect, and samples are rounded
without dither as the script's `sox -D` does, so both paths agree within a few LSB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from preprocess.audio import (
    AUDIO_SUFFIXES,
    WAV_SUFFIXES,
    AudioError,
    read_wav,
    to_sample_rate,
)
from preprocess.cli import at_least, most_workers, run_command
from preprocess.params import SpectrogramParams

TARGET_RATE = SpectrogramParams().sample_rate
SOX_ONLY_SUFFIXES = AUDIO_SUFFIXES - WAV_SUFFIXES
PART_SUFFIX = ".part"  # a file being written; never a result


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Round float samples on the int16 scale (n,) to int16 (n,), clipping the overshoot."""
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


def resample_file(src: Path, dst: Path) -> None:
    """Write src as a 16 kHz 16-bit mono wav at dst, atomically. Raises AudioError or OSError."""
    samples, rate = read_wav(src)
    resampled = to_int16(to_sample_rate(samples, rate, TARGET_RATE))
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + PART_SUFFIX)
    try:
        wavfile.write(part, TARGET_RATE, resampled)
        os.replace(part, dst)
    finally:
        part.unlink(missing_ok=True)


def plan(in_dir: Path, out_dir: Path) -> tuple[list[str], int, list[tuple[str, str]]]:
    """Decide what to do with each audio file under in_dir (paths relative to it, sorted).

    Returns (to convert, number already done, [(failed, reason)]): an input is done when its
    output exists and is not older; a non-wav input, or a second input that would give the same
    output name (a.wav and a.WAV), fails here.
    """
    todo, failed, source_of = [], [], {}
    already_done = 0
    paths = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    for path in paths:
        if not path.is_file():
            continue
        rel = path.relative_to(in_dir).as_posix()
        out_rel = Path(rel).with_suffix(".wav").as_posix()
        if path.suffix.lower() in SOX_ONLY_SUFFIXES:
            failed.append((rel, "not a wav file: only SoX converts this format"))
        elif out_rel in source_of:
            failed.append((rel, f"would also become {out_rel}, made from {source_of[out_rel]}"))
        else:
            source_of[out_rel] = rel
            out = out_dir / out_rel
            if out.is_file() and out.stat().st_mtime >= path.stat().st_mtime:
                already_done += 1
            else:
                todo.append(rel)
    return todo, already_done, failed


def _convert(task: tuple[Path, Path, str]) -> tuple[str, str | None]:
    """Worker: (in_dir, out_dir, rel) -> (rel, reason it failed or None)."""
    in_dir, out_dir, rel = task
    try:
        resample_file(in_dir / rel, (out_dir / rel).with_suffix(".wav"))
    except AudioError as error:
        return rel, error.reason
    except Exception as error:  # whatever breaks on one file must not lose the whole run
        return rel, f"{type(error).__name__}: {error}"
    return rel, None


def _run(tasks: list[tuple[Path, Path, str]], jobs: int):
    """Yield _convert's results, in this process for one job, else from a pool of workers."""
    if jobs == 1 or len(tasks) <= 1:
        yield from map(_convert, tasks)
        return
    with multiprocessing.Pool(min(jobs, len(tasks))) as pool:
        yield from pool.imap_unordered(_convert, tasks)


def _show(name: str) -> str:
    """A file name to print on one line: quoted when it holds a newline or other control."""
    return name if name.isprintable() else repr(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Resample every wav under IN_DIR to a 16 kHz 16-bit mono wav under OUT_DIR "
        "(same relative path) with soxr. The fallback of resample_wavs_to_16k.sh without SoX.",
        epilog="Exit status: 0 all converted or already done, 1 some failed, 2 usage error or "
        "an output folder it cannot write.",
    )
    parser.add_argument(
        "in_dir", type=Path, nargs="?", help="folder searched recursively for wav files"
    )
    parser.add_argument("out_dir", type=Path, nargs="?", help="output folder, separate from IN_DIR")
    parser.add_argument(
        "--jobs",
        "-j",
        type=at_least(1, most_workers()),
        default=os.cpu_count() or 1,
        help="worker processes",
    )
    parser.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        help="only read FILE (a wav) as the in-process path does: exit 1 with the reason when it "
        "is unusable (NaN samples, truncated); the SoX script asks this for float wavs",
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    if args.in_dir is None or args.out_dir is None:
        parser.error("expected IN_DIR and OUT_DIR")
    if not args.in_dir.is_dir():
        parser.error(f"input folder '{args.in_dir}' does not exist")
    in_dir, out_dir = args.in_dir.resolve(), args.out_dir.resolve()
    if in_dir == out_dir or in_dir in out_dir.parents or out_dir in in_dir.parents:
        parser.error(f"OUT_DIR '{args.out_dir}' must be separate from IN_DIR '{args.in_dir}'")

    # an unwritable OUT_DIR, say, is one line and status 2; finished files are kept
    return run_command(lambda: resample_dir(in_dir, out_dir, args.jobs), args.verbose)


def check(path: Path) -> int:
    """`--check FILE`: 0 when read_wav can use FILE, else 1 and the reason on stdout."""
    try:
        read_wav(path)
    except AudioError as error:
        print(error.reason)
        return 1
    return 0


def resample_dir(in_dir: Path, out_dir: Path, jobs: int) -> int:
    """Resample every wav under in_dir into out_dir; the exit status (0, or 1: some failed)."""
    start = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(f"*.wav{PART_SUFFIX}"):  # left by a killed run
        stale.unlink()
    todo, already_done, failed = plan(in_dir, out_dir)
    n_found = len(todo) + already_done + len(failed)
    print(
        f"resampling to {TARGET_RATE // 1000} kHz mono 16-bit with soxr: {n_found} audio files "
        f"in {in_dir}, {already_done} already done, {len(todo)} to convert with {jobs} "
        f"jobs -> {out_dir}",
        flush=True,
    )
    tasks = [(in_dir, out_dir, rel) for rel in todo]
    step = max(1, -(-len(tasks) // 20))  # about 20 progress lines per run
    converted = 0
    for done, (rel, reason) in enumerate(_run(tasks, jobs), start=1):
        if reason is None:
            converted += 1
        else:
            failed.append((rel, reason))
            print(f"FAILED {_show(rel)}: {reason}", file=sys.stderr, flush=True)
        if done % step == 0 or done == len(tasks):
            print(f"progress: {done}/{len(tasks)}", flush=True)

    print(
        f"summary: {converted} converted, {already_done} already done, {len(failed)} failed "
        f"({time.monotonic() - start:.0f} s) -> {out_dir}"
    )
    if failed:
        print("failed (skipped):")
        for rel, reason in failed:
            print(f"  {_show(rel)}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
