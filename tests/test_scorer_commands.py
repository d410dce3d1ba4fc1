"""The three commands that score the modern recipe on recordings kept outside the project
(issue 9), run exactly as written there on a small CSV task, and what they write: only the
work folder, the runs folder and the run file they are given, nothing else (not the project,
not the inputs, not the working folder, not the temporary folder)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from preprocess.audio import to_sample_rate
from preprocess.make_demo_dataset import SAMPLE_RATE, SPECIES, make_recording
from preprocess.workers import HANDOFF_PREFIX, MEMORY_FOLDER
from tests.helpers import changes, tree_state

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, TEST_PER_CLASS, N_CLASSES = 4, 1, 3


def write_task(folder: Path) -> None:
    """A CSV task as the scorer gives it: train/ (44.1 kHz wavs), train.csv with columns
    file,label,media_id; test/ (16 kHz wavs) and truth.txt (MediaId;ClassId;background)."""
    rng = np.random.default_rng(3)
    (folder / "train").mkdir()
    (folder / "test").mkdir()
    rows, truth = [], []
    for label, species in enumerate(SPECIES[:N_CLASSES]):
        for i in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            audio = make_recording(species, None, rng)
            name = f"{species.class_id}-{i}"
            if i < TRAIN_PER_CLASS:
                wavfile.write(folder / "train" / f"{name}.wav", SAMPLE_RATE, audio)
                rows.append(
                    {"file": f"{name}.wav", "label": species.class_id, "media_id": label * 10 + i}
                )
            else:
                at_16k = to_sample_rate(audio.astype(np.float32), SAMPLE_RATE, 16000)
                wavfile.write(folder / "test" / f"{name}.wav", 16000, at_16k.astype(np.int16))
                truth.append(f"{name};{species.class_id};")
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, ["file", "label", "media_id"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "truth.txt").write_text("\n".join(truth) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The scorer's three commands (training cut to 2 epochs), with the state of every tree
    they could write to before and after."""
    sandbox = tmp_path_factory.mktemp("scorer")
    inputs, cwd, temporary = sandbox / "inputs", sandbox / "cwd", sandbox / "tmp"
    for folder in (inputs, cwd, temporary):
        folder.mkdir()
    write_task(inputs)
    work, runs = sandbox / "W", sandbox / "R"
    environment = {**os.environ, "TMPDIR": str(temporary)}
    commands = [
        [str(ROOT / "doall.sh"), "--csv", str(inputs / "train.csv"), "--audio-dir",
         str(inputs / "train"), "--recipe", "modern", "--name", "N", "--work-dir", str(work),
         "--runs-dir", str(runs), "--epochs", "2"],
        [sys.executable, str(ROOT / "predict" / "predict.py"), "--run", str(runs / "N"),
         "--audio", str(inputs / "test"), "--out", "run.csv"],
        [sys.executable, str(ROOT / "predict" / "evaluate.py"), "--run-file", "run.csv",
         "--truth", str(inputs / "truth.txt")],
    ]  # fmt: skip
    trees = {"project": ROOT, "inputs": inputs, "cwd": cwd, "tmp": temporary}
    before = {name: tree_state(root) for name, root in trees.items()}
    handoffs_before = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}*"))
    outputs = []
    for command in commands:
        result = subprocess.run(
            command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outputs.append(result.stdout)
    after = {name: tree_state(root) for name, root in trees.items()}
    left_in_memory = set(MEMORY_FOLDER.glob(f"{HANDOFF_PREFIX}*")) - handoffs_before
    return (
        sandbox,
        outputs,
        {name: changes(before[name], after[name]) for name in trees},
        left_in_memory,
    )


def test_the_scorer_commands_train_predict_and_score(scored):
    sandbox, outputs, _, _ = scored
    run = sandbox / "R" / "N"
    assert (run / "final.keras").is_file() and (run / "inference.json").is_file()
    with open(sandbox / "cwd" / "run.csv", encoding="utf-8") as file:
        media_ids = {line.split(";")[0] for line in file}
    assert media_ids == {f"{s.class_id}-{TRAIN_PER_CLASS}" for s in SPECIES[:N_CLASSES]}
    assert "MAP (foreground)" in outputs[2]


def test_the_scorer_commands_write_only_what_they_were_given(scored):
    _, _, changed, left_in_memory = scored
    assert changed["project"] == []
    assert changed["inputs"] == []
    assert changed["cwd"] == ["run.csv"]
    assert changed["tmp"] == []
    assert not left_in_memory


def test_a_rerun_keeps_the_finished_run_and_other_epochs_are_refused_not_ignored(scored):
    """The same command again: the finished run is kept, not trained again; with --epochs 3
    the run of 2 epochs must not pass for one of 3, nor be rescored as if it were."""
    sandbox = scored[0]
    inputs, run = sandbox / "inputs", sandbox / "R" / "N"
    command = [str(ROOT / "doall.sh"), "--csv", str(inputs / "train.csv"), "--audio-dir",
               str(inputs / "train"), "--recipe", "modern", "--name", "N", "--work-dir",
               str(sandbox / "W"), "--runs-dir", str(sandbox / "R"), "--epochs"]  # fmt: skip
    state = tree_state(run)
    again = subprocess.run([*command, "2"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "training already complete" in again.stdout
    more = subprocess.run([*command, "3"], capture_output=True, text=True, timeout=900)
    assert more.returncode == 2, more.stdout[-2000:] + more.stderr[-2000:]
    assert "holds a finished run trained with other settings" in more.stderr
    assert "--epochs: started 2, now 3" in more.stderr
    assert changes(state, tree_state(run)) in ([], [".lock"])  # the run's lock, taken


def test_another_task_in_the_same_folders_is_refused_not_scored_with_the_old_model(scored):
    """The same --name, --work-dir and --runs-dir for other recordings: the run folder holds a
    model of the first task, which must not pass for the second's."""
    sandbox = scored[0]
    inputs = sandbox / "inputs"
    rows = (inputs / "train.csv").read_text(encoding="utf-8").splitlines()
    (inputs / "other.csv").write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")  # one fewer
    command = [str(ROOT / "doall.sh"), "--csv", str(inputs / "other.csv"), "--audio-dir",
               str(inputs / "train"), "--recipe", "modern", "--name", "N", "--work-dir",
               str(sandbox / "W"), "--runs-dir", str(sandbox / "R"), "--epochs", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds other recordings than the run in" in result.stderr
    assert "training already complete" not in result.stdout
