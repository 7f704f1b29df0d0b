"""`WeightRollCheckpoint` in `model.fit` on a small model trained on real data (digits)."""

import csv
import inspect
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

import weightroll
from weightroll._keras import roll as roll_lib
from weightroll.callbacks import WeightRollCheckpoint

pytestmark = pytest.mark.slow  # every test trains a model with the callback
sklearn_datasets = pytest.importorskip("sklearn.datasets")

HIDDEN = 64
BATCH = 64
TRAIN = 512
VALIDATION = 128


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = (data.data / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:TRAIN + VALIDATION], y[TRAIN:TRAIN + VALIDATION])


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


_TRAINED_BY_FIT = {}  # the model `_fit` trains, with its initial variables and optimizer state


def _fresh_model():
    """The model `_model()` builds, as it builds it, without building one again.

    Keras traces a new model's train, test and predict functions at its first
    `fit` (most of each test's time, under JAX most of all); this model keeps
    them. Each call sets it back to the state `_model()` gives it: the same
    seeds, its initial weights, and an optimizer state nothing has trained
    (Adam's, built: zero iterations and moments, the learning rate as compiled).
    """
    if not _TRAINED_BY_FIT:
        model = _model()
        model.optimizer.build(model.trainable_variables)
        _TRAINED_BY_FIT["model"] = model
        _TRAINED_BY_FIT["initial"] = [v.numpy() for v in model.variables + model.optimizer.variables]
    model = _TRAINED_BY_FIT["model"]
    keras.utils.set_random_seed(0)
    for variable, value in zip(model.variables + model.optimizer.variables, _TRAINED_BY_FIT["initial"]):
        variable.assign(value)
    return model


def _fit(digits, callbacks, epochs=3, model=None):
    (x, y), validation = digits
    model = model or _fresh_model()
    history = model.fit(x, y, validation_data=validation, epochs=epochs, batch_size=BATCH,
                        shuffle=False, verbose=0, callbacks=callbacks)
    return model, history


def _archives(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".wroll"))


def _is_better(mode):
    return (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)


def _improving_epochs(values, better):
    best, epochs = None, []
    for epoch, value in enumerate(values, start=1):
        if best is None or better(value, best):
            best = value
            epochs.append(epoch)
    return epochs


# Arguments

def test_takes_model_checkpoints_parameters_in_order_then_keyword_only_options():
    keras_parameters = list(inspect.signature(keras.callbacks.ModelCheckpoint).parameters.values())
    ours = list(inspect.signature(WeightRollCheckpoint).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(keras_parameters)]] == \
        [(p.name, p.kind, p.default) for p in keras_parameters]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(keras_parameters):])


def test_its_roll_options_are_rolls_with_the_same_defaults():
    def keyword_only(function, skip=()):
        return {p.name: p.default for p in inspect.signature(function).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in skip}

    # Not for checkpoints (yet): sharded archives, whose shards `max_to_keep` would have to delete too.
    not_taken = {"max_shard_size"}
    assert keyword_only(WeightRollCheckpoint, skip={"max_to_keep"}) == keyword_only(weightroll.roll, not_taken)


