"""Write stored spectrogram chunks as PNG images, one folder per class, to look at the data.

    python train/generate_images.py --data work/train.h5 --out images --per-class 20

Each image is one chunk as the network sees it (frequency up, time right, darker = louder),
named MediaId_chunkindex.png, in OUT/<ClassId>/ (OUT/unlabelled/ for unlabelled chunks, or
_unlabelled/ where a class has that name). The first --per-class chunks of each class in file
order are written. Images are written whole (a new file renamed into place), a class folder
that is a link is refused, and so is a file at an image's name that is neither a PNG image
nor empty: nothing outside OUT, nor any other file in it, is written, whatever the data
holds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from predict.detections import OutputError, inside, safe_file_names
from predict.report import PNG_METADATA, is_own_png
from preprocess.cli import at_least, command_parser, run_command
from preprocess.dataset import DatasetError, open_dataset
from preprocess.paths import OutputPathError, check_output, replace_atomically

logger = logging.getLogger("generate_images")


def chunks_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted rows: the first per_class rows of each label (-1, unlabelled, counts as one).

    labels: (rows,) int. Returns int64 row indices.
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first_of_label = np.searchsorted(sorted_labels, sorted_labels)
    rank_in_label = np.arange(len(labels)) - first_of_label
    return np.sort(order[rank_in_label < per_class]).astype(np.int64)


def save_chunk_image(chunk: np.ndarray, path: Path) -> None:
    """chunk: (n_bins, frames) or (n_bins, frames, 1); low frequencies at the bottom. A new
    file replaces path: a link or a second name of another file there is never written."""
    image = np.flipud(np.squeeze(chunk, axis=-1) if chunk.ndim == 3 else chunk)
    replace_atomically(
        path,
        lambda file: plt.imsave(file, image, cmap="binary", format="png", metadata=PNG_METADATA),
        "wb",
    )


def generate_images(data: Path, out: Path, per_class: int) -> int:
    """Write the images; returns how many."""
    with open_dataset(data) as dataset:
        rows = chunks_per_class(dataset.label[...], per_class)
        class_ids = dataset["ClassId"].asstr()
        media_ids = dataset["MediaId"].asstr()
        chunk_index = dataset["chunk_index"]
        # ids from the data never reach a path as they are ('../x', '/etc', control characters)
        folder_names = safe_file_names([class_ids[row] for row in rows])
        file_names = safe_file_names([media_ids[row] for row in rows])
        unlabelled = "unlabelled"
        while unlabelled in folder_names.values():  # a class of that name keeps its folder
            unlabelled = f"_{unlabelled}"
        paths = []
        for row in rows:
            folder = out / (folder_names[class_ids[row]] if class_ids[row] else unlabelled)
            if folder.is_symlink():  # planted in OUT: the images would go where it leads
                raise OutputError(f"{folder} is a link: images go only into folders in {out}")
            paths.append(inside(folder, f"{file_names[media_ids[row]]}_{chunk_index[row]}.png"))
        for path in paths:  # before any is written
            check_output(
                path, own_kind=is_own_png, kind="an image this command wrote", option="an image"
            )
        for row, path in zip(rows, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_chunk_image(dataset.X[row], path)
    logger.info("%d images in %s", len(rows), out)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FILE.h5",
        help="chunk dataset written by preprocess/load_data.py",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the images (a subfolder per class)",
    )
    parser.add_argument(
        "--per-class", type=at_least(1), default=10, help="most images per class (default 10)"
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks of errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    def run() -> int:
        generate_images(args.data, args.out, args.per_class)
        return 0

    return run_command(run, args.verbose, (DatasetError, OutputError, OutputPathError))


if __name__ == "__main__":
    sys.exit(main())
