"""Trellis codes (format 4.0): the Viterbi search, the state machine, the coder
and the choice between them and uniform codes."""

import os
import time

import numpy as np
import pytest

from weightroll.coders import error, select, trellis, uniform


@pytest.fixture
def numpy_only(monkeypatch):
    """Run the trellis coder (and the uniform kernel it borrows) on numpy."""
    monkeypatch.setattr(trellis, "_trellis", None)
    monkeypatch.setattr(uniform, "_kernel", None)


def _values(size, seed=0, scale=30.0):
    rng = np.random.default_rng(seed)
    y = (rng.laplace(size=size) * scale).astype(np.float32)
    y[::97] = 0.5  # ties between levels
    y[::89] = -1.0  # the odd grid's -1 / +1 case
    return np.clip(y, -trellis.LIMIT - 0.5, trellis.LIMIT + 0.5)


def test_the_c_loops_are_built_where_ci_requires_them():
    if os.environ.get("WEIGHTROLL_REQUIRE_KERNEL") != "1":
        pytest.skip("WEIGHTROLL_REQUIRE_KERNEL=1 is set by .ci/run")
    assert trellis._trellis is not None, "setup.py did not build weightroll/coders/_trellis.c"


@pytest.mark.parametrize("segment, size", [(1, 5000), (7, 5000), (1024, 5000), (5000, 5000), (1024, 9 * 1024 + 5),
                                           (1000, 20_000)])
def test_the_c_search_and_state_machine_equal_numpy_bit_for_bit(segment, size, monkeypatch):
    # From 8 segments on, the C search runs eight at once where the processor has AVX2.
    if trellis._trellis is None:
        pytest.skip("the C extension is not built")
    y = _values(size)
    k, m = trellis.levels(y, segment), trellis.reconstruction(trellis.levels(y, segment), segment)
    monkeypatch.setattr(trellis, "_trellis", None)
    assert np.array_equal(k, trellis.levels(y, segment))
    assert np.array_equal(m, trellis.reconstruction(k, segment))


@pytest.mark.parametrize("segment, size", [(1, 5000), (1024, 5000), (1024, 9 * 1024 + 5), (1000, 20_000)])
def test_the_c_search_counts_and_sums_each_level_as_numpy_does(segment, size, monkeypatch):
    # The C search takes each value's grid from its path back, not from the state machine.
    if trellis._trellis is None:
        pytest.skip("the C extension is not built")
    y = _values(size)
    codes = np.empty(size, np.uint8)
    fast = trellis._search_chunk(y, segment, codes)
    monkeypatch.setattr(trellis, "_trellis", None)
    slow_codes = np.empty(size, np.uint8)
    slow = trellis._search_chunk(y, segment, slow_codes)
    assert np.array_equal(codes, slow_codes)
    for a, b in zip(fast, slow):
        assert np.array_equal(a, b)


def test_the_search_finds_a_path_closer_than_either_grid_alone():
    y = _values(8192, scale=8.0)
    m = trellis.reconstruction(trellis.levels(y, 1024), 1024).astype(np.float64)
    trellis_mse = np.mean((y - m) ** 2)
    # Either grid alone (spacing 2) is a uniform quantiser of step 2: MSE about 1/3.
    even_mse = np.mean((y - 2 * np.round(y / 2)) ** 2)
    assert trellis_mse < 0.85 * even_mse
    assert np.abs(trellis.levels(y, 1024)).max() <= trellis.MAX_LEVEL


def test_the_state_restarts_at_every_segment():
    k = np.array([1, 1, 1, 1, 1, 1], np.int16)
    # States 0, 2, 3, 1, 0, 2 (each k odd): m = 2k on Q0 (states 0, 1), 2k - 1 on Q1 (2, 3).
    assert trellis.reconstruction(k, 6).tolist() == [2, 1, 1, 2, 2, 1]
    assert trellis.reconstruction(k, 3).tolist() == [2, 1, 1, 2, 1, 1]
    assert trellis.reconstruction(k, 2).tolist() == [2, 1, 2, 1, 2, 1]


def test_table_indices_follow_the_spec(numpy_only):
    codes = np.array([5, 6, 4, 5, 7], np.uint8)
    # zero 5: k = 0, 1, -1, 0, 2; states 0 -> 0 -> 2 -> 3 -> 3; m = 0, 2, -1, 0, 4 - 1 = 3
    assert trellis.table_indices(codes, 1024, zero=5, low=-1)[0].tolist() == [1, 3, 0, 1, 4]