def test_positional_arguments_mean_what_they_mean_for_model_checkpoint(tmp_path):
    args = (str(tmp_path / "m.weights.wroll"), "val_accuracy", 1, True, True, "max", 3, 0.5)
    ours, theirs = WeightRollCheckpoint(*args), keras.callbacks.ModelCheckpoint(
        str(tmp_path / "m.weights.h5"), *args[1:])
    for name in ("monitor", "verbose", "save_best_only", "save_weights_only", "mode", "save_freq", "best"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_rejects_a_filepath_that_does_not_end_in_wroll(tmp_path):
    with pytest.raises(weightroll.WrollError, match=r"must end in `\.wroll`.*model\.keras"):
        WeightRollCheckpoint(tmp_path / "model.keras")


def test_weights_only_archives_must_end_in_weights_wroll(tmp_path):
    with pytest.raises(ValueError, match=r"`save_weights_only=True`.*must end in `\.weights\.wroll`.*m\.wroll"):
        WeightRollCheckpoint(tmp_path / "m.wroll", save_weights_only=True)
    WeightRollCheckpoint(tmp_path / "m.weights.wroll", save_weights_only=True)
    WeightRollCheckpoint(tmp_path / "m.weights.wroll")  # a model archive may be named so, as in Keras


@pytest.mark.parametrize("save_freq", ["batch", 0, -3, 2.5, True])
def test_rejects_a_save_freq_that_is_neither_epoch_nor_a_positive_integer(tmp_path, save_freq):
    with pytest.raises(weightroll.WrollError, match="Unrecognized save_freq"):
        WeightRollCheckpoint(tmp_path / "m.wroll", save_freq=save_freq)


@pytest.mark.parametrize("max_to_keep", [0, -1, 1.5, "2"])
def test_rejects_a_max_to_keep_that_is_not_a_positive_integer(tmp_path, max_to_keep):
    with pytest.raises(weightroll.WrollError, match="`max_to_keep` must be a positive integer"):
        WeightRollCheckpoint(tmp_path / "m.wroll", max_to_keep=max_to_keep)


def test_an_unknown_argument_is_a_type_error_as_for_model_checkpoint(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'save_weight_only'"):
        WeightRollCheckpoint(tmp_path / "m.wroll", save_weight_only=True)


@pytest.mark.parametrize("options, message", [
    ({"bits": 9}, "`bits` must be an integer from 1 to 8"),
    ({"decoder": "png"}, "`decoder` must be one of"),
])
def test_rejects_bad_roll_options_before_training(tmp_path, options, message):
    with pytest.raises(weightroll.WrollError, match=message):
        WeightRollCheckpoint(tmp_path / "m.wroll", **options)


def test_a_monitor_auto_mode_cannot_orient_raises_at_the_first_epoch_end_as_model_checkpoint_does(digits,
                                                                                                  tmp_path):
    add_custom = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(custom=1.0))
    for checkpoint in (keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"), monitor="custom"),
                       WeightRollCheckpoint(tmp_path / "m.wroll", monitor="custom")):
        with pytest.raises(ValueError, match="monitor=custom, but Keras isn't able to automatically determine"):
            _fit(digits, [add_custom, checkpoint], epochs=1)
    assert not (tmp_path / "m.wroll").exists()


def test_an_existing_folder_as_filepath_is_refused_naming_it(digits, tmp_path):
    (tmp_path / "taken.wroll").mkdir()
    with pytest.raises(IsADirectoryError, match=r"non-directory filepath.*taken\.wroll"):
        _fit(digits, [WeightRollCheckpoint(tmp_path / "taken.wroll")], epochs=1)


def test_validation_data_of_the_wrong_shape_is_refused_before_training_naming_the_input_shape(digits,
                                                                                               tmp_path):
    batches = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))
    checkpoint = WeightRollCheckpoint(tmp_path / "m.wroll", validation_data=digits[1][0][:, :60])
    with pytest.raises(weightroll.WrollError, match=r"`validation_data` does not fit model '.*': it takes "
                                                    r"inputs of shape \(None, 64\), but it received an array "
                                                    rf"of shape \({VALIDATION}, 60\)"):
        _fit(digits, [checkpoint, count], epochs=1)
    assert batches == []


def test_unknown_mode_warns_and_falls_back_to_auto(tmp_path):
    with pytest.warns(UserWarning, match="mode 'up' is unknown, fallback to auto"):
        checkpoint = WeightRollCheckpoint(tmp_path / "m.wroll", mode="up")
    assert checkpoint.mode == "auto"


# Saving


def test_writes_one_loadable_archive_per_epoch_named_from_epoch_and_logs(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "new" / "deeper" / "{epoch:02d}-{val_loss:.3f}.wroll")
    _, history = _fit(digits, [checkpoint])
    expected = [f"{e:02d}-{v:.3f}.wroll" for e, v in enumerate(history.history["val_loss"], start=1)]
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == expected  # and no temporary files
    x_val = digits[1][0]
    for name in expected:
        loaded = weightroll.load_rolled(tmp_path / "new" / "deeper" / name)
        assert loaded.predict(x_val, verbose=0).shape == (VALIDATION, 10)


