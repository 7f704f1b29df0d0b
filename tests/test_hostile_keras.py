"""The Keras side of hostile archives (spec/wroll-v4.md, "Threat model"): safe mode
refuses stored code before Keras deserialises anything, the writer refuses what
it cannot restore, and a kill mid-write leaves the previous archive loadable.
"""

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import zstandard

import weightroll
from weightroll._format.digest import binding_sha256
from tests.test_hostile_archives import TINY, _manifest, _repack
from weightroll._keras import model_io
from weightroll.errors import UnsafeArchiveError, WrollError

INPUTS, UNITS = 8, 4


def _dense(name="m", value=0.5):
    inputs = keras.Input((INPUTS,), name="x")
    dense = keras.layers.Dense(UNITS, name="dense")
    model = keras.Model(inputs, dense(inputs), name=name)
    dense.set_weights([np.full((INPUTS, UNITS), value, "float32"), np.arange(UNITS, dtype="float32")])
    return model


def _lambda_model():
    return keras.Sequential([keras.Input((3,), name="x"), keras.layers.Lambda(lambda t: t * 2, name="double"),
                             keras.layers.Dense(1, name="dense")], name="with_lambda")


def _tiny_with_architecture(edit):
    """The worked example, its architecture JSON edited by `edit(config)`."""
    with zipfile.ZipFile(io.BytesIO(TINY)) as zf:
        config = json.loads(zstandard.ZstdDecompressor().decompress(zf.read("architecture.json.zst")))
    edit(config)
    text = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = _manifest()
    manifest["architecture"]["size"] = len(text)
    return _repack(manifest, replace={"architecture.json.zst": zstandard.ZstdCompressor().compress(text)})


def _layer(config, name):
    return next(layer for layer in config["config"]["layers"]
                if layer.get("name", layer["config"].get("name")) == name)


@pytest.fixture
def keras_never_deserialises(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Keras was asked to deserialise an archive that should have been refused first")
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", refuse)


# --- safe mode (R37) --------------------------------------------------------------


def test_a_lambda_is_refused_in_safe_mode_before_keras_sees_it(tmp_path, monkeypatch):
    path = tmp_path / "lambda.wroll"
    weightroll.roll(_lambda_model(), path)
    with monkeypatch.context() as patch:
        patch.setattr(keras.saving, "deserialize_keras_object", None)  # never reached
        with pytest.raises(UnsafeArchiveError, match="lambda serialised as bytecode in layer 'double'") as info:
            weightroll.load_rolled(path)
    assert info.value.rule == "R37" and "safe_mode=False" in str(info.value)


def test_a_lambda_loads_with_safe_mode_off(tmp_path):
    path = tmp_path / "lambda.wroll"
    model = _lambda_model()
    weightroll.roll(model, path)
    loaded = weightroll.load_rolled(path, safe_mode=False)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0.05, atol=0.05)


def test_safe_mode_follows_keras_enable_unsafe_deserialization(tmp_path):
    from keras.src.backend.common import global_state

    path = tmp_path / "lambda.wroll"
    weightroll.roll(_lambda_model(), path)
    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        assert isinstance(weightroll.load_rolled(path), keras.Model)  # as keras.models.load_model would
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


def test_a_savedmodel_layer_is_refused_in_safe_mode(keras_never_deserialises):
    def savedmodel(config):
        layer = _layer(config, "dense")
        layer.update(class_name="TFSMLayer", module="keras.layers")
        layer["config"] = {"name": "dense", "filepath": "/nonexistent/saved_model", "call_endpoint": "serve"}
    with pytest.raises(UnsafeArchiveError, match=r"TFSMLayer, which loads a TensorFlow SavedModel.*'dense'"):
        weightroll.load_rolled(_tiny_with_architecture(savedmodel))


def test_a_python_lambda_anywhere_in_the_config_is_refused(keras_never_deserialises):
    def lambda_loss(config):
        config["compile_config"] = {"loss": {"class_name": "__lambda__", "config": {"value": "bm90IGNvZGU="}}}
    with pytest.raises(UnsafeArchiveError, match="Python lambda"):
        weightroll.load_rolled(_tiny_with_architecture(lambda_loss))


