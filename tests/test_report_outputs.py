"""evaluate.py --report never replaces an input or a file of another kind, writes each image
whole or not at all, and builds its page from the numbers, not from files read back."""

import matplotlib.figure
import pytest

from predict.evaluate import main
from predict.report import REPORT_FILES, class_table, save_png, write_html
from predict.runfile import AtomicWriter, RunEntry

RUN_FILE = "r1;a;0.7;1\nr1;b;0.2;2\nr2;b;0.6;1\n"
TRUTH = "r1;a;\nr2;b;\n"


def evaluate(run, truth, *extra):
    """evaluate.py on RUN_FILE written to run and TRUTH to truth."""
    run.write_text(RUN_FILE)
    truth.write_text(TRUTH)
    main([str(arg) for arg in ("--run-file", run, "--truth", truth, *extra)])


def error_of(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate(*args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(REPORT_FILES))
def test_report_leaves_a_file_of_another_kind_alone(tmp_path, capsys, name):
    report = tmp_path / "report"
    report.mkdir()
    (report / name).write_text("my notes")
    err = error_of(capsys, tmp_path / "run.csv", tmp_path / "truth.csv", "--report", report)
    assert f"--report {report / name} exists and is not" in err
    assert (report / name).read_text() == "my notes"
    assert sorted(path.name for path in report.iterdir()) == [name]  # nothing else written


@pytest.mark.parametrize(
    "run, truth, json",
    [
        ("report/per_class.csv", "truth.csv", None),
        ("run.csv", "report/report.html", None),
        ("run.csv", "truth.csv", "report/pr_curves.png"),
    ],
)
def test_report_never_replaces_an_input_or_the_json(tmp_path, capsys, run, truth, json):
    (tmp_path / "report").mkdir()
    json_option = ["--json", tmp_path / json] if json else []
    err = error_of(
        capsys, tmp_path / run, tmp_path / truth, *json_option, "--report", tmp_path / "report"
    )
    assert "is also an input" in err
    assert (tmp_path / run).read_text() == RUN_FILE and (tmp_path / truth).read_text() == TRUTH
    assert not json or not (tmp_path / json).exists()


def test_report_of_an_earlier_run_is_replaced(tmp_path):
    for _ in range(2):
        evaluate(tmp_path / "run.csv", tmp_path / "truth.csv", "--report", tmp_path / "report")
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == sorted(REPORT_FILES)


def test_an_interrupted_image_leaves_the_old_one_and_no_part_file(tmp_path, monkeypatch):
    path = tmp_path / "pr_curves.png"
    path.write_bytes(b"the old image")

    def interrupted(figure, file, **kwargs):
        file.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_png(matplotlib.figure.Figure(), path)
    assert path.read_bytes() == b"the old image"
    assert list(tmp_path.iterdir()) == [path]


def test_page_needs_no_csv_beside_it(tmp_path):
    entries = [RunEntry("r1", "a", 0.7, 1), RunEntry("r1", "b", 0.2, 2)]
    table = class_table(entries, {"r1": "a"}, ["a", "b"])
    write_html(tmp_path / "report.html", table, {"MAP (foreground)": "1.0000"})
    page = (tmp_path / "report.html").read_text()
    assert "<td>a</td><td>1.0000</td>" in page  # per-class row of a: ap 1
    assert list(tmp_path.iterdir()) == [tmp_path / "report.html"]


def test_a_text_file_that_cannot_be_moved_into_place_leaves_no_part_file(tmp_path):
    """A folder where the file goes: the error names the file asked for, not the temporary
    one, and the temporary one is removed (it was left behind)."""
    path = tmp_path / "table.txt"
    path.mkdir()
    with pytest.raises(IsADirectoryError) as error, AtomicWriter(path) as out:
        out.file.write("a line\n")
    assert error.value.filename == str(path)
    assert list(tmp_path.iterdir()) == [path] and not list(path.iterdir())
