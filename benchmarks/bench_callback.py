"""What checkpointing every epoch costs `fit`: none, `ModelCheckpoint`, `WeightRollCheckpoint`.

Two groups, each timed in the same run, each round on a freshly built model:

- `test_fit_with_a_checkpoint_every_epoch`: a few million parameters, 3
  epochs; no callback, `ModelCheckpoint`, `WeightRollCheckpoint`.
- `test_fit_with_calibration_data`: issue 17's case, a small classifier
  (25k parameters) trained for 10 short epochs on scikit-learn's digits;
  `ModelCheckpoint`, `WeightRollCheckpoint` and
  `WeightRollCheckpoint(validation_data=...)` (a calibrated roll at every
  save, on the 297 held-out digits).

Besides the wall time of `fit` (pytest-benchmark's table), the summary gives
two figures that other work on the machine disturbs less: the time the
training thread spent inside the checkpoint callback (a stall of training),
and the CPU time of the process (which includes the roll done in the
background); and every ratio against `ModelCheckpoint` in the same run.

Run with `pytest benchmarks/bench_callback.py` (not part of `pytest tests`).
"""

import statistics
import time

import keras
import numpy as np
import pytest

from weightroll.callbacks import WeightRollCheckpoint

SAMPLES = 8192
FEATURES = 256
HIDDEN = 1536  # two hidden layers: 2,770,954 parameters
CLASSES = 10
BATCH = 64
EPOCHS = 3
ROUNDS = 3

VARIANTS = ["no callback", "ModelCheckpoint", "WeightRollCheckpoint"]

pytestmark = pytest.mark.filterwarnings(  # raised inside Keras's own `model.save`
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


class _Clock(keras.callbacks.Callback):
    """Placed before and after the checkpoint: their differences are the time inside it."""

    def __init__(self, marks):
        super().__init__()
        self.marks = marks

    def on_epoch_end(self, epoch, logs=None):
        self.marks.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.marks.append(time.perf_counter())


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = (x[:, :CLASSES] @ rng.normal(size=(CLASSES, CLASSES))).argmax(-1)  # learnable labels
    _model().fit(x[:BATCH], y[:BATCH], verbose=0)  # start TensorFlow before any timing
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _checkpoint(variant, folder):
    if variant == "ModelCheckpoint":
        return [keras.callbacks.ModelCheckpoint(str(folder / "model.keras"))]
    if variant == "WeightRollCheckpoint":
        return [WeightRollCheckpoint(folder / "model.wroll")]
    return []


@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_with_a_checkpoint_every_epoch(benchmark, variant, data, tmp_path, results):
    x, y = data
    benchmark.group = f"fit {EPOCHS} epochs, {SAMPLES} samples, checkpoint every epoch"
    stalls, cpu = [], []

    def setup():
        before, after = [], []
        stalls.append((before, after))
        callbacks = [_Clock(before), *_checkpoint(variant, tmp_path), _Clock(after)]
        return (_model(), callbacks), {}

    def fit(model, callbacks):
        start = time.process_time()
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=callbacks)
        cpu.append(time.process_time() - start)

    benchmark.pedantic(fit, setup=setup, rounds=ROUNDS, iterations=1)
    timing = _timing(benchmark, stalls, cpu)
    benchmark.extra_info.update(timing)
    results.setdefault("fit", {})[variant] = timing
    if len(results["fit"]) == len(VARIANTS):
        base, keras_ckpt, wroll = (results["fit"][v] for v in VARIANTS)
        _summarize(results, "fit", f"fit, {EPOCHS} epochs, {_model().count_params():,} parameters, "
                   f"checkpoint every epoch, {ROUNDS} rounds:", results["fit"], [
                       ("ModelCheckpoint / no callback", keras_ckpt, base),
                       ("WeightRollCheckpoint / no callback", wroll, base),
                       ("WeightRollCheckpoint / ModelCheckpoint", wroll, keras_ckpt),
                   ])


# --- with calibration data (issue 17) ---------------------------------------------------

