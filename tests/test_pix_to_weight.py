"""The pix-to-weight network in Keras and the numpy fast path agree bit for bit."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import weightroll
from weightroll import _archive
from weightroll._format import manifest as mf
from weightroll._keras import network

HIDDEN = 64


def _dense_model():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(HIDDEN, activation="tanh"),
                              keras.layers.Dense(HIDDEN), keras.layers.Dense(4)])
    return model


@pytest.fixture(scope="module", params=["codebook", "mlp"])
def archive_path(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "m.wroll"
    weightroll.roll(_dense_model(), path, decoder=request.param)
    return path


def test_keras_network_and_numpy_fast_path_agree_bit_for_bit(archive_path):
    with _archive.RolledArchive(archive_path) as archive:
        decoder = archive.manifest["decoder"]
        net = network.from_archive(archive)
        codes = archive.codes()
        fast = weightroll.unroll(archive_path)
        for entry in archive.manifest["tensors"]:
            if entry["storage"] != "coded":
                continue
            span = codes[entry["codes"]["offset"]: entry["codes"]["offset"] + entry["codes"]["count"]]
            inputs = span.astype(np.int64) + (entry["table"]["offset"] if decoder["kind"] == "codebook" else 0)
            by_network = network.run(net, decoder, inputs).reshape(entry["shape"])
            np.testing.assert_array_equal(by_network.view(np.uint32), fast[entry["path"]].view(np.uint32))


def test_decoder_config_holds_no_code(archive_path):
    with _archive.RolledArchive(archive_path) as archive:
        config = mf.loads(archive.member(mf.DECODER_CONFIG_MEMBER), "decoder.json")
    classes = set()

    def walk(node):
        if isinstance(node, dict):
            if "class_name" in node:
                classes.add(node["class_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    allowed = {"Functional", "InputLayer", "Embedding", "Rescaling", "Dense", "DTypePolicy",
               "RandomUniform", "GlorotUniform", "Zeros", "__keras_tensor__"}
    assert classes <= allowed, classes - allowed


def test_mlp_decoder_reports_its_real_roll_value(tmp_path):
    model = _dense_model()
    codebook = weightroll.roll(model, tmp_path / "c.wroll")
    paper = weightroll.roll(model, tmp_path / "p.wroll", decoder="mlp")
    assert paper.decoder == "mlp"
    measured = weightroll.unroll(tmp_path / "p.wroll")
    originals = {v.path: v.numpy() for v in model.variables}
    sq_err = sum(np.sum((measured[k].astype(float) - originals[k]) ** 2) for k in originals)
    sq_ref = sum(np.sum(originals[k].astype(float) ** 2) for k in originals)
    assert paper.roll_value["weights"]["relative_rmse"] == pytest.approx(np.sqrt(sq_err / sq_ref), rel=1e-6)
    # The paper's global grid is coarser than per-tensor codebooks.
    assert paper.roll_value["weights"]["relative_rmse"] > codebook.roll_value["weights"]["relative_rmse"]


def test_unroll_imports_neither_keras_nor_tensorflow(archive_path):
    code = (
        "import sys, weightroll\n"
        f"w = weightroll.unroll({str(archive_path)!r})\n"
        "assert w, 'no tensors'\n"
        "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
