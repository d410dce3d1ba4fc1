"""predict.py on a modern run: log-mel chunks of the run's length, a model taking any chunk
length, and inference.json (model file, pooling) with the --pooling override."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.io import wavfile

import predict.predict as predict_module
from predict.detections import top_frequency_hz
from predict.predict import PredictError, load_run, main
from predict.runfile import read_run_file
from preprocess.extract import recording_chunks
from preprocess.params import MODERN
from preprocess.spectrogram import frames_for_seconds
from train.metrics import recording_scores

RATE = 16000
PARAMS = dataclasses.replace(MODERN, chunk_frames=frames_for_seconds(1.0, MODERN))
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def modern_run(tmp_path_factory):
    """A run folder of the modern front end (1 s chunks) whose model, saved as final.keras
    only, takes any number of frames; its inference.json picks it and max pooling."""
    import keras

    folder = tmp_path_factory.mktemp("modern-run")
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((PARAMS.n_bins, None, 1)),
            keras.layers.Conv2D(4, 5, strides=4, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.save(folder / "final.keras")
    (folder / "params.json").write_text(PARAMS.to_json())
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    inference = {"model_file": "final.keras", "pooling": "max", "pooling_exponent": 3.0}
    inference["val_map"] = {"mean": 0.5, "max": 0.6}  # training's notes: ignored
    (folder / "inference.json").write_text(json.dumps(inference))
    return folder


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Three wavs: 0.3 s (one repeated chunk), 2.5 s and 7 s of varied noise and tones."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(5)
    for name, seconds in [("short", 0.3), ("mid", 2.5), ("long", 7.0)]:
        t = np.arange(round(seconds * RATE)) / RATE
        tones = 6000 * np.sin(2 * np.pi * (500 + 3000 * (t % 1.3)) * t) * (np.sin(3 * t) > 0)
        samples = rng.normal(0, 400, t.size) + tones
        wavfile.write(folder / f"{name}.wav", RATE, samples.astype(np.int16))
    return folder


def predicted(path) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for entry in read_run_file(path):
        table.setdefault(entry.media_id, {})[entry.class_id] = entry.probability
    return table


def expected(run, wav, pooling: str) -> dict[str, float]:
    """The pooled, renormalised softmax of the file's chunks, computed here directly."""
    pieces, _, _ = recording_chunks(wav, run.params, 100)
    chunks = np.concatenate(list(pieces))
    probs = np.asarray(run.model.predict_on_batch(chunks[..., None]))
    pooled = recording_scores(probs, np.zeros(len(probs)), pooling)[1][0]
    return dict(zip(CLASSES, pooled, strict=True))


def test_inference_json_chooses_the_model_and_pooling(modern_run, audio, tmp_path):
    run = load_run(modern_run)
    assert (run.inference.pooling, run.inference.pooling_exponent) == ("max", 3.0)
    assert run.model.input_shape == (None, 128, None, 1)
    out = tmp_path / "run.csv"
    main(["--run", str(modern_run), "--audio", str(audio), "--out", str(out)])
    table = predicted(out)
    assert set(table) == {"short", "mid", "long"}
    for media_id, scores in table.items():
        truth = expected(run, audio / f"{media_id}.wav", "max")
        for class_id, probability in scores.items():
            assert probability == pytest.approx(truth[class_id], abs=1e-4)


def test_pooling_option_overrides_the_run(modern_run, audio, tmp_path):
    run = load_run(modern_run, pooling="mean")
    assert run.inference.pooling == "mean"
    mean_out, max_out = tmp_path / "mean.csv", tmp_path / "max.csv"
    main(
        [
            "--run",
            str(modern_run),
            "--audio",
            str(audio),
            "--out",
            str(mean_out),
            "--pooling",
            "mean",
        ]
    )
    main(["--run", str(modern_run), "--audio", str(audio), "--out", str(max_out)])
    mean_table, max_table = predicted(mean_out), predicted(max_out)
    truth = expected(run, audio / "long.wav", "mean")
    for class_id, probability in mean_table["long"].items():
        assert probability == pytest.approx(truth[class_id], abs=1e-4)
    assert mean_table["long"] != pytest.approx(max_table["long"], abs=1e-3)  # 6 chunks differ
    assert mean_table["short"] == pytest.approx(max_table["short"], abs=1e-4)  # one chunk


