"""Resample audio files to 16 kHz 16-bit mono wavs: with SoX when it is installed, else soxr.

    python -m preprocess.resample IN_DIR OUT_DIR [--jobs N] [--soxr] [--prune]

(preprocess/resample_wavs_to_16k.sh runs this). IN_DIR/<path>.<ext> becomes OUT_DIR/<path>.wav
for every audio file of preprocess/audio.AUDIO_SUFFIXES (wav, flac, mp3, ogg, opus, aiff, au,
caf, w64, wavpack; extension in any case, any rate, bit depth and channel count; channels are
averaged; links are followed, as `find -L` does). Prediction resamples its own list of files
with the same `resample_files`: the one implementation.
- Parallel: N files at once (default: all cores).
- --prune: then remove the outputs made here whose source is gone from IN_DIR (`pruned`), as
  doall.sh's work folder needs; without it they stay.
- Resumable: each output is written to <path>.wav.resample-part and renamed when complete,
  so an existing .wav is always whole. OUT_DIR/.sources.json records what each finished output was
  made from (its source's resolved path, size, and modification and status-change times in
  ns), and an output is skipped only while that record matches its source as it is now: an
  input changed since, replaced by another recording even of the same size with an older or
  the same modification time (cp -p, rsync -t, tar and unzip keep the original's; zip's is
  often 1980-01-01; the status-change time, which no one sets, is new), or another folder's
  file of the same name resampled into the same OUT_DIR, is converted again. Outputs keep
  the time they were written, so one converted again looks new to load_data. Outputs of an
  older version of this code (a record without ctime_ns) are converted once more.
  The record is written whole (temporary file, then rename) as the run goes, at its end,
  and when it is interrupted or fails; a damaged one is ignored with a warning naming it
  (every output is made again), and a file of that name that is not such a record (another
  program's) stops the run, unchanged. Each output's name also goes into OUT_DIR/
  .sources.pending before the file is put in place, so an output a kill kept out of the
  record is still known as this code's. Leftover .resample-part files of a killed run are
  deleted at the start. A file already at an output's name that this code did not make
  (named by neither; where the record cannot be read, one that is not a 16 kHz 16-bit mono
  wav) is left as it is, and its input fails, named: a user's file in a folder of theirs
  given as OUT_DIR stays.
- One run per OUT_DIR at a time: a run holds OUT_DIR/.resample.lock throughout, and a second one
  started meanwhile stops at once (`error: ...` naming the first one's pid, exit status 2)
  instead of deleting the first one's .resample-part files or moving them into place. A
  file at OUT_DIR/.resample.lock that holds anything but a process id stops it too, unchanged.
- Links in OUT_DIR are never written through: a file whose output folder is a link (or lies
  under one) leading outside OUT_DIR, or to another output's folder inside it, fails, named,
  and nothing is written there.
- A file that cannot be read is named with the reason and skipped; the rest still converts. So
  is a file SoX decodes only in part ("sox FAIL", e.g. a truncated flac), one that gives no
  samples, and a float wav with NaN or infinite samples (which SoX would turn into clicks).
  Two inputs that would give the same output (a.wav and a.flac) are reported the same way.
- OUT_DIR must not be IN_DIR, lie inside it or contain it, and an input that is (through a
  link) a file inside OUT_DIR fails, named: inputs are never overwritten.
Exit status: 0 when every file converted (or was already done), 1 when some failed (they are
listed at the end; run again after fixing them), 2 for a usage error or an output folder it
cannot write (`error: ...`, the traceback only with --verbose).

SoX options, and why:
  sox -D --no-glob IN -t wav -r 16000 -c 1 -b 16 -e signed-integer - >OUT.resample-part
- `-r 16000` with SoX's default `rate` effect (high quality, linear phase), as the 2016
  scripts' `sox in -r 16000 out` did.
- `-c 1` averages the channels; `-b 16 -e signed-integer` also turns 24-bit, 32-bit, float
  and 8-bit input into 16-bit PCM (the original kept the input's depth).
- `-D` (no dither): SoX would otherwise add random TPDF dither of about 1 LSB, different on
  every run, and turn digital silence into noise. Without it the output is plain rounding:
  repeatable to the bit, and the same (within a few LSB) as soxr's. The CNN sees no
  difference; the recordings' own noise floor is far above 1 LSB.
- No gain change (-G, --norm): the 2016 noise filter's thresholds depend on the int16 scale,
  so levels are kept. SoX clips the rare overshoot of the resampler and warns; the warning is
  shown with the file's name.
- `--no-glob`: SoX would otherwise expand wildcards in names such as `song[1].wav`.
- `-t wav -`: to its standard output, a file this code made (never a link someone put at that
  name); SoX seeks in it to write the header's lengths, as in a file it opens itself.

Without SoX on PATH (or with --soxr), soxr resamples instead: wavs as read_wav reads them,
and the other formats (and wavs scipy cannot parse: u-law, ADPCM) decoded by libsndfile (the
soundfile package: flac, ogg vorbis and opus, mp3, aiff, au, caf, w64) in blocks, so that a
long recording is never whole in memory; WavPack is reported as failed. With SoX, a file of a
format this SoX was built without (it says "no handler for": Ogg Opus, mp3 without
libsox-fmt-mp3) is converted this way too.
soxr's 'HQ' quality is the engine of SoX's default `rate` effect, and samples are rounded
without dither as `sox -D` does, so both agree within a few LSB. As with SoX, a flac that
does not decode to its end fails, and a truncated ogg or mp3 gives the audio up to the cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

import numpy as np

from preprocess.audio import (
    AUDIO_SUFFIXES,
    NO_LIBSNDFILE,
    NOT_READABLE_WAV,
    TRUNCATED,
    UNREADABLE_AUDIO,
    UNREADABLE_AUDIO_SUFFIXES,
    WAV_SUFFIXES,
    AudioError,
    decoded_blocks,
    header_rate_problem,
    is_wav_at,
    pcm16_mono_header,
    read_wav,
    stream_to_sample_rate,
    wav_data_cut_short,
)
from preprocess.cli import at_least, command_parser, describe, most_workers, run_command
from preprocess.params import SpectrogramParams
from preprocess.paths import (
    NOT_REGULAR,
    OutputPathError,
    RunLocked,
    exclusive_run,
    files_under,
    first_names,
    has_one_name,
    is_mac_copy,
    is_own_file,
    remove_partials,
    shown_name,
    write_text_atomically,
)

TARGET_RATE = SpectrogramParams().sample_rate
BLOCK = 2**18  # samples resampled and written at a time without SoX
SOX_ONLY_SUFFIXES = {".wv"}  # WavPack: libsndfile, the fallback's decoder, does not read it
SOX_NO_HANDLER = "no handler for"  # SoX's words for a format it was built without
SOX_NOT_RIFF = "RIFF header not found"  # SoX's words for a .wav of another format (mp3)
PART_SUFFIX = ".resample-part"  # a file being written; never a result (nor a download's)
SOURCES_NAME = ".sources.json"  # in the output folder: what each finished output was made from
SOURCES_FORMAT = "preprocess/resample.py sources, version 2"
# version 1 lacked ctime_ns: its outputs are converted again, without a warning
OLDER_SOURCES_FORMATS = ("preprocess/resample.py sources, version 1",)
RECORD_FIELDS = {"source": str, "size": int, "mtime_ns": int, "ctime_ns": int}
LOCK_NAME = ".resample.lock"  # in the output folder, held by the run writing it (a name of
# its own: a folder of the user's may hold another tool's .lock)
PENDING_NAME = ".sources.pending"  # in the output folder: outputs put in place, not yet recorded
# the journal's first line: only a file that starts with it is this code's to add to or delete
PENDING_HEADER = json.dumps({"format": "preprocess/resample.py pending outputs, version 1"}) + "\n"
JOURNAL_MADE = threading.Lock()  # held while a converting thread makes the journal


@dataclass(frozen=True)
class Conversion:
    """One audio file to resample into a 16 kHz wav."""

    source: Path
    target: Path
    name: str  # how messages name it: its path in the input folder, or the file as given


def to_int16(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """Round float samples on the int16 scale (n,) to int16 (n,), clipping the overshoot;
    returns them and how many samples were clipped."""
    rounded = np.rint(samples)
    clipped = 0
    if len(rounded) and (rounded.max() > 32767 or rounded.min() < -32768):
        clipped = int(np.count_nonzero((rounded > 32767) | (rounded < -32768)))
    return np.clip(rounded, -32768, 32767).astype(np.int16), clipped


def sox_resample(source: Path, part: Path) -> str:
    """Write source as a 16 kHz 16-bit mono wav at part with SoX; returns SoX's warnings ('' for
    none). Raises AudioError when the result must not be used."""
    source = source.absolute()  # a relative name may begin with '-'
    if problem := header_rate_problem(source):  # SoX would write 16,000 samples for each
        raise AudioError(source, problem)
    command = ["sox", "-D", "--no-glob", source, "-t", "wav", "-r", str(TARGET_RATE), "-c", "1"]
    command += ["-b", "16", "-e", "signed-integer", "-"]
    # SoX writes to its standard output, a file made here exclusively: given part's name, it
    # would follow a link put there meanwhile by someone who can write into the folder. (A
    # file is seekable: SoX writes the header's lengths at the end, the same bytes as by name.)
    with open(
        os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb"
    ) as out:
        sox = subprocess.run(
            command, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace"
        )
    message = "; ".join(sox.stderr.strip().splitlines())
    if sox.returncode != 0:
        raise AudioError(source, message or "SoX failed without a message")
    # SoX says "sox FAIL" about a damaged file (a truncated flac) yet exits 0 with a short or
    # empty result; and it turns NaN samples of a float wav into full-scale clicks without a
    # word, so a float wav is read as the in-process path reads it, which refuses them.
    if "sox FAIL" in message:
        raise AudioError(source, message)
    # a wav whose header announces more data than it holds: SoX warns and writes what is
    # there, where read_wav (the path without SoX) refuses it; a wav written to a pipe warns
    # too, and announces no size (all it holds is converted, as read_wav reads it)
    premature_end = "Premature EOF" in message and source.suffix.lower() in WAV_SUFFIXES
    if premature_end and wav_data_cut_short(source):
        raise AudioError(source, TRUNCATED)
    if pcm16_mono_header(part)[1] == 0:
        raise AudioError(source, "no samples")
    if source.suffix.lower() in WAV_SUFFIXES and is_float_wav(source):
        read_wav(source)
    return message


def is_float_wav(path: Path) -> bool:
    """What SoX says of the file's encoding: floating point."""
    encoding = subprocess.run(
        ["sox", "--i", "-e", path], capture_output=True, text=True, errors="replace"
    ).stdout
    return encoding.startswith("Floating Point")