@pytest.mark.parametrize("size, skip", [(1, 0), (2, 1), (5, 4), (1023, 0), (3000, 1), (3000, 2), (5000, 1023)])
@pytest.mark.parametrize("low", [-300, -60])  # -60: some codes index beyond the table
def test_lookup_gives_the_table_values_of_the_indices_in_c_and_numpy(size, skip, low, monkeypatch):
    rng = np.random.default_rng(size)
    codes = np.clip(rng.normal(127, 20, size), 60, 190).astype(np.uint8)
    table = rng.normal(size=512).astype(np.float32)
    t = {"segment": 1024, "zero": 127, "low": low}
    index = trellis.table_indices(codes, 1024, 127, low)[0][skip:]
    inside = (index >= 0) & (index < table.size)
    results = []
    for loops in (trellis._trellis, None):
        monkeypatch.setattr(trellis, "_trellis", loops)
        out = np.empty(size - skip, np.float32)
        outside = trellis.lookup(codes, table, out, t, skip)
        assert outside == np.count_nonzero(~inside)
        assert np.array_equal(out, table[np.where(inside, index, 0)])
        plain = np.empty(size, np.float32)
        assert trellis.lookup(codes, table[:200], plain) == np.count_nonzero(codes >= 200)
        assert np.array_equal(plain, table[np.where(codes < 200, codes, 0)])
        results.append((out, plain))
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_a_long_declared_segment_costs_the_codes_not_the_segment(numpy_only):
    start = time.perf_counter()
    trellis.table_indices(np.zeros(10, np.uint8), 1 << 16, zero=0, low=0)
    assert time.perf_counter() - start < 1.0  # 65,536 numpy steps would take seconds


@pytest.mark.parametrize("shape, axis, every", [((300, 70), None, 501), ((300, 70), 1, 501), ((300, 70), 0, 501),
                                                ((4, 3, 3, 8), 2, 501), ((3000,), None, 501),
                                                ((1000, 1023), None, 37), ((3, 70001), 0, 37)])
def test_encode_decodes_by_table_look_up_and_measures_its_error(shape, axis, every):
    # Rows of 1,023 and 70,001 values: blocks end inside segments, outliers in their held-over parts.
    rng = np.random.default_rng(1)
    w = (rng.laplace(size=shape) * 0.05).astype(np.float32)
    w.reshape(-1)[::every] *= 60  # outliers
    code = trellis.encode(w, 0.07, axis, digest=True)
    t = code.trellis
    index, _, _ = trellis.table_indices(code.codes, t["segment"], t["zero"], t["low"])
    assert index.min() >= 0 and index.max() < code.table.size
    values = code.table[index].reshape(shape)
    if code.scales is not None:
        values = values * uniform.broadcast_scales(code.scales, shape, axis)
    values.reshape(-1)[code.outlier_index] = w.reshape(-1)[code.outlier_index]
    assert np.array_equal(values, code.decoded)
    assert code.measured == error.measure(w, code.decoded)
    assert code.codes.min() == 0


def test_encode_gives_the_same_bytes_with_or_without_the_c_loops(monkeypatch):
    w = (np.random.default_rng(2).standard_normal((64, 200)) * 0.1).astype(np.float32)
    fast = trellis.encode(w, 0.06, 1, digest=True)
    monkeypatch.setattr(trellis, "_trellis", None)
    monkeypatch.setattr(uniform, "_kernel", None)
    slow = trellis.encode(w, 0.06, 1, digest=True)
    assert np.array_equal(fast.codes, slow.codes) and np.array_equal(fast.table, slow.table)
    assert fast.sha256 == slow.sha256 and fast.measured == slow.measured and fast.trellis == slow.trellis


def test_a_large_tensor_gets_trellis_codes_smaller_than_uniform_ones_at_its_tolerance():
    w = (np.random.default_rng(3).laplace(size=(256, 512)) * 0.02).astype(np.float32)
    trellis_choice = select.choose(w, 0.02, 4)
    uniform_choice = select.choose(w, 0.02, 4, dependent=False)
    assert trellis_choice.code.trellis is not None and uniform_choice.code.trellis is None
    assert trellis_choice.measured.error <= 0.02
    # The codes alone: 0.155 bits per value fewer on the LM's real weights (trellis.py).
    assert uniform_choice.code.entropy_bits - trellis_choice.code.entropy_bits > 0.12


