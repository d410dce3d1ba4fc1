"""The shared output check: an output is never an input or a file of another kind."""

import os

import h5py
import pytest

from preprocess.paths import (
    OutputPathError,
    check_output,
    first_line,
    first_names,
    is_hdf5,
    is_json_with,
    is_partial_of,
    partial_name,
)


def is_text_with_semicolons(path):
    line = first_line(path)
    return line is not None and line.count(";") == 3 and line.split(";")[-1].isdigit()


def check(path, inputs=()):
    check_output(path, own_kind=is_text_with_semicolons, kind="a run file", inputs=inputs)


def test_new_empty_and_own_kind_files_may_be_written(tmp_path):
    check(tmp_path / "new.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    check(tmp_path / "empty.csv")
    (tmp_path / "old.csv").write_text("a;b;0.5;1\n")
    check(tmp_path / "old.csv")


def test_files_of_another_kind_folders_and_inputs_are_refused(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    with pytest.raises(OutputPathError, match="x.wav exists and is not a run file"):
        check(tmp_path / "x.wav")
    (tmp_path / "classes.json").write_text('{"classes": ["a;b;c;d"]}')
    with pytest.raises(OutputPathError, match="not a run file"):
        check(tmp_path / "classes.json")
    with pytest.raises(OutputPathError, match="is a folder"):
        check(tmp_path)
    run = tmp_path / "run.csv"
    run.write_text("a;b;0.5;1\n")
    with pytest.raises(OutputPathError, match="is also an input"):
        check(run, inputs=[run])
    os.symlink(run, tmp_path / "link.csv")
    with pytest.raises(OutputPathError, match="is also an input"):
        check(tmp_path / "link.csv", inputs=[run])
    with pytest.raises(OutputPathError, match="is also an input"):  # not yet there, same path
        check(tmp_path / "sub" / ".." / "new.csv", inputs=[tmp_path / "new.csv"])


def test_sniffers(tmp_path):
    h5 = tmp_path / "d.h5"
    with h5py.File(h5, "w") as file:
        file["x"] = [1]
    assert is_hdf5(h5) and not is_hdf5(tmp_path / "missing.h5")
    (tmp_path / "r.json").write_text('{"map_foreground": 0.5}')
    assert is_json_with(tmp_path / "r.json", "map_foreground")
    assert not is_json_with(h5, "map_foreground")
    assert first_line(h5) is None


def test_load_data_overwrite_replaces_only_a_dataset_of_its_own(tmp_path, capsys):
    from preprocess.load_data import main

    wav = tmp_path / "W" / "x.wav"
    wav.parent.mkdir()
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nx.wav,a\n")
    base = ["--wav-dir", str(wav.parent), "--csv", str(labels), "--overwrite"]
    h5 = tmp_path / "weights.h5"  # an HDF5 file of someone else's
    with h5py.File(h5, "w") as file:
        file["x"] = [1]
    not_ours = "not a chunk dataset written by preprocess/load_data.py"
    for out, message in [(wav, not_ours), (labels, "also an input"), (h5, not_ours)]:
        before = out.read_bytes()
        assert main([*base, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert out.read_bytes() == before


def test_an_error_is_one_line_whatever_the_library_wrote(capsys):
    from preprocess.cli import describe, run_command

    def disk_full():
        raise OSError(28, "Can't write data\n, filename = 'x.h5.tmp'", "x.h5.tmp")

    assert describe(OSError(28, "No space left on device", "a.h5")) == (
        "a.h5: No space left on device"
    )
    assert "\n" not in describe(ValueError("first\nsecond"))
    assert run_command(disk_full, verbose=False) == 2
    assert capsys.readouterr().err.count("\n") == 1  # HDF5 put its file name on a line of its own


def test_first_names_says_how_many_more_there_are():
    assert first_names(["a", "b"]) == "a, b"
    assert first_names(list("abcdefg")) == "a, b, c, d, e, ... (2 more)"
    assert first_names(list("abc"), shown=2) == "a, b, ... (1 more)"


def test_is_partial_of_recognises_exactly_the_names_partial_name_gives(tmp_path):
    """Leftovers of a cut-short write are removed by this test, so it must not match another
    output's (OUT.old's) temporary files, nor a user's files named alike."""
    made = partial_name(tmp_path / "out.h5").name
    assert is_partial_of(made, "out.h5")
    assert is_partial_of(made + ".keras", "out.h5", ".keras")
    assert not is_partial_of(made, "out.h5", ".keras")
    assert not is_partial_of(partial_name(tmp_path / "out.h5.old").name, "out.h5")
    for other in (".out.h5.mine.partial", ".out.h5.12-xyz.partial", ".out.h5.12-0a1b2c3d.partial~"):
        assert not is_partial_of(other, "out.h5")


def test_remove_partials_leaves_a_running_writers_file_and_anything_else(tmp_path):
    from preprocess.paths import remove_partials

    target = tmp_path / "metrics.json"
    dead = tmp_path / ".metrics.json.4194305-0a1b2c3d.partial"  # above any pid: no process
    huge = tmp_path / ".metrics.json.99999999999999999999-0a1b2c3d.partial"  # nor here
    own = tmp_path / f".metrics.json.{os.getpid()}-0a1b2c3d.partial"  # not in progress here
    running = tmp_path / f".metrics.json.{os.getppid()}-0a1b2c3d.partial"  # another writer's
    others = [
        tmp_path / ".metrics.json.mine.partial",
        tmp_path / ".loss.png.4194305-0a1b2c3d.partial",
    ]
    for path in (dead, huge, own, running, *others):
        path.write_text("x")
    remove_partials(target, locked=False)
    assert not dead.exists() and not huge.exists() and not own.exists()
    assert running.exists() and all(path.exists() for path in others)
    remove_partials(target)  # under the writers' lock: every one is a kill's
    assert not running.exists() and all(path.exists() for path in others)
