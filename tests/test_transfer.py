"""Transfer learning: frozen base tensors travel as references, not values."""

import io

import keras
import numpy as np
import pytest

import weightroll
from weightroll.errors import ArchiveError

IMAGE = (16, 16, 3)


def _base():
    keras.utils.set_random_seed(21)
    return keras.Sequential([
        keras.Input(IMAGE),
        keras.layers.Conv2D(32, 3, activation="relu", name="b_conv1"),
        keras.layers.BatchNormalization(name="b_bn"),
        keras.layers.Conv2D(64, 3, activation="relu", name="b_conv2"),
        keras.layers.GlobalAveragePooling2D(name="b_pool"),
    ], name="base")


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transfer")
    base = _base()
    base.save(folder / "base.keras")
    base.save_weights(folder / "base.weights.h5")
    base.trainable = False
    model = keras.Sequential([base, keras.layers.Dense(5, activation="softmax", name="head")], name="tl")
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(64,) + IMAGE).astype("float32")
    y = np.random.default_rng(1).integers(0, 5, 64)
    model.fit(x, y, epochs=2, verbose=0)
    return base, model, x, folder


def _roll(model, base):
    buf = io.BytesIO()
    report = weightroll.roll(model, buf, base=base)
    buf.seek(0)
    return buf, report


@pytest.mark.slow
@pytest.mark.parametrize("form", ["model", "keras_file", "weights_file", "dict"])
def test_frozen_base_tensors_are_stored_as_references(transfer, form):
    base, model, x, folder = transfer
    base_arg = {
        "model": base,
        "keras_file": folder / "base.keras",
        "weights_file": folder / "base.weights.h5",
        "dict": {v.path: v.numpy() for v in base.variables},
    }[form]
    buf, report = _roll(model, base_arg)
    with weightroll._format.reader.RolledArchive(buf) as archive:
        storage = {t["path"]: t["storage"] for t in archive.manifest["tensors"]}
    base_paths = {v.path for v in base.variables if v.numpy().size}
    assert {p for p, s in storage.items() if s == "reference"} == base_paths
    buf.seek(0)
    loaded = weightroll.load_rolled(buf, base=base_arg)
    for a, b in zip(loaded.variables, model.variables):
        if b.path in base_paths:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)


@pytest.mark.slow
def test_archive_is_far_smaller_than_without_a_base(transfer):
    base, model, _, _ = transfer
    with_base = _roll(model, base)[1].archive_bytes
    without = _roll(model, None)[1].archive_bytes
    assert with_base * 2.5 < without


@pytest.mark.slow
def test_loading_without_the_base_says_to_pass_it(transfer):
    base, model, _, _ = transfer
    buf, _ = _roll(model, base)
    with pytest.raises(ArchiveError, match="pass the base it was rolled against"):
        weightroll.load_rolled(buf)


@pytest.mark.slow
def test_a_base_whose_tensors_differ_is_refused(transfer):
    base, model, _, _ = transfer
    buf, _ = _roll(model, base)
    other = {v.path: v.numpy() for v in base.variables}
    kernel = next(k for k in other if k.endswith("b_conv2/kernel"))
    other[kernel] = other[kernel].copy()
    other[kernel].flat[0] += 1e-6
    with pytest.raises(ArchiveError, match="does not hold bit for bit"):
        weightroll.load_rolled(buf, base=other)


@pytest.mark.slow
def test_unroll_takes_the_base_as_numpy_arrays(transfer):
    base, model, _, _ = transfer
    buf, _ = _roll(model, base)
    weights = weightroll.unroll(buf, base=[v.numpy() for v in base.variables])
    assert list(weights) == [v.path for v in model.variables]


@pytest.mark.slow
def test_a_bad_base_argument_is_refused(transfer):
    _, model, _, _ = transfer
    with pytest.raises(weightroll.WrollError, match="`base` must be"):
        weightroll.roll(model, io.BytesIO(), base="weights.bin")


@pytest.mark.slow
def test_calibration_with_a_base_codes_the_head_not_the_base(transfer):
    base, model, x, _ = transfer
    buf = io.BytesIO()
    report = weightroll.roll(model, buf, base=base, validation_data=x)
    buf.seek(0)
    with weightroll._format.reader.RolledArchive(buf) as archive:
        storage = {t["path"]: t["storage"] for t in archive.manifest["tensors"]}
    head = next(p for p in storage if p.endswith("head/kernel"))
    assert storage[head] == "coded"  # the output budget goes to the head
    assert report.roll_value["outputs"]["relative_rmse"] <= 0.04


@pytest.mark.slow
def test_the_default_preset_shares_its_budget_among_the_coded_tensors_not_the_base(transfer):
    """The base's tensors, stored as references, take no share of the preset's error
    budget: the head's kernel, the only matrix coded, gets the preset itself (with the
    base's matrices counted, its share was 0.22x of it)."""
    base, model, _, _ = transfer
    _, report = _roll(model, base)
    head = next(p for p in report.roll_value["tensors"] if p.endswith("head/kernel"))
    error = report.roll_value["tensors"][head]["relative_rmse"]
    assert 0.5 * 0.01 < error <= 0.01
