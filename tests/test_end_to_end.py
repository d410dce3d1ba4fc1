"""The whole job on the tiny synthetic demo: every stage leaves its output, a valid run file."""

import csv
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from predict.runfile import read_run_file
from preprocess.metadata import read_birdclef_xml_dir
from tests.helpers import changes, tree_state

ROOT = Path(__file__).resolve().parents[1]


def doall(tmp_path: Path) -> str:
    """The tiny demo job into tmp_path; its temporary files go to tmp_path/tmp."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    environment = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    command = [
        str(ROOT / "doall.sh"),
        "--tiny",
        "--data-dir",
        str(tmp_path / "data"),
        "--work-dir",
        str(tmp_path / "work"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--train-args",  # a path with a space, kept whole through doall's quoting
        f"--runs-table '{tmp_path / 'runs table' / 'all runs.csv'}'",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("doall")
    project = tree_state(ROOT)
    output = doall(tmp_path)
    assert changes(project, tree_state(ROOT)) == []  # all went where the options said
    assert list((tmp_path / "tmp").iterdir()) == []
    return tmp_path, output


def test_every_stage_leaves_its_output(finished):
    tmp_path, output = finished
    demo, work, run = (
        tmp_path / "data" / "demo-tiny",
        tmp_path / "work" / "demo-tiny",
        tmp_path / "runs" / "demo-tiny",
    )
    n_train = len(list((demo / "TrainingSet" / "wav").glob("*.wav")))
    n_test = len(list((demo / "TestSet" / "wav").glob("*.wav")))
    assert n_train > 0 and n_test > 0
    assert len(list((work / "train_16k").glob("*.wav"))) == n_train
    assert len(list((work / "test_16k" / "resampled").glob("*.wav"))) == n_test  # the cache
    assert (work / "train.h5").is_file()
    for name in ("best_val_map.keras", "history.csv", "params.json", "classes.json"):
        assert (run / name).is_file(), name
    assert (tmp_path / "runs table" / "all runs.csv").is_file()
    run_file = run / "predictions" / "TestSet.csv"
    entries = read_run_file(run_file)  # validates as the official evaluator did
    test_ids = {r.media_id for r in read_birdclef_xml_dir(demo / "TestSet" / "xml")[0]}
    assert {e.media_id for e in entries} == test_ids
    with open(run / "predictions" / "TestSet.top5.csv", newline="", encoding="utf-8") as file:
        named = {Path(row["file"]) for row in csv.DictReader(file)}  # the user's files, for people
    assert named == set((demo / "TestSet" / "wav").glob("*.wav"))
    scores = json.loads((run / "predictions" / "TestSet.scores.json").read_text())
    # Two epochs on 24 recordings do not reliably beat chance (the README's full demo does:
    # 0.93 against 0.41), so the figures are checked exactly instead: with one species per
    # recording the official AP is 1 / (rank of the true species), 0 when not returned.
    truth = dict(line.split(";")[:2] for line in (demo / "TestSet" / "ground_truth.csv")
                 .read_text().splitlines())  # fmt: skip
    rank = {(e.media_id, e.class_id): e.rank for e in entries}
    reciprocal = [1 / rank[m, c] if (m, c) in rank else 0.0 for m, c in truth.items()]
    assert scores["map_foreground"] == pytest.approx(np.mean(reciprocal), abs=1e-12)
    assert scores["top1_accuracy"] == pytest.approx(np.mean(np.equal(reciprocal, 1.0)))
    n_classes = len(json.loads((run / "classes.json").read_text())["classes"])
    assert scores["n_classes"] == n_classes == 6
    chance = sum(1 / k for k in range(1, n_classes + 1)) / n_classes  # random ranking's MAP
    assert scores["chance_map_foreground"] == pytest.approx(chance)
    assert f"MAP (foreground): {scores['map_foreground']:.4f}" in output
    assert "SYNTHETIC" in output


def map_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("MAP (foreground):"))


def test_a_second_run_skips_finished_work(finished):
    tmp_path, first_output = finished
    output = doall(tmp_path)
    assert "already complete" in output  # demo data and training
    # prediction from the same model is deterministic: the very same scores
    assert map_line(output) == map_line(first_output)


def test_the_run_folder_holds_the_report_and_the_thresholds(finished):
    tmp_path, output = finished
    run = tmp_path / "runs" / "demo-tiny"
    classes = json.loads((run / "classes.json").read_text())["classes"]
    report = run / "predictions" / "TestSet.report"
    with open(report / "per_class.csv", newline="", encoding="utf-8") as file:
        assert [row["class"] for row in csv.DictReader(file)] == classes
    for name in ("report.html", "confusion_matrix.png", "pr_curves.png"):
        assert (report / name).is_file(), name
    assert str(report / "report.html") in output
    assert list(json.loads((run / "thresholds.json").read_text())["classes"]) == classes


def test_an_unknown_recipe_is_refused_before_any_work(tmp_path):
    command = [str(ROOT / "doall.sh"), "--recipe", "2017", "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: --recipe is 2016 or modern, not '2017'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_url_archives_unpack_each_into_a_folder_of_its_own_name(tmp_path):
    """birds.v1.tar.gz and birds.v2.tar.gz are two data sets, not one; an archive its tool
    cannot unpack is one error line."""

    def foreign(member: tarfile.TarInfo) -> tarfile.TarInfo:
        """As made elsewhere: another owner, and a setuid bit on the file."""
        member.uid, member.gid = 4321, 4321
        if member.isfile():
            member.mode |= 0o6755
        return member

    for version in ("v1", "v2"):
        (tmp_path / version / "TrainingSet").mkdir(parents=True)  # no wav/, xml/: stops there
        (tmp_path / version / "TrainingSet" / "notes.txt").write_text(version)
        with tarfile.open(tmp_path / f"birds.{version}.tar.gz", "w:gz") as archive:
            archive.add(tmp_path / version / "TrainingSet", arcname="TrainingSet", filter=foreign)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    data = tmp_path / "data"
    for name in ("birds.v1.tar.gz", "birds.v2.tar.gz", "broken.zip"):
        url = (tmp_path / name).as_uri()
        command = [str(ROOT / "doall.sh"), "--url", url, "--data-dir", str(data)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].startswith("error: ")
    for version in ("v1", "v2"):
        notes = data / f"birds.{version}" / "TrainingSet" / "notes.txt"
        assert notes.read_text() == version
        # the archive's owner and setuid bit are not kept, even when unpacking as root
        assert notes.stat().st_uid == os.getuid() and not notes.stat().st_mode & 0o6000
    assert "broken.zip is not a zip or tar archive" in result.stderr
    assert not (data / "broken").exists()


@pytest.mark.parametrize("planted", ["hard link", "link"])
def test_doall_never_writes_through_a_link_planted_in_its_folders(tmp_path, planted):
    """A data folder received from elsewhere: curl would append the download to the file a
    planted .part names; a work folder whose train_16k leads to a user's folder."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    archive = tmp_path / "birds.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    downloads = tmp_path / "downloads"
    downloads.mkdir(parents=True)
    if planted == "link":
        (downloads / "birds.zip.part").symlink_to(victim)
    else:
        os.link(victim, downloads / "birds.zip.part")
    folders = ["--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "runs")]
    command = [str(ROOT / "doall.sh"), "--url", archive.as_uri(), "--data-dir", str(tmp_path)]
    result = subprocess.run([*command, *folders], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "birds.zip.part is a link (or a second name of another file)" in result.stderr
    assert victim.read_text() == "the user's"

    work = tmp_path / "work" / tmp_path.name  # WORK_DIR/NAME, NAME the data folder's name
    work.mkdir(parents=True)
    (work / "train_16k").symlink_to(tmp_path / "victim folder")
    command = [str(ROOT / "doall.sh"), "--class-folders", str(tmp_path)]
    result = subprocess.run([*command, *folders], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "train_16k is a link" in result.stderr
    assert not (tmp_path / "victim folder").exists()

    (work / "train_16k").unlink()  # the run folder doall.sh names, RUNS_DIR/NAME
    (tmp_path / "runs").mkdir(exist_ok=True)  # made by the run above
    (tmp_path / "runs" / tmp_path.name).symlink_to(tmp_path / "victim run")
    result = subprocess.run([*command, *folders], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"runs/{tmp_path.name} is a link" in result.stderr
    (tmp_path / "demo-tiny").symlink_to(tmp_path / "victim data")  # the demo's folder
    command = [str(ROOT / "doall.sh"), "--tiny", "--data-dir", str(tmp_path)]
    result = subprocess.run([*command, *folders], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "demo-tiny is a link" in result.stderr
    assert not (tmp_path / "victim run").exists() and not (tmp_path / "victim data").exists()


def test_prediction_never_writes_through_a_link_planted_in_a_run_folder(finished, tmp_path):
    """A run folder received from someone else, whose predictions/ (or the resampling cache
    in it) leads elsewhere: predict.sh's default output and predict.py's cache refuse it."""
    done, _ = finished
    run, victim = tmp_path / "received run", tmp_path / "victim"
    victim.mkdir()
    (run / "predictions").mkdir(parents=True)
    for name in ("params.json", "classes.json", "inference.json", "training_done.json"):
        (run / name).write_bytes((done / "runs" / "demo-tiny" / name).read_bytes())
    model = json.loads((run / "inference.json").read_text())["model_file"]
    (run / model).write_bytes((done / "runs" / "demo-tiny" / model).read_bytes())
    test_set = done / "data" / "demo-tiny" / "TestSet"
    (run / "predictions" / ".resampled").symlink_to(victim)
    predict = [sys.executable, str(ROOT / "predict" / "predict.py"), "--run", str(run), "--audio"]
    result = subprocess.run(
        [*predict, str(test_set / "wav"), "--out", str(run / "predictions" / "x.csv")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "predictions/.resampled is a link" in result.stderr
    (run / "predictions" / ".resampled").unlink()
    (run / "predictions").rmdir()
    (run / "predictions").symlink_to(victim)
    result = subprocess.run(
        [str(ROOT / "predict.sh"), str(test_set), "--run", str(run)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "predictions is a link: give --out" in result.stderr
    assert list(victim.iterdir()) == []


def test_predict_sh_says_when_its_default_run_file_replaces_one(finished, tmp_path):
    """Named after the first input only: x/rec.wav and then y/rec.wav share a run file."""
    done, _ = finished
    run = tmp_path / "run"
    run.mkdir()
    for name in ("params.json", "classes.json", "inference.json", "training_done.json"):
        (run / name).write_bytes((done / "runs" / "demo-tiny" / name).read_bytes())
    model = json.loads((run / "inference.json").read_text())["model_file"]
    (run / model).write_bytes((done / "runs" / "demo-tiny" / model).read_bytes())
    recording = sorted((done / "data" / "demo-tiny" / "TestSet" / "wav").glob("*.wav"))[0]
    outputs = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "rec.wav").write_bytes(recording.read_bytes())
        command = [str(ROOT / "predict.sh"), str(tmp_path / folder / "rec.wav"), "--run", str(run)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "note: replacing" not in outputs[0]
    assert f"note: replacing {run / 'predictions' / 'rec.csv'}, made earlier" in outputs[1]


def test_one_run_at_a_time_downloads_and_unpacks_an_archive(tmp_path):
    """Two runs of one --url would append to one .part, and one would move it into place
    while the other still wrote: the second waits for the first."""
    archive = tmp_path / "birds.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    command = [
        str(ROOT / "doall.sh"),
        "--url",
        archive.as_uri(),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    with open(downloads / "birds.zip.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another run downloading it
        waiting = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for line in waiting.stdout:
            if "waiting for another run that downloads or unpacks" in line:
                break
        time.sleep(1)
        assert waiting.poll() is None and not (downloads / "birds.zip").exists()
    _, error = waiting.communicate(timeout=120)  # released: it goes on, to the archive's end
    assert (downloads / "birds.zip").read_bytes() == archive.read_bytes()
    assert waiting.returncode == 2 and "no TrainingSet folder" in error


def test_an_archive_of_one_url_is_never_taken_for_another_of_the_same_name(tmp_path):
    for owner in ("alice", "bob"):
        (tmp_path / owner).mkdir()
        (tmp_path / owner / "birds.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # empty zips
    data = tmp_path / "data"
    command = [str(ROOT / "doall.sh"), "--data-dir", str(data), "--url"]
    typo = (tmp_path / "alyce" / "birds.zip").as_uri()  # a download that fails at once
    assert subprocess.run([*command, typo], capture_output=True, timeout=120).returncode != 0
    alice = (tmp_path / "alice" / "birds.zip").as_uri()
    first = subprocess.run([*command, alice], capture_output=True, text=True, timeout=120)
    assert "no TrainingSet folder" in first.stderr  # downloaded and unpacked: an empty archive
    assert (data / "downloads" / "birds.zip.url").read_text() == f"{alice}\n"
    again = subprocess.run([*command, alice], capture_output=True, text=True, timeout=120)
    assert "no TrainingSet folder" in again.stderr  # the same archive
    bob = (tmp_path / "bob" / "birds.zip").as_uri()
    result = subprocess.run([*command, bob], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"birds.zip came from {alice}, not {bob}" in result.stderr
    # a --sha256 given later checks the archive already downloaded too
    wrong = subprocess.run([*command, alice, "--sha256", "0" * 64], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert wrong.returncode != 0 and "differs from --sha256" in wrong.stderr
    right = hashlib.sha256((tmp_path / "alice" / "birds.zip").read_bytes()).hexdigest()
    checked = subprocess.run([*command, alice, "--sha256", right], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert "no TrainingSet folder" in checked.stderr


def test_a_work_folder_holds_the_data_of_one_folder(tmp_path):
    """Two data sets in folders of one name (clips/): the default --name is that name, and the
    second would have added its recordings to the first one's work folder."""
    folders = ["--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "runs")]
    for owner in ("alice", "bob"):
        (tmp_path / owner / "clips" / "wren").mkdir(parents=True)
    command = [str(ROOT / "doall.sh"), "--class-folders"]
    first = subprocess.run([*command, str(tmp_path / "alice" / "clips"), *folders],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    work = tmp_path / "work" / "clips"  # WORK_DIR/NAME, NAME the data folder's name
    assert (work / "source.txt").read_text() == f"{tmp_path / 'alice' / 'clips'}\n"
    state = tree_state(work)
    second = subprocess.run([*command, str(tmp_path / "bob" / "clips"), *folders],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 2, first.stderr
    assert f"holds the data of {tmp_path / 'alice' / 'clips'}, not of" in second.stderr
    assert changes(state, tree_state(work)) == []
    third = subprocess.run([*command, str(tmp_path / "bob" / "clips"), "--name", "bob", *folders],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "holds the data of" not in third.stderr  # a name of its own: a work folder too
    assert (tmp_path / "work" / "bob" / "source.txt").is_file()


def test_the_work_folder_drops_the_audio_of_recordings_deleted_from_the_data(tmp_path):
    """A clip deleted from the class folders since the last run: its 16 kHz copy would have
    been trained on again (doall resamples with --prune)."""
    clips = tmp_path / "clips"
    for name in ("wren/a.wav", "wren/b.wav", "robin/c.wav"):
        (clips / name).parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(clips / name, 8000, np.zeros(800, np.int16))
    folders = ["--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "runs")]
    command = [str(ROOT / "doall.sh"), "--class-folders", str(clips), "--epochs", "1", *folders]
    resampled = tmp_path / "work" / "clips" / "train_16k"
    subprocess.run(command, capture_output=True, timeout=300)  # how far it gets does not matter
    assert (resampled / "wren" / "b.wav").is_file()
    (clips / "wren" / "b.wav").unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "pruned: 1 output(s)" in result.stdout
    assert sorted(p.name for p in resampled.rglob("*.wav")) == ["a.wav", "c.wav"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "--epochs takes a whole number from 1, not '0'"),
        (["--batch-size", "x"], "--batch-size takes a whole number from 1, not 'x'"),
        (["--top-k", "500"], "--top-k takes a whole number from 1 to 100, not '500'"),
        (
            ["--epochs", "2", "--top-k", "05", "--workers", "1", "--test-dir", "nowhere"],
            "--test-dir nowhere: no such file or folder",
        ),  # good numbers pass on to the next check
        (["--truth", "GT.csv"], "--truth needs --test-dir"),
    ],
)
def test_a_bad_option_value_is_refused_before_any_stage(tmp_path, options, message):
    """Not after hours of resampling and training, when the stage that reads it starts."""
    (tmp_path / "clips" / "wren").mkdir(parents=True)
    (tmp_path / "GT.csv").write_text("1;wren\n")
    folders = ["--work-dir", "work", "--runs-dir", "runs", "--data-dir", "data"]
    command = [str(ROOT / "doall.sh"), "--class-folders", "clips", *folders, *options]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"error: {message}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["GT.csv", "clips"]


@pytest.mark.parametrize("work", ["runs", "runs/n/work"])
def test_a_work_folder_that_is_or_is_inside_the_run_folder_is_refused_first(tmp_path, work):
    """--work-dir X --runs-dir X gives one folder X/NAME for both, which training would refuse
    after the data's preparation; so does a work folder inside the run folder."""
    (tmp_path / "clips" / "wren").mkdir(parents=True)
    folders = ["--work-dir", str(tmp_path / work), "--runs-dir", str(tmp_path / "runs")]
    command = [str(ROOT / "doall.sh"), "--class-folders", str(tmp_path / "clips"), "--name", "n",
               *folders]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is the run folder" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["..", "a/b", "."])
@pytest.mark.parametrize("data", ["--class-folders", "--tiny"])
def test_a_name_that_is_not_one_folders_is_refused(tmp_path, name, data):
    (tmp_path / "clips" / "wren").mkdir(parents=True)
    data = [data, str(tmp_path / "clips")] if data == "--class-folders" else [data]
    command = [str(ROOT / "doall.sh"), *data, "--name", name, "--data-dir",
               str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot name a dataset's folders" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
