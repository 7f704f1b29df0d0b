"""Models laid out across devices: `roll` reads them, `load_rolled` lays them out as Keras's loading does.

Under an active `keras.distribution` (JAX) or `tf.distribute` strategy (TensorFlow), `roll` and
`WeightRollCheckpoint` read variables split across devices, and `load_rolled` gives every variable
the layout `keras.models.load_model` gives it (each compared with a `.keras` file of the same model
loaded under the same distribution), with the archive's values, tensor by tensor.

The devices (4 host CPUs: JAX's `--xla_force_host_platform_device_count`, TensorFlow's logical
devices) must be set up before the backend starts, so each backend's scenarios run in one
subprocess, whichever backend this test run uses; each scenario reports what it saw (or its
traceback), and the tests below check it. Rolled with `tolerance=0.0`: values compare exactly.

Scenarios, JAX:
- `data_parallel`: `DataParallel` over 4 devices (every variable replicated);
- `model_parallel`: `ModelParallel` on a (2, 2) ("batch", "model") mesh, Dense kernels and a bias
  split across "model"; trained one epoch with a `WeightRollCheckpoint`, rolled with the optimizer's
  state, and `load_weights` into a clone;
- `model_parallel_big`: a (1, 4) mesh, with Keras's branch for big variables forced (it jits the
  initialiser of a variable of at least 250 MiB times the device count): weightroll once failed
  there ("cannot create weak reference to 'method-wrapper' object").
TensorFlow: `MirroredStrategy` over 4 logical CPUs, rolled outside and inside its scope.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests._subprocesses import result_of

pytestmark = pytest.mark.slow

TIMEOUT = 400  # seconds a scenario subprocess may take before the test fails
DEVICES = 4

_COMMON = r'''
import json, os, sys, traceback
import numpy as np

folder = sys.argv[1]
results = {}


def scenario(name):
    def run(function):
        try:
            results[name] = function()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return run


def functional(keras):
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(4, name="d2")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.variables:  # values no initialiser gives, so a skipped load shows
        if "float" in str(v.dtype):
            value = rng.normal(size=v.shape)
            v.assign((np.abs(value) + 0.5 if "variance" in v.path else value).astype(v.dtype))


x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
y = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
'''

_JAX = _COMMON + r'''
import keras
import jax
import weightroll
from weightroll._encode import Lazy
from weightroll._keras import model_io

assert keras.backend.backend() == "jax"
devices = keras.distribution.list_devices("cpu")
assert len(devices) == int(os.environ["DEVICES"]), devices


def spec(variable):
    sharding = variable.value.sharding
    return list(sharding.spec) if hasattr(sharding, "spec") else str(sharding)


def gathered(variable):
    return np.array(variable.value)


def compare(model, path, loaded, reference, unrolled):
    """What the checks need: per variable, its layout in each model and whether values agree."""
    out = {}
    for original, got, ref in zip(model.variables, loaded.variables, reference.variables):
        assert original.path == got.path == ref.path, (original.path, got.path, ref.path)
        value = gathered(got)
        out[got.path] = {
            "original": spec(original), "loaded": spec(got), "keras": spec(ref),
            "same_layout_as_keras": bool(got.value.sharding == ref.value.sharding),
            "same_layout_as_original": bool(got.value.sharding == original.value.sharding),
            "sharded": not original.value.is_fully_replicated,
            "unroll_equals_original": bool(np.array_equal(unrolled[original.path], gathered(original))),
            "loaded_equals_unroll": bool(np.array_equal(value, unrolled[got.path])),
            "same_dtype": bool(value.dtype == unrolled[got.path].dtype == gathered(original).dtype),
        }
    return out


def check(model, name):
    """Roll `model`; load it back with Keras and with weightroll under the active distribution."""
    path = os.path.join(folder, name + ".wroll")
    lazy = [p for p, source in model_io.variable_sources(model) if isinstance(source, Lazy)]
    weightroll.roll(model, path, tolerance=0.0, include_optimizer=model.optimizer.built)
    # Reading a sharded array with `np.asarray` would leave a gathered copy on it.
    cached = [v.path for v in model.variables if getattr(v.value, "_npy_value", None) is not None]
    unrolled = weightroll.unroll(path)
    model.save(os.path.join(folder, name + ".keras"))
    reference = keras.models.load_model(os.path.join(folder, name + ".keras"))
    loaded = weightroll.load_rolled(path)
    expected = np.asarray(model.predict(x, verbose=0))
    result = {
        "variables": compare(model, path, loaded, reference, unrolled),
        "lazy": lazy,
        "cached": cached,
        "outputs_equal": bool(np.array_equal(np.asarray(loaded.predict(x, verbose=0)), expected)),
        "keras_outputs_equal": bool(np.array_equal(np.asarray(reference.predict(x, verbose=0)), expected)),
    }
    if model.optimizer.built:
        assert len(model.optimizer.variables) == len(loaded.optimizer.variables) == len(reference.optimizer.variables)
        result["optimizer"] = {
            v.path: {"loaded": spec(g), "keras": spec(r), "same_layout_as_keras": bool(g.value.sharding == r.value.sharding),
                     "values_equal": bool(np.array_equal(gathered(g), gathered(v)))}
            for v, g, r in zip(model.optimizer.variables, loaded.optimizer.variables, reference.optimizer.variables)
        }
    return result, path


@scenario("data_parallel")
def _():
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    keras.utils.set_random_seed(0)
    model = functional(keras)
    randomize(model, 1)
    return check(model, "data_parallel")[0]


def model_parallel(shape, big=False):
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["d1/kernel"] = (None, "model")
    layout_map["d1/bias"] = ("model",)
    layout_map["d2/kernel"] = ("model", None)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
    keras.utils.set_random_seed(0)
    return functional(keras)


@scenario("model_parallel")
def _():
    model = model_parallel((2, 2))
    randomize(model, 2)
    checkpoint = weightroll.WeightRollCheckpoint(os.path.join(folder, "checkpoint.wroll"), tolerance=0.0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False, callbacks=[checkpoint])
    result, path = check(model, "model_parallel")
    from_callback = weightroll.unroll(os.path.join(folder, "checkpoint.wroll"))
    result["callback_equals_model"] = {v.path: bool(np.array_equal(from_callback[v.path], gathered(v)))
                                       for v in model.variables}
    clone = keras.models.clone_model(model)
    weightroll.load_weights(clone, path)
    result["load_weights"] = {
        v.path: {"same_layout": bool(c.value.sharding == v.value.sharding),
                 "values_equal": bool(np.array_equal(gathered(c), gathered(v)))}
        for v, c in zip(model.variables, clone.variables)
    }
    return result


@scenario("model_parallel_big")
def _():
    from keras.src.backend.jax import core

    should_shard_at_init = core.should_shard_at_init
    core.should_shard_at_init = lambda layout, shape: True  # as for a variable of >= 250 MiB x devices
    try:
        model = model_parallel((1, 4))
        randomize(model, 3)
        model.optimizer.build(model.trainable_variables)  # its state is rolled too: laid out like the kernels
        randomize(model.optimizer, 4)
        return check(model, "model_parallel_big")[0]
    finally:
        core.should_shard_at_init = should_shard_at_init


print("RESULT " + json.dumps(results), flush=True)
'''

_TF = _COMMON + r'''
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
count = int(os.environ["DEVICES"])
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])

import keras
import weightroll

assert keras.backend.backend() == "tensorflow"


def describe(variable):
    value = variable.value
    replicas = getattr(value, "values", (value,))
    return {
        "type": type(value).__name__,
        "devices": [r.device for r in replicas],
        "aggregation": str(value.aggregation),
        "synchronization": str(value.synchronization),
        "trainable": bool(value.trainable),
    }


@scenario("mirrored")
def _():
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = functional(keras)
    # Assigned, not trained: a `fit` under MirroredStrategy leaves BatchNormalization's moving
    # statistics different on each replica (each its own batches), and Keras saves replica 0's.
    randomize(model, 4)
    outside, inside = os.path.join(folder, "outside.wroll"), os.path.join(folder, "inside.wroll")
    weightroll.roll(model, outside, tolerance=0.0)
    with strategy.scope():
        weightroll.roll(model, inside, tolerance=0.0)
    unrolled = {"outside": weightroll.unroll(outside), "inside": weightroll.unroll(inside)}
    model.save(os.path.join(folder, "mirrored.keras"))
    with strategy.scope():
        reference = keras.models.load_model(os.path.join(folder, "mirrored.keras"))
        loaded = weightroll.load_rolled(inside)
    plain_reference = keras.models.load_model(os.path.join(folder, "mirrored.keras"))
    plain = weightroll.load_rolled(outside)
    variables = {}
    for original, got, ref, plain_got, plain_ref in zip(model.variables, loaded.variables, reference.variables,
                                                        plain.variables, plain_reference.variables):
        assert original.path == got.path == ref.path == plain_got.path, (original.path, got.path, ref.path)
        want = original.numpy()
        replicas = getattr(got.value, "values", (got.value,))
        variables[got.path] = {
            "loaded": describe(got), "keras": describe(ref),
            "plain_loaded": describe(plain_got), "plain_keras": describe(plain_ref),
            "unroll_equals_original": {where: bool(np.array_equal(u[original.path], want))
                                       for where, u in unrolled.items()},
            "every_replica_equals_original": all(np.array_equal(r.numpy(), want) for r in replicas),
            "plain_equals_original": bool(np.array_equal(plain_got.numpy(), want)),
        }
    expected = model(x).numpy()
    return {
        "replicas": strategy.num_replicas_in_sync,
        "variables": variables,
        "call_equal": bool(np.array_equal(loaded(x).numpy(), expected)),
        "plain_call_equal": bool(np.array_equal(plain(x).numpy(), expected)),
        "predict_equals_keras": bool(np.array_equal(loaded.predict(x, verbose=0), reference.predict(x, verbose=0))),
    }


print("RESULT " + json.dumps(results), flush=True)
'''


def _start(script, backend, folder):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", DEVICES=str(DEVICES))
    if backend == "jax":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={DEVICES}"])
    return subprocess.Popen([sys.executable, "-c", script, str(folder)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Each installed backend's scenario subprocess, both started at once (they are
    separate processes either way; side by side, one's start-up overlaps the other's)."""
    scripts = {"jax": _JAX, "tensorflow": _TF}
    processes = {backend: _start(script, backend, tmp_path_factory.mktemp(backend))
                 for backend, script in scripts.items() if importlib.util.find_spec(backend) is not None}
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def _results(scenarios, backend):
    if backend not in scenarios:
        pytest.skip(f"{backend} is not installed")
    return result_of(scenarios[backend], TIMEOUT, f"the {backend} scenarios")