def soxr_input(source: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(sample_rate, blocks of mono samples on the int16 scale) of source for soxr: a wav as
    read_wav reads it (whole, in blocks); any other format, and a wav scipy cannot parse (an
    encoding it does not know, u-law or ADPCM; another format named .wav), decoded by
    libsndfile in blocks (`decoded_blocks`). Raises AudioError: for a wav that neither reads,
    what read_wav said (unless libsndfile is missing: then that); for a damaged wav scipy
    parses (truncated, NaN samples), what read_wav said, which libsndfile would not mend."""
    if source.suffix.lower() not in WAV_SUFFIXES:
        return decoded_blocks(source)
    try:
        samples, rate = read_wav(source)
    except AudioError as error:
        if not error.reason.startswith(NOT_READABLE_WAV):
            raise
        try:
            rate, blocks = decoded_blocks(source)
        except AudioError as second:
            if second.reason.startswith(NO_LIBSNDFILE):
                raise
            raise error from None  # what the wav reader said: the clearer reason
        if wav_data_cut_short(source):  # refused, as read_wav refuses a PCM wav cut short
            raise AudioError(source, TRUNCATED) from None
        return rate, blocks
    # in blocks too: soxr's stream takes a long recording at once at half the speed
    return rate, (samples[start : start + BLOCK] for start in range(0, len(samples), BLOCK))


def soxr_resample(source: Path, part: Path) -> str:
    """Write source (`soxr_input`) as a 16 kHz 16-bit mono wav at part with soxr, resampled
    block by block as it comes (soxr's stream: the same samples as at once); returns a
    warning where samples were clipped (as SoX warns), else ''. Raises AudioError for a file
    that cannot be read, or gives no samples (the caller removes part)."""
    rate, blocks = soxr_input(source)
    written = clipped = 0
    # created exclusively: convert() unlinked part, and a link put there since is not followed
    with open(part, "xb") as file, wave.open(file, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(TARGET_RATE)
        for samples in stream_to_sample_rate(blocks, rate, TARGET_RATE):
            pcm, n_clipped = to_int16(samples)
            out.writeframes(pcm.astype("<i2", copy=False).tobytes())
            written += len(pcm)
            clipped += n_clipped
    if written == 0:
        raise AudioError(source, "contains no samples")
    return f"{clipped} samples clipped at full scale" if clipped else ""


def resample_one(source: Path, part: Path, sox: bool) -> str:
    """Write source as a 16 kHz 16-bit mono wav at part (which does not exist): with SoX when
    sox, else soxr (`soxr_resample`), and with soxr too where this SoX has no handler for the
    format (Ogg Opus; mp3 without libsox-fmt-mp3) or where a .wav holds another format (an
    mp3 saved as .wav: SoX goes by the name, libsndfile by the content). Returns the warnings
    (SoX's, of clipping)."""
    if not sox:
        return soxr_resample(source, part)
    try:
        return sox_resample(source, part)
    except AudioError as error:
        if SOX_NO_HANDLER not in error.reason and SOX_NOT_RIFF not in error.reason:
            raise
    part.unlink(missing_ok=True)
    return soxr_resample(source, part)


def why_not_written(conversion: Conversion, into: Path) -> str | None:
    """Why conversion must not be made: the target's folder, links followed, is not where
    its path inside into (the output folder) says, as when a link planted in the output tree
    leads elsewhere, outside or to another output's folder (whose file of the same name it
    would replace); or the source, links followed, is inside into (a link in the input
    folder leading into the output folder), where resampling would overwrite it. None when
    neither is so."""
    target = conversion.target
    try:
        root, folder = into.resolve(), target.parent.resolve()  # what is missing stays as is
        source = conversion.source.resolve()
    except (OSError, RuntimeError) as error:  # a link loop
        return f"its output folder {target.parent} or its source cannot be resolved: {error}"
    if source.is_relative_to(root):
        return f"it is (through a link) {source}, inside the output folder {into}: not written"
    try:
        expected = root / target.parent.relative_to(into)
    except ValueError:  # a target named another way (relative, through a link): inside, at least
        expected = folder if folder.is_relative_to(root) else None
    if folder == expected:
        return None
    where = "outside" if not folder.is_relative_to(root) else "elsewhere in"
    return f"its output folder {target.parent} leads {where} {into} (to {folder}): not written"


def why_not_replaced(target: Path, made_here: bool, record_readable: bool) -> str | None:
    """Why a file at target must stay: one this code did not make, such as a user's file in
    a folder of their own given as OUT_DIR. made_here: the output folder's record or its
    journal of pending outputs (`read_pending`) names it. Where the folder's record could
    not be read (damaged, or of an older version: record_readable False), a 16 kHz 16-bit
    mono wav counts as made here. None where there is none, or it may be replaced."""
    if made_here or not (target.exists() or target.is_symlink()):
        return None
    if not record_readable and is_own_file(target) and is_wav_at(target, TARGET_RATE):
        return None
    return (
        f"{target} exists and was not made by resampling into this folder (its {SOURCES_NAME} "
        "does not name it): not replaced (delete it to convert again)"
    )


def made_from(source: Path) -> dict:
    """The record of an output made from source as it is now: its resolved path, size,
    modification time and status-change time (which every write, and every new file, sets
    to the clock, where a copy may keep the modification time). An output is done while its
    record and its source's agree."""
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def convert(conversion: Conversion, sox: bool, into: Path) -> tuple[str | None, str, dict]:
    """Write conversion.target, atomically, inside the output folder into: (the reason it
    failed or None, the warnings (SoX's, or of clipping), the record of the source it was
    made from)."""
    target = conversion.target
    part = target.with_name(target.name + PART_SUFFIX)
    # `plan` checked this too, but a link may have been planted since; checked before mkdir,
    # which would follow the link, and before the try, whose cleanup would remove a file
    # found at part
    if reason := why_not_written(conversion, into):
        return reason, "", {}
    try:
        # the source's record, taken before reading it: a change meanwhile is seen by the
        # next run
        record = made_from(conversion.source)
        target.parent.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)  # a killed run's, or a planted link: never written through
        warnings = resample_one(conversion.source, part, sox)
        note_pending(into, output_key(target, into))
        os.replace(part, target)
        return None, warnings, record
    except AudioError as error:
        return error.reason, "", {}
    except OutputPathError:  # the output folder's journal: every file would fail, so it stops
        raise
    except Exception as error:  # whatever breaks on one file must not lose the whole run
        return f"{type(error).__name__}: {error}", "", {}
    finally:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)


def output_key(target: Path, into: Path) -> str:
    """target's name in the record of the output folder into: its path inside into."""
    try:
        return target.relative_to(into).as_posix()
    except ValueError:  # written another way (relative, through a link): its resolved folder
        folder = target.parent.resolve().relative_to(into.resolve())
        return (folder / target.name).as_posix()


def check_journal(into: Path) -> None:
    """OutputPathError unless the journal of the output folder into (PENDING_NAME) is absent
    or this code's: a regular file of its own that starts with PENDING_HEADER. A link, a pipe
    (opening it would wait), a second name of another file, or a file of that name that
    another program wrote (whose names would be taken for outputs made here) is never
    written, nor trusted."""
    path = into / PENDING_NAME
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if not has_one_name(status):
        raise OutputPathError(
            f"{path} is not a file of its own (a link, a pipe, a hard link?): it is left as it "
            "is; move it away, or choose another output folder"
        )
    if is_own_journal(path) or given_a_header(path, into):
        return
    raise OutputPathError(
        f"{path} is not a journal this code wrote (it lacks the first line it writes): it "
        "is left as it is; move it away, or choose another output folder"
    )


def given_a_header(path: Path, into: Path) -> bool:
    """Whether path is a journal of this code's version before PENDING_HEADER, which is then
    given it: empty, or a JSON string a line, the last one maybe cut short by a kill (but
    begun as one), in a folder whose record is this code's (`read_sources` refuses any
    other's). Any other text, and any file in a folder without a record, is never taken for
    one."""
    if not (into / SOURCES_NAME).is_file():
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    lines = text.splitlines()
    whole = lines if text.endswith("\n") else lines[:-1]
    if len(whole) < len(lines) and not lines[-1].startswith('"'):
        return False
    for line in whole:
        try:
            if not isinstance(json.loads(line), str):
                return False
        except (ValueError, RecursionError):
            return False
    write_text_atomically(path, PENDING_HEADER + "".join(f"{line}\n" for line in whole))
    return True


def is_own_journal(path: Path) -> bool:
    """Whether path is a regular file that starts with PENDING_HEADER."""
    if not is_own_file(path):
        return False
    with contextlib.suppress(OSError), open(path, "rb") as file:
        return file.read(len(PENDING_HEADER)) == PENDING_HEADER.encode()
    return False


def note_pending(into: Path, *keys: str) -> None:
    """Add output keys to the journal of the output folder into (PENDING_NAME, a JSON string
    a line) before their files are put in place, or their record entries dropped: a run
    killed before it records them leaves them known as this code's. A journal is made whole
    with its first line (PENDING_HEADER). Raises OutputPathError for a journal that is not a
    file of its own (`check_journal`), never written."""
    path = into / PENDING_NAME
    with JOURNAL_MADE:  # by one of the threads converting at once
        if not os.path.lexists(path):  # whole, with its first line: a kill leaves no other
            write_text_atomically(path, PENDING_HEADER)
        elif not is_own_journal(path):  # put there since `check_journal`
            raise OutputPathError(f"{path} is not a journal this code wrote: not written")
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # a link; a pipe without a reader
            raise OutputPathError(f"{path} is not a file of its own: not written") from None
        raise OutputPathError(f"{path}: cannot be written ({describe(error)})") from None
    with os.fdopen(descriptor, "ab") as file:  # whole lines: a short write is tried again
        status = os.fstat(descriptor)
        if not has_one_name(status):
            raise OutputPathError(f"{path} is not a file of its own (a hard link?): not written")
        file.write(journal_text(keys).encode())


def journal_text(keys: Iterable[str]) -> str:
    """Output keys as the journal holds them: a JSON string a line (a name may hold any
    character, a line break too)."""
    return "".join(f"{json.dumps(key)}\n" for key in keys)


def read_pending(into: Path) -> set[str]:
    """The output keys of the journal of the output folder into (`note_pending`); a line cut
    short by a kill is left out. Empty where there is none or it is not this code's."""
    path = into / PENDING_NAME
    if not is_own_journal(path):
        return set()
    keys = set()
    text = path.read_text(encoding="utf-8", errors="replace")
    for line in text.removeprefix(PENDING_HEADER).splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(key := json.loads(line), str):
                keys.add(key)
    return keys


def read_sources(into: Path) -> tuple[dict[str, dict], bool]:
    """The record of the output folder into: ({output's path inside into: `made_from` of its
    source}, whether it could be read). Empty and True when there is none; empty and False
    when it is of an older version, or, with a warning naming it, damaged (every output is
    then made again). A file of that name that is not this code's record at all (not JSON,
    another program's) raises OutputPathError: it is never replaced."""
    path = into / SOURCES_NAME
    if not path.exists() and not path.is_symlink():
        return {}, True
    try:
        if not path.is_file():  # reading a pipe would wait forever
            raise ValueError(NOT_REGULAR)
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("format") not in (
            SOURCES_FORMAT,
            *OLDER_SOURCES_FORMATS,
        ):
            raise ValueError("not a record written by preprocess/resample.py")
    except (OSError, ValueError, RecursionError) as error:
        raise OutputPathError(
            f"{path} is not a record of preprocess/resample.py ({describe(error)}): it is left "
            "as it is; move it away, or choose another output folder"
        ) from None
    if document["format"] in OLDER_SOURCES_FORMATS:
        return {}, False
    outputs = document.get("outputs")
    if problem := damage_of(outputs):
        print(
            f"warning: {path} is damaged ({problem}): ignored, so every output is converted again",
            file=sys.stderr,
            flush=True,
        )
        return {}, False
    return outputs, True


def damage_of(outputs: object) -> str | None:
    """What is wrong with a record's "outputs", or None: {name: `made_from` record}."""
    if not isinstance(outputs, dict):
        return "no outputs"
    for name, record in outputs.items():
        if not (
            isinstance(record, dict)
            and record.keys() == RECORD_FIELDS.keys()
            and all(type(record[key]) is kind for key, kind in RECORD_FIELDS.items())
        ):
            return f"a malformed entry for {shown_name(name)}"
    return None


def write_sources(into: Path, sources: Mapping[str, dict]) -> None:
    """Write the record of the output folder into, whole or not at all."""
    document = {"format": SOURCES_FORMAT, "outputs": dict(sorted(sources.items()))}
    write_text_atomically(into / SOURCES_NAME, json.dumps(document, indent=1) + "\n")


def is_done(conversion: Conversion, sources: Mapping[str, dict], into: Path) -> bool:
    """Whether conversion.target, in the output folder into, was made from its source as it
    is now: it is a regular file and its record in sources (`read_sources`) is the source's
    `made_from`. An output of a record of an older version (without ctime_ns) is made
    again."""
    target = conversion.target
    if not is_own_file(target):
        return False
    recorded = sources.get(output_key(target, into))
    try:
        return recorded is not None and recorded == made_from(conversion.source)
    except (OSError, RuntimeError):  # gone meanwhile; a link loop
        return False


def plan(
    conversions: list[Conversion],
    sox: bool,
    into: Path,
    sources: Mapping[str, dict],
    record_readable: bool = True,
    pending: Set[str] = frozenset(),
) -> tuple[list[Conversion], int, list]:
    """(to convert, number already done, [(name, reason)] that fail here): a conversion is done
    when its target's record in sources matches its source (`is_done`); one whose target lies
    outside into (the output folder), through a link, or is a file this code did not make
    (`why_not_replaced`, with record_readable and the pending keys), fails; without SoX,
    WavPack does not convert."""
    todo, failed, already_done = [], [], 0
    for conversion in conversions:
        key = output_key(conversion.target, into)
        if reason := why_not_written(conversion, into) or why_not_replaced(
            conversion.target, key in sources or key in pending, record_readable
        ):
            failed.append((conversion.name, reason))
        elif not sox and conversion.source.suffix.lower() in SOX_ONLY_SUFFIXES:
            failed.append((conversion.name, "WavPack: only SoX converts this format"))
        elif is_done(conversion, sources, into):
            already_done += 1
        else:
            todo.append(conversion)
    return todo, already_done, failed


def resample_files(
    conversions: list[Conversion],
    jobs: int,
    into: Path,
    soxr: bool = False,
    refused: Sequence[tuple[str, str]] = (),
    out: TextIO | None = None,
) -> list[tuple[str, str]]:
    """Resample what is not done yet, `jobs` files at a time, with SoX when it is on PATH
    (unless soxr), else soxr. Progress and a summary go to out (default stdout; into: the
    output folder they name), failures and SoX's warnings to stderr. refused: [(name, reason)]
    of inputs refused before, for the summary. Returns [(name, why it failed)], the refused
    ones included."""
    out = out or sys.stdout
    sox = not soxr and shutil.which("sox") is not None
    if not sox and not soxr:
        print(
            "note: SoX is not installed; using the soxr fallback (formats other than wav "
            "decoded by libsndfile, WavPack not at all; for SoX: sudo apt-get install sox "
            "libsox-fmt-all)",
            file=sys.stderr,
        )
    start = time.monotonic()
    sources, record_readable = read_sources(into)
    check_journal(into)
    todo, already_done, failed = plan(
        conversions, sox, into, sources, record_readable, read_pending(into)
    )
    failed = [*refused, *failed]
    stale = [key for key in (output_key(c.target, into) for c in todo) if key in sources]
    if stale:  # still known as this code's should their conversion fail or be cut short
        note_pending(into, *stale)
    for key in stale:  # a record is only ever of a finished output
        del sources[key]
    changed = bool(stale)
    print(
        f"resampling to {TARGET_RATE // 1000} kHz mono 16-bit with {'SoX' if sox else 'soxr'}: "
        f"{len(conversions) + len(refused)} audio files, {already_done} already done, "
        f"{len(todo)} to convert with {jobs} jobs -> {into}",
        file=out,
        flush=True,
    )
    step = max(1, -(-len(todo) // 20))  # about 20 progress lines per run
    converted = 0
    running, seen = {}, set()
    pool = ThreadPoolExecutor(jobs)  # the work is in SoX's processes, or in soxr without the GIL
    try:
        running = {pool.submit(convert, conversion, sox, into): conversion for conversion in todo}
        for done, future in enumerate(as_completed(running), start=1):
            seen.add(future)
            conversion, name = running[future], running[future].name
            reason, warnings, record = future.result()
            if reason:
                failed.append((name, reason))
                print(f"FAILED {shown_name(name)}: {reason}", file=sys.stderr, flush=True)
            else:
                converted += 1
                sources[output_key(conversion.target, into)] = record
                changed = True
                if warnings:
                    print(f"warning: {shown_name(name)}: {warnings}", file=sys.stderr, flush=True)
            if done % step == 0 or done == len(todo):
                print(f"progress: {done}/{len(todo)}", file=out, flush=True)
                if changed:  # saved as the run goes too: a kill -9 loses little
                    write_sources(into, sources)
                    changed = False
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, the files not yet started stay undone
        for future, conversion in running.items():  # finished while the run was stopping
            if future in seen or not future.done() or future.cancelled() or future.exception():
                continue
            reason, _, record = future.result()
            if reason is None:
                sources[output_key(conversion.target, into)] = record
                changed = True
        if changed:
            write_sources(into, sources)
        journal = into / PENDING_NAME
        if is_own_journal(journal):  # not a file put there since the run began
            if unrecorded := read_pending(into) - sources.keys():  # failed since, or a kill's
                write_text_atomically(journal, PENDING_HEADER + journal_text(sorted(unrecorded)))
            else:
                journal.unlink()

    print(
        f"summary: {converted} converted, {already_done} already done, {len(failed)} failed "
        f"({time.monotonic() - start:.0f} s) -> {into}",
        file=out,
    )
    if failed:
        print("failed (skipped):", file=out)
        for name, reason in failed:
            print(f"  {shown_name(name)}: {reason}", file=out)
    return failed


def folder_conversions(
    in_dir: Path, out_dir: Path
) -> tuple[list[Conversion], list[tuple[str, str]], list[str]]:
    """A conversion for every audio file under in_dir (sorted by path; links followed, each
    folder once) to the same path under out_dir with the extension .wav, named by its path in
    in_dir; [(name, reason)] for the audio names that cannot convert: a second input that
    would give the same output (a.wav and a.WAV), one that is not a regular file, and audio of
    a format no decoder here reads (m4a, say); and the names of the files named like audio
    that a Mac writes beside files (`._x.wav`, a zip's __MACOSX copies: `is_mac_copy`), left
    alone. (Other hidden files convert: metadata may name them; class folders skip them.)"""
    suffixes = AUDIO_SUFFIXES | UNREADABLE_AUDIO_SUFFIXES
    found = [path for path in files_under(in_dir) if path.suffix.lower() in suffixes]
    conversions, refused, mac_copies, source_of = [], [], [], {}
    for name, path in sorted((path.relative_to(in_dir).as_posix(), path) for path in found):
        if is_mac_copy(PurePosixPath(name)):
            mac_copies.append(name)
            continue
        if path.suffix.lower() in UNREADABLE_AUDIO_SUFFIXES:
            refused.append((name, UNREADABLE_AUDIO))
            continue
        if not path.is_file():  # reading a pipe would wait for a writer forever
            refused.append((name, NOT_REGULAR))
            continue
        output = Path(name).with_suffix(".wav").as_posix()
        if output in source_of:
            refused.append((name, f"would also become {output}, made from {source_of[output]}"))
        else:
            source_of[output] = name
            conversions.append(Conversion(path, out_dir / output, name))
    return conversions, refused, mac_copies


def pruned(in_dir: Path, into: Path, conversions: list[Conversion]) -> list[str]:
    """Remove the outputs this code made in the output folder into (its record names them)
    whose source under in_dir is gone (deleted, moved), so that into holds what in_dir holds
    now, as doall.sh's work folder must (resample.py --prune). Nothing where in_dir gave no
    file at all (conversions empty: an unmounted disk?). A record entry is acted on only
    where its key is a wav's path as this code writes it and its source, `os.lstat`, does
    not exist (an unreadable folder is not gone); only a regular file of its own at that
    path, its folder where the path says (no link on the way), is removed. Returns the keys
    of the files removed (`output_key`)."""
    sources, readable = read_sources(into)
    if not readable or not conversions:
        return []
    gone = {key for key, record in sources.items() if source_is_gone(record["source"], in_dir)}
    removed = []
    for key in sorted(gone):
        name = PurePosixPath(key)
        if (
            name.as_posix() != key
            or name.is_absolute()
            or ".." in name.parts
            or name.suffix != ".wav"
        ):
            continue
        target = into / name
        try:
            where = target.parent.resolve()
        except (OSError, RuntimeError):  # a link loop
            continue
        if where == into / name.parent and is_own_file(target):
            target.unlink()  # before its record: a kill meanwhile leaves a name to drop again
            removed.append(key)
    if gone:
        write_sources(into, {key: r for key, r in sources.items() if key not in gone})
    return removed


def source_is_gone(source: str, in_dir: Path) -> bool:
    """Whether a recorded source path lies under in_dir (as written, `..` resolved) and is no
    longer there: os.lstat says it does not exist, not that it cannot be read."""
    path = Path(os.path.normpath(source))
    if not path.is_relative_to(in_dir):
        return False
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def resample_dir(
    in_dir: Path, out_dir: Path, jobs: int, soxr: bool = False, prune: bool = False
) -> int:
    """Resample every audio file under in_dir into out_dir (both resolved, separate), holding
    out_dir's lock throughout (RunLocked while another run holds it); with prune, then remove
    the outputs of sources gone (`pruned`). The exit status: 0, or 1 when some failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_run(out_dir / LOCK_NAME, f"the output folder {out_dir}"):
        # a killed run's leftovers, never a result: only now, as no other run is writing them
        for stale in out_dir.rglob(f"*.wav{PART_SUFFIX}"):  # a name only this code gives
            if stale.is_symlink() or stale.is_file():
                stale.unlink()
        for record in (SOURCES_NAME, PENDING_NAME):
            remove_partials(out_dir / record)
        conversions, collisions, mac_copies = folder_conversions(in_dir, out_dir)
        if mac_copies:
            shown = first_names([shown_name(name) for name in mac_copies], 3)
            print(f"not converted: {len(mac_copies)} Mac resource fork(s), no audio ({shown})")
        failed = resample_files(conversions, jobs, out_dir, soxr, collisions)
        if prune and (removed := pruned(in_dir, out_dir, conversions)):
            shown = first_names([shown_name(key) for key in removed], 3)
            print(f"pruned: {len(removed)} output(s) of sources gone ({shown})")
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("in_dir", type=Path, help="folder searched recursively for audio files")
    parser.add_argument("out_dir", type=Path, help="output folder, separate from IN_DIR")
    parser.add_argument(
        "--jobs",
        "-j",
        type=at_least(1, most_workers()),
        default=os.cpu_count() or 1,
        help="files converted at once (default: all cores)",
    )
    parser.add_argument(
        "--soxr",
        action="store_true",
        help="resample with soxr even when SoX is installed (no WavPack)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="then remove the outputs made here whose source is gone from IN_DIR (deleted, "
        "moved), so OUT_DIR mirrors IN_DIR (doall.sh's work folder); without it they stay (the "
        "originals may be deleted once converted)",
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    if not args.in_dir.is_dir():
        parser.error(f"input folder '{args.in_dir}' does not exist")
    in_dir, out_dir = args.in_dir.resolve(), args.out_dir.resolve()
    if in_dir == out_dir or in_dir in out_dir.parents or out_dir in in_dir.parents:
        parser.error(f"OUT_DIR '{args.out_dir}' must be separate from IN_DIR '{args.in_dir}'")

    # an unwritable OUT_DIR, say, is one line and status 2; finished files are kept
    return run_command(
        lambda: resample_dir(in_dir, out_dir, args.jobs, args.soxr, args.prune),
        args.verbose,
        (RunLocked, OutputPathError),
    )


if __name__ == "__main__":
    sys.exit(main())
