"""The uniform coder decodes, measures and hashes block by block as it codes:
what it reports must be what a separate pass over its output finds, whether
its compiled kernel or numpy does the work."""

import hashlib
import os

import numpy as np
import pytest

from weightroll._entropy import bits_per_code
from weightroll.coders import error, select, uniform
from weightroll.coders.error import CHANNEL_FACTOR

SHAPES_AND_AXES = [
    ((), None),
    ((1000,), None),
    ((1000,), 0),
    ((200, 30), None),
    ((200, 30), 0),
    ((200, 30), 1),
    ((3, 3, 16, 40), None),
    ((3, 3, 16, 40), 3),
    ((6, 5, 40), 0),  # per-row scales of a rank-3 tensor
    ((4, 7, 5, 9), 1),  # a middle axis: coded in one block
    ((4, 33000, 2), 1),  # a middle axis of a tensor whose table sample is strided
    ((300, 700), 1),  # several blocks of whole rows
    ((7000, 20), 0),  # several blocks of per-row scales
    ((2, 70000), None),  # rows longer than a block, in pieces
    ((2, 70000), 1),
    ((3, 2, 40000), 0),  # long rows of per-row scales, in whole channels
]


KERNEL = uniform._kernel


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def coder(request, monkeypatch):
    """Every test here runs on both coders: the C kernel and numpy."""
    if request.param == "kernel" and KERNEL is None:
        pytest.skip("the C kernel is not built (setup.py); numpy codes alone")
    monkeypatch.setattr(uniform, "_kernel", KERNEL if request.param == "kernel" else None)
    return request.param


def _heavy(rng, shape):
    x = rng.standard_t(3, size=shape) * 0.05
    if len(shape) >= 2:  # channels of different sizes
        x = x * rng.uniform(0.1, 3.0, size=shape[-1])
    return np.asarray(x, np.float32)


@pytest.mark.parametrize("shape,axis", SHAPES_AND_AXES)
def test_reported_error_digest_and_entropy_match_the_output(rng, shape, axis):
    x = _heavy(rng, shape)
    step = 0.05
    kept = uniform.encode(x, step, axis, keep_decoded=True, digest=True)
    bare = uniform.encode(x, step, axis, keep_decoded=False, digest=True)

    # The same codes either way; the decoded values only when asked for.
    assert bare.decoded is None
    np.testing.assert_array_equal(kept.codes, bare.codes)
    np.testing.assert_array_equal(kept.table, bare.table)
    # Decoding is table look-up times the channel's scale, outliers exact.
    expected = kept.table[kept.codes.astype(np.intp)].reshape(x.shape)
    if kept.scales is not None:
        expected = expected * uniform.broadcast_scales(kept.scales, x.shape, axis)
    expected.reshape(-1)[kept.outlier_index] = x.reshape(-1)[kept.outlier_index]
    np.testing.assert_array_equal(kept.decoded, expected)

    digest = hashlib.sha256(np.ascontiguousarray(kept.decoded, "<f4").tobytes()).hexdigest()
    assert kept.sha256 == bare.sha256 == digest

    e = (x.astype(np.float64) - kept.decoded).reshape(-1)
    sq_err, sq_ref = float(e @ e), float(np.square(x, dtype=np.float64).sum())
    assert bare.measured.sq_err == pytest.approx(sq_err, rel=1e-4, abs=1e-12)
    assert bare.measured.sq_ref == pytest.approx(sq_ref, rel=1e-4)
    assert bare.measured.max_abs == pytest.approx(float(np.abs(e).max()) if e.size else 0.0, rel=1e-6)
    overall = np.sqrt(sq_err / sq_ref)
    if len(shape) >= 2:
        per_channel = np.sqrt(np.square(e.reshape(-1, shape[-1])).sum(0) /
                              np.square(x.reshape(-1, shape[-1]).astype(np.float64)).sum(0))
        overall = max(overall, per_channel.max() / CHANNEL_FACTOR)
    assert bare.measured.error == pytest.approx(overall, rel=1e-4)

    # Below 2 * 64k values the table sample is the whole tensor: the entropy
    # is exact; above, it is estimated on a sample of whole rows.
    exact = x.size < 2 * (1 << 16)
    assert bare.entropy_bits == pytest.approx(bits_per_code(bare.codes), abs=1e-9 if exact else 0.02)


def test_outliers_are_exact_and_counted_at_their_code(rng):
    x = rng.normal(size=(64, 32)).astype(np.float32)
    x[5, 7], x[40, 3] = 500.0, -800.0  # far beyond 127 steps
    code = uniform.encode(x, 0.05, 1, keep_decoded=True, digest=True)
    assert list(code.outlier_index) == [5 * 32 + 7, 40 * 32 + 3]
    assert code.decoded[5, 7] == 500.0 and code.decoded[40, 3] == -800.0
    assert code.entropy_bits == pytest.approx(bits_per_code(code.codes), abs=1e-9)