@pytest.fixture(scope="module")
def jax_results(scenarios):
    return _results(scenarios, "jax")


@pytest.fixture(scope="module")
def tf_results(scenarios):
    return _results(scenarios, "tensorflow")


def _result(results, name):
    result = results[name]
    assert "error" not in result, result.get("error")
    return result


def _failing(table, *checks):
    """`{variable: [failed checks]}`, for the variables that fail any of `checks`."""
    failing = {}
    for path, row in table.items():
        failed = [check for check in checks if not row[check]]
        if failed:
            failing[path] = failed
    return failing


def _assert_round_trip(result):
    variables = result["variables"]
    assert not _failing(variables, "same_layout_as_keras", "same_layout_as_original", "unroll_equals_original",
                        "loaded_equals_unroll", "same_dtype"), variables
    assert result["outputs_equal"] and result["keras_outputs_equal"]


def test_jax_data_parallel_loads_every_variable_as_keras_lays_it_out(jax_results):
    result = _result(jax_results, "data_parallel")
    _assert_round_trip(result)
    assert not any(row["sharded"] for row in result["variables"].values())  # replicated on every device


@pytest.mark.parametrize("name", ["model_parallel", "model_parallel_big"])
def test_jax_model_parallel_round_trip_keeps_every_layout(jax_results, name):
    result = _result(jax_results, name)
    variables = result["variables"]
    assert {path for path, row in variables.items() if row["sharded"]} == {"d1/kernel", "d1/bias", "d2/kernel"}
    assert variables["d1/kernel"]["loaded"] == variables["d1/kernel"]["keras"] == [None, "model"]
    _assert_round_trip(result)
    optimizer = result["optimizer"]  # rolled with include_optimizer=True
    assert optimizer and not _failing(optimizer, "same_layout_as_keras", "values_equal"), optimizer


