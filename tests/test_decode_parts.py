"""Tensors are decoded in parts, on the cores there are, with the bits of one
whole look-up (`weightroll/_format/decode.py`)."""

import importlib.util
import pathlib

import keras
import ml_dtypes
import numpy as np
import pytest

import weightroll
from weightroll._format import decode

SPEC_DIR = pathlib.Path(__file__).resolve().parents[1] / "spec"


def _whole_lookup(codes, table, scales, shape, axis, dtype):
    """Every code looked up at once, scaled at once, cast at once."""
    values = table[codes].reshape(shape)
    if axis is not None:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        values = values * scales[1:].reshape(view)
    with np.errstate(all="ignore"):
        return values.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("shape,axis", [((), None), ((7,), 0), ((3, 4, 5), 0), ((3, 4, 5), 1), ((3, 4, 5), 2),
                                        ((2, 3, 4, 6), 3), ((5, 9), None)])
def test_a_tensor_decoded_in_parts_has_the_bits_of_one_whole_lookup(monkeypatch, dtype, shape, axis):
    monkeypatch.setattr(decode, "_PART_VALUES", 5)  # parts under fixed leading indices, and ranges
    rng = np.random.default_rng(7)
    n = int(np.prod(shape, dtype=np.int64))
    codes = rng.integers(0, 16, n).astype(np.uint8)
    table = (rng.integers(-9, 9, 16) if dtype == "int8" else rng.standard_normal(16) * 1e4).astype(np.float32)
    scales = np.concatenate([[1.0], rng.uniform(0.5, 2, shape[axis] if axis is not None else 0)]).astype(np.float32)
    entry = {"path": "t", "dtype": dtype, "shape": list(shape), "storage": "coded",
             "codes": {"offset": 0, "count": n}, "table": {"offset": 0, "size": 16}}
    if axis is not None and dtype != "int8":
        entry["scales"] = {"offset": 1, "count": shape[axis], "axis": axis}
    got = decode.decode_tensor(entry, codes, table, scales, b"", "codebook")
    want = _whole_lookup(codes, table, scales, shape, axis if "scales" in entry else None,
                         ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def _reference_reader():
    spec = importlib.util.spec_from_file_location("reference_reader", SPEC_DIR / "reference_reader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unroll_in_parallel_parts_equals_the_reference_reader(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(16, 3),
        keras.layers.Flatten(),
        keras.layers.Dense(40, dtype="bfloat16"),
        keras.layers.Dense(10, dtype="float16"),
    ])
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path)
    monkeypatch.setattr(decode, "_PART_VALUES", 64)
    monkeypatch.setattr(decode, "_PARALLEL_VALUES", 0)  # every tensor's parts and digests in the pool
    ours = weightroll.unroll(path)
    theirs = _reference_reader().read(str(path))
    assert list(ours) == list(theirs)
    for key, array in ours.items():
        assert array.dtype == theirs[key].dtype and array.tobytes() == theirs[key].tobytes(), key
