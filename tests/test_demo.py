"""The synthetic demo dataset: deterministic, laid out and labelled as BirdCLEF 2016 ships."""

import hashlib
import shutil

import numpy as np
import pytest
from scipy.io import wavfile

from predict.evaluate import read_truth
from preprocess.make_demo_dataset import (
    MAX_SECONDS,
    MIN_SECONDS,
    SPECIES,
    DemoError,
    make_demo_dataset,
)
from preprocess.make_demo_dataset import main as demo_main
from preprocess.metadata import read_birdclef_xml_dir


def digest(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert make_demo_dataset(out, recordings_per_species=2, test_per_species=1, seed=5, workers=2)
    return out


def test_same_seed_same_files_any_workers_other_seed_other_audio(demo, tmp_path):
    make_demo_dataset(
        tmp_path / "again", recordings_per_species=2, test_per_species=1, seed=5, workers=1
    )
    assert digest(tmp_path / "again") == digest(demo)
    make_demo_dataset(tmp_path / "other", recordings_per_species=2, test_per_species=1, seed=6)
    assert digest(tmp_path / "other") != digest(demo)


def test_complete_dataset_is_skipped_and_other_sizes_rebuild(tmp_path):
    out = tmp_path / "demo"
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    assert not make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    assert make_demo_dataset(out, recordings_per_species=2, test_per_species=1)
    assert len(list((out / "TrainingSet" / "wav").iterdir())) == 2 * len(SPECIES)


def test_refuses_to_write_into_a_folder_of_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    (tmp_path / ".README.txt.42-deadbeef.partial").write_text("named like one of its own")
    with pytest.raises(DemoError, match="holds no demo dataset made by this tool"):
        make_demo_dataset(tmp_path, recordings_per_species=1, test_per_species=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".README.txt.42-deadbeef.partial", "mine.txt"
    ]  # fmt: skip
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_never_deletes_a_real_dataset_of_the_same_layout(tmp_path):
    """A BirdCLEF folder (TrainingSet/, TestSet/), given by mistake where the demo goes."""
    real = tmp_path / "birdclef" / "TrainingSet" / "wav" / "LIFECLEF2014_BIRDAMAZON_XC_WAV_RN1.wav"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"RIFF a real recording")
    with pytest.raises(DemoError, match="holds no demo dataset made by this tool"):
        make_demo_dataset(tmp_path / "birdclef", recordings_per_species=1, test_per_species=1)
    assert real.read_bytes() == b"RIFF a real recording"


