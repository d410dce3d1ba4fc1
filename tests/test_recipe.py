"""The training recipes: 2016 defaults unchanged, normalisation saved in the model, the model
file's compile hook, the schedule and time budget, pooling chosen on validation, and a tiny
modern run end to end."""

import csv
import dataclasses
import json
import os
import re
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from test_train import train_args

from tests.helpers import PARAMS, TINY_MODEL
from train import recipe, train_model
from train.callbacks import MAPCallback, RunBackup, training_callbacks

ROOT = Path(__file__).resolve().parents[1]
PARAMS_NO_FILTER = dataclasses.replace(PARAMS, noise_filter=False)  # 16 bands: too few to filter


def test_the_2016_recipe_is_the_default_and_keeps_the_old_defaults():
    args = train_model.parse_args(["--data", "d.h5", "--out", "run"])
    assert args.recipe == "2016"
    assert args.model == ROOT / "train" / "model-BirdClef.py"
    assert (args.epochs, args.patience, args.batch_size, args.learning_rate) == (
        20000,
        100,
        32,
        0.001,
    )
    assert (args.optimizer, args.normalize, args.augment, args.class_balance) == (
        "rmsprop",
        "none",
        "none",
        "none",
    )
    assert (args.early_stop_on, args.time_budget, args.pooling) == ("val_loss", 0.0, "mean")
    assert (args.inference_model, args.val_fraction, args.test_fraction) == (
        "best_val_map",
        0.1,
        0.1,
    )
    compiled = recipe.compile_args(args)
    assert isinstance(compiled["optimizer"], recipe.Keras1RMSprop)
    assert compiled["loss"] == "categorical_crossentropy"


def test_the_2016_rmsprop_steps_as_keras_1_did():
    """p - lr * g / (sqrt(v) + 1e-8), v = (1 - rho) g^2 after one step from zero (Keras 1's
    RMSprop); Keras 3's default epsilon moved the 1e-5 gradient's step 100 times less."""
    args = train_model.parse_args(["--data", "d.h5", "--out", "run"])
    optimizer = recipe.compile_args(args)["optimizer"]
    gradient = np.array([1e-5, 1e-2, 1.0, -3.0], dtype=np.float32)
    weights = keras.Variable(np.zeros(4, dtype=np.float32))
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), weights)])
    keras_1 = -0.001 * gradient / (np.sqrt(0.1 * gradient.astype(np.float64) ** 2) + 1e-8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weights), keras_1, rtol=1e-5)


def test_modern_recipe_defaults_and_explicit_options_win():
    args = train_model.parse_args(
        ["--data", "d.h5", "--out", "run", "--recipe", "modern", "--epochs", "7"]
    )
    assert args.epochs == 7 and args.model == ROOT / "train" / "model-ResNet.py"
    assert args.optimizer == "adamw" and args.normalize == "dataset"
    assert args.early_stop_on == "none" and args.pooling == "auto"
    assert args.inference_model == "final" and (args.val_fraction, args.test_fraction) == (0.05, 0)
    with pytest.raises(SystemExit):
        train_model.parse_args(["--data", "d.h5", "--out", "r", "--augment", "crop,wobble"])


