"""Unpack a downloaded zip or tar archive into a folder of its own, whatever its members say.

    python preprocess/unpack.py ARCHIVE OUT

doall.sh --url calls it. OUT must not exist: the members go into a new hidden folder beside
it, renamed to OUT once all are out, so an unpack cut short leaves no OUT and never mixes
with a folder that was there. Then ARCHIVE.unpacked names OUT: run again, it does nothing.
No member lands outside the folder, whatever its name or type: tar members pass tarfile's
"data" filter (no absolute or ../ paths, no links that lead out, no devices, no setuid bits,
no owners kept), which stops the unpack at the first member it refuses; zipfile strips
leading slashes and ../ from names and writes a zip's link as a plain file.

Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from preprocess.cli import run_command
from preprocess.paths import is_own_file, write_text_atomically

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".unpacked"  # ARCHIVE.unpacked: the folder it was unpacked into


class UnpackError(Exception):
    """An archive that cannot be unpacked, or a folder it cannot go into; the message says why."""


def unpacked_into(archive: Path, out: Path) -> bool:
    """Whether out is a folder that archive was unpacked into by this command (its marker, or
    the .unpacked file that doall.sh put inside before this command existed)."""
    if out.is_symlink() or not out.is_dir():
        return False
    marker = Path(f"{archive}{MARKER_SUFFIX}")
    if is_own_file(marker) and marker.read_text(encoding="utf-8") == str(out.resolve()):
        return True
    return is_own_file(out / ".unpacked")


def unpack(archive: Path, out: Path) -> bool:
    """Unpack archive (zip or tar, compressed or not) into the new folder out; False where it
    is there already."""
    if unpacked_into(archive, out):
        logger.info("%s already unpacked into %s", archive, out)
        return False
    if out.exists() or out.is_symlink():
        raise UnpackError(
            f"{out} exists but was not unpacked from {archive} here: move it away, or choose "
            "another --name (nothing was changed)"
        )
    for stale in out.parent.glob(f".{glob.escape(out.name)}.unpacking-*"):
        logger.warning("%s: left by an unpack that was cut short; delete it", stale)
    if not archive.is_file():
        raise UnpackError(f"{archive}: no such file")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpacking-", dir=out.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as members:
                members.extractall(temporary)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as members:
                members.extractall(temporary, filter="data")
        else:
            raise UnpackError(f"{archive} is not a zip or tar archive this can read (or damaged)")
        os.rename(temporary, out)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise UnpackError(f"cannot unpack {archive}: {error}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already where it became out
    write_text_atomically(Path(f"{archive}{MARKER_SUFFIX}"), str(out.resolve()))
    logger.info("unpacked %s into %s", archive, out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="a zip or tar archive (.tar.gz, .tgz, ...)")
    parser.add_argument("out", type=Path, help="the folder to make (must not exist)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> int:
        unpack(args.archive, args.out)
        return 0

    return run_command(run, args.verbose, (UnpackError,))


if __name__ == "__main__":
    sys.exit(main())
