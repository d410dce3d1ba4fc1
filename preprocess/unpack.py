"""Unpack a downloaded zip or tar archive into a folder of its own, whatever its members say.

    python preprocess/unpack.py ARCHIVE OUT

doall.sh --url calls it. OUT must not exist: the members go into a new hidden folder beside
it, renamed to OUT once all are out, so an unpack cut short leaves no OUT and never mixes
with a folder that was there. Then ARCHIVE.unpacked names OUT (a line per folder it was
unpacked into, under a first line of its own): run again, it does nothing. A file of that
name that is not such a marker (someone's download, say) stops the unpack, unchanged. A
damaged archive (a checksum that does not match, the end missing) is an error, and nothing
is kept of it.
No member lands outside the folder, whatever its name or type: a tar's links, symbolic or
hard, are skipped, each named in a warning (a dataset needs none, and chains of them have
led tarfile's own checks astray: CVE-2025-4517); the other members pass tarfile's "data"
filter (an absolute name's leading / dropped, so it lands inside; no ../ paths, no devices,
no setuid bits, no owners kept), which stops the unpack at the first member it refuses;
zipfile strips leading slashes and ../ from names and writes a zip's link as a plain file.

Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import glob
import logging
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from preprocess.cli import command_parser, describe, run_command
from preprocess.paths import current_umask, is_own_file, write_text_atomically

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".unpacked"  # ARCHIVE.unpacked: the folder it was unpacked into
MARKER_HEADER = "# folders unpacked from this archive by preprocess/unpack.py\n"


class UnpackError(Exception):
    """An archive that cannot be unpacked, or a folder it cannot go into; the message says why."""


def marker_of(archive: Path) -> Path:
    """ARCHIVE.unpacked, beside the archive (never inside what it unpacks to)."""
    return Path(f"{archive}{MARKER_SUFFIX}")


def unpacked_folders(archive: Path) -> list[str]:
    """The folders archive was unpacked into here: its marker's lines. Raises UnpackError
    where a file at the marker's name is not one (a marker of the version before its header
    line, whose lines are all absolute paths, counts)."""
    marker = marker_of(archive)
    if not (marker.exists() or marker.is_symlink()):
        return []
    try:
        text = marker.read_text(encoding="utf-8") if is_own_file(marker) else None
    except (OSError, UnicodeDecodeError):
        text = None
    if text is not None and text.startswith(MARKER_HEADER):
        return text[len(MARKER_HEADER) :].splitlines()
    if text is not None and all(line.startswith("/") for line in text.splitlines()):
        return text.splitlines()
    raise UnpackError(
        f"{marker} is not the marker this command writes (another file of that name?): it is "
        "left as it is; move it away, or download into another --data-dir"
    )


def unpacked_into(folders: list[str], out: Path) -> bool:
    """Whether out is a folder that the archive was unpacked into by this command (among the
    folders of its marker, or with the .unpacked file that doall.sh put inside before this
    command existed)."""
    if out.is_symlink() or not out.is_dir():
        return False
    return str(out.resolve()) in folders or is_own_file(out / ".unpacked")


def without_links(member: tarfile.TarInfo, into: str) -> tarfile.TarInfo | None:
    """tarfile's extraction filter: a link member skipped (None), with a warning naming it;
    any other through the "data" filter."""
    if member.issym() or member.islnk():
        logger.warning("%s: a link (to %s) in the archive, skipped", member.name, member.linkname)
        return None
    return tarfile.data_filter(member, into)


def unpack(archive: Path, out: Path) -> bool:
    """Unpack archive (zip or tar, compressed or not) into the new folder out; False where it
    is there already. Every byte of a compressed tar is checked against its checksum (gzip's
    CRC, bzip2's, xz's): a damaged download is an error, not data."""
    folders = unpacked_folders(archive)  # first: a foreign file at the marker's name stops it
    if unpacked_into(folders, out):
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
    if not hasattr(tarfile, "data_filter"):  # added in 3.11.4, as a security fix
        raise UnpackError(f"Python {sys.version.split()[0]} cannot unpack safely: use 3.11.4+")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpacking-", dir=out.parent))
    try:
        if zipfile.is_zipfile(archive):  # zipfile checks each member's CRC as it extracts
            with zipfile.ZipFile(archive) as members:
                members.extractall(temporary)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as members:
                members.extractall(temporary, filter=without_links)
                while members.fileobj.read(2**20):  # to the end: its checksum is checked there
                    pass
        else:
            raise UnpackError(f"{archive} is not a zip or tar archive this can read (or damaged)")
        os.chmod(temporary, 0o777 & ~current_umask())  # mkdir's mode, not mkdtemp's 0700
        os.rename(temporary, out)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UnpackError(f"cannot unpack {archive} (damaged?): {error}") from None
    except OSError as error:  # gzip's BadGzipFile (a CRC), bz2's; a full disk
        raise UnpackError(f"cannot unpack {archive}: {describe(error)}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already where it became out
    folders.append(str(out.resolve()))
    write_text_atomically(
        marker_of(archive), MARKER_HEADER + "".join(f"{folder}\n" for folder in folders)
    )
    logger.info("unpacked %s into %s", archive, out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
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