@pytest.mark.parametrize("normalize", ["dataset", "chunk"])
def test_normalisation_is_saved_in_and_restored_from_the_keras_file(
    normalize, tiny_model, tmp_path
):
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (30, 16, 20, 1)).astype(np.float32)
    x[:, :8] += 4  # bands with other levels
    stats = recipe.band_statistics(x)
    np.testing.assert_allclose(stats[0], x[..., 0].mean(axis=(0, 2)), rtol=1e-5)
    model = recipe.normalized_model(
        train_model.build_model_from_file(tiny_model, (16, 20, 1), 4), normalize, stats
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-5)
    first = loaded.layers[1]
    normalized = keras.Model(loaded.inputs, first.output).predict(x, verbose=0)
    if normalize == "dataset":
        assert isinstance(first, keras.layers.Normalization)
        np.testing.assert_allclose(normalized.mean(axis=(0, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(normalized.std(axis=(0, 2, 3)), 1, atol=1e-3)
    else:
        assert isinstance(first, keras.layers.LayerNormalization)
        np.testing.assert_allclose(normalized.mean(axis=(1, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(normalized.std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_band_statistics_leave_out_the_floor():
    x = np.full((4, 2, 10, 1), -10.0, dtype=np.float32)
    x[:, 0, :5] = 2.0
    x[:, 0, 5:] = 4.0
    mean, variance = recipe.band_statistics(x, floor=-10.0)
    assert mean[0] == pytest.approx(3.0) and variance[0] == pytest.approx(1.0)
    assert mean[1] == pytest.approx(-10.0)  # all floor: used as it is


def test_class_weights_favour_rare_classes_and_average_one():
    labels = np.array([0] * 90 + [1] * 10)
    weights = recipe.class_weights(labels, 3)
    assert weights[1] > weights[0] > 0 and weights[2] == 0
    assert weights[labels].mean() == pytest.approx(1.0)


def test_help_shows_each_recipe_default_from_the_recipes(capsys):
    with pytest.raises(SystemExit):
        train_model.parse_args(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[1]
    helps = {}  # flag -> its help, unwrapped
    for block in re.split(r"\n(?=  -)", options):
        flag = block.split()[0]
        helps[flag] = " ".join(block.split())
    for name, modern in recipe.RECIPES["modern"].items():
        option_help = helps["--" + name.replace("_", "-")]
        old = train_model.shown_default(recipe.RECIPES["2016"][name])
        shown = train_model.shown_default(modern)
        assert option_help.endswith(f"(2016: {old}; modern: {shown})"), option_help


def test_model_file_compile_hook_is_used_when_present():
    args = train_model.parse_args(["--data", "d.h5", "--out", "r", "--recipe", "modern"])
    modern = recipe.compile_args(args)
    assert isinstance(modern["optimizer"], keras.optimizers.AdamW)
    assert modern["loss"].get_config()["label_smoothing"] == pytest.approx(0.1)

    def compile_args(settings):
        return {"optimizer": keras.optimizers.SGD(settings["learning_rate"]), "loss": "mse"}

    chosen = recipe.compile_args(args, types.SimpleNamespace(compile_args=compile_args))
    assert isinstance(chosen["optimizer"], keras.optimizers.SGD) and chosen["loss"] == "mse"
    with pytest.raises(ValueError, match="loss"):
        recipe.compile_args(args, types.SimpleNamespace(compile_args=lambda s: {"optimizer": 1}))


def test_warmup_then_cosine_ending_with_the_steps_or_the_time_budget():
    rates = [recipe.warmup_cosine(step, 100, 10, 1.0) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] < 0.01
    # the clock says half the budget after the warm-up has passed: the decay is half done
    assert recipe.warmup_cosine(12, 1000, 10, 1.0, time_share=0.5) == pytest.approx(0.5)
    assert recipe.warmup_cosine(12, 1000, 10, 1.0, time_share=1.5) == pytest.approx(0.0)
    assert recipe.warmup_cosine(5, 1000, 10, 1.0, time_share=0.9) == pytest.approx(0.6)


def test_pooling_is_chosen_on_validation_ties_go_to_the_mean():
    # recording 0 (class 0) is long: class 0 in one chunk of five; the rest say class 1
    probs = np.array([[0.9, 0.1]] + [[0.4, 0.6]] * 4 + [[0.2, 0.8]] * 2)
    recordings = np.array([0, 0, 0, 0, 0, 1, 1])
    labels = np.array([0, 1])
    pooling, scores = recipe.choose_pooling(probs, recordings, labels)
    assert pooling == "max" and scores["max"] > scores["mean"]
    pooling, scores = recipe.choose_pooling(probs[5:], recordings[5:], labels)
    assert pooling == "mean" and len(set(scores.values())) == 1


def test_tiny_modern_run_end_to_end(easy_data, tmp_path):
    run_dir = tmp_path / "modern"
    model = ROOT / "train" / "model-ResNet.py"
    argv = train_args(easy_data, model, run_dir, "--recipe", "modern", "--epochs", "3")
    assert train_model.main([*argv, "--inference-model", "auto"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"] == "modern" and config["normalize"] == "dataset"
    assert config["augment"] == "crop,mixup,specaugment,noise,gain"
    inference = json.loads((run_dir / "inference.json").read_text())
    assert inference["model_file"] in ("final.keras", "best_val_map.keras")
    assert inference["pooling"] in ("mean", "max", "power")
    validation = inference["validation_map"]
    assert set(validation) == {"final.keras", "best_val_map.keras"}
    assert all(set(maps) == {"mean", "max", "power"} for maps in validation.values())
    chosen = validation[inference["model_file"]][inference["pooling"]]
    assert chosen == max(max(maps.values()) for maps in validation.values())
    assert "test_map" in inference
    saved = keras.saving.load_model(run_dir / inference["model_file"], compile=False)
    assert saved.layers[1].name == "band_normalization"
    with (run_dir / "history.csv").open() as file:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(file)]
    assert len(rates) == 3 and rates[1] == pytest.approx(0.002, rel=0.05)  # warm-up peak
    assert rates[2] < rates[1]  # cosine decay


def test_early_stopping_can_be_switched_off(tmp_path):
    def early_stopping(monitor):
        map_callback = MAPCallback(None, None, None, None)
        callbacks = training_callbacks(tmp_path, map_callback, 5, {}, monitor)
        return [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]

    assert early_stopping("val_map")[0].monitor == "val_map"
    assert early_stopping("none") == []


def test_time_budget_ends_training_and_compile_hook_from_the_model_file(easy_data, tmp_path):
    model = tmp_path / "model-Hooked.py"
    loads = tmp_path / "loads.txt"
    model.write_text(
        TINY_MODEL
        + f"\nwith open({str(loads)!r}, 'a') as file:\n    file.write('loaded\\n')\n"
        + "\n\ndef compile_args(settings):\n"
        + "    return {'optimizer': keras.optimizers.SGD(0.01), "
        + "'loss': 'categorical_crossentropy'}\n"
    )
    run_dir = tmp_path / "budget"
    argv = train_args(easy_data, model, run_dir, "--epochs", "50", "--time-budget", "0.0001")
    assert train_model.main(argv) == 0
    assert json.loads((run_dir / "training_done.json").read_text())["epochs"] == 1
    saved = keras.saving.load_model(run_dir / "best_val_map.keras")
    assert isinstance(saved.optimizer, keras.optimizers.SGD)
    inference = json.loads((run_dir / "inference.json").read_text())
    assert inference["pooling"] == "mean" and inference["model_file"] == "best_val_map.keras"
    assert not (run_dir / "final.keras").exists()  # the 2016 recipe saves no final model
    assert loads.read_text() == "loaded\n"  # the user's model file ran once


def test_noise_dir_goes_through_the_data_front_end(easy_data, tiny_model, tmp_path, caplog):
    from scipy.io import wavfile

    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    wavfile.write(noise_dir / "hum.wav", 8000, rng.normal(0, 500, 8000 * 3).astype(np.int16))
    (noise_dir / "broken.wav").write_text("not audio")
    os.mkfifo(noise_dir / "pipe.wav")  # reading it would wait for a writer forever
    (noise_dir / "rain.flac").write_bytes(b"fLaC")
    (noise_dir / "notes.txt").write_text("where I recorded")
    chunks = recipe.noise_chunks_from_dir(noise_dir, PARAMS_NO_FILTER)
    assert chunks.shape[1:] == (16, 20, 1) and len(chunks) >= 1
    assert "broken.wav skipped" in caplog.text
    assert "rain.flac skipped: --noise-dir reads wav files only" in caplog.text
    assert "notes.txt" not in caplog.text
    assert "pipe.wav skipped: not a regular file" in caplog.text
    with pytest.raises(ValueError, match="no readable"):
        recipe.noise_chunks_from_dir(tmp_path / "nothing", PARAMS_NO_FILTER)
    run_dir = tmp_path / "run"
    argv = train_args(
        easy_data, tiny_model, run_dir, "--epochs", "1", "--augment", "noise",
        "--noise-dir", str(tmp_path / "nothing"),
    )  # fmt: skip
    assert train_model.main(argv) == 2  # a clear error, no traceback


def test_warmup_ends_early_when_its_epochs_would_take_much_of_the_budget(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(recipe.time, "perf_counter", lambda: clock["now"])
    optimizer = types.SimpleNamespace(learning_rate=keras.Variable(0.0))
    # 2 warm-up epochs of 100 steps, a 100 s budget: the warm-up may take 5 s at most
    schedule = recipe.ScheduleAndBudget(10, 100, 1.0, 2, 100.0, schedule=True)
    schedule.set_model(types.SimpleNamespace(optimizer=optimizer, stop_training=False))
    schedule.on_train_begin()
    schedule.on_epoch_begin(0)
    rates = []
    for batch in range(100):
        clock["now"] = batch * 0.1  # a slow epoch: 10 s
        schedule.on_train_batch_begin(batch)
        rates.append(float(optimizer.learning_rate.numpy()))
    close = pytest.approx  # the rate is set again once it is 1 % off (RATE_TOLERANCE)
    assert rates[0] == close(0.005)  # step 1 of 200
    assert rates[25] == close(0.5, rel=0.01)  # 2.5 s of the 5 s allowance: half way up
    assert schedule.warmup_steps == 50  # the warm-up ended at 5 s, not after 200 steps
    assert rates[50] == close(1.0, rel=0.01)  # then the decay
    assert all(a >= b for a, b in zip(rates[50:], rates[51:], strict=False))


def test_the_rate_is_set_only_when_it_moves_and_nothing_waits_after_a_step(monkeypatch):
    """Setting the rate reaches into the model (under JAX: every variable synced back to it),
    and a hook after each step makes Keras wait for every step's logs: the schedule sets the
    rate a few hundred times over a 10,000-step decay, never more than 1 % off, and neither
    it nor the backup has an after-step hook that makes Keras wait."""
    optimizer = types.SimpleNamespace(learning_rate=keras.Variable(0.0))
    schedule = recipe.ScheduleAndBudget(100, 100, 1.0, 2, 0.0, schedule=True)
    model = types.SimpleNamespace(optimizer=optimizer, stop_training=False)
    schedule.set_model(model)
    assigned = []
    monkeypatch.setattr(optimizer.learning_rate, "assign", assigned.append)
    schedule.on_train_begin()
    for epoch in range(100):
        schedule.on_epoch_begin(epoch)
        for batch in range(100):
            schedule.on_train_batch_begin(batch)
            step = epoch * 100 + batch
            ideal = recipe.warmup_cosine(step, 10_000, 200, 1.0, 0.0, 0.0)
            assert schedule.rate_set == pytest.approx(ideal, rel=0.011, abs=1e-12)
    assert len(assigned) < 1_000
    backup = RunBackup(Path("backup"))
    for callback in (schedule, backup):
        waits = type(callback).on_train_batch_end is not keras.callbacks.Callback.on_train_batch_end
        assert not waits or getattr(callback, "async_safe", False), type(callback).__name__


def test_crops_know_where_a_recordings_last_chunk_repeats_frames():
    """Recording 0: 30 frames in chunks of 12 (its last chunk repeats 6 frames of the one
    before); recording 1: 24 frames, no repeat; recording 2: one padded chunk."""
    from train.data import ChunkBatches

    x = np.zeros((6, 4, 12, 1), np.float32)
    recording = np.array([0, 0, 0, 1, 1, 2])
    train = types.SimpleNamespace(
        batches=ChunkBatches(x, np.arange(6), recording, 3, 2), chunk_recording=recording
    )
    dataset = types.SimpleNamespace(
        recordings={"n_chunks": np.array([3, 2, 1]), "n_frames": np.array([30, 24, 5])},
        params=dataclasses.replace(PARAMS, chunk_frames=12),
    )
    args = types.SimpleNamespace(augment="crop", class_balance="none", seed=0)
    batches = recipe.augmented_batches(train, dataset, None, None, args)
    assert batches.next_overlaps.tolist() == [0, 6, 0, 0, 0, 0]
    assert batches.next_positions.tolist() == [1, 2, -1, 4, -1, -1]


def resumed_schedule(monkeypatch, past_seconds: list[float]):
    """A ScheduleAndBudget of 30 epochs of 100 steps, 2 of warm-up, a 100 s budget, resumed
    after the epochs of past_seconds on a fake clock, through its first step: (the schedule,
    its stand-in model, the clock)."""
    clock = {"now": 1000.0}
    monkeypatch.setattr(recipe.time, "perf_counter", lambda: clock["now"])
    optimizer = types.SimpleNamespace(learning_rate=keras.Variable(0.0))
    model = types.SimpleNamespace(optimizer=optimizer, stop_training=False)
    schedule = recipe.ScheduleAndBudget(30, 100, 1.0, 2, 100.0, True, past_seconds)
    schedule.set_model(model)
    schedule.on_train_begin()
    schedule.on_epoch_begin(len(past_seconds))
    schedule.on_train_batch_begin(0)
    return schedule, model, clock


def test_a_resumed_run_goes_on_with_its_budget_and_decay(monkeypatch):
    """Killed after 5 epochs of 10 s (100 steps each) of a 100 s budget whose warm-up (2
    epochs, at most 5 s) ended half way through epoch 1: resumed, the decay goes on from
    where the clock left it, and training ends when the 100 s are spent in all."""
    schedule, model, clock = resumed_schedule(monkeypatch, [10.0] * 5)
    optimizer = model.optimizer
    assert schedule.warmup_steps == 50
    expected = recipe.warmup_cosine(500, 3000, 50, 1.0, time_share=(50 - 5) / (100 - 5))
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(expected)
    clock["now"] += 41.0  # 91 s in all: this epoch once more would pass the budget
    schedule.on_epoch_end(5, {})
    assert model.stop_training


def test_a_run_its_budget_ended_resumes_into_one_step_not_a_new_decay(monkeypatch):
    """Killed after training ended on its budget (epochs of 30 s, 90 s of 100 done: one more
    would pass it) and before it was marked done: resumed, it stops after one step, at the
    end of its decay, where it trained on at a tenth of the peak rate."""
    _, model, _ = resumed_schedule(monkeypatch, [30.0] * 3)
    assert model.stop_training
    assert float(model.optimizer.learning_rate.numpy()) < 0.1


def test_epoch_seconds_count_what_runs_between_epochs(monkeypatch):
    """The checkpoints, logs and backup after an epoch count in the next one's time, and the
    start of training in the first: the budget of a resumed run goes on from their sum."""
    from train import callbacks

    clock = {"now": 50.0}
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock["now"])
    timer, seconds = callbacks.EpochTime(), []
    timer.on_train_begin()
    for epoch, (training, saving) in enumerate([(10.0, 5.0), (10.0, 5.0), (12.0, 0.0)]):
        timer.on_epoch_begin(epoch)
        clock["now"] += training
        logs = {}
        timer.on_epoch_end(epoch, logs)
        seconds.append(logs["epoch_seconds"])
        clock["now"] += saving  # what the callbacks after it do
    assert seconds == [10.0, 15.0, 17.0]


def test_a_resumed_run_makes_the_budget_decision_the_run_made(monkeypatch):
    """Epochs of 30 s of steps and 6 s of checkpoints after each, a 100 s budget: the run
    stops after its second epoch (66 s, and one more with its checkpoints would pass 100 s).
    Killed after its first epoch it goes on (the checkpoints after the epoch before a kill are
    not in the time it resumes from); killed after its second, it stops at once."""
    from train import callbacks

    clock = {"now": 0.0}
    monkeypatch.setattr(recipe.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock["now"])

    def run(past_seconds, first_epoch):
        """(epoch_seconds logged, steps of each epoch) of a run until the budget stops it."""
        optimizer = types.SimpleNamespace(learning_rate=keras.Variable(0.0))
        model = types.SimpleNamespace(optimizer=optimizer, stop_training=False)
        schedule = recipe.ScheduleAndBudget(10, 100, 1.0, 0, 100.0, True, past_seconds)
        timer = callbacks.EpochTime()
        for callback in (timer, schedule):
            callback.set_model(model)
            callback.on_train_begin()
        logged, steps = [], []
        for epoch in range(first_epoch, 10):
            schedule.on_epoch_begin(epoch)
            for step in range(100):
                schedule.on_train_batch_begin(step)
                clock["now"] += 0.3
                if model.stop_training:
                    break
            steps.append(step + 1)
            logs = {}
            timer.on_epoch_end(epoch, logs)
            schedule.on_epoch_end(epoch, logs)
            logged.append(logs["epoch_seconds"])
            clock["now"] += 6.0  # the checkpoints, logs and backup
            if model.stop_training:
                return logged, steps
        return logged, steps

    logged, steps = run([], 0)
    assert steps == [100, 100] and logged == pytest.approx([30.0, 36.0])
    assert run(logged[:1], 1)[1][0] == 100  # killed after the first epoch: goes on
    assert run(logged, 2)[1] == [1]  # after the second: the budget had ended it
