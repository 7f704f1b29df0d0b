"""Choose, per tensor, the cheapest code that keeps its error within a tolerance.

Candidates: exact storage; a lossless codebook when the tensor has at most
256 distinct values; uniform entropy-coded codes (see `uniform`) with one
scale per tensor, per output channel (last axis) or per row (first axis),
each at the largest step whose relative RMSE stays within the tolerance;
and trellis codes (see `trellis`) with the cheapest of those scale layouts.
Sizes are estimated from the codes' order-0 entropy, which the PNG writer
reaches within a few percent, plus tables, scales and outliers.
"""

import dataclasses

import numpy as np

from weightroll._entropy import bits_per_code
from weightroll.coders import codebook, trellis, uniform
from weightroll.coders.error import SIXTEEN_BIT_FLOATS, measure, sum_of_squares

# Search on a strided sample of this many values at most, then code the
# whole tensor once at the chosen step.
_SAMPLE = 1 << 15
_STEP_ITERATIONS = 4
# A step whose error is within this fraction of the tolerance is kept: a few
# percent of step are worth less than another pass over the sample.
_CLOSE_ENOUGH = 0.97
_OUTLIER_BYTES = 8 + 4  # int64 index + the value (float32 assumed for the estimate)
# A uniform or trellis code's table entry or scale, as `decoder.bin.zst` holds
# it (11 significant bits, zstd): 19,182 bytes for 8,787 entries in the
# docstring LM's archive (benchmarks/), 2.18 bytes each.
_ENTRY_BYTES = 2.2


@dataclasses.dataclass
class Choice:
    """The code chosen for one tensor.

    Attributes:
        kind: "exact", "lossless" or "uniform".
        estimated_bytes: the size estimate that won.
        code: a `uniform.UniformCode` for "uniform"; `(table, codes,
            entropy_bits)` for "lossless"; None for "exact".
        measured: for "uniform", the whole tensor's `Measured` error.
    """

    kind: str
    estimated_bytes: float
    code: object
    measured: object = None


def relative_rmse(original, decoded):
    a = np.asarray(original)
    e = a - np.asarray(decoded, dtype=a.dtype)
    ref, sq = sum_of_squares(a), sum_of_squares(e)
    if ref > 0:
        return float(np.sqrt(sq / ref))
    return 0.0 if sq == 0 else float("inf")


def entropy_bytes(codes):
    """`codes` at their order-0 entropy, in bytes."""
    return bits_per_code(codes) * codes.size / 8


def uniform_bytes(code):
    """A uniform code's estimated size: its codes at their entropy, table, scales, outliers."""
    if code.entropy_bits is None:  # measured once (the layout uses it too)
        code.entropy_bits = bits_per_code(code.codes)
    scales = 0 if code.scales is None else _ENTRY_BYTES * code.scales.size
    return (code.entropy_bits * code.codes.size / 8 + _ENTRY_BYTES * code.table.size + scales
            + _OUTLIER_BYTES * code.outlier_index.size)


def _axes(shape):
    """Scale axes worth trying: none, the output channels (last axis) and,
    for matrices such as embedding tables, the rows."""
    if len(shape) < 2:
        return [None]
    return [None, len(shape) - 1] + ([0] if len(shape) == 2 and shape[0] > 1 else [])


def _view(x):
    """`x` as a matrix of output channels (columns), or a vector."""
    return x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1)