@pytest.mark.parametrize("shape,axis", [((1024, 600), 1), ((1024, 600), None), ((600, 1024), 0),
                                        ((1, 700000), None), ((700000,), None)])
def test_a_large_tensor_entropy_is_estimated_from_its_sample(rng, shape, axis):
    x = _heavy(rng, shape)  # 614k or more values: a sample of about a tenth
    code = uniform.encode(x, 0.1, axis, keep_decoded=False)
    assert code.entropy_bits == pytest.approx(bits_per_code(code.codes), abs=0.02)


def test_choose_without_decoded_values_gives_the_same_code(rng):
    x = _heavy(rng, (3, 3, 32, 64))
    kept = select.choose(x, 0.01, 4, keep_decoded=True)
    bare = select.choose(x, 0.01, 4, keep_decoded=False, digest=True)
    assert kept.kind == bare.kind == "uniform"
    np.testing.assert_array_equal(kept.code.codes, bare.code.codes)
    assert bare.code.decoded is None
    assert bare.measured.error <= 0.01
    assert bare.code.sha256 == hashlib.sha256(kept.code.decoded.astype("<f4").tobytes()).hexdigest()


@pytest.mark.parametrize("shape,axis", [((200, 30), None), ((200, 30), 0), ((200, 30), 1),
                                        ((3, 3, 16, 40), 3), ((1000,), None), ((64, 32), 1)])
@pytest.mark.parametrize("step", [0.02, 0.3])
def test_a_trial_measures_what_encode_gives(rng, shape, axis, step):
    x = _heavy(rng, shape)
    if shape == (64, 32):
        x[5, 7], x[40, 3] = 500.0, -800.0  # outliers
    code = uniform.encode(x, step, axis, keep_decoded=False)
    result = uniform.Trial(x, axis).at(step)
    # The search needs no largest error: a trial leaves it at 0.
    assert (result.measured.error, result.measured.sq_err, result.measured.sq_ref) == (
        code.measured.error, code.measured.sq_err, code.measured.sq_ref)
    assert result.measured.max_abs == 0.0
    assert result.entropy_bits == code.entropy_bits
    assert result.outliers == code.outlier_index.size
    assert result.table_size == code.table.size


@pytest.mark.parametrize("shape,axis", [((0,), None), ((5, 0), None), ((0, 5), None), ((0, 5), 1),
                                        ((2, 0, 3), None)])
def test_a_tensor_without_values_codes_to_nothing(shape, axis):
    code = uniform.encode(np.ones(shape, np.float32), 0.1, axis, digest=True)
    assert code.codes.size == 0 and code.outlier_index.size == 0
    assert code.decoded.shape == shape
    assert code.sha256 == hashlib.sha256(b"").hexdigest()
    assert code.measured.error == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_the_tolerance_holds_for_the_values_as_stored(rng, dtype):
    from weightroll import _encode

    for tolerance in np.linspace(0.0015, 0.006, 20):
        x = rng.normal(size=(300, 200)).astype(dtype)
        encoded = _encode.encode([("w", x)], tolerance=float(tolerance))
        if encoded.tensors[0]["storage"] != "coded":
            continue
        stored = encoded.decoded["w"]
        assert stored.dtype == x.dtype
        e = x.astype(np.float64) - stored.astype(np.float64)
        assert np.sqrt((e ** 2).sum() / (x.astype(np.float64) ** 2).sum()) <= tolerance


