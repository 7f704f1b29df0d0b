import numpy as np
import pytest

from weightroll.coders import codebook


def test_few_distinct_values_are_coded_losslessly(rng):
    values = rng.choice(np.array([-1.5, 0.0, 0.25, 3.0], np.float32), size=1000)
    table, codes = codebook.fit_codebook(values, bits=2)
    np.testing.assert_array_equal(table[codes], values)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codes_index_a_sorted_table_of_at_most_2_pow_bits(rng, bits):
    values = rng.standard_t(3, size=5000).astype(np.float32)
    table, codes = codebook.fit_codebook(values, bits)
    assert table.dtype == np.float32 and codes.dtype == np.uint8
    assert table.size <= 1 << bits
    assert np.all(np.diff(table) > 0)
    assert codes.max() < table.size


def test_each_value_gets_its_nearest_entry(rng):
    values = rng.normal(size=4000)
    table, codes = codebook.fit_codebook(values, bits=4)
    nearest = np.abs(values[:, None] - table[None, :].astype(np.float64)).argmin(axis=1)
    chosen = np.abs(values - table[codes])
    best = np.abs(values - table[nearest])
    np.testing.assert_allclose(chosen, best, rtol=0, atol=1e-7)


def test_kmeans_beats_a_uniform_grid_on_heavy_tails(rng):
    values = rng.standard_t(2, size=20000)
    table, codes = codebook.fit_codebook(values, bits=4)
    kmeans_mse = np.mean((values - table[codes]) ** 2)
    lo, hi = values.min(), values.max()
    grid = np.rint((values - lo) / (hi - lo) * 15) / 15 * (hi - lo) + lo
    uniform_mse = np.mean((values - grid) ** 2)
    assert kmeans_mse < uniform_mse / 4


def test_empty_and_constant_tensors():
    table, codes = codebook.fit_codebook(np.zeros(0), bits=8)
    assert table.size == 0 and codes.size == 0
    table, codes = codebook.fit_codebook(np.full(10, 0.5), bits=8)
    np.testing.assert_array_equal(table[codes], np.full(10, 0.5, np.float32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", ["few", "grid", "many", "zeros", "negative_zeros", "both_zeros", "grid_long",
                                  "many_late"])
def test_16_bit_lossless_codes_by_bit_pattern_equal_the_general_path(dtype, case):
    """`select._lossless` counts a 16-bit tensor's bit patterns instead of sorting a
    float64 copy; its table and codes are `fit_codebook`'s, bit for bit."""
    import ml_dtypes

    from weightroll.coders import select

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    rng = np.random.default_rng(0)
    x = {
        "few": lambda: rng.choice(np.array([0.5, -1.25, 3.0, 0.0, 2.0**-20], np.float32), size=(300, 70)),
        "grid": lambda: rng.integers(-100, 100, size=(1000, 50)) / 64,
        "many": lambda: rng.normal(size=(64, 64)),
        "zeros": lambda: np.zeros((50, 50)),
        "negative_zeros": lambda: np.full((50, 50), -0.0),
        "both_zeros": lambda: rng.choice(np.array([0.0, -0.0, 1.0]), size=(100, 10)),
        # more values than one chunk of patterns (65,536): 200 distinct in all, or past 256 only late
        "grid_long": lambda: rng.integers(-100, 100, size=(800, 100)) / 64,
        "many_late": lambda: np.concatenate([rng.integers(-100, 100, 70_000) / 64,
                                             rng.normal(size=10_000)]).reshape(800, 100),
    }[case]().astype(dt)
    table, codes = select._lossless(x)
    flat = x.reshape(-1)
    if np.unique(flat.astype(np.float32)).size > 256:
        assert table is None and codes is None
        return
    expected_table, expected_codes = codebook.fit_codebook(flat, 8)
    assert table.tobytes() == expected_table.tobytes()
    assert codes.tobytes() == expected_codes.tobytes()
