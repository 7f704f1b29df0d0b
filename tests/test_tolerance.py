"""Quality targets: `tolerance=` and `quality=` presets choose codes per tensor."""

import io

import keras
import numpy as np
import pytest

import weightroll
from weightroll import _encode
from weightroll._format import reader

WIDTH = 96


def _model():
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(WIDTH, name="a"),
                              keras.layers.Dense(WIDTH, name="b"), keras.layers.Dense(8, name="c")])
    rng = np.random.default_rng(4)
    for layer in model.layers:
        layer.kernel.assign((rng.standard_t(4, size=layer.kernel.shape) * 0.03).astype("float32"))
    return model


@pytest.mark.parametrize("tolerance", [0.005, 0.02, 0.1])
def test_every_coded_tensor_stays_within_the_tolerance(tolerance):
    report = weightroll.roll(_model(), io.BytesIO(), tolerance=tolerance)
    errors = [e["relative_rmse"] for e in report.roll_value["tensors"].values()]
    assert max(errors) <= tolerance
    assert max(errors) > tolerance / 2  # and it uses the room it was given


def test_a_looser_tolerance_gives_a_smaller_archive():
    sizes = [weightroll.roll(_model(), io.BytesIO(), tolerance=t).archive_bytes for t in (0.005, 0.02, 0.1)]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("preset", sorted(_encode.PRESETS))
def test_presets_map_to_their_documented_tolerance(preset):
    buf = io.BytesIO()
    report = weightroll.roll(_model(), buf, quality=preset)
    assert report.settings == {"tolerance": _encode.PRESETS[preset], "quality": preset}
    buf.seek(0)
    with reader.RolledArchive(buf) as archive:
        assert archive.manifest["settings"] == report.settings


def test_default_is_the_balanced_preset():
    report = weightroll.roll(_model(), io.BytesIO())
    assert report.settings == {"tolerance": _encode.PRESETS["balanced"], "quality": "balanced"}


def test_tolerance_zero_stores_floats_exactly():
    model = _model()
    buf = io.BytesIO()
    weightroll.roll(model, buf, tolerance=0.0)
    buf.seek(0)
    for v, array in zip(model.variables, weightroll.unroll(buf).values()):
        np.testing.assert_array_equal(array, v.numpy())


def test_bits_and_tolerance_together_are_refused():
    with pytest.raises(weightroll.WrollError, match="at most one of"):
        weightroll.roll(_model(), io.BytesIO(), bits=4, tolerance=0.02)


def test_mlp_decoder_refuses_a_tolerance():
    with pytest.raises(weightroll.WrollError, match="takes `bits` only"):
        weightroll.roll(_model(), io.BytesIO(), decoder="mlp", quality="small")


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.02", True])
def test_tolerance_must_be_a_number_in_0_1(bad):
    with pytest.raises(weightroll.WrollError, match="`tolerance`"):
        weightroll.roll(_model(), io.BytesIO(), tolerance=bad)


def test_unknown_preset_is_refused():
    with pytest.raises(weightroll.WrollError, match="`quality`"):
        weightroll.roll(_model(), io.BytesIO(), quality="tiny")
