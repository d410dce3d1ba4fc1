"""Raven and Audacity tables, safe file names, per-class thresholds at prediction, embeddings:
each file read back with an independent reader (csv module, plain text, np.load)."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from predict.detections import (
    RAVEN_COLUMNS,
    ChunkOutputs,
    EmbeddingModel,
    OutputError,
    safe_file_names,
    safe_name,
    window_detections,
    write_raven_table,
)
from predict.predict import main
from predict.runfile import read_run_file
from preprocess.make_demo_dataset import SPECIES, make_demo_dataset
from preprocess.params import SpectrogramParams
from train.thresholds import write_thresholds

PARAMS = SpectrogramParams()
CLASSES = [s.class_id for s in SPECIES]


def predict_cli(*args):
    main([str(arg) for arg in args])


def read_raven(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def read_audacity(path):
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return [(float(start), float(end), label) for start, end, label in rows]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, recordings_per_species=1, test_per_species=1, seed=3)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run folder: pooling, a hidden Dense layer (the embedding's), a softmax."""
    import keras

    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((PARAMS.n_bins, PARAMS.chunk_frames, 1))
    pooled = keras.layers.Flatten()(keras.layers.AveragePooling2D((20, 31))(inputs))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(pooled)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="species")(hidden)
    keras.Model(inputs, outputs).save(folder / "best_val_map.keras")
    (folder / "params.json").write_text(PARAMS.to_json())
    (folder / "classes.json").write_text(
        json.dumps({"classes": CLASSES, "class_names": {s.class_id: s.vernacular for s in SPECIES}})
    )
    return folder


@pytest.fixture(scope="module")
def test_wavs(demo):
    return sorted((demo / "TestSet" / "wav").glob("*.wav"))[:2]


# ---- file names ------------------------------------------------------------------------------


def test_safe_names_keep_files_in_their_folder():
    assert safe_name("LIFECLEF2016_BIRD_0001") == "LIFECLEF2016_BIRD_0001"
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name("a\\b\x00c\nd:e") == "a_b_c_d_e"
    assert safe_name("..") == "_" and safe_name("") == "_" and safe_name(" . ") == "_"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("dawn chorus é") == "dawn chorus é"
    assert len(safe_name("x" * 1000)) == 150
    assert safe_name("é" * 120) == "é" * 75  # 150 bytes of UTF-8, no character cut in two
    assert safe_name("a" + "é" * 120) == "a" + "é" * 74


def write_tables(ids: list[str], out: Path) -> None:
    """A Raven table and an Audacity label track into out for each MediaId of ids."""
    with ChunkOutputs(
        ids, ["x", "y"], {}, np.array([0.5, 0.5]), 6250.0, 5.0, soundscape=True,
        raven_dir=out, audacity_dir=out,
    ) as outputs:  # fmt: skip
        for media_id in ids:
            outputs.recording(media_id, np.array([[0.9, 0.1]]), 5.0)


def test_long_utf8_media_ids_give_tables_within_the_file_name_limit(tmp_path):
    """120 'é' are 120 characters but 240 bytes: with `.selections.txt` and the temporary
    name's `.X.XXXXXXXX.part` they were over the 255 bytes a name may have, and the whole run
    stopped (File name too long). Cut to bytes, the names stay distinct and fit."""
    ids = ["é" * 120, "é" * 121, "ü" * 200 + "x"]
    out = tmp_path / "tables"
    write_tables(ids, out)
    names = sorted(path.name for path in out.iterdir())
    assert len(names) == 2 * len(ids)
    assert all(len(f".{name}.XXXXXXXX.part".encode()) <= 255 for name in names)
    assert "é" * 75 + "~2.selections.txt" in names  # the ~N scheme keeps them apart