def test_keras_refusals_of_its_own_are_unsafe_archive_errors():
    # A vocabulary file read from the loading machine: Keras refuses it in safe mode.
    lookup = keras.Sequential([keras.Input((1,), dtype="string", name="words"),
                               keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")], name="lookup")
    config = json.loads(model_io.architecture_json(lookup))
    _layer(config, "lookup")["config"]["vocabulary"] = "/etc/hostname"
    with pytest.raises(UnsafeArchiveError, match="safe_mode") as info:
        model_io.rebuild(json.dumps(config).encode())
    assert info.value.rule == "R37"


def test_finds_unsafe_constructs_in_a_config_without_keras():
    assert model_io.find_unsafe({"class_name": "Functional", "config": {"layers": []}}) is None
    legacy = {"class_name": "Lambda", "config": {"name": "f", "function": {"function_type": "lambda"}}}
    assert "Keras 2" in model_io.find_unsafe({"layers": [legacy]})
    torch = {"class_name": "TorchModuleWrapper", "config": {"name": "t"}}
    assert "unpickles" in model_io.find_unsafe([torch])
    assert model_io.find_unsafe([torch], custom_objects={"TorchModuleWrapper": object}) is None


# --- the architecture and the variables (R36 to R38) --------------------------------


def test_a_variable_of_another_kind_of_dtype_is_refused_by_name():
    manifest = _manifest()
    bias = next(t for t in manifest["tensors"] if t["path"] == "dense/bias")
    bias["dtype"] = "int32"  # same bytes, and bound again (an unbound edit is R40)
    bias["binding_sha256"] = binding_sha256(bias)
    data = _repack(manifest)
    assert weightroll.unroll(data)["dense/bias"].dtype == np.int32  # unroll trusts the manifest
    with pytest.raises(WrollError, match="Variable 'dense/bias' is float32") as info:
        weightroll.load_rolled(data)
    assert info.value.rule == "R38"


def test_load_rolled_checks_every_member_before_keras_runs(keras_never_deserialises):
    manifest = _manifest()
    manifest["members"]["decoder.json.zst"]["sha256"] = "0" * 64
    with pytest.raises(WrollError, match="'decoder.json.zst' does not match its SHA-256") as info:
        weightroll.load_rolled(_repack(manifest, fix=False))
    assert info.value.rule == "R23"


# --- the writer ---------------------------------------------------------------------


def test_refuses_to_roll_an_architecture_holding_nan(tmp_path):
    inputs = keras.Input((3,), name="x")
    scaled = keras.layers.Rescaling(float("nan"), name="scale")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(scaled), name="nan")
    with pytest.raises(WrollError, match="NaN or infinite"):
        weightroll.roll(model, tmp_path / "nan.wroll")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_load_back_bit_for_bit(tmp_path):
    model = _dense()
    kernel = model.get_layer("dense").kernel.numpy()
    kernel[0, :3] = [np.nan, np.inf, -np.inf]
    model.get_layer("dense").kernel.assign(kernel)
    weightroll.roll(model, tmp_path / "m.wroll", bits=2)
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    assert loaded.get_layer("dense").kernel.numpy().tobytes() == kernel.tobytes()


_CHILD = r"""
import os, sys, time
import keras, numpy as np, weightroll
inputs = keras.Input((8,), name="x")
dense = keras.layers.Dense(4, name="dense")
model = keras.Model(inputs, dense(inputs), name="m")
dense.set_weights([np.full((8, 4), -1.5, "float32"), np.zeros(4, "float32")])
real_fsync = os.fsync
def stall(fd):  # the archive is in the temporary file, not yet renamed
    real_fsync(fd)
    print("written", flush=True)
    time.sleep(600)
os.fsync = stall
weightroll.roll(model, sys.argv[1], bits=2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_kill_during_roll_leaves_the_previous_archive_loadable(tmp_path):
    path = tmp_path / "m.wroll"
    previous = _dense(value=0.5)
    weightroll.roll(previous, path, bits=2)
    before = path.read_bytes()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready and child.stdout.readline() == b"written\n", "the child did not reach the write"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert path.read_bytes() == before
    loaded = weightroll.load_rolled(path)
    kernel = previous.get_layer("dense").kernel.numpy()
    assert loaded.get_layer("dense").kernel.numpy().tobytes() == kernel.tobytes()
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(re.fullmatch(r"\.m\.wroll\..+\.tmp", name) for name in leftovers), leftovers
