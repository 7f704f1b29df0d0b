"""GPTQ rounding and grid codes with given steps (numpy only)."""

import numpy as np
import pytest

from weightroll import _encode
from weightroll.coders import gptq, uniform
from weightroll.errors import WrollError


def _correlated(seed=0, n=64, m=32, samples=2048):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n, n)) * 0.3 + np.eye(n)
    x = rng.normal(size=(samples, n)) @ mix  # correlated inputs
    w = rng.standard_t(3, size=(n, m)) * 0.05
    return w, x.T @ x


def test_gptq_lowers_the_hessian_weighted_error_of_rounding_to_nearest():
    w, h = _correlated()
    step = 0.02
    rtn, _ = gptq.round_to_grid(w, step)
    q, exact = gptq.quantize(w, step, h)
    assert not exact.any()
    rtn_err = gptq.weighted_error(w, rtn * step, h)
    gptq_err = gptq.weighted_error(w, q * step, h)
    assert gptq_err < 0.7 * rtn_err


def test_gptq_without_hessian_is_rounding_to_nearest():
    w, _ = _correlated(1)
    q, exact = gptq.quantize(w, 0.01, None)
    np.testing.assert_array_equal(q, np.rint(w / 0.01))
    assert not exact.any()


def test_values_beyond_the_grid_and_planted_outliers_are_exact():
    w, h = _correlated(2)
    w[3, 5] = 40.0  # far beyond 127 steps and 40 robust sigmas
    exact = gptq.planted_outliers(w)
    assert exact[3, 5] and exact.sum() == 1
    q, out = gptq.quantize(w, 0.01, h, exact)
    assert out[3, 5] and q[3, 5] == 0
    assert np.abs(q).max() <= gptq.HALF_RANGE


def test_gptq_rejects_mismatched_hessian():
    with pytest.raises(WrollError, match="Hessian"):
        gptq.quantize(np.zeros((4, 3)), 0.1, np.eye(3))


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_code_decodes_to_levels_times_steps_with_exact_outliers(axis):
    w, h = _correlated(3, n=48, m=24)
    w[0, 0] = 9.0
    if axis is None:
        steps = 0.01
    else:
        steps = np.linspace(0.005, 0.02, w.shape[axis])
    c = gptq.code(w, axis, steps, h, w.shape)
    full = np.broadcast_to(steps if axis is None else uniform.broadcast_scales(
        np.asarray(steps, np.float32), w.shape, axis), w.shape)
    assert c.codes.dtype == np.uint8 and c.codes.max() < c.table.size <= 255
    assert 0 in c.outlier_index  # the planted value
    decoded = c.decoded.reshape(-1)
    np.testing.assert_array_equal(decoded[c.outlier_index], w.reshape(-1)[c.outlier_index].astype(np.float32))
    # What a reader computes: table[code] * scale[channel], outliers restored.
    read = np.take(c.table, c.codes).reshape(w.shape)
    if c.scales is not None:
        read = read * uniform.broadcast_scales(c.scales, w.shape, c.axis)
    read = read.reshape(-1)
    read[c.outlier_index] = w.reshape(-1)[c.outlier_index]
    np.testing.assert_array_equal(read.astype(np.float32), decoded)
    inliers = np.setdiff1d(np.arange(w.size), c.outlier_index)
    assert np.all(np.abs(decoded - w.reshape(-1))[inliers] <= 10 * np.asarray(full, np.float64).reshape(-1)[inliers])
    # Commonest level first: code 0 is the most frequent.
    assert np.argmax(np.bincount(c.codes[inliers])) == 0


def test_transposed_view_uses_the_hessian_of_the_columns():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(100, 16)) * 0.1  # tokens x features
    _, h = _correlated(4, n=16, m=1)
    c = gptq.code(emb, 0, np.full(100, 0.05), h, emb.shape, transpose=True)
    rtn = gptq.code(emb, 0, np.full(100, 0.05))
    err = gptq.weighted_error(emb.T, c.decoded.T, h)
    assert err < gptq.weighted_error(emb.T, rtn.decoded.T, h)


def test_channel_steps_follow_the_sensitivity():
    f = np.ones((1024, 8))
    f[:, 0] = 4.0  # one more sensitive output channel
    axis, steps = gptq.channel_steps(f)
    assert axis == 1 and steps[0] == pytest.approx(0.5) and steps[1] == pytest.approx(1.0)
    f[:, 1] = 0.0  # a dead channel gets a bounded step
    axis, steps = gptq.channel_steps(f)
    assert axis == 1 and steps[1] == pytest.approx(1 / np.sqrt(gptq.CHANNEL_FLOOR * f.mean()))
    axis, step = gptq.channel_steps(np.full((64, 8), 4.0))  # nothing to gain from scales
    assert axis is None and step == pytest.approx(0.5)
    assert gptq.channel_steps(np.zeros((4, 4))) is None


def test_encode_uses_a_given_code_as_is():
    w, h = _correlated(5)
    w = w.astype(np.float32)
    c = gptq.code(w, 1, np.full(w.shape[1], 0.01), h, w.shape)
    encoded = _encode.encode([("k", w), ("b", np.ones(3, np.float32))], tolerance={"k": c})
    entry = encoded.tensors[0]
    assert entry["storage"] == "coded" and entry["quantizer"] == "uniform"
    assert entry["scales"]["axis"] == 1 and entry["table"]["size"] == c.table.size
    np.testing.assert_array_equal(encoded.decoded["k"], c.decoded)
    with pytest.raises(WrollError, match="the tensor has 1"):
        _encode.encode([("k", np.ones(1, np.float32))], tolerance={"k": c})