def _sample(view, size=_SAMPLE):
    """Every k-th row of the channel matrix, about `size` values: each
    channel keeps its samples. A matrix of fewer rows than that (a few very
    long rows) gives every k-th column of each row instead."""
    stride = max(1, view.size // size)
    if view.ndim == 2 and view.shape[0] < stride:
        return view[:, ::stride]
    return view[::stride]


def _largest_step(sample, axis, tolerance):
    """The largest grid step whose error on `sample` stays within tolerance.

    Returns:
        `(step, result)`: the step and the sample's `uniform.TrialResult` at it.
    """
    trial = uniform.Trial(sample, axis)
    return _search_step(trial.at, lambda result: result.measured.error, tolerance * np.sqrt(12.0), tolerance)


# Trellis codes' relative RMSE is about this many times their step (Laplacian
# and Gaussian weights, per-tensor and per-channel scales): the search's start.
_TRELLIS_ERROR_PER_STEP = 0.51


def _largest_trellis_step(sample, axis, tolerance):
    """`_largest_step` for trellis codes: `(step, code)`, the sample's
    `uniform.UniformCode` at the step found (its codes, table and error)."""
    return _search_step(lambda step: trellis.encode(sample, step, axis, keep_decoded=False),
                        lambda code: code.measured.error, tolerance / _TRELLIS_ERROR_PER_STEP, tolerance)


def _search_step(code_at, error_of, step, tolerance):
    """`(step, code_at(step))` for the largest step tried whose error is
    within `tolerance`: from `step`, each next step scaled by the error's
    ratio to the tolerance (error grows about linearly with the step), until
    one lands within `_CLOSE_ENOUGH` of it or `_STEP_ITERATIONS` are tried;
    the last step tried when none fits."""
    best = None
    for _ in range(_STEP_ITERATIONS):
        result = code_at(step)
        err = error_of(result)
        if err <= tolerance and (best is None or step > best[0]):
            best = (step, result)
        if err == 0 or _CLOSE_ENOUGH * tolerance <= err <= tolerance:
            break
        step *= min(max(tolerance / err, 0.5), 2.0) * (0.995 if err > tolerance else 1.0)
    return best if best is not None else (step, code_at(step))


# A tensor of this many values or more has its step checked on a sample of
# `_CONFIRM` values before it is coded whole: its first sample (`_SAMPLE`
# values, a few rows of a big matrix) may miss the tolerance by a little,
# and coding the tensor again costs far more than the check.
_CONFIRM_FROM = 1 << 23
_CONFIRM = 1 << 20
# The error the checked step aims at, as a fraction of the tolerance: the
# check's own sampling error is under 0.1% (sqrt(1 / (2 * _CONFIRM))).
_CONFIRM_AIM = 0.99


def _confirmed_step(coder, x, view, axis, step, tolerance, stored):
    """`step`, scaled once so that the error on a sample of `_CONFIRM`
    values is `_CONFIRM_AIM` of the tolerance (error grows about linearly with
    the step), where it lies outside [`_CLOSE_ENOUGH`, 1] of that aim."""
    sample = _sample(view, _CONFIRM)
    view_axis = None if axis is None else (0 if axis == 0 else 1)
    measured_here = stored is not False  # float32, or rounded to `stored` by the coder
    code = coder(sample, step, view_axis, keep_decoded=not measured_here, stored=stored if measured_here else None)
    err = (code.measured if measured_here else measure(sample, code.decoded)).error
    aim = _CONFIRM_AIM * tolerance
    if err > 0 and not _CLOSE_ENOUGH * aim <= err <= aim:
        step *= min(max(aim / err, 0.5), 2.0)
    return step


def _estimate_bytes(result, m, n, scale_count):
    """A tensor of `n` values' coded size, extrapolated from the
    `uniform.TrialResult` of its sample of `m` values."""
    per_value = (result.entropy_bits * m / 8 + _OUTLIER_BYTES * result.outliers) / m
    return per_value * n + _ENTRY_BYTES * (result.table_size + scale_count)


def choose(values, tolerance, itemsize, keep_decoded=True, digest=False, dependent=True):
    """The cheapest code of `values` whose error (`error.Measured.error`) is at most `tolerance`.

    Each scale layout is tried on a sample (all of a small tensor), then
    trellis codes with the cheapest one; the cheapest estimate is then
    coded in full and its error checked.

    Args:
        values: a finite float array.
        tolerance: the largest relative RMSE allowed, >= 0.
        itemsize: bytes per value when stored exactly.
        keep_decoded: keep a uniform code's decoded tensor (`uniform.encode`).
        digest: hash a uniform code's decoded float32 values (`uniform.encode`).
        dependent: whether trellis codes (format 4.0) may be chosen.

    Returns:
        A `Choice`; a trellis code is kind "uniform" too, its `trellis` set.
    """
    x = np.asarray(values)
    best = Choice("exact", float(x.size * itemsize), None)
    table, codes = _lossless(x)
    if table is not None:
        bits = bits_per_code(codes)
        cost = bits * codes.size / 8 + 4 * table.size
        if cost < best.estimated_bytes:
            best = Choice("lossless", cost, (table, codes, bits))
    # A uniform code costs at least its one table entry (4 bytes): nothing
    # beats a lossless code that cheap (a constant tensor, such as zeros).
    if tolerance <= 0 or x.size < 64 or best.estimated_bytes <= 4:
        return best
    view = _view(x)
    sample = _sample(view)
    candidates = []
    for axis in _axes(x.shape):
        view_axis = None if axis is None else (0 if axis == 0 else 1)
        step, result = _largest_step(sample, view_axis, tolerance)
        scale_count = 0 if axis is None else x.shape[axis]
        candidates.append((_estimate_bytes(result, sample.size, x.size, scale_count), axis, step))
    estimate, axis, step = min(candidates, key=lambda c: c[0])
    coder = uniform.encode
    if dependent:
        view_axis = None if axis is None else (0 if axis == 0 else 1)
        trellis_step, code = _largest_trellis_step(sample, view_axis, tolerance)
        result = uniform.TrialResult(code.measured, code.entropy_bits, code.outlier_index.size, code.table.size)
        trellis_estimate = _estimate_bytes(result, sample.size, x.size, 0 if axis is None else x.shape[axis])
        if trellis_estimate < estimate:
            estimate, step, coder = trellis_estimate, trellis_step, trellis.encode
    if estimate >= best.estimated_bytes:
        return best
    # The coder measures float32 values, and 16-bit floats rounded as they
    # will be stored (a float16 tensor's rounding can tip it over); other
    # dtypes (float64) are measured here, from the decoded values.
    stored = _stored(x.dtype)
    native = stored is not False
    if x.size >= _CONFIRM_FROM:
        step = _confirmed_step(coder, x, view, axis, step, tolerance, stored)
    for _ in range(6):
        code = coder(x, step, axis, keep_decoded=keep_decoded or not native, digest=digest,
                     stored=stored if native else None)
        measured = code.measured if native else measure(x, code.decoded)
        if not (native or keep_decoded):
            code.decoded = None
        err = measured.error
        if err <= tolerance:
            cost = uniform_bytes(code)
            return Choice("uniform", cost, code, measured) if cost < best.estimated_bytes else best
        step *= 0.97 * tolerance / err
    return best


def _stored(dtype):
    """What a coder rounds decoded values of `dtype` to: None for float32
    (nothing), the dtype for 16-bit floats; False for others (the caller
    measures them)."""
    if dtype == np.float32:
        return None
    return dtype if dtype.name in SIXTEEN_BIT_FLOATS else False


def _lossless(x):
    """A lossless float32 codebook when `x` has at most 256 distinct values."""
    flat = x.reshape(-1)
    # Cheap early exits: more than 256 distinct among the first 512 values
    # (a sort of 512, the usual case for weights), or among the first 4096.
    if flat.size == 0 or _more_distinct(flat[:512], 256) or _more_distinct(flat[:4096], 256):
        return None, None
    if flat.dtype.itemsize == 2:
        found = _lossless_16(flat)
        if found is not None:
            return found
    if flat.dtype.itemsize > 4 and not np.array_equal(flat, flat.astype(np.float32)):
        return None, None
    distinct = np.unique(flat.astype(np.float32))
    if distinct.size > 256:
        return None, None
    return codebook.fit_codebook(flat, 8)


def _lossless_16(flat):
    """`_lossless` of a 16-bit float tensor (bfloat16, float16) by counting its
    bit patterns: one pass at most, marking them in a 65,536-entry table a
    chunk at a time (stopping past 256), where sorting a float64 copy cost
    16 bytes a value (5 GB for a 205M-value bfloat16 embedding).
    Gives `codebook.fit_codebook`'s table and codes, or `(None, None)` for
    more than 256 distinct values; None (use the general path) when both
    zeros are present, whose one table entry the general path picks by sort
    order."""
    bits = flat.view(np.uint16)
    seen = np.zeros(1 << 16, bool)
    kernel = uniform._kernel
    for start in range(0, bits.size, _PATTERN_CHUNK):  # most tensors pass 256 patterns in the first chunks
        chunk = bits[start: start + _PATTERN_CHUNK]
        if kernel is not None:  # 0.5 ns a value, where numpy's indexing takes 3.6
            count = kernel.mark(np.ascontiguousarray(chunk), seen.view(np.uint8))
        else:
            seen[chunk] = True
            count = np.count_nonzero(seen)
        if count > 256:
            return None, None
    patterns = np.flatnonzero(seen).astype(np.uint16)
    if 0x0000 in patterns and 0x8000 in patterns:
        return None
    values = patterns.view(flat.dtype).astype(np.float32)
    table = np.unique(values)
    lookup = np.zeros(1 << 16, np.uint8)
    lookup[patterns] = np.searchsorted(table, values)
    return table, lookup[bits]


# Bit patterns of a 16-bit tensor marked at a time (`_lossless_16`).
_PATTERN_CHUNK = 1 << 16


def _more_distinct(values, limit):
    """Whether the finite `values` hold more than `limit` distinct values (a
    sort and a count: `np.unique` costs several times more on 512 values)."""
    s = np.sort(values)
    return s.size > limit and int(np.count_nonzero(s[1:] != s[:-1])) + 1 > limit
