import numpy as np
import pytest

from weightroll.coders import mlp


def test_grid_codes_span_the_global_min_max(rng):
    values = rng.normal(size=1000)
    codes = mlp.grid_codes(values, values.min(), values.max(), bits=8)
    assert codes.min() == 0 and codes.max() == 255


@pytest.mark.slow
def test_fit_is_deterministic_for_a_seed(rng):
    values = rng.normal(size=2000)
    codes = mlp.grid_codes(values, values.min(), values.max(), bits=8)
    a = mlp.fit(codes, values, 8, seed=3)
    b = mlp.fit(codes, values, 8, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_fitted_mlp_approximates_the_grid_levels(rng):
    values = rng.normal(size=5000)
    lo, hi = values.min(), values.max()
    codes = mlp.grid_codes(values, lo, hi, bits=8)
    params = mlp.fit(codes, values, 8)
    decoded = mlp.evaluate(params, 8, codes=codes)
    rel_rmse = np.sqrt(np.mean((decoded - values) ** 2) / np.mean(values**2))
    # The grid alone gives ~(hi-lo)/255/sqrt(12) error; the regression adds its own.
    assert rel_rmse < 0.1