@pytest.mark.parametrize("options", [{}, {"bits": 4}, {"quality": "small"}])
def test_last_archive_is_what_roll_writes_for_the_final_weights(digits, tmp_path, options):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", **options)
    model, _ = _fit(digits, [checkpoint])
    weightroll.roll(model, tmp_path / "direct.wroll", **options)
    rolled_in_fit = weightroll.unroll(tmp_path / "3.wroll")
    rolled_after = weightroll.unroll(tmp_path / "direct.wroll")
    assert list(rolled_in_fit) == list(rolled_after)
    for path in rolled_after:
        np.testing.assert_array_equal(rolled_in_fit[path], rolled_after[path])


def test_reports_describe_every_archive_written(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll")
    _fit(digits, [checkpoint])
    assert [os.path.basename(r.filepath) for r in checkpoint.reports] == ["1.wroll", "2.wroll", "3.wroll"]
    for report in checkpoint.reports:
        assert report.archive_bytes == os.path.getsize(report.filepath)


def test_a_missing_placeholder_key_raises_naming_the_available_keys(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}-{val_f1:.2f}.wroll")
    with pytest.raises(weightroll.WrollError, match=r"Failed to format.*'val_f1'.*val_loss"):
        _fit(digits, [checkpoint], epochs=1)


def test_integer_save_freq_rolls_every_n_batches_across_epochs(digits, tmp_path):
    # 512 samples in batches of 64: 8 batches an epoch, so every 5th batch is
    # batch 5 of epoch 1, then batches 2 and 7 of epoch 2.
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}-{batch}.wroll", save_freq=5)
    _fit(digits, [checkpoint], epochs=2)
    assert _archives(tmp_path) == ["1-5.wroll", "2-2.wroll", "2-7.wroll"]


def test_save_weights_only_writes_archives_that_load_weights_restores(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.weights.wroll", save_weights_only=True)
    model, _ = _fit(digits, [checkpoint], epochs=2)
    fresh = _model(seed=1)
    weightroll.load_weights(fresh, tmp_path / "2.weights.wroll")
    rolled = weightroll.unroll(tmp_path / "2.weights.wroll")
    for variable, expected in zip(fresh.weights, rolled.values()):
        np.testing.assert_array_equal(variable.numpy(), expected)
    with pytest.raises(weightroll.WrollError, match="weights only"):
        weightroll.load_rolled(tmp_path / "2.weights.wroll")


# Best only

# Monitored values that go both ways, so that min and max modes pick different epochs.
# They replace the real ones in `logs` before the checkpoint sees them (Keras passes one
# logs dict along the callback list): training dynamics differ between backends.
_UP_AND_DOWN = [0.9, 0.6, 0.7, 0.4, 0.5, 0.3]


@pytest.mark.parametrize(
    "monitor, mode, expected_direction",
    [
        ("val_loss", "auto", "min"),
        ("val_loss", "min", "min"),
        ("val_accuracy", "auto", "max"),
        ("accuracy", "max", "max"),
    ],
)
def test_save_best_only_rolls_only_improving_epochs(digits, tmp_path, monitor, mode, expected_direction):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", monitor=monitor, mode=mode,
                                      save_best_only=True)
    scripted = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logs.__setitem__(monitor, _UP_AND_DOWN[epoch]))
    _, history = _fit(digits, [scripted, checkpoint], epochs=len(_UP_AND_DOWN))
    values = history.history[monitor]
    assert values == _UP_AND_DOWN
    expected = _improving_epochs(values, _is_better(expected_direction))
    assert len(expected) < len(values), "every epoch improved: the test would not tell modes apart"
    assert _archives(tmp_path) == sorted(f"{e}.wroll" for e in expected)
    assert checkpoint.best == values[expected[-1] - 1]


def test_save_best_only_with_a_fixed_filepath_keeps_the_best_archive(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "best.wroll", save_best_only=True)
    _fit(digits, [checkpoint])
    assert _archives(tmp_path) == ["best.wroll"]
    assert os.path.getsize(tmp_path / "best.wroll") == checkpoint.reports[-1].archive_bytes


