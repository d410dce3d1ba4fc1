"""Rewrite a chunk dataset with X under another compression (the values stay exactly equal).

    python preprocess/convert_dataset.py IN.h5 OUT.h5 [--compression blosc2-lz4]

For files written before blosc2-lz4 became load_data.py's default (gzip), whose rows decode
about three times slower, or to make a file that any HDF5 tool reads without hdf5plugin
(--compression gzip). OUT is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocess.cli import run_command
from preprocess.dataset import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DatasetError,
    convert_dataset,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a dataset written by load_data.py")
    parser.add_argument("target", type=Path, help="the converted dataset (must not exist)")
    parser.add_argument(
        "--compression",
        choices=list(COMPRESSIONS),
        default=DEFAULT_COMPRESSION,
        help=f"of X in the target (default {DEFAULT_COMPRESSION})",
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)

    def work() -> int:
        if args.target.exists() or args.target.is_symlink():  # a link too, even a broken one
            raise DatasetError(f"{args.target} exists; remove it or choose another name")
        convert_dataset(args.source, args.target, args.compression)
        print(f"{args.target}: X stored as {args.compression}")
        return 0

    return run_command(work, args.verbose, (DatasetError,))


if __name__ == "__main__":
    sys.exit(main())