def test_a_run_without_inference_json_is_applied_as_in_2016(modern_run, tmp_path):
    folder = tmp_path / "run2016"
    folder.mkdir()
    for name in ("params.json", "classes.json"):
        (folder / name).write_text((modern_run / name).read_text())
    (folder / "best_val_map.keras").write_bytes((modern_run / "final.keras").read_bytes())
    run = load_run(folder)
    assert (run.inference.pooling, run.inference.pooling_exponent) == ("mean", 3.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"pooling": "median"}', "not one of mean, max, power"),
        ('{"pooling": "power", "pooling_exponent": 0}', "above 0 and at most 100"),
        ('{"model_file": 3}', "not a file name"),
        ('["best_val_map.keras"]', "not a JSON object"),
        ("not json", "damaged inference.json"),
        # a model outside the run folder is never loaded
        ('{"model_file": "../outside/final.keras"}', "not a file name in the run folder"),
        ('{"model_file": "ABSOLUTE/final.keras"}', "not a file name in the run folder"),
        ('{"model_file": "sub\\\\final.keras"}', "not a file name in the run folder"),
        ('{"model_file": ".."}', "not a file name in the run folder"),
        # an exponent that ranks every class equal
        ('{"pooling": "power", "pooling_exponent": Infinity}', "above 0 and at most 100"),
        ('{"pooling": "power", "pooling_exponent": 1e300}', "above 0 and at most 100"),
        ('{"pooling": "power", "pooling_exponent": NaN}', "above 0 and at most 100"),
        ('{"pooling": "power", "pooling_exponent": "3"}', "above 0 and at most 100"),
    ],
)
def test_a_bad_inference_json_is_named(modern_run, tmp_path, content, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("params.json", "classes.json", "final.keras"):
        (folder / name).write_bytes((modern_run / name).read_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "final.keras").write_bytes((modern_run / "final.keras").read_bytes())
    (folder / "inference.json").write_text(content.replace("ABSOLUTE", str(outside)))
    with pytest.raises(PredictError, match=message) as error:
        load_run(folder)
    assert str(error.value).startswith(f"{folder / 'inference.json'}: damaged inference.json (")


NESTED = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON decoder goes


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        # each value in range, but no recording can go through them: said before the model
        ("params.json", lambda p: {**p, "nfft": 2}, "damaged params.json"),
        ("params.json", lambda p: {**p, "noise_filter": True, "n_band_edges": 65536}, "damaged"),
        ("params.json", lambda _: NESTED, "damaged params.json"),
        ("classes.json", lambda _: NESTED, "not a run folder's classes.json"),
        ("inference.json", lambda _: NESTED, "damaged inference.json"),
    ],
)
def test_run_files_no_recording_can_go_through_are_named(
    modern_run, tmp_path, name, change, message
):
    folder = tmp_path / "bad"
    folder.mkdir()
    for each in ("params.json", "classes.json", "inference.json", "final.keras"):
        (folder / each).write_bytes((modern_run / each).read_bytes())
    changed = change(json.loads((folder / name).read_text()))
    (folder / name).write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(PredictError, match=message) as error:
        load_run(folder)
    assert str(folder / name) in str(error.value)


def test_inference_json_as_training_writes_it_is_read(modern_run, tmp_path):
    """What train/recipe.write_inference writes (every pooling, exponent 3) is accepted."""
    from train.metrics import POOLINGS, POWER_EXPONENT

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("params.json", "classes.json", "final.keras"):
        (folder / name).write_bytes((modern_run / name).read_bytes())
    for pooling in POOLINGS:
        inference = {"model_file": "final.keras", "pooling": pooling}
        inference["pooling_exponent"] = POWER_EXPONENT
        (folder / "inference.json").write_text(json.dumps(inference, indent=1) + "\n")
        assert predict_module.read_inference(folder) == predict_module.Inference(
            "final.keras", pooling, POWER_EXPONENT
        )


def test_raven_tables_give_the_mel_bands_top_frequency():
    assert top_frequency_hz(PARAMS) == 8000.0
    assert top_frequency_hz(dataclasses.replace(PARAMS, fmax=6000.0)) == 6000.0
    assert top_frequency_hz(dataclasses.replace(PARAMS, frontend="psd2016", n_bins=200)) == 3125.0