def test_initial_value_threshold_prevents_rolling_a_model_that_is_not_better(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", save_best_only=True,
                                      initial_value_threshold=0.0)
    _, history = _fit(digits, [checkpoint], epochs=2)
    assert _archives(tmp_path) == []
    assert checkpoint.reports == []
    assert all(math.isnan(v) for v in history.history["roll_value"])


def test_save_best_only_warns_and_rolls_when_the_monitored_key_is_missing(digits, tmp_path):
    # mode "min": in "auto" mode an unknown metric raises first, as in ModelCheckpoint.
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", monitor="val_f1", mode="min",
                                      save_best_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_f1 available"):
        _fit(digits, [checkpoint], epochs=2)
    assert _archives(tmp_path) == ["1.wroll", "2.wroll"]


def test_auto_mode_raises_for_a_metric_whose_direction_keras_cannot_infer(digits, tmp_path):
    add_custom = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(custom=1.0))
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", monitor="custom", save_best_only=True)
    with pytest.raises(weightroll.WrollError, match="monitor=custom.*Pass `mode='max'`"):
        _fit(digits, [add_custom, checkpoint], epochs=2)


# max_to_keep


def test_max_to_keep_keeps_the_newest_archives_and_never_deletes_other_files(digits, tmp_path):
    foreign = tmp_path / "0.wroll"
    foreign.write_bytes(b"not written by the callback")
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", max_to_keep=2)
    _fit(digits, [checkpoint], epochs=4)
    assert _archives(tmp_path) == ["0.wroll", "3.wroll", "4.wroll"]
    assert foreign.read_bytes() == b"not written by the callback"


def test_max_to_keep_counts_an_overwritten_archive_once(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "latest.wroll", max_to_keep=1)
    _fit(digits, [checkpoint], epochs=2)
    assert _archives(tmp_path) == ["latest.wroll"]


# Logs


def test_history_reports_the_roll_value_of_the_previous_epochs_archive(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll")
    _, history = _fit(digits, [checkpoint])
    logged = history.history["roll_value"]
    assert math.isnan(logged[0])
    expected = [r.roll_value["weights"]["relative_rmse"] for r in checkpoint.reports[:-1]]
    assert logged[1:] == pytest.approx(expected, rel=1e-12)
    assert all(0 < v < 0.05 for v in logged[1:])


def test_csv_logger_after_the_callback_records_the_roll_value(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll")
    _fit(digits, [checkpoint, keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))])
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert math.isnan(float(rows[0]["roll_value"]))
    expected = [r.roll_value["weights"]["relative_rmse"] for r in checkpoint.reports[:-1]]
    assert [float(row["roll_value"]) for row in rows[1:]] == pytest.approx(expected, rel=1e-6)


def test_validation_data_adds_the_output_roll_value_to_the_logs(digits, tmp_path):
    x_val = digits[1][0]
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", validation_data=x_val)
    _, history = _fit(digits, [checkpoint])
    first = checkpoint.reports[0].roll_value["outputs"]
    assert first["samples"] + first["fit"]["samples"] == VALIDATION  # held out of the fit, and the fit
    assert history.history["roll_output_max_abs_diff"][1] == pytest.approx(first["max_abs_diff"])
    assert history.history["roll_top1_agreement"][1] == first["top1_agreement"]
    assert first["top1_agreement"] >= 0.95


def test_weights_only_archives_with_validation_data_carry_the_output_roll_value(digits, tmp_path):
    # A weight tolerance, so no output allocation (whose model `allocate.calibration_model`
    # cannot rebuild from a weights-only snapshot yet): the roll value is measured all the same.
    x_val = digits[1][0]
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.weights.wroll", save_weights_only=True,
                                      validation_data=x_val, tolerance=0.02)
    model, _ = _fit(digits, [checkpoint], epochs=2)
    outputs = checkpoint.reports[-1].roll_value["outputs"]
    # Held out: a quarter of the samples, where one disagreement is 6%.
    assert outputs["fit"]["top1_agreement"] >= 0.95 and outputs["top1_agreement"] >= 0.9
    fresh = _model(seed=1)
    weightroll.load_weights(fresh, tmp_path / "2.weights.wroll")
    diff = np.abs(model.predict(x_val, verbose=0) - fresh.predict(x_val, verbose=0))
    _, held = roll_lib.calibration_split(VALIDATION)
    assert outputs["held_out"]["max_abs_diff"] == pytest.approx(diff[held].max(), rel=1e-4, abs=1e-7)
    assert outputs["max_abs_diff"] == pytest.approx(diff.max(), rel=1e-4, abs=1e-7)  # the worse of both parts


