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
    assert report.settings == {"tolerance": _encode.PRESETS[preset], "quality": preset,
                               "spread": _encode.SPREAD_CAP}
    buf.seek(0)
    with reader.RolledArchive(buf) as archive:
        assert archive.manifest["settings"] == report.settings


def test_default_is_the_balanced_preset():
    report = weightroll.roll(_model(), io.BytesIO())
    assert report.settings == {"tolerance": _encode.PRESETS["balanced"], "quality": "balanced",
                               "spread": _encode.SPREAD_CAP}


def test_an_explicit_tolerance_is_not_a_preset():
    report = weightroll.roll(_model(), io.BytesIO(), tolerance=_encode.PRESETS["balanced"])
    assert report.settings == {"tolerance": _encode.PRESETS["balanced"]}


SHAPES = {"embed": (4096, 128), "big": (512, 512), "mid": (128, 256), "small": (16, 16), "bias": (512,),
          "gamma": (128,), "steps": (64, 64), **{f"tiny{i}": (8, 8, 2) for i in range(4)}}


def _named(shapes, dtype="float32"):
    return [(p, np.zeros(s, dtype)) for p, s in shapes.items()]


@pytest.mark.parametrize("preset", sorted(_encode.PRESETS))
def test_a_preset_is_a_budget_shared_by_size(preset):
    t = _encode.PRESETS[preset]
    spread = _encode.spread_tolerance(_named(SHAPES), t, exclude={"steps"})
    matrices = ["embed", "big", "mid", "small"] + [f"tiny{i}" for i in range(4)]
    # the matrices' squared tolerances add up to the preset's, with no tensor over the cap
    assert sum(spread[p] ** 2 for p in matrices) == pytest.approx(len(matrices) * t ** 2)
    assert max(spread.values()) <= _encode.SPREAD_CAP * t * (1 + 1e-12)
    assert spread["embed"] == pytest.approx(_encode.SPREAD_CAP * t)  # the largest is capped
    # larger matrices get looser tolerances, in proportion to sqrt(size) below the cap
    assert spread["embed"] >= spread["big"] > spread["mid"] > spread["small"]
    assert spread["mid"] / spread["small"] == pytest.approx(np.sqrt(128 * 256 / 256))
    # vectors, and tensors excluded (stored without loss), keep the preset's value
    assert spread["bias"] == spread["gamma"] == spread["steps"] == t


def test_equal_matrices_share_a_preset_equally():
    spread = _encode.spread_tolerance(_named({"a": (64, 64), "b": (64, 64), "c": (8,)}), 0.01)
    assert spread == {"a": pytest.approx(0.01), "b": pytest.approx(0.01), "c": 0.01}


def test_integer_tensors_take_no_share():
    named = _named({"a": (64, 64)}) + [("q", np.zeros((256, 256), "int8"))]
    assert _encode.spread_tolerance(named, 0.01) == {"a": pytest.approx(0.01), "q": 0.01}


def test_the_default_roll_keeps_each_tensor_within_its_share():
    model = _model()
    report = weightroll.roll(model, io.BytesIO())
    t = _encode.PRESETS["balanced"]
    spread = _encode.spread_tolerance([(v.path, v.numpy()) for v in model.weights], t)
    errors = report.roll_value["tensors"]
    for path, value in errors.items():
        assert value["relative_rmse"] <= spread[path] * (1 + 1e-6), path
    kernels = [errors[p]["relative_rmse"] for p in errors if p.endswith("kernel")]
    assert np.sqrt(np.mean(np.square(kernels))) <= t  # the budget, on the matrices
    assert max(kernels) > t  # the large kernels took more than the preset


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