@pytest.mark.parametrize("check", [True, False])
def test_a_big_tensor_whose_first_sample_misleads_is_coded_whole_once(check, monkeypatch):
    # Every 32nd row (what the 32,768-value sample takes) is small beside the
    # channels' scales: the error found on the sample is not the whole's.
    w = np.random.default_rng(0).laplace(size=(1 << 16, 16)).astype(np.float32)
    w[::32] *= 0.3  # seeds 0 to 4 all code twice without the check
    monkeypatch.setattr(select, "_CONFIRM_FROM", 1 << 18 if check else 1 << 40)
    monkeypatch.setattr(select, "_CONFIRM", 1 << 17)
    whole = []
    for coder in (trellis, uniform):
        monkeypatch.setattr(coder, "encode", lambda x, *a, encode=coder.encode, **k: (
            whole.append(x.size == w.size), encode(x, *a, **k))[1])
    choice = select.choose(w, 0.01, 4)
    assert choice.code.trellis is not None and choice.measured.error <= 0.01
    assert sum(whole) == 1 if check else sum(whole) > 1
    assert choice.measured.error >= 0.95 * 0.01  # the check aims close to the tolerance, not far below it


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("dependent", [True, False])  # trellis codes, uniform codes
def test_16_bit_floats_are_measured_and_hashed_as_stored_without_a_decoded_copy(dtype, dependent):
    import hashlib

    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    w = (np.random.default_rng(4).laplace(size=(300, 70)) * 0.05).astype(dt)
    w[3, 5], w[200, 9] = 9.0, -12.0  # outliers, stored exactly
    lean = select.choose(w, 0.01, 2, keep_decoded=False, digest=True, dependent=dependent)
    full = select.choose(w, 0.01, 2, keep_decoded=True, digest=True, dependent=dependent)
    assert (lean.code.trellis is not None) == dependent and lean.code.decoded is None
    assert lean.code.outlier_index.size == 2
    stored = full.code.decoded.astype(dt)
    assert np.array_equal(stored.reshape(-1)[lean.code.outlier_index], w.reshape(-1)[lean.code.outlier_index])
    assert lean.code.sha256 == full.code.sha256 == hashlib.sha256(stored.tobytes()).hexdigest()
    assert lean.measured == full.measured == error.measure(w, full.code.decoded)
    assert lean.measured.error <= 0.01


def test_short_floats_keep_eleven_significant_bits_in_float32s_range():
    values = np.array([1.0, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1e-30, 3e30, -2.5, 0.1], np.float32)
    short = uniform.short_floats(values)
    assert short[0] == 1.0 and short[1] == 1.0  # a tie rounds to even
    assert short[2] == np.float32(1.0 + 4 * 2 ** -11)
    assert np.all(short.view(np.uint32) & 0x1FFF == 0)
    assert np.all(np.abs(short / values - 1) <= 2 ** -11)


def test_a_tensor_whose_levels_are_all_positive_codes_with_a_negative_zero():
    # A normalisation layer's scales, all near 1: every level is positive, so the lowest
    # level's code 0 means `zero` < 0 (the Keras text classifier's LayerNorm found it).
    w = (1.0 + 0.02 * np.random.default_rng(4).standard_normal(64)).astype(np.float32)
    code = trellis.encode(w, 0.05, None)
    assert code.trellis["zero"] < 0 and code.codes.min() == 0
    index, lowest, highest = trellis.table_indices(code.codes, **code.trellis)
    assert lowest >= 0 and highest < code.table.size
    assert np.array_equal(code.table[index], code.decoded)


@pytest.mark.parametrize("coder", [trellis.encode, uniform.encode])
@pytest.mark.parametrize("shape, axis", [((2_000, 1_000), None), ((2_000, 1_000), 1), ((2_000, 1_000), 0),
                                         ((30, 70_000), None), ((2_000_000,), None),
                                         ((3, 70_000), 1), ((3, 70_000), 0)])  # long rows; as many scales as values
def test_16_bit_floats_code_as_their_float32_values_do_without_a_float32_copy(coder, shape, axis):
    import tracemalloc

    import ml_dtypes

    w = (np.random.default_rng(5).laplace(size=shape) * 0.05).astype(ml_dtypes.bfloat16)
    w.reshape(-1)[[7, 12345]] = [9.0, -12.0]  # outliers, stored exactly
    tracemalloc.start()
    lean = coder(w, 0.05, axis, keep_decoded=False, digest=True, stored=w.dtype)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    wide = coder(w.astype(np.float32), 0.05, axis, keep_decoded=False, digest=True, stored=w.dtype)
    assert np.array_equal(lean.codes, wide.codes) and np.array_equal(lean.table, wide.table)
    assert np.array_equal(lean.outlier_index, wide.outlier_index)
    assert (lean.scales is None) == (axis is None) and (axis is None or np.array_equal(lean.scales, wide.scales))
    assert lean.sha256 == wide.sha256 and lean.measured == wide.measured and lean.trellis == wide.trellis
    if w.size > 1_000_000:  # the codes (a byte a value), a few blocks, the channels' sums: no float32 copy
        assert peak < 2 * w.size + 32 * (shape[-1] if len(shape) > 1 else 0) < 4 * w.size, peak