def test_long_rows_are_coded_in_pieces_not_whole(rng):
    import tracemalloc

    x = rng.normal(size=(1, 1 << 21)).astype(np.float32)  # one 8 MB row
    tracemalloc.start()
    try:
        uniform.encode(x, 0.05, None, keep_decoded=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Codes (a quarter of the floats), the per-channel error sums (a float64
    # pair for each of its 2M channels: four times the floats, and their
    # ratio) and blocks: 6.6 times the floats; whole-row temporaries took 10.6.
    assert peak < 7 * x.nbytes
    assert select._sample(x.reshape(1, -1)).size <= 2 * select._SAMPLE


def test_the_c_extensions_are_built_where_ci_requires_them(coder):
    if coder == "numpy":
        pytest.skip("one check is enough")
    if os.environ.get("WEIGHTROLL_REQUIRE_KERNEL") != "1":
        pytest.skip("WEIGHTROLL_REQUIRE_KERNEL=1 is set by .ci/run")
    assert KERNEL is not None, "setup.py did not build weightroll/coders/_kernel.c"


def _with(kernel, function, *args, **kwargs):
    saved = uniform._kernel
    uniform._kernel = kernel
    try:
        return function(*args, **kwargs)
    finally:
        uniform._kernel = saved


@pytest.mark.parametrize("shape,axis", SHAPES_AND_AXES)
@pytest.mark.parametrize("step", [0.02, 0.3])
def test_kernel_and_numpy_give_the_same_codes(rng, coder, shape, axis, step):
    if coder == "numpy" or KERNEL is None:
        pytest.skip("compares the kernel with numpy")
    x = _heavy(rng, shape)
    if x.size > 10:
        x.reshape(-1)[[3, 7]] = [400.0, -900.0]  # outliers
    fast = _with(KERNEL, uniform.encode, x, step, axis, digest=True)
    slow = _with(None, uniform.encode, x, step, axis, digest=True)
    for name in ("codes", "table", "outlier_index", "decoded"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert fast.sha256 == slow.sha256
    assert fast.entropy_bits == slow.entropy_bits
    # The error sums too, to the last bit: the steps a search settles on, and
    # the errors the manifest holds, come from them.
    assert fast.measured == slow.measured
    trials = [_with(kernel, lambda: uniform.Trial(x, axis).at(step)) for kernel in (KERNEL, None)]
    assert trials[0] == trials[1]


@pytest.mark.parametrize("shape,axis", SHAPES_AND_AXES + [((70000, 3), 0), ((2, 3, 40000), 2)])
def test_kernel_and_numpy_give_the_same_scales(rng, coder, shape, axis):
    if coder == "numpy" or KERNEL is None:
        pytest.skip("compares the kernel with numpy")
    x = _heavy(rng, shape)
    fast = _with(KERNEL, uniform._scaling, x, axis)
    slow = _with(None, uniform._scaling, x, axis)
    assert fast[0] == slow[0]
    if axis is None:
        assert fast[1] is slow[1] is None
    else:
        np.testing.assert_array_equal(fast[1], slow[1])


def _squares_in_the_kernels_order(values):
    """The sum of squares of a float32 vector as _kernel.c adds it, in plain
    Python floats: blocks of 65536 values, each in segments of 256 with eight
    lanes (value 8i + l to lane l, a short segment's leftovers to lane 0),
    the lanes added in order; the blocks' sums added in order."""
    values = [float(v) for v in np.asarray(values, np.float32).reshape(-1)]
    total = 0.0
    for start in range(0, len(values), 1 << 16):
        block = values[start: start + (1 << 16)]
        lanes = [0.0] * 8
        for s in range(0, len(block), 256):
            segment = block[s: s + 256]
            part = [0.0] * 8
            full = len(segment) - len(segment) % 8
            for i in range(full):
                part[i % 8] += segment[i] * segment[i]
            for v in segment[full:]:
                part[0] += v * v
            for lane in range(8):
                lanes[lane] += part[lane]
        block_total = 0.0
        for lane in lanes:
            block_total += lane
        total += block_total
    return total


@pytest.mark.parametrize("size", [0, 1, 7, 8, 300, 4096, (1 << 16) + 300, 140000])
def test_sums_of_squares_follow_the_kernels_order(rng, coder, size):
    """Whatever the CPU, BLAS or numpy: the order is fixed, and is the kernel's."""
    from weightroll.coders import error

    x = _heavy(rng, (size,))
    want = _squares_in_the_kernels_order(x)
    assert error.sum_of_squares(x) == want
    assert uniform._sum_of_squares(x) == want  # by the kernel, where it is built
    if size:
        sums = error.ErrorSums(None)
        sums.add_reference(x)
        assert sums.ref == want


def test_channel_sums_add_each_channel_in_order(rng, coder):
    from weightroll.coders import error

    x = _heavy(rng, (3000, 7))
    want = np.zeros(7)
    for row in x.astype(np.float64):
        want += row * row
    np.testing.assert_array_equal(error.channel_sums(x), want)
    np.testing.assert_array_equal(uniform._column_sums(x), want)
    np.testing.assert_array_equal(error.row_sums(x.T), want)
    np.testing.assert_array_equal(uniform._row_sums(np.ascontiguousarray(x.T)), want)


def test_the_kernel_rejects_inconsistent_buffers(coder):
    if coder == "numpy":
        pytest.skip("a test of the kernel")
    x = np.ones((4, 5), np.float32)
    table = np.zeros(255, np.float32)
    with pytest.raises(ValueError, match="mode 2 needs 5 factors"):
        KERNEL.code(x, 5, np.ones(4, np.float32), 2, table, None, None, None, 0, 0, None, None, False, False)
    with pytest.raises(ValueError, match="bad sizes"):
        KERNEL.code(x, 5, np.ones(1, np.float32), 0, table[:10], None, None, None, 0, 0, None, None, False, False)
    with pytest.raises(ValueError, match="outputs of the wrong size"):
        KERNEL.code(x, 5, np.ones(1, np.float32), 0, table, None, np.empty(3, np.uint8), None, 0, 0, None, None,
                    False, False)
    with pytest.raises(ValueError, match="expected float32 items"):
        KERNEL.code(x.astype(np.float64), 5, np.ones(1, np.float32), 0, table, None, None, None, 0, 0, None, None,
                    False, False)
    with pytest.raises(ValueError, match="channel sums"):
        KERNEL.code(x, 5, np.ones(1, np.float32), 0, table, None, None, None, 5, 0, np.zeros(4), None, False, False)
    with pytest.raises(ValueError, match="negative first channel"):
        KERNEL.code(x, 5, np.ones(1, np.float32), 0, table, None, None, None, 5, -1, np.zeros(5), None, False, False)
    with pytest.raises(ValueError, match="channel sums"):  # 8 * channels would overflow
        KERNEL.code(x, 5, np.ones(1, np.float32), 0, table, None, None, None, 2 ** 61, 0, np.zeros(0), None,
                    False, False)
    with pytest.raises(ValueError, match="expected float32 items"):  # same size, another type
        KERNEL.code(x.view(np.int32), 5, np.ones(1, np.float32), 0, table, None, None, None, 0, 0, None, None,
                    False, False)
    with pytest.raises(ValueError, match="expected int64 items"):
        KERNEL.level_sums(x, 5, np.ones(1, np.float32), 0, np.zeros(255, np.int32), np.zeros(255))
    with pytest.raises(ValueError, match="level_sums: bad sizes"):
        KERNEL.level_sums(x, 3, np.ones(1, np.float32), 0, np.zeros(255, np.int64), np.zeros(255))
    with pytest.raises(ValueError, match="C-contiguous"):
        KERNEL.code(np.ones((4, 10), np.float32)[:, ::2], 5, np.ones(1, np.float32), 0, table, None, None, None,
                    0, 0, None, None, False, False)


@pytest.mark.parametrize("shape, dtype", [((5000,), "float32"), ((300, 70), "float32"), ((2, 70_001), "float32"),
                                          ((64, 3, 3, 5), "float32"), ((300, 70), "bfloat16"), ((300, 70), "float16")])
def test_kernel_and_numpy_measure_a_decoded_tensor_alike(rng, coder, shape, dtype):
    # The kernel sums the values' and the errors' squares in one pass, in numpy's order.
    if coder == "numpy" or KERNEL is None:
        pytest.skip("compares the kernel with numpy")
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x = _heavy(rng, shape).astype(dt)
    decoded = (x.astype(np.float32) + rng.normal(0, 0.01, shape)).astype(np.float32)
    fast = _with(KERNEL, error.measure, x, decoded)
    slow = _with(None, error.measure, x, decoded)
    assert fast == slow and fast.error > 0


@pytest.mark.parametrize("shape, axis", [((300, 70), None), ((300, 70), 1), ((300, 70), 0), ((70_000, 3), 0),
                                         ((600, 300), 0), ((3, 70_001), 1), ((50_000,), None)])
def test_16_bit_floats_get_the_scales_of_their_float32_values_by_kernel_and_numpy(rng, coder, shape, axis):
    if coder == "numpy" or KERNEL is None:
        pytest.skip("compares the kernel with numpy")
    import ml_dtypes

    x = _heavy(rng, shape).astype(ml_dtypes.bfloat16)
    kernel = _with(KERNEL, uniform._scaling, uniform.working(x), axis)
    by_numpy = _with(None, uniform._scaling, uniform.working(x), axis)
    wide = _with(KERNEL, uniform._scaling, x.astype(np.float32), axis)
    for scales in (by_numpy, wide):
        assert kernel[0] == scales[0]
        assert (kernel[1] is None and scales[1] is None) or np.array_equal(kernel[1], scales[1])


@pytest.mark.parametrize("distinct", [3, 256, 257, 5000])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_kernel_and_numpy_find_the_same_lossless_code_of_16_bit_floats(rng, coder, distinct, dtype):
    if coder == "numpy" or KERNEL is None:
        pytest.skip("compares the kernel with numpy")
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    patterns = rng.choice(np.arange(0x3000, 0x3000 + 6000, dtype=np.uint16), distinct, replace=False)
    w = patterns[rng.integers(0, distinct, 300_000)].view(dt)
    fast = _with(KERNEL, select._lossless, w)
    slow = _with(None, select._lossless, w)
    assert (fast[0] is None) == (slow[0] is None) == (distinct > 256)
    if distinct <= 256:
        assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])
