"""`WeightRollCheckpoint` under `tf.distribute`: one archive per save, from the chief.

Each training runs in a subprocess (logical devices and the multi-worker
cluster must be set up before TensorFlow starts): the same digits model,
trained without a strategy, under `MirroredStrategy` over 2 logical CPUs, and
under `MultiWorkerMirroredStrategy` with 2 worker processes on localhost.
"""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import weightroll
from tests._subprocesses import result_of

pytest.importorskip("sklearn.datasets")
tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow  # trains under tf.distribute strategies

EPOCHS = 2
TIMEOUT = 120  # seconds a training subprocess may take before the test fails

_WORKER = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
mode, folder = sys.argv[1], sys.argv[2]
import tensorflow as tf

if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif mode == "multiworker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # the cluster comes from TF_CONFIG
    # Keras 3's `fit` passes nested structures and scalars with `axis=0` to
    # `strategy.reduce`, which MultiWorkerMirroredStrategy rejects
    # (keras-team/keras#20585); reduce leaf by leaf, scalars without an axis.
    reduce = strategy.reduce

    def reduce_leaves(op, value, axis=None):
        def one(v):
            first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            rank = getattr(getattr(first, "shape", None), "rank", None)
            return reduce(op, v, axis=None if rank == 0 else axis)
        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce_leaves
else:
    strategy = tf.distribute.get_strategy()

import keras
import numpy as np
from sklearn.datasets import load_digits

from weightroll.callbacks import WeightRollCheckpoint

data = load_digits()
x = (data.data / 16.0).astype("float32")[:512]
y = data.target[:512]
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
checkpoint = WeightRollCheckpoint(os.path.join(folder, "{epoch:02d}.wroll"), validation_data=x[:64])
history = model.fit(x, y, epochs=int(os.environ["EPOCHS"]), batch_size=64, shuffle=False, verbose=0,
                    callbacks=[checkpoint])
print("RESULT " + json.dumps({
    "written": [r.filepath for r in checkpoint.reports],
    "roll_value": [r.roll_value["weights"]["relative_rmse"] for r in checkpoint.reports],
    "logged": history.history["roll_value"],
    "replicas": strategy.num_replicas_in_sync,
}), flush=True)
'''


def _script(folder):
    path = folder / "worker.py"
    path.write_text(_WORKER)
    return path


def _start(script, mode, folder, tf_config=None):
    env = dict(os.environ, EPOCHS=str(EPOCHS), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, str(script), mode, str(folder)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _relative_distance(a, b):
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b)
    den = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b)
    return math.sqrt(num / den)


def _archives(folder):
    return sorted(n for n in os.listdir(folder) if n != "worker.py")


@pytest.fixture(scope="module")
def single_process_and_mirrored(tmp_path_factory):
    """The training without a strategy (the reference) and under MirroredStrategy,
    started together (each is a process of its own either way; side by side, one
    TensorFlow start-up overlaps the other's): `{mode: (folder, result)}`."""
    folders = {mode: tmp_path_factory.mktemp(mode) for mode in ("single", "mirrored")}
    processes = {mode: _start(_script(folder), mode, folder) for mode, folder in folders.items()}
    try:
        return {mode: (folders[mode], result_of(process, TIMEOUT, f"the {mode} training"))
                for mode, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def single_process(single_process_and_mirrored):
    return single_process_and_mirrored["single"]


def _assert_matches_single_process(folder, result, single_process):
    single_folder, single = single_process
    assert _archives(folder) == [f"{e:02d}.wroll" for e in range(1, EPOCHS + 1)]  # no temporary files
    for epoch in range(EPOCHS):
        name = f"{epoch + 1:02d}.wroll"
        rolled = weightroll.unroll(folder / name)
        reference = weightroll.unroll(single_folder / name)
        assert list(rolled) == list(reference)
        # Both are within their roll value of (nearly) the same weights.
        bound = result["roll_value"][epoch] + single["roll_value"][epoch] + 1e-4
        assert _relative_distance(rolled, reference) <= bound, name
    weightroll.load_rolled(folder / f"{EPOCHS:02d}.wroll")


def test_mirrored_strategy_writes_one_archive_per_save_like_a_single_process(single_process_and_mirrored,
                                                                            single_process):
    folder, result = single_process_and_mirrored["mirrored"]
    assert result["replicas"] == 2
    assert result["written"] == [str(folder / f"{e:02d}.wroll") for e in range(1, EPOCHS + 1)]
    _assert_matches_single_process(folder, result, single_process)


def test_multi_worker_strategy_writes_each_archive_once_from_the_chief(tmp_path, single_process):
    script = _script(tmp_path)
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = [
        _start(script, "multiworker", tmp_path,
               {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        for index in range(2)
    ]
    try:
        chief, other = [result_of(p, TIMEOUT, "a multi-worker training") for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["written"] == [str(tmp_path / f"{e:02d}.wroll") for e in range(1, EPOCHS + 1)]
    assert other["written"] == [None] * EPOCHS  # rolled in memory only
    # Every worker logs the same roll value, so callbacks that read it agree.
    np.testing.assert_array_equal(chief["logged"], other["logged"])
    assert chief["roll_value"] == other["roll_value"]
    _assert_matches_single_process(tmp_path, chief, single_process)
