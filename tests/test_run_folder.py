"""Training touches no file it did not write: --out must be new, empty or a run of its own,
the backup clean-up removes only Keras's files, trainings sharing a runs table all get their
row, and an .xlsx beside the table that is not a runs table stays as it was."""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from preprocess.dataset import open_dataset
from tests.helpers import PARAMS, folder_contents, write_easy_dataset
from train import run_folder, train_model
from train.callbacks import BACKUP_FILES, remove_backup, training_callbacks
from train.data import TrainError
from train.log import append_run, plot_history
from train.run_folder import CONFIG_MARKS, changed_settings, start_run_dir

ROOT = Path(__file__).resolve().parents[1]


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), "--batch-size", "8",
            "--val-fraction", "0.25", "--test-fraction", "0.25", *extra]  # fmt: skip


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


RUN_CONFIG = json.dumps({"epochs": 1, **{mark: "" for mark in CONFIG_MARKS}})


# ---------------------------------------------------------------------------------------------
# Which folders training writes into


@pytest.mark.parametrize(
    "files",
    [
        {"backup/notes.txt": "mine"},
        {"config.json": '{"theme": "dark"}\n', "model.py": "print('mine')\n"},
        {"history.csv": "day,steps\n1,4000\n", "notes.txt": "mine"},
    ],
    ids=["backup folder", "config and model", "history"],
)
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(
    files, easy_data, tiny_model, tmp_path, capsys
):
    """As `--out .` in a home or project folder: with --resume (as doall.sh runs it) the
    trainer used to take it for a run that never finished an epoch and start it again."""
    out = tmp_path / "home"
    write_files(out, files)
    before = folder_contents(tmp_path)
    args = train_args(easy_data, tiny_model, out, "--epochs", "1", "--resume")
    assert train_model.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out} is not empty and holds no training run")
    assert "Traceback" not in error
    assert folder_contents(tmp_path) == before  # no runs table, no run lock either


def test_a_new_split_keeps_the_clips_of_one_source_on_one_side(tmp_path):
    """Recordings stored with one group (clips of one source recording) are drawn together."""
    write_easy_dataset(tmp_path / "data.h5", per_class=12, clips_per_source=3)
    args = argparse.Namespace(val_fraction=0.25, test_fraction=0.25, seed=0)
    with open_dataset(tmp_path / "data.h5") as dataset:
        split = run_folder.load_or_make_split(tmp_path / "run", dataset, args, resuming=False)
        groups, labels = dataset.recordings["group"], dataset.recordings["label"]
    sides = [set(groups[split[name]]) for name in ("train", "val", "test")]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(len(split[name]) for name in split) == np.count_nonzero(labels >= 0)


def test_new_empty_and_own_folders_are_taken(tmp_path):
    assert start_run_dir(tmp_path / "new", resume=True) is False
    assert start_run_dir(tmp_path, resume=False) is False
    left = tmp_path / "start killed while writing config.json"
    write_files(left, {".lock": "123\n", ".config.json.123-0a1b2c3d.partial": '{"epo'})
    assert start_run_dir(left, resume=True) is False

    run = tmp_path / "run"
    write_files(run, {"config.json": RUN_CONFIG, "notes.txt": "the user's, beside the run"})
    assert start_run_dir(run, resume=True) is False  # no epoch finished: started again
    write_files(run, {"history.csv": "epoch,loss\n0,1.5\n"})
    assert start_run_dir(run, resume=True) is True
    with pytest.raises(TrainError, match="already holds a training run: add --resume"):
        start_run_dir(run, resume=False)


