"""What checkpointing every epoch costs `fit`: none, `ModelCheckpoint`, `WeightRollCheckpoint`.

The three are timed in the same run on the same model (a few million
parameters), each round on a freshly built model. Besides the wall time of
`fit` (pytest-benchmark's table), the summary gives two figures that other
work on the machine disturbs less: the time the training thread spent inside
the checkpoint callback (a stall of training), and the CPU time of the
process (which includes the roll done in the background).

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
    stall = statistics.median(sum(b - a for a, b in zip(*marks, strict=True)) for marks in stalls)
    timing = {
        "wall_min": benchmark.stats.stats.min,
        "wall_median": benchmark.stats.stats.median,
        "stall_median": stall,
        "cpu_median": statistics.median(cpu),
    }
    benchmark.extra_info.update(timing)
    results.setdefault("fit", {})[variant] = timing
    if len(results["fit"]) == len(VARIANTS):
        results["summary"] = _summary(results["fit"])


def _summary(times):
    params = _model().count_params()
    lines = [
        f"fit, {EPOCHS} epochs, {params:,} parameters, checkpoint every epoch, {ROUNDS} rounds:",
        f"  {'':<22}{'wall fastest':>13}{'wall median':>13}{'in callback':>13}{'CPU median':>13}",
    ]
    for variant in VARIANTS:
        t = times[variant]
        lines.append(f"  {variant:<22}{t['wall_min']:12.2f}s{t['wall_median']:12.2f}s"
                     f"{t['stall_median']:12.2f}s{t['cpu_median']:12.2f}s")
    base, keras_ckpt, wroll = (times[v] for v in VARIANTS)
    for name, a, b in [
        ("ModelCheckpoint / no callback", keras_ckpt, base),
        ("WeightRollCheckpoint / no callback", wroll, base),
        ("WeightRollCheckpoint / ModelCheckpoint", wroll, keras_ckpt),
    ]:
        lines.append(f"  {name:<40} wall fastest {a['wall_min'] / b['wall_min']:.3f}, "
                     f"wall median {a['wall_median'] / b['wall_median']:.3f}, "
                     f"CPU median {a['cpu_median'] / b['cpu_median']:.3f}")
    return lines
