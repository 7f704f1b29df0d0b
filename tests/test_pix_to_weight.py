"""The pix-to-weight network in Keras and the numpy fast path agree bit for bit."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import weightroll
from weightroll._format import decode, reader
from weightroll._format import manifest as mf
from weightroll._keras import network

HIDDEN = 64


def _dense_model():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(HIDDEN, activation="tanh"),
                              keras.layers.Dense(HIDDEN), keras.layers.Dense(4)])
    return model


PLANTED = 3


def heavy_tailed_model(planted=None):
    """Student-t kernels whose channels differ in scale, with planted 100-sigma values.

    `planted`, if a dict, receives each kernel's path -> flat indices of the planted values.
    """
    model = _dense_model()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        kernel = rng.standard_t(3, size=layer.kernel.shape) * 0.05
        kernel *= np.exp(rng.normal(size=kernel.shape[-1]))  # per-channel scale
        index = rng.choice(kernel.size, PLANTED, replace=False)
        kernel.reshape(-1)[index] = 100 * kernel.std()
        layer.kernel.assign(kernel.astype("float32"))
        if planted is not None:
            planted[layer.kernel.path] = index
    return model


@pytest.fixture(scope="module", params=["codebook", pytest.param("mlp", marks=pytest.mark.slow), "codebook-heavy"])
def archive_path(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "m.wroll"
    if request.param == "codebook-heavy":
        weightroll.roll(heavy_tailed_model(), path)
    else:
        weightroll.roll(_dense_model(), path, decoder=request.param)
    return path


def test_planted_100_sigma_values_survive_within_the_tolerance(tmp_path):
    planted = {}
    model = heavy_tailed_model(planted)
    weightroll.roll(model, tmp_path / "h.wroll")
    decoded = weightroll.unroll(tmp_path / "h.wroll")
    for layer in model.layers:
        path = layer.kernel.path
        original = layer.kernel.numpy().reshape(-1)[planted[path]]
        # Either stored exactly or coded on a grid whose step is far below them.
        np.testing.assert_allclose(decoded[path].reshape(-1)[planted[path]], original, rtol=0.02)


def test_channels_of_very_different_scales_get_per_channel_scales(tmp_path):
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(128, name="wide")])
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(256, 128)) * np.logspace(-3, 0, 128)  # channel scales span 1000x
    model.layers[0].kernel.assign(kernel.astype("float32"))
    weightroll.roll(model, tmp_path / "c.wroll")
    with reader.RolledArchive(tmp_path / "c.wroll") as archive:
        entry = archive.manifest["tensors"][0]
    assert entry["scales"]["axis"] == 1 and entry["scales"]["count"] == 128


def _float64_unavailable():
    """JAX computes float64 only when x64 is enabled; otherwise it silently uses float32."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


def test_keras_network_and_numpy_fast_path_agree_bit_for_bit(archive_path):
    with reader.RolledArchive(archive_path) as archive:
        decoder = archive.manifest["decoder"]
        if decoder["kind"] == "mlp" and _float64_unavailable():
            pytest.skip("the MLP network computes in float64, which JAX does only with JAX_ENABLE_X64=1")
        net = network.from_archive(archive)
        codes = archive.codes()
        fast = weightroll.unroll(archive_path)
        for entry in archive.manifest["tensors"]:
            if entry["storage"] != "coded":
                continue
            span = codes[entry["codes"]["offset"]: entry["codes"]["offset"] + entry["codes"]["count"]]
            inputs = span.astype(np.int64) + (entry["table"]["offset"] if decoder["kind"] == "codebook" else 0)
            scale_inputs = None
            if "scales" in entry:
                shape, axis = entry["shape"], entry["scales"]["axis"]
                channel = np.indices(shape)[axis].reshape(-1)
                scale_inputs = entry["scales"]["offset"] + channel
            by_network = network.run(net, decoder, inputs, scale_inputs).reshape(entry["shape"])
            expected = fast[entry["path"]].copy()
            if "outliers" in entry:  # stored exactly beside the image, not by the network
                with reader.RolledArchive(archive_path) as again:
                    index, _ = decode._read_outliers(again.member(mf.EXACT_MEMBER), entry,
                                                       np.dtype(entry["dtype"]), expected.size)
                by_network.reshape(-1)[index] = expected.reshape(-1)[index]
            np.testing.assert_array_equal(by_network.view(np.uint32), expected.view(np.uint32))


def test_decoder_config_holds_no_code(archive_path):
    with reader.RolledArchive(archive_path) as archive:
        config = mf.loads(archive.decoder_config_json(), "decoder.json")
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
    allowed = {"Functional", "InputLayer", "Embedding", "Multiply", "Dense", "DTypePolicy",
               "RandomUniform", "GlorotUniform", "Zeros", "__keras_tensor__"}
    assert classes <= allowed, classes - allowed


@pytest.mark.slow
def test_mlp_decoder_reports_its_real_roll_value(tmp_path):
    model = _dense_model()
    codebook = weightroll.roll(model, tmp_path / "c.wroll", bits=8)
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


@pytest.mark.parametrize("table_size, scales_size", [(0, 1), (4, 1), (300, 17)])
def test_codebook_config_from_the_template_is_the_built_networks(table_size, scales_size):
    arrays = [np.zeros((table_size, 1), np.float32), np.ones((scales_size, 1), np.float32)]
    decoder = {"kind": "codebook"}
    assert network.decoder_config_json(decoder, arrays) == network.config_json(network.build(decoder, arrays))
