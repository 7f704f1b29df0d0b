"""`reuse.Calibration`: successive calibrated rolls of one model, measured in one
model and allocated from the last full allocation's grids."""

import io

import keras
import numpy as np
import pytest

from weightroll import _encode
from weightroll._keras import allocate as allocate_lib
from weightroll._keras import model_io, reuse
from weightroll._keras import roll as roll_lib

sklearn_datasets = pytest.importorskip("sklearn.datasets")

TOLERANCE = 0.04


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = (data.data / 16.0).astype("float32")
    return x[:1024], data.target[:1024], x[1024:1280]


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(96, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def snapshots(digits):
    """Snapshots of one model after each of 4 epochs."""
    x, y, _ = digits
    model, taken = _model(), []
    for _ in range(4):
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        taken.append(roll_lib.snapshot(model))
    return model, taken


def _error(calibration, snap, plan, x):
    """The output relative RMSE of the archive a plan makes, measured in a rebuilt model."""
    encoded = _encode.encode(snap.tensors, tolerance=plan)
    model = model_io.rebuild(snap.architecture, compile=False, safe_mode=False)
    reference = calibration.reference(snap, x)
    model_io.assign(model, [(path, encoded.decoded[path]) for path, _ in snap.tensors])
    return allocate_lib._output_error(reference, model_io.predict_outputs(model, x))


def test_the_measurement_model_predicts_as_keras_predict(snapshots, digits):
    model, taken = snapshots
    x_val = digits[2]
    calibration = reuse.Calibration()
    first = calibration.reference(taken[0], x_val)
    last = calibration.reference(taken[-1], x_val)  # the same model, other weights: assigned
    np.testing.assert_allclose(last[0], model.predict(x_val, verbose=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(first[0], last[0])
    decoded = {path: np.zeros_like(array) for path, array in taken[-1].tensors}
    zeros = calibration.outputs(taken[-1], decoded, x_val)
    np.testing.assert_allclose(zeros[0], np.full((len(x_val), 10), 0.1), rtol=1e-6)


def test_later_snapshots_reuse_the_allocation_and_still_meet_the_tolerance(snapshots, digits):
    _, taken = snapshots
    x_val = digits[2]
    calibration = reuse.Calibration()
    plans = [calibration.allocate(snap, x_val, TOLERANCE)[0] for snap in taken]
    assert (calibration.full_allocations, calibration.reused_allocations) == (1, len(taken) - 1)
    for snap, plan in zip(taken[1:], plans[1:]):
        assert _error(calibration, snap, plan, x_val) <= TOLERANCE * 1.0001


def test_a_reused_plan_codes_the_new_weights_on_the_old_grids(snapshots, digits):
    _, taken = snapshots
    calibration = reuse.Calibration()
    first, _ = calibration.allocate(taken[0], digits[2], TOLERANCE)
    later, _ = calibration.allocate(taken[1], digits[2], TOLERANCE)
    factor = calibration._factor
    coded = [path for path, entry in first.items() if hasattr(entry, "scales")]
    assert coded
    for path in coded:
        old, new = first[path], later[path]
        assert new.axis == old.axis
        steps = (lambda c: c.scales if c.axis is not None else c.step)
        # Steps are kept to 11 significant bits (`uniform.short_floats`): within 2**-11 of each other.
        np.testing.assert_allclose(steps(new), np.float32(steps(old) * factor), rtol=2 ** -11)
        assert not np.array_equal(new.codes, old.codes) or path.endswith("bias")


def test_a_snapshot_of_another_model_gets_a_full_allocation(snapshots, digits):
    _, taken = snapshots
    calibration = reuse.Calibration()
    calibration.allocate(taken[0], digits[2], TOLERANCE)
    other = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
    calibration.allocate(roll_lib.snapshot(other), digits[2], TOLERANCE)
    assert calibration.full_allocations == 2


def test_weights_only_snapshots_are_measured_in_the_architecture_given(snapshots, digits):
    model, taken = snapshots
    weights_only = roll_lib.snapshot(model, weights_only=True)
    assert weights_only.architecture is None
    calibration = reuse.Calibration(architecture=taken[-1].architecture)
    np.testing.assert_allclose(calibration.reference(weights_only, digits[2])[0],
                               model.predict(digits[2], verbose=0), rtol=1e-5, atol=1e-6)
    plan, _ = calibration.allocate(weights_only, digits[2], TOLERANCE)
    report = roll_lib.write_snapshot(weights_only, io.BytesIO(), tolerance=plan)
    assert report.roll_value["weights"]["relative_rmse"] > 0