def test_jax_roll_reads_sharded_variables_part_by_part(jax_results):
    """`roll` reads a sharded variable when the encoder gets to it, assembled from its parts, and
    leaves no gathered copy on the model's array (`np.asarray` would, for the array's lifetime)."""
    for name in ["model_parallel", "model_parallel_big"]:
        result = _result(jax_results, name)
        sharded = sorted(path for path, row in result["variables"].items() if row["sharded"])
        assert sorted(result["lazy"]) == sharded
        assert result["cached"] == []
        assert all(row["unroll_equals_original"] for row in result["variables"].values())


def test_jax_checkpoint_callback_and_load_weights_under_model_parallel(jax_results):
    result = _result(jax_results, "model_parallel")
    assert result["callback_equals_model"] and all(result["callback_equals_model"].values()), \
        result["callback_equals_model"]
    assert not _failing(result["load_weights"], "same_layout", "values_equal"), result["load_weights"]


def test_tf_mirrored_strategy_loads_mirrored_variables_as_keras_does(tf_results):
    result = _result(tf_results, "mirrored")
    assert result["replicas"] == DEVICES
    for path, row in result["variables"].items():
        assert row["loaded"] == row["keras"], path
        assert row["loaded"]["type"] == "MirroredVariable" and len(row["loaded"]["devices"]) == DEVICES, path
        assert row["plain_loaded"] == row["plain_keras"], path  # outside the scope: one plain variable
        assert row["unroll_equals_original"] == {"outside": True, "inside": True}, path
        assert row["every_replica_equals_original"] and row["plain_equals_original"], path
    assert result["call_equal"] and result["plain_call_equal"] and result["predict_equals_keras"]