def test_nothing_is_predicted_on_the_training_thread(digits, tmp_path, monkeypatch):
    threads = []
    real = keras.Model.predict_on_batch, keras.Model.predict

    def on_batch(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real[0](self, *args, **kwargs)

    def predict(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real[1](self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "predict_on_batch", on_batch)
    monkeypatch.setattr(keras.Model, "predict", predict)
    _fit(digits, [WeightRollCheckpoint(tmp_path / "{epoch}.wroll", validation_data=digits[1][0])], epochs=2)
    assert threads and threading.main_thread().name not in threads


def test_output_roll_value_compares_with_the_model_at_the_time_of_the_save(digits, tmp_path):
    x_val = digits[1][0]
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", validation_data=x_val)
    model, _ = _fit(digits, [checkpoint])
    last = checkpoint.reports[-1].roll_value["outputs"]
    loaded = weightroll.load_rolled(tmp_path / "3.wroll")
    diff = np.abs(model.predict(x_val, verbose=0) - loaded.predict(x_val, verbose=0))
    fit, held = roll_lib.calibration_split(VALIDATION)
    assert last["held_out"]["max_abs_diff"] == pytest.approx(diff[held].max(), rel=1e-4, abs=1e-7)
    assert last["max_abs_diff"] == max(last["held_out"]["max_abs_diff"], last["fit"]["max_abs_diff"])
    assert last["fit"]["max_abs_diff"] == pytest.approx(diff[fit].max(), rel=1e-4, abs=1e-7)


def test_verbose_prints_each_archive_with_its_size_and_roll_value(digits, tmp_path, capsys):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", verbose=1)
    _fit(digits, [checkpoint], epochs=2)
    out = capsys.readouterr().out
    assert "Epoch 1: saving model to" in out
    for epoch, report in enumerate(checkpoint.reports, start=1):
        value = f"{report.roll_value['weights']['relative_rmse']:.3g}"
        assert re.search(
            rf"Epoch {epoch}: finished rolling model to .*{epoch}\.wroll: "
            rf"{report.archive_bytes:,} bytes .*roll value {re.escape(value)}", out
        )


# The background roll


def test_rolls_on_one_background_thread_after_a_snapshot_on_the_training_thread(digits, tmp_path,
                                                                                monkeypatch):
    calls, in_flight, most = [], [0], [0]
    lock = threading.Lock()
    real_snapshot, real_write = roll_lib.snapshot, roll_lib.write_snapshot

    def snapshot(model):
        calls.append(("snapshot", threading.current_thread().name))
        return real_snapshot(model)

    def write_snapshot(*args, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        calls.append(("write", threading.current_thread().name))
        time.sleep(0.2)  # slower than an epoch: the next save must wait
        try:
            return real_write(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(roll_lib, "snapshot", snapshot)
    monkeypatch.setattr(roll_lib, "write_snapshot", write_snapshot)
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}-{batch}.wroll", save_freq=2)
    _fit(digits, [checkpoint], epochs=1)
    main = threading.main_thread().name
    assert [name for kind, name in calls if kind == "snapshot"] == [main] * 4
    assert {name for kind, name in calls if kind == "write"} == {"WeightRollCheckpoint_0"}
    assert most[0] == 1
    assert len(_archives(tmp_path)) == 4


def test_an_error_in_the_background_roll_is_raised_by_fit(digits, tmp_path):
    (tmp_path / "blocker").write_bytes(b"a file where the callback needs a folder")
    checkpoint = WeightRollCheckpoint(tmp_path / "blocker" / "{epoch}.wroll")
    with pytest.raises(OSError) as info:
        _fit(digits, [checkpoint], epochs=2)
    if sys.version_info >= (3, 11):
        assert "raised in the background while rolling the model of epoch 1" in str(info.value.__notes__)


def test_an_error_in_the_last_roll_is_raised_by_fit(digits, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(roll_lib, "write_snapshot", fail)
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll")
    with pytest.raises(RuntimeError, match="encoder exploded"):
        _fit(digits, [checkpoint], epochs=1)


def test_the_callback_is_reusable_across_fits(digits, tmp_path):
    checkpoint = WeightRollCheckpoint(tmp_path / "{epoch}.wroll", max_to_keep=2)
    model, _ = _fit(digits, [checkpoint], epochs=2)
    _fit(digits, [checkpoint], epochs=3, model=model)
    assert _archives(tmp_path) == ["2.wroll", "3.wroll"]
    assert len(checkpoint.reports) == 5


# A kill during a save

_KILLED_SCRIPT = r'''
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras
import numpy as np
from weightroll._format import container
from weightroll.callbacks import WeightRollCheckpoint

real_write_members = container.write_members
saves = []


def write_members_then_stall(fileobj, members):
    # The second archive stops half-written (in its temporary file) until killed.
    saves.append(1)
    if len(saves) == 1:
        return real_write_members(fileobj, members)
    import io
    buffer = io.BytesIO()
    real_write_members(buffer, members)
    data = buffer.getvalue()
    fileobj.write(data[: len(data) // 2])
    fileobj.flush()
    print("HALF-WRITTEN", flush=True)
    time.sleep(120)


container.write_members = write_members_then_stall
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(256, 64)).astype("float32")
y = np.random.default_rng(1).integers(0, 10, size=256)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x, y, epochs=50, batch_size=64, verbose=0,
          callbacks=[WeightRollCheckpoint(sys.argv[1])])
'''


_KILLED_NAMES = ["model.wroll", "{epoch:02d}.wroll"]


@pytest.fixture(scope="module")
def killed_trainings(tmp_path_factory):
    """The training of `_KILLED_SCRIPT` for each name, all started at once (each is
    a process of its own either way; side by side, one's TensorFlow start-up
    overlaps the other's): `{name: (folder, process)}`. Killed at the end if a
    test did not."""
    started = {}
    for name in _KILLED_NAMES:
        folder = tmp_path_factory.mktemp("killed")
        script = folder / "train.py"
        script.write_text(_KILLED_SCRIPT)
        started[name] = folder / "ckpt", subprocess.Popen(
            [sys.executable, str(script), str(folder / "ckpt" / name)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
    yield started
    for _, process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.mark.parametrize("name", _KILLED_NAMES)
def test_a_training_killed_during_a_save_leaves_only_complete_archives(request, name):
    if keras.backend.backend() == "jax":  # ~17 s; what a killed write leaves is the format layer's, backend-free
        pytest.skip("an atomic write does not depend on the backend: run under TensorFlow")
    folder, process = request.getfixturevalue("killed_trainings")[name]
    try:
        timer = threading.Timer(90, process.kill)
        timer.start()
        for line in process.stdout:
            if line.strip() == "HALF-WRITTEN":
                break
        timer.cancel()
        assert process.poll() is None, "the training ended before its second save was half-written"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    names = sorted(os.listdir(folder))
    archives = [n for n in names if n.endswith(".wroll")]
    leftovers = [n for n in names if not n.endswith(".wroll")]
    assert archives == (["model.wroll"] if name == "model.wroll" else ["01.wroll"])
    assert len(leftovers) == 1 and re.fullmatch(r"\..*\.wroll\..*\.tmp", leftovers[0])
    assert (folder / leftovers[0]).stat().st_size > 0
    for archive in archives:
        weightroll.unroll(folder / archive)  # verifies every checksum and digest


# The public name


def test_is_exported_as_weightroll_weightroll_checkpoint_without_importing_keras_eagerly():
    assert "WeightRollCheckpoint" in weightroll.__all__
    assert "WeightRollCheckpoint" in dir(weightroll)
    assert weightroll.WeightRollCheckpoint is WeightRollCheckpoint
    code = "import sys, weightroll; assert 'keras' not in sys.modules, 'keras imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