@pytest.mark.parametrize("link", ["TrainingSet", "README.txt", ".demo_complete.json"])
def test_never_writes_through_a_link_in_its_own_folder(tmp_path, link):
    out, victim = tmp_path / "demo", tmp_path / "victim"
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    victim.mkdir()
    (victim / "notes.txt").write_text("the user's")
    target = victim if link == "TrainingSet" else victim / "notes.txt"
    if (out / link).is_dir():
        shutil.rmtree(out / link)
    else:
        (out / link).unlink()
    (out / link).symlink_to(target)
    with pytest.raises(DemoError, match=rf"{link} is a link|holds no demo dataset"):
        make_demo_dataset(out, recordings_per_species=2, test_per_species=1)
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
    assert (victim / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize(
    "foreign", ["TrainingSet/wav/mine.wav", "TestSet/notes.txt", "TrainingSet/xml/sub/a.xml"]
)
def test_rebuilding_never_deletes_what_a_user_put_inside_the_demo(tmp_path, foreign):
    out = tmp_path / "demo"
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    before = digest(out)
    (out / foreign).parent.mkdir(exist_ok=True)
    (out / foreign).write_text("the user's")
    with pytest.raises(DemoError, match="was not written by the demo"):
        make_demo_dataset(out, recordings_per_species=2, test_per_species=1)
    assert digest(out) == {**before, foreign: hashlib.sha256(b"the user's").hexdigest()}


def test_a_link_inside_the_demo_stops_a_rebuild(tmp_path):
    out, victim = tmp_path / "demo", tmp_path / "victim.wav"
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    victim.write_text("the user's")
    wav = next((out / "TrainingSet" / "wav").iterdir())
    wav.unlink()
    wav.symlink_to(victim)
    with pytest.raises(DemoError, match=f"{wav} was not written by the demo"):
        make_demo_dataset(out, recordings_per_species=2, test_per_species=1)
    assert wav.is_symlink() and victim.read_text() == "the user's"


def test_an_interrupted_demo_is_made_again(tmp_path):
    out = tmp_path / "demo"
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    (out / ".demo_complete.json").unlink()  # killed before its end: the README marks it
    shutil.rmtree(out / "TestSet")
    (out / "..demo_complete.json.123-abcd1234.partial").write_text("{")  # killed mid-write
    assert make_demo_dataset(out, recordings_per_species=1, test_per_species=1)
    assert (out / "TestSet" / "ground_truth.csv").is_file()
    assert not list(out.glob("*.partial"))
    first = tmp_path / "first"  # killed while writing its first file
    first.mkdir()
    (first / ".README.txt.99-00ff00ff.partial").write_text("SYNTH")
    assert make_demo_dataset(first, recordings_per_species=1, test_per_species=1)


def test_command_errors_are_one_line_with_status_2(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert demo_main(["--out", str(tmp_path), "--recordings-per-species", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} is not empty and holds no demo")
    (tmp_path / "a file").write_text("")
    assert demo_main(["--out", str(tmp_path / "a file"), "--recordings-per-species", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'a file'} is not a folder")
    for option, value in [("--workers", "-2"), ("--seed", "-1"), ("--test-per-species", "0")]:
        with pytest.raises(SystemExit) as exit_status:
            demo_main(["--out", str(tmp_path / "new"), option, value])
        assert exit_status.value.code == 2
        assert f"argument {option}: must be at least" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_training_set_parses_as_birdclef_with_labels(demo):
    recordings, skipped = read_birdclef_xml_dir(demo / "TrainingSet" / "xml")
    assert skipped == []
    assert len(recordings) == 2 * len(SPECIES)
    assert {r.class_id for r in recordings} == {s.class_id for s in SPECIES}
    names = {s.scientific_name for s in SPECIES}
    for recording in recordings:
        assert recording.species in names
        assert set(recording.background) <= names - {recording.species}
        assert (demo / "TrainingSet" / "wav" / recording.file).is_file()
        assert recording.fields["Sub-species"] is None  # self-closing, as BirdCLEF's
        assert "SYNTHETIC" in recording.fields["Comments"]


def test_test_set_has_unlabelled_xmls_and_official_ground_truth(demo):
    recordings, _ = read_birdclef_xml_dir(demo / "TestSet" / "xml")
    assert all(r.class_id is None for r in recordings)
    assert (
        "ClassId" not in (demo / "TestSet" / "xml" / f"{recordings[0].file[:-4]}.xml").read_text()
    )
    truth = read_truth(demo / "TestSet" / "ground_truth.csv")
    assert set(truth.foreground) == {r.media_id for r in recordings}
    assert sorted(truth.foreground.values()) == sorted(s.class_id for s in SPECIES)
    training_ids = {r.media_id for r in read_birdclef_xml_dir(demo / "TrainingSet" / "xml")[0]}
    assert not training_ids & set(truth.foreground)


def test_training_xml_folder_works_as_ground_truth(demo):
    truth = read_truth(demo / "TrainingSet" / "xml")  # background names -> class ids
    class_ids = {s.class_id for s in SPECIES}
    assert all(set(bg) <= class_ids for bg in truth.background.values())
    assert len(truth.foreground) == 2 * len(SPECIES)


def test_wavs_are_44k_16bit_mono_of_varied_length_and_loudness(demo):
    seconds, peaks = [], []
    for path in (demo / "TrainingSet" / "wav").glob("*.wav"):
        rate, samples = wavfile.read(path)
        assert rate == 44100 and samples.dtype == np.int16 and samples.ndim == 1
        seconds.append(len(samples) / rate)
        peaks.append(np.abs(samples.astype(np.int32)).max())
    assert all(MIN_SECONDS <= s <= MAX_SECONDS for s in seconds)
    assert max(seconds) / min(seconds) > 1.5
    assert max(peaks) / min(peaks) > 2