def test_name_collisions_are_numbered_the_same_way_whatever_the_order():
    ids = ["a/b", "a_b", "A:b", "a_b~2", "c"]
    names = safe_file_names(ids)
    assert names == safe_file_names(list(reversed(ids)))
    assert names["A:b"] == "A_b"  # first in sorted order keeps the plain name
    assert len({name.casefold() for name in names.values()}) == len(ids)
    assert names["c"] == "c"
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # one name on macOS
    names = safe_file_names([composed, decomposed])
    assert sorted(names.values()) == sorted([decomposed, f"{composed}~2"])


def test_hostile_media_ids_give_tables_inside_the_folder_only(tmp_path):
    ids = ["../escape", "a/b", "A/B", "..", "nul\x00byte"]
    out = tmp_path / "deep" / "raven"
    write_tables(ids, out)
    assert all(p.parent == out for p in tmp_path.rglob("*") if p.is_file())
    names = ["_", "_escape", "A_B", "a_b~2", "nul_byte"]  # sorted MediaIds: .. ../escape A/B a/b
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.selections.txt" for name in names] + [f"{name}.labels.txt" for name in names]
    )


# ---- detections ------------------------------------------------------------------------------


def test_class_names_with_line_breaks_stay_on_one_table_row(tmp_path):
    found = window_detections(np.array([[0.9, 0.1]]), 5.0, np.array([0.5, 0.5]), 5.0)
    names = {"x": "two\nlines\tand\r\nmore\x00\u2028here"}
    write_raven_table(tmp_path / "t.selections.txt", found, ["x", "y"], names, 6250.0)
    rows = read_raven(tmp_path / "t.selections.txt")
    assert [(row["Species"], row["Common Name"]) for row in rows] == [
        ("x", "two lines and more here")
    ]
    assert len((tmp_path / "t.selections.txt").read_text().splitlines()) == 2


def test_window_detections_keep_probabilities_at_or_above_each_threshold():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])
    found = window_detections(probs, 12.0, np.array([0.4, 0.3, 0.9]), 5.0)
    assert [(d.begin_s, d.end_s, d.column, d.confidence) for d in found] == [
        (0.0, 5.0, 0, 0.5),
        (0.0, 5.0, 1, 0.3),
        (10.0, 12.0, 0, 0.4),
        (10.0, 12.0, 1, 0.4),
    ]


def soundscape_rows(path):
    """{(MediaId, window start s): {ClassId: probability}} of a soundscape run file."""
    rows = {}
    for line in path.read_text().splitlines():
        media_id, span, class_id, probability = line.split(";")
        h, m, s = map(int, span.split("-")[0].split(":"))
        rows.setdefault((media_id, 3600 * h + 60 * m + s), {})[class_id] = float(probability)
    return rows


def test_raven_and_audacity_tables_hold_the_detections_of_the_run_file(
    run_dir, test_wavs, tmp_path
):
    out = tmp_path / "soundscape.csv"
    raven, audacity = tmp_path / "raven", tmp_path / "audacity"
    predict_cli("--run", run_dir, "--audio", *test_wavs, "--out", out, "--soundscape",
                "--raven", raven, "--audacity", audacity, "--min-conf", 0.15,
                "--work-dir", tmp_path / "cache")  # fmt: skip
    run_file = soundscape_rows(out)
    names = {s.class_id: s.vernacular for s in SPECIES}
    for wav in test_wavs:
        rows = read_raven(raven / f"{wav.stem}.selections.txt")
        with open(raven / f"{wav.stem}.selections.txt", encoding="utf-8") as file:
            assert tuple(file.readline().rstrip("\n").split("\t")) == RAVEN_COLUMNS
        expected = sorted(
            (start, class_id)
            for (media_id, start), probs in run_file.items()
            if media_id == wav.stem
            for class_id, probability in probs.items()
            if probability >= 0.15
        )
        assert expected, "the test needs some detections"
        assert sorted((float(r["Begin Time (s)"]), r["Species"]) for r in rows) == expected
        assert [int(r["Selection"]) for r in rows] == list(range(1, len(rows) + 1))
        for row in rows:
            assert row["View"] == "Spectrogram 1" and row["Channel"] == "1"
            assert float(row["End Time (s)"]) - float(row["Begin Time (s)"]) <= 5.0
            assert float(row["High Freq (Hz)"]) == 6250.0  # 200 bins of 16000 / 512 Hz
            assert float(row["Confidence"]) >= 0.15
            assert row["Common Name"] == names[row["Species"]]
        labels = read_audacity(audacity / f"{wav.stem}.labels.txt")
        assert [(start, end) for start, end, _ in labels] == [
            (float(r["Begin Time (s)"]), float(r["End Time (s)"])) for r in rows
        ]
        assert all(
            label.startswith(r["Species"]) for (_, _, label), r in zip(labels, rows, strict=True)
        )