@pytest.mark.parametrize(
    "link",
    ["history.csv", ".best_val_map.partial.keras", "backup/latest.weights.h5", "logs/train"],
)
def test_a_run_folder_holding_a_link_is_refused(tmp_path, link):
    """A run folder received from someone else, with a link planted where training writes."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("the user's")
    run = tmp_path / "run"
    write_files(run, {"config.json": RUN_CONFIG, "history.csv": "epoch,loss\n0,1.5\n"})
    (run / link).unlink(missing_ok=True)
    (run / link).parent.mkdir(parents=True, exist_ok=True)
    (run / link).symlink_to(victim if link == "logs/train" else victim / "file")
    with pytest.raises(TrainError, match=f"holds a link, {run / link}"):
        start_run_dir(run, resume=True)
    assert (victim / "file").read_text() == "the user's"
    (tmp_path / "on another disk").mkdir()
    linked_run = tmp_path / "linked run"
    linked_run.symlink_to(tmp_path / "on another disk")  # --out itself may be a link
    assert start_run_dir(linked_run, resume=True) is False


@pytest.mark.parametrize("name", ["history.csv", ".lock", "backup/training_metadata.json"])
def test_a_run_folder_holding_a_hard_link_is_refused(tmp_path, name):
    """Training appends to history.csv (and Keras wrote its backup in place): through a
    second name of another file, it would change that file."""
    victim = tmp_path / "victim.csv"
    victim.write_text("the user's\n")
    run = tmp_path / "run"
    write_files(run, {"config.json": RUN_CONFIG})
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    os.link(victim, run / name)
    with pytest.raises(
        TrainError, match=rf"holds a file with other names \(a hard link\), {run / name}"
    ):
        start_run_dir(run, resume=True)
    assert victim.read_text() == "the user's\n"


def test_a_file_gone_while_the_run_folder_is_checked_is_no_error(tmp_path, monkeypatch):
    """A running trainer's temporary checkpoint, listed and then renamed: the check before
    the lock goes on, so that the lock names the running trainer."""
    run = tmp_path / "run"
    write_files(run, {"config.json": RUN_CONFIG})
    listed = [(str(run), [], ["config.json", ".final.partial.keras"])]
    monkeypatch.setattr(run_folder.os, "walk", lambda folder: iter(listed))
    run_folder.check_no_links(run)


@pytest.mark.parametrize(
    "config",
    ["", "[1, 2]", "not json", json.dumps({mark: "" for mark in CONFIG_MARKS[:-1]})],
    ids=["empty", "a list", "not json", "a mark missing"],
)
def test_a_config_json_the_trainer_did_not_write_is_no_run(config, tmp_path):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(TrainError, match=f"{tmp_path} is not empty and holds no training run"):
        start_run_dir(tmp_path, resume=True)


# ---------------------------------------------------------------------------------------------
# The backup folder


def test_the_backup_clean_up_removes_only_what_keras_wrote(tiny_model, tmp_path):
    model = train_model.build_model_from_file(
        tiny_model, (PARAMS.n_bins, PARAMS.chunk_frames, 1), 4
    )
    backup = training_callbacks(tmp_path, keras.callbacks.Callback(), 1, {}, "none")[-1]
    backup.set_model(model)
    backup.on_epoch_end(0)
    backup.on_epoch_end(1)  # the second state moves the first to its .bkp files
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == sorted(BACKUP_FILES)
    (tmp_path / "backup" / "notes.txt").write_text("mine")
    backup.on_train_end()  # kept until the run writes that training is done
    assert len(list((tmp_path / "backup").iterdir())) == len(BACKUP_FILES) + 1
    remove_backup(tmp_path / "backup")  # as write_training_done then does
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["notes.txt"]

    (tmp_path / "backup" / "notes.txt").unlink()
    backup.on_epoch_end(2)
    remove_backup(tmp_path / "backup")  # as a run started again clears it
    assert not (tmp_path / "backup").exists()
    remove_backup(tmp_path / "backup")  # nothing to remove: nothing happens


# ---------------------------------------------------------------------------------------------
# The runs table

APPEND_ROWS = """
import sys, time
from pathlib import Path
from train.log import append_run
table, writer, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for number in range(int(sys.argv[4])):
    append_run(table, {"run_dir": f"{writer}/{number}", "writer": writer})