SMALL_HIDDEN = 128  # 64 -> 128 -> 128 -> 10: 26,122 parameters
SMALL_EPOCHS = 10
SMALL_BATCH = 32
SMALL_TRAIN = 1500  # of the 1797 digits; the other 297 are validation and calibration data
CALIBRATED = "WeightRollCheckpoint(validation_data)"
SMALL_VARIANTS = ["ModelCheckpoint", "WeightRollCheckpoint", CALIBRATED]


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target
    _small_model().fit(x[:SMALL_BATCH], y[:SMALL_BATCH], verbose=0)  # start TensorFlow before any timing
    return (x[:SMALL_TRAIN], y[:SMALL_TRAIN]), (x[SMALL_TRAIN:], y[SMALL_TRAIN:])


def _small_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(SMALL_HIDDEN, activation="relu"),
        keras.layers.Dense(SMALL_HIDDEN, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("variant", SMALL_VARIANTS)
def test_fit_with_calibration_data(benchmark, variant, digits, tmp_path, results):
    (x, y), (x_val, y_val) = digits
    benchmark.group = (f"fit {SMALL_EPOCHS} epochs of a {_small_model().count_params():,}-parameter "
                       "classifier, a checkpoint every epoch")
    stalls, cpu = [], []

    def checkpoint():
        if variant == "ModelCheckpoint":
            return keras.callbacks.ModelCheckpoint(str(tmp_path / "{epoch}.keras"))
        if variant == "WeightRollCheckpoint":
            return WeightRollCheckpoint(tmp_path / "{epoch}.wroll")
        return WeightRollCheckpoint(tmp_path / "{epoch}-calibrated.wroll", validation_data=x_val)

    def setup():
        before, after = [], []
        stalls.append((before, after))
        return (_small_model(), [_Clock(before), checkpoint(), _Clock(after)]), {}

    def fit(model, callbacks):
        start = time.process_time()
        model.fit(x, y, validation_data=(x_val, y_val), epochs=SMALL_EPOCHS, batch_size=SMALL_BATCH,
                  verbose=0, callbacks=callbacks)
        cpu.append(time.process_time() - start)

    benchmark.pedantic(fit, setup=setup, rounds=ROUNDS, iterations=1)
    timing = _timing(benchmark, stalls, cpu)
    benchmark.extra_info.update(timing)
    results.setdefault("calibrated", {})[variant] = timing
    if len(results["calibrated"]) == len(SMALL_VARIANTS):
        keras_ckpt, wroll, calibrated = (results["calibrated"][v] for v in SMALL_VARIANTS)
        _summarize(results, "calibrated", f"fit, {SMALL_EPOCHS} epochs of the digits classifier, checkpoint "
                   f"every epoch, {ROUNDS} rounds:", results["calibrated"], [
                       ("WeightRollCheckpoint / ModelCheckpoint", wroll, keras_ckpt),
                       (f"{CALIBRATED} / ModelCheckpoint", calibrated, keras_ckpt),
                   ])


def _timing(benchmark, stalls, cpu):
    """A variant's figures: wall time (fastest, median), the training thread's
    median stall in the callback (summed over each round's saves), median CPU."""
    return {
        "wall_min": benchmark.stats.stats.min,
        "wall_median": benchmark.stats.stats.median,
        "stall_median": statistics.median(sum(b - a for a, b in zip(*marks, strict=True)) for marks in stalls),
        "cpu_median": statistics.median(cpu),
    }


def _summarize(results, group, title, times, ratios):
    """This group's lines in the summary printed at the end (after the other group's)."""
    lines = [title, f"  {'':<40}{'wall fastest':>13}{'wall median':>13}{'in callback':>13}{'CPU median':>13}"]
    for variant, t in times.items():
        lines.append(f"  {variant:<40}{t['wall_min']:12.2f}s{t['wall_median']:12.2f}s"
                     f"{t['stall_median']:12.2f}s{t['cpu_median']:12.2f}s")
    for name, a, b in ratios:
        lines.append(f"  {name:<58} wall fastest {a['wall_min'] / b['wall_min']:.3f}, "
                     f"wall median {a['wall_median'] / b['wall_median']:.3f}, "
                     f"CPU median {a['cpu_median'] / b['cpu_median']:.3f}")
    groups = results.setdefault("callback_groups", {})
    groups[group] = lines
    results["summary"] = [line for name in ("fit", "calibrated") for line in groups.get(name, [])]