def test_thresholds_of_the_run_replace_min_conf(run_dir, test_wavs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best_val_map.keras", "params.json", "classes.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    args = ["--run", run, "--audio", *test_wavs, "--out", tmp_path / "s.csv", "--soundscape",
            "--raven", tmp_path / "raven", "--thresholds", "run",
            "--work-dir", tmp_path / "cache"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        predict_cli(*args)
    assert exit_info.value.code == 2
    assert "thresholds.json not found" in capsys.readouterr().err
    chosen = {c: {"threshold": 1.0, "source": "fallback"} for c in CLASSES}
    chosen[CLASSES[2]] = {"threshold": 0.0, "source": "max_f1"}  # every window detects it
    write_thresholds(run / "thresholds.json", chosen, "best_val_map.keras")
    predict_cli(*args)
    rows = read_raven(tmp_path / "raven" / f"{test_wavs[0].stem}.selections.txt")
    windows = {key for key in soundscape_rows(tmp_path / "s.csv") if key[0] == test_wavs[0].stem}
    assert [r["Species"] for r in rows] == [CLASSES[2]] * len(windows)


def test_bad_output_arguments_are_refused(run_dir, test_wavs, tmp_path, capsys):
    base = ["--run", run_dir, "--audio", test_wavs[0], "--out", tmp_path / "r.csv"]
    for extra in (
        ["--raven", tmp_path / "r"],  # no --soundscape
        ["--soundscape", "--raven", tmp_path / "r", "--min-conf", "0.2", "--thresholds", "run"],
        ["--soundscape", "--raven", tmp_path / "r", "--min-conf", "1.5"],
        ["--min-conf", "0.2"],  # nothing to select
    ):
        with pytest.raises(SystemExit) as exit_info:
            predict_cli(*base, *extra)
        assert exit_info.value.code == 2
    assert "need --soundscape" in capsys.readouterr().err
    (tmp_path / "a file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        predict_cli(*base, "--soundscape", "--raven", tmp_path / "a file")
    assert exit_info.value.code == 2
    assert "error: cannot make the table folder" in capsys.readouterr().err


def refused(capsys, *args) -> str:
    """predict's bad-input exit: status 2, one `error:` line; that line."""
    with pytest.raises(SystemExit) as exit_info:
        predict_cli(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    return err


def everything(root):
    """Every entry under root: relative path -> content, link target, or a kind."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "folder" if path.is_dir() else "other"
    return found


@pytest.mark.parametrize(
    "case, message",
    [
        ("raven table with the user's columns", "is not a Raven table written by --raven"),
        ("notes", "is not a Raven table written by --raven"),
        ("edited labels", "is not an Audacity label track written by --audacity"),
        ("folder", "is a folder"),
        ("link", "is a link"),
        ("dangling link", "is a link"),
        ("pipe", "is not a regular file"),
        ("--out", "is also --out"),
        ("--human-csv", "is also --human-csv"),
        ("--embeddings", "is also --embeddings"),
    ],
)
def test_tables_never_replace_what_is_not_theirs(
    run_dir, test_wavs, tmp_path, capsys, case, message
):
    """Every table path is checked before any work: a user's file, a folder, a link or
    another output at the path of the second recording's table stops the run with one line
    naming it, before the first table is written; nothing is changed, no temporary file left."""
    tables = tmp_path / "tables"
    tables.mkdir()
    second = test_wavs[1].stem
    raven, labels = tables / f"{second}.selections.txt", tables / f"{second}.labels.txt"
    outputs = {"--out": tmp_path / "s.csv"}
    target = raven
    if case == "raven table with the user's columns":
        raven.write_text("\t".join(RAVEN_COLUMNS) + "\tMy notes\n1\tSpectrogram 1\t1\tgood\n")
    elif case == "notes":
        raven.write_text("heard a wren here\n")
    elif case == "edited labels":
        target = labels
        labels.write_text("0.000000\t5.000000\tsyntrl Trillula rapida (0.912)\n"
                          "5.000000\t10.000000\tconfirmed: a wren\n")  # fmt: skip
    elif case == "folder":
        (raven / "inside").mkdir(parents=True)
    elif case == "link":
        (tmp_path / "elsewhere.txt").write_text("")
        raven.symlink_to(tmp_path / "elsewhere.txt")
    elif case == "dangling link":
        raven.symlink_to(tmp_path / "nowhere.txt")
    elif case == "pipe":
        os.mkfifo(raven)
    else:
        outputs[case] = raven
        if case == "--out":
            raven.write_text("")
    before = everything(tmp_path)
    options = [item for pair in outputs.items() for item in pair]
    err = refused(capsys, "--run", run_dir, "--audio", *test_wavs, *options, "--soundscape",
                  "--raven", tables, "--audacity", tables,
                  "--work-dir", tmp_path / "cache")  # fmt: skip
    assert f"{target} (the table of MediaId '{second}') {message}" in err
    assert everything(tmp_path) == before  # no table, no run file, no .part file, no cache


def test_tables_of_an_earlier_run_and_empty_files_are_replaced(run_dir, test_wavs, tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / f"{test_wavs[0].stem}.selections.txt").write_text("")
    args = ["--run", run_dir, "--audio", *test_wavs, "--out", tmp_path / "s.csv", "--soundscape",
            "--raven", tables, "--audacity", tables, "--min-conf", 0.15,
            "--work-dir", tmp_path / "cache"]  # fmt: skip
    predict_cli(*args)
    first = everything(tables)
    assert len(first) == 4
    predict_cli(*args)  # its own tables (Raven and Audacity) are replaced
    assert everything(tables) == first


def test_a_damaged_classes_json_is_one_error_line(run_dir, test_wavs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best_val_map.keras", "params.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    (run / "classes.json").write_text(
        json.dumps({"classes": CLASSES, "class_names": {CLASSES[0]: 3}})
    )
    err = refused(capsys, "--run", run, "--audio", test_wavs[0], "--out", tmp_path / "s.csv",
                  "--soundscape", "--raven", tmp_path / "raven", "--min-conf", 0,
                  "--work-dir", tmp_path / "cache")  # fmt: skip
    assert f"error: {run / 'classes.json'}: not a run folder's classes.json" in err
    assert not (tmp_path / "s.csv").exists()


# ---- embeddings ------------------------------------------------------------------------------


def test_embeddings_are_the_last_dense_input_of_every_window_chunk(run_dir, test_wavs, tmp_path):
    import keras

    out, embeddings_file = tmp_path / "s.csv", tmp_path / "emb.npz"
    predict_cli("--run", run_dir, "--audio", *test_wavs, "--out", out, "--soundscape",
                "--embeddings", embeddings_file, "--work-dir", tmp_path / "cache")  # fmt: skip
    with np.load(embeddings_file, allow_pickle=False) as npz:
        saved = {name: npz[name] for name in npz.files}
    assert saved["embeddings"].dtype == np.float32 and saved["embeddings"].shape[1] == 8
    assert str(saved["layer"]) == "species"
    assert set(saved["media_id"]) == {wav.stem for wav in test_wavs}
    # the last Dense layer applied to the embeddings gives the run file's window probabilities
    dense = keras.saving.load_model(run_dir / "best_val_map.keras").get_layer("species")
    weights, bias = (np.asarray(w) for w in dense.get_weights())
    logits = saved["embeddings"].astype(np.float64) @ weights + bias
    chunk_probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    chunk_probs /= chunk_probs.sum(axis=1, keepdims=True)
    run_file = soundscape_rows(out)
    for (media_id, start), probs in run_file.items():
        rows = (saved["media_id"] == media_id) & (saved["start_s"] == start)
        assert rows.any()
        mean = chunk_probs[rows].mean(axis=0)
        expected = [probs.get(c, 0.0) for c in CLASSES]
        np.testing.assert_allclose(mean / mean.sum(), expected, atol=2e-5)
        assert np.all(saved["end_s"][rows] - start <= 5.0)
    for media_id in set(saved["media_id"]):
        rows = saved["media_id"] == media_id
        assert list(saved["chunk_index"][rows]) == list(range(rows.sum()))


def test_embeddings_without_soundscape_have_no_time(run_dir, test_wavs, tmp_path):
    embeddings_file = tmp_path / "emb.npz"
    predict_cli("--run", run_dir, "--audio", test_wavs[0], "--out", tmp_path / "r.csv",
                "--embeddings", embeddings_file, "--work-dir", tmp_path / "cache")  # fmt: skip
    with np.load(embeddings_file, allow_pickle=False) as npz:
        assert len(npz["embeddings"]) == len(npz["media_id"]) > 0
        assert np.isnan(npz["start_s"]).all()
    assert read_run_file(tmp_path / "r.csv")  # the run file is unchanged by it


def test_embedding_model_works_for_sequential_models():
    import keras

    model = keras.Sequential(
        [
            keras.Input((6, 5, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    embedder = EmbeddingModel(model)
    batch = np.random.default_rng(0).normal(size=(4, 6, 5, 1)).astype(np.float32)
    probs, embeddings = embedder.split(embedder.predict_on_batch(batch))
    np.testing.assert_allclose(embeddings, batch.reshape(4, 30), rtol=1e-6)
    np.testing.assert_allclose(probs, model.predict_on_batch(batch), rtol=1e-5)


def test_embedding_model_follows_the_modern_recipes_normalised_model():
    """normalized_model puts a normalisation layer in front of the model file's model, which
    then sits nested as the last layer: the embedding is taken inside it."""
    import keras

    from train.recipe import normalized_model

    inner = keras.Sequential(
        [
            keras.Input((6, 5, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    batch = np.random.default_rng(1).normal(size=(4, 6, 5, 1)).astype(np.float32)
    stats = batch[..., 0].mean(axis=(0, 2)), batch[..., 0].var(axis=(0, 2))
    for normalize, normalized in (
        ("dataset", (batch - stats[0][:, None, None]) / np.sqrt(stats[1])[:, None, None]),
        ("chunk", (batch - batch.mean(axis=(1, 2), keepdims=True))
         / np.sqrt(batch.var(axis=(1, 2), keepdims=True) + 1e-3)),
    ):  # fmt: skip
        model = normalized_model(inner, normalize, stats)
        embedder = EmbeddingModel(model)
        probs, embeddings = embedder.split(embedder.predict_on_batch(batch))
        assert embedder.layer_name == inner.layers[-1].name and embedder.dims == 4
        hidden = keras.Model(inner.inputs, inner.get_layer("hidden").output)
        np.testing.assert_allclose(
            embeddings, hidden.predict_on_batch(normalized), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(probs, model.predict_on_batch(batch), rtol=1e-5, atol=1e-6)


def test_a_model_without_dense_layer_has_no_embeddings():
    import keras

    model = keras.Sequential(
        [keras.Input((6, 5, 1)), keras.layers.Conv2D(3, (6, 5)), keras.layers.Flatten()]
    )
    with pytest.raises(OutputError, match="no Dense layer"):
        EmbeddingModel(model)