"""


def test_trainings_sharing_a_runs_table_all_get_their_row(tmp_path):
    """Trainings into different run folders, each with its own run lock, add their rows to
    the same table at the same moment."""
    table, go, writers, rows_each = tmp_path / "runs.csv", tmp_path / "go", 4, 60
    command = [sys.executable, "-c", APPEND_ROWS, str(table)]
    processes = [
        subprocess.Popen(
            [*command, f"run{writer}", str(go), str(rows_each)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in range(writers)
    ]
    go.touch()
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * writers, errors
    with table.open(newline="") as file:
        rows = [row["run_dir"] for row in csv.DictReader(file)]
    assert sorted(rows) == sorted(
        f"run{writer}/{number}" for writer in range(writers) for number in range(rows_each)
    )
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_an_xlsx_beside_the_runs_table_that_is_not_one_is_left_as_it_was(tmp_path, caplog):
    openpyxl = pytest.importorskip("openpyxl")
    table, xlsx = tmp_path / "runs.csv", tmp_path / "runs.xlsx"
    xlsx.write_bytes(b"my own spreadsheet")
    append_run(table, {"run_dir": "a"})
    assert xlsx.read_bytes() == b"my own spreadsheet"
    assert f"{xlsx} exists and is not a copy of a runs table" in caplog.text

    book = openpyxl.Workbook()
    book.active.title = "budget"
    book.active.append(["run_dir", "cost"])
    book.save(xlsx)
    saved = xlsx.read_bytes()
    append_run(table, {"run_dir": "b"})
    assert xlsx.read_bytes() == saved

    xlsx.unlink()
    append_run(table, {"run_dir": "c"})
    append_run(table, {"run_dir": "d"})  # its own copy is brought up to date
    sheet = openpyxl.load_workbook(xlsx)["runs"]
    assert [row[0] for row in sheet.iter_rows(values_only=True)] == ["run_dir", *"abcd"]


def test_text_of_the_runs_table_is_text_in_its_xlsx_never_a_formula(tmp_path):
    """A run folder or model named like a formula (a received run, a data set's name) must
    not run as one when the spreadsheet opens."""
    openpyxl = pytest.importorskip("openpyxl")
    table = tmp_path / "runs.csv"
    formulas = ['=HYPERLINK("http://example.org","x")', "=cmd|' /C calc'!A0"]
    append_run(table, {"run_dir": formulas[0], "model": formulas[1], "map": "0.5"})
    sheet = openpyxl.load_workbook(tmp_path / "runs.xlsx")["runs"]
    cells = {cell.value: cell.data_type for cell in sheet[2]}
    assert cells[formulas[0]] == cells[formulas[1]] == "s"
    assert cells[0.5] == "n"


def test_a_resumed_run_keeps_its_training_settings(easy_data, tiny_model, tmp_path, capsys):
    """Another learning rate or augmentation may not be asked of a run: the history,
    checkpoints and schedule so far were made with the settings it started with; nor other
    epochs of a finished run (more epochs of an unfinished one: `test_train`'s resumes).
    Other workers may."""
    run_dir = tmp_path / "run"
    assert train_model.main(train_args(easy_data, tiny_model, run_dir, "--epochs", "1")) == 0
    config = (run_dir / "config.json").read_text()
    capsys.readouterr()
    for change, named in ((["--learning-rate", "0.01"], "--learning-rate: started 0.001, now 0.01"),
                          (["--epochs", "2"], "--epochs: started 1, now 2")):  # fmt: skip
        other = train_args(easy_data, tiny_model, run_dir, "--epochs", "1", *change)
        assert train_model.main([*other, "--resume"]) == 2
        error = capsys.readouterr().err
        assert "holds a finished run trained with other settings" in error and named in error
        assert (run_dir / "config.json").read_text() == config  # nothing written
    more = train_args(easy_data, tiny_model, run_dir, "--epochs", "1", "--workers", "2")
    assert train_model.main([*more, "--resume"]) == 0


def test_a_finished_run_is_as_asked_only_for_its_settings_pooling_and_model(
    easy_data, tiny_model, tmp_path
):
    """What doall.sh asks before training: the same command finds the run finished; another
    pooling or inference model has it scored anew, other epochs refused (train_model.py)."""
    run_dir = tmp_path / "run"
    assert train_model.main(train_args(easy_data, tiny_model, run_dir, "--epochs", "1")) == 0

    def asked(*extra: str) -> bool:
        argv = train_args(easy_data, tiny_model, run_dir, "--epochs", "1", "--resume", *extra)
        return run_folder.finished_as_asked(train_model.parse_args(argv))

    assert asked() and asked("--workers", "2")
    assert not asked("--pooling", "max") and not asked("--inference-model", "final")
    assert not asked("--epochs", "2") and not asked("--learning-rate", "0.01")
    (run_dir / "metrics.json").unlink()  # not scored: finished as asked only once it is
    assert not asked()


def test_a_run_trains_and_resumes_in_an_ascii_locale(easy_data, tiny_model, tmp_path):
    """Text files are UTF-8 whatever the locale says: the model files (the 2016 ones name
    Tóth) are read and compared as UTF-8 under a C locale with Python's UTF-8 mode off."""
    model = tmp_path / "model-Tiny.py"
    model.write_text(tiny_model.read_text(encoding="utf-8") + "# Tóth & Czeba\n", "utf-8")
    ascii_locale = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
                    "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}  # fmt: skip
    command = [sys.executable, str(ROOT / "train" / "train_model.py")]
    for extra in (["--epochs", "1"], ["--epochs", "1", "--resume"]):
        args = train_args(easy_data, model, tmp_path / "run", *extra)
        done = subprocess.run([*command, *args], env=ascii_locale, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "training already finished" in done.stderr  # resumed: model.py compared


def test_a_resumed_runs_paths_compare_resolved_its_settings_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"noise_dir": "noise", "learning_rate": 0.001, "workers": 1}
    same_folder = argparse.Namespace(noise_dir=tmp_path / "noise", learning_rate=0.001, workers=4)
    assert changed_settings(config, same_folder) == []  # relative or not; workers may change
    other = argparse.Namespace(noise_dir=tmp_path / "elsewhere", learning_rate=0.01, workers=1)
    assert [change.split(":")[0] for change in changed_settings(config, other)] == [
        "--noise-dir",
        "--learning-rate",
    ]


def test_a_run_started_before_an_option_existed_resumes_only_as_it_trained():
    """A modern run whose config.json predates --background-weight trained one-hot: the
    modern default of 0.1 would change its training half way."""
    config = {"learning_rate": 0.002}
    before = argparse.Namespace(learning_rate=0.002, background_weight=0.0, new_thing=3)
    assert changed_settings(config, before) == []  # an option of unknown past: not compared
    now = argparse.Namespace(learning_rate=0.002, background_weight=0.1)
    assert changed_settings(config, now) == ["--background-weight: started 0.0, now 0.1"]


def test_curves_replace_a_link_put_in_their_place_never_writing_through_it(tmp_path):
    """A link planted at loss.png while training ran: the plot replaces the link, and the
    file it points to stays as it was."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss.png").symlink_to(victim)
    history = {"epoch": np.arange(3), "loss": np.array([3.0, 2.0, 1.0])}

    plot_history(history, run)

    assert victim.read_text() == "mine"
    assert not (run / "loss.png").is_symlink()
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in run.iterdir()) == ["loss.png"]


def test_a_pipe_in_a_run_folder_or_as_the_runs_table_is_refused_not_read(tmp_path):
    """Reading config.json, or the runs table, from a pipe would wait for a writer forever."""
    from train.log import RunsTableError, check_runs_table

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "config.json")
    with pytest.raises(TrainError, match="not a file \\(a pipe"):
        run_folder.check_trainer_may_write(run_dir)
    os.mkfifo(tmp_path / "runs.csv")
    with pytest.raises(RunsTableError, match="is not a file"):
        check_runs_table(tmp_path / "runs.csv")


def test_a_row_of_the_runs_table_is_replaced_only_by_the_same_runs(tmp_path):
    """The same run scored again replaces its row; a run of another start in the same folder
    (deleted and trained anew), or of another folder, adds one; a row from before the key had
    its start is kept."""
    table = tmp_path / "runs.csv"
    table.write_text("run_dir,epochs\n/x/run1,3\n")  # an older version's row
    append_run(table, {"run_dir": "/x/run1", "started": "2026-11-27 10:00:00", "epochs": 5})
    append_run(table, {"run_dir": "/y/run1", "started": "2026-11-27 10:00:00", "epochs": 6})
    append_run(table, {"run_dir": "/x/run1", "started": "2026-11-27 11:00:00", "epochs": 7})
    append_run(table, {"run_dir": "/x/run1", "started": "2026-11-27 10:00:00", "epochs": 8})
    with table.open(newline="") as file:
        rows = [(row["run_dir"], row["started"], row["epochs"]) for row in csv.DictReader(file)]
    assert rows == [
        ("/x/run1", "", "3"),
        ("/y/run1", "2026-11-27 10:00:00", "6"),
        ("/x/run1", "2026-11-27 11:00:00", "7"),
        ("/x/run1", "2026-11-27 10:00:00", "8"),
    ]
