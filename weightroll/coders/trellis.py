"""Trellis codes: uniform codes whose grid depends on the codes before them.

Dependent quantisation, as video coders (H.266) and NNCodec use it. Two
grids of step `2 * step` interleave: Q0 holds the even multiples of `step`,
Q1 the odd ones and zero. A four-state machine, driven by the parity of each
code's level `k`, says which grid the next value is on (states 0 and 1: Q0;
2 and 3: Q1), so a value's reconstruction level is

    m = 2 * k                    on Q0,
    m = 2 * k - sign(k)          on Q1,

and the levels `k` cost the bits of a grid of step `2 * step` while the
reconstruction points lie `step` apart. The coder picks each segment's
levels together, by a Viterbi search over the machine's states for the
least squared error. On the real weights of `benchmarks/` (a Transformer LM,
at a relative RMSE of 0.022) that is 0.155 bits per value fewer than a
uniform grid with cell-mean reconstruction at the same error.

Decoding is a table look-up, as for uniform codes: entry `m - low` of the
tensor's table, times the channel's scale. Only the index now depends on
the state, which restarts at 0 every `segment` codes (so that segments decode
independently, on any core).

The Viterbi search and the index pass have C versions (`_trellis.c`), which
give the same levels bit for bit.
"""

import hashlib

import numpy as np

from weightroll._entropy import bits_from_counts
from weightroll.coders import uniform
from weightroll.coders.error import ErrorSums

try:  # the C loops (setup.py builds them where a compiler is found)
    from weightroll.coders import _trellis
except ImportError:  # numpy does the same work, more slowly
    _trellis = None

# The state after a level of parity 0 or 1, for each state (spec §6.2).
TRANSITIONS = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
# Codes per segment a writer uses: long enough that the restarts cost
# nothing measurable (the LM's embedding at step 0.04: relative RMSE 0.02038
# with 1024, 0.02037 with 16,384, 0.02056 with 64; the same bits), short
# enough to share a tensor between cores.
SEGMENT = 1024
# Levels k lie in [-MAX_LEVEL, MAX_LEVEL] (one byte of codes); values that
# round beyond `LIMIT` steps are stored exactly (outliers).
MAX_LEVEL = 127
LIMIT = 252


def levels(y, segment):
    """The levels `k` (int16) of scaled values `y` (float32, in steps, all
    within `LIMIT + 0.5` of zero) that minimise the squared error of their
    reconstruction levels, segment by segment (a Viterbi search from state 0).

    The rule, ties included (the C loop and numpy follow it to the bit):
    each value's candidates are, on Q0, the even levels `e = 2 floor(y/2)`
    and `e + 2`; on Q1, the odd levels `o = 2 floor((y-1)/2) + 1` and `o + 2`,
    and 0; each one's cost is its float32 squared difference from `y`. On
    each grid, for each parity of `k`, the candidate of least cost is kept
    (the first in that order among equals). Each state is reached from two
    (see `TRANSITIONS`); the path through the lower one is kept unless the
    other's float32 total is smaller. The search ends in the cheapest state
    (the lowest among equals).
    """
    y = np.ascontiguousarray(y, np.float32).reshape(-1)
    out = np.empty(y.size, np.int16)
    if _trellis is not None:
        _trellis.levels(y, segment, out)
        return out
    whole = y.size - y.size % segment
    if whole:
        out[:whole] = _levels_numpy(y[:whole].reshape(-1, segment)).reshape(-1)
    if whole < y.size:
        out[whole:] = _levels_numpy(y[whole:].reshape(1, -1)).reshape(-1)
    return out


def level_of(m, q1):
    """The level `k` whose reconstruction level is `m` (on Q1 if `q1`)."""
    if not q1:
        return m // 2
    return np.where(m > 0, (m + 1) // 2, np.where(m < 0, (m - 1) // 2, 0))


def _best_by_parity(candidates):
    """`(k, d)` for parities 0 and 1: of `(k, d)` candidates in order, each
    parity's least `d` (the first among equals; d is inf where none)."""
    shape = candidates[0][0].shape
    best_k = [np.zeros(shape, np.int64), np.zeros(shape, np.int64)]
    best_d = [np.full(shape, np.inf, np.float32), np.full(shape, np.inf, np.float32)]
    for k, d in candidates:
        for parity in (0, 1):
            take = ((k & 1) == parity) & (d < best_d[parity])
            best_d[parity] = np.where(take, d, best_d[parity])
            best_k[parity] = np.where(take, k, best_k[parity])
    return best_k, best_d


def _levels_numpy(y):
    """`levels` of equal segments, one per row of `y`, searched together."""
    rows, length = y.shape
    cost = np.full((rows, 4), np.inf, np.float32)
    cost[:, 0] = 0.0
    back_state = np.zeros((length, rows, 4), np.int8)
    back_level = np.zeros((length, rows, 4), np.int16)
    for j in range(length):
        column = y[:, j]
        even = (np.floor(column * np.float32(0.5)) * np.float32(2)).astype(np.int64)
        odd = (np.floor((column - np.float32(1)) * np.float32(0.5)) * np.float32(2) + np.float32(1)).astype(np.int64)

        def d(m):
            diff = column - m.astype(np.float32)
            return diff * diff

        q0k, q0d = _best_by_parity([(even // 2, d(even)), (even // 2 + 1, d(even + 2))])
        q1k, q1d = _best_by_parity([(level_of(odd, True), d(odd)), (level_of(odd + 2, True), d(odd + 2)),
                                    (np.zeros(rows, np.int64), column * column)])
        new = np.empty((rows, 4), np.float32)
        # next state: (lower previous state, its parity), (higher previous state, its parity)
        for target, (low, p_low), (high, p_high), grid_k, grid_d in (
                (0, (0, 0), (1, 1), q0k, q0d), (2, (0, 1), (1, 0), q0k, q0d),
                (1, (2, 0), (3, 1), q1k, q1d), (3, (2, 1), (3, 0), q1k, q1d)):
            a = cost[:, low] + grid_d[p_low]
            b = cost[:, high] + grid_d[p_high]
            other = b < a
            new[:, target] = np.where(other, b, a)
            back_state[j, :, target] = np.where(other, high, low)
            back_level[j, :, target] = np.where(other, grid_k[p_high], grid_k[p_low])
        cost = new
    out = np.empty((rows, length), np.int16)
    state = np.argmin(cost, axis=1)
    at = np.arange(rows)
    for j in range(length - 1, -1, -1):
        out[:, j] = back_level[j, at, state]
        state = back_state[j, at, state]
    return out


def reconstruction(k, segment):
    """The reconstruction levels `m` (int16) of levels `k`: the state machine
    run from state 0 at the start of every segment of `segment` values."""
    k = np.ascontiguousarray(k, np.int16).reshape(-1)
    out = np.empty(k.size, np.int16)
    if _trellis is not None:
        _trellis.reconstruction(k, segment, out)
        return out
    count = -(-k.size // segment)
    length = min(segment, k.size)  # a segment longer than the codes ends with them
    padded = np.zeros(count * length, np.int64)
    padded[:k.size] = k
    grid = padded.reshape(count, length)
    m = np.empty_like(grid)
    state = np.zeros(count, np.int64)
    for j in range(length):
        column = grid[:, j]
        m[:, j] = 2 * column - (state >= 2) * np.sign(column)
        state = TRANSITIONS[state, column & 1]
    out[:] = m.reshape(-1)[:k.size]
    return out


def table_indices(codes, segment, zero, low):
    """What a trellis-coded tensor's codes index in its table: `m - low`,
    where `m` is the reconstruction level of `k = code - zero` (spec §6.2).

    Returns:
        `(indices, lowest, highest)`: an int16 array, one index per code, and
        its least and greatest entries (0 and -1 for no codes). An index
        outside the table means a corrupt archive: the caller checks.
    """
    codes = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    if _trellis is not None:
        out = np.empty(codes.size, np.int16)
        lowest, highest = _trellis.indices(codes, segment, zero, low, out)
        return out, lowest, highest
    k = codes.astype(np.int16) - np.int16(zero)
    out = reconstruction(k, segment)
    out -= np.int16(low)
    if not out.size:
        return out, 0, -1
    return out, int(out.min()), int(out.max())


def lookup(codes, table, out, trellis=None, skip=0):
    """Decode codes to their table's float32 values: `out[j] = table[index]`
    for the codes from `skip` on, where a code is its own table index, or,
    with `trellis` (the manifest's `{"segment", "zero", "low"}`), the index
    is the `table_indices` one (then `codes` starts a segment, and the first
    `skip < segment` codes only move the state machine).

    Returns:
        How many of the codes written index beyond the table (0 for a sound
        archive): each of those gets entry 0's value, and the caller refuses
        the archive.
    """
    codes = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    segment, zero, low = (trellis["segment"], trellis["zero"], trellis["low"]) if trellis else (0, 0, 0)
    if _trellis is not None and out.flags.c_contiguous and out.dtype == table.dtype == np.float32:
        return _trellis.lookup(codes, segment, zero, low, skip, table, out.reshape(-1))
    index = table_indices(codes, segment, zero, low)[0][skip:] if trellis else codes[skip:]
    inside = (index >= 0) & (index < table.size)
    out.reshape(-1)[...] = np.take(table, np.where(inside, index, 0))
    return int(inside.size - np.count_nonzero(inside))


def encode(values, step, axis=None, keep_decoded=True, digest=False, segment=SEGMENT, stored=None):
    """Trellis-code `values` with reconstruction levels `step` apart, after
    per-channel scaling (as `uniform.encode` scales them).

    Two passes, block by block: the first scales the values and searches
    their levels a whole number of segments at a time, summing each
    reconstruction level's values for the table (each level's mean, as
    uniform codes' cells); the second decodes and measures, and hashes the
    decoded values if asked.

    Args:
        values: a finite float array.
        step: the distance between reconstruction levels, in units of the
            channel's RMS.
        axis: channel axis for scales, or None for per-tensor scaling.
        keep_decoded: return the decoded tensor.
        digest: also hash the decoded float32 values (`sha256`).
        segment: codes per segment (the state restarts at 0 at each).
        stored: the 16-bit float dtype the values are stored in, or None
            (as `uniform.encode` takes it).

    Returns:
        A `uniform.UniformCode` whose `trellis` holds the manifest's
        `{"segment", "zero", "low"}`: codes are `k + zero`, and the table's
        first entry is reconstruction level `low`.
    """
    x = uniform.working(values)
    if x.size == 0:
        raise ValueError("Trellis codes need at least one value.")
    scale, scales = uniform._scaling(x, axis)
    blocks = list(uniform._blocks(x, uniform._inverse(scale, scales, step), scales, axis))  # views of x
    codes, counts, every, sums, outlier_index, level_counts = _search(x.size, blocks, segment)
    lowest = int(codes.min())
    codes -= np.uint8(lowest)  # the lowest level's code is 0
    zero = MAX_LEVEL - lowest
    used = np.flatnonzero(every)  # the reconstruction levels (outliers' too: they index the table as well)
    m_low, m_high = int(used[0]) - _M_MAX, int(used[-1]) - _M_MAX
    level = np.arange(m_low, m_high + 1)
    cell = level + _M_MAX
    means = np.where(counts[cell] > 0, sums[cell] / np.maximum(counts[cell], 1), level)
    table = uniform.short_floats((means * step).astype(np.float32))
    if axis is None:
        table = uniform._times_scale(table, scale)
    t = {"segment": int(segment), "zero": zero, "low": m_low}
    measured, decoded, sha256 = _measure(x, blocks, codes, t, table, outlier_index, keep_decoded, digest, stored)
    return uniform.UniformCode(
        codes, table, scales, axis, outlier_index, decoded, step,
        entropy_bits=bits_from_counts(level_counts), measured=measured, sha256=sha256,
        trellis=t)


def _search(size, blocks, segment):
    """The first pass of `encode`: `(codes, counts, every, sums,
    outlier_index)`: each value's level plus `MAX_LEVEL` (uint8); each
    reconstruction level's count of values that are not outliers, of all
    values, and float64 sum of the former's scaled values (indexed by
    `m + 2 * MAX_LEVEL`: outliers index the table too, but take no part in
    its means); the outliers' flat indices; and each level's count (of
    `k + MAX_LEVEL`, for the codes' entropy). The blocks' scaled values gather in one
    buffer, searched a whole number of segments at a time (`_search_chunk`);
    the levels are held as codes, one byte a value."""
    codes = np.empty(size, np.uint8)
    counts = np.zeros(2 * _M_MAX + 1, np.int64)
    apart = np.zeros_like(counts)  # the outliers' counts
    sums = np.zeros(2 * _M_MAX + 1)
    level_counts = np.zeros(2 * MAX_LEVEL + 1, np.int64)
    outliers, waiting = [], []  # outliers' flat indices: all, and those not searched yet
    buffer = np.empty(max(block.size for _, block, *_ in blocks) + segment, np.float32)
    held = done = 0  # values in the buffer not searched yet (fewer than a segment), and values searched
    for i, (start, block, factors, _, mode, _) in enumerate(blocks):
        y = buffer[held: held + block.size]
        np.multiply(uniform.float32(block), uniform._shaped(factors, mode), out=y.reshape(block.shape))
        outside = ~(np.abs(y) <= LIMIT + 0.5)  # rounds beyond LIMIT levels (or NaN)
        if outside.any():
            index = np.flatnonzero(outside)
            outliers.append(index + start)
            waiting.append(index + start)
            y[index] = 0  # searched as zeros (their sums gain 0.0), then counted apart
        held += block.size
        take = held if i == len(blocks) - 1 else held - held % segment
        if take:
            chunk_codes = codes[done: done + take]
            chunk_counts, chunk_sums, chunk_levels = _search_chunk(buffer[:take], segment, chunk_codes)
            counts += chunk_counts
            sums += chunk_sums
            level_counts += chunk_levels
            if waiting:  # the outliers searched now move to the outliers' counts
                pending = np.concatenate(waiting)
                now = pending < done + take
                k = chunk_codes.astype(np.int16) - np.int16(MAX_LEVEL)  # `done` starts a segment
                cells = reconstruction(k, segment)[pending[now] - done].astype(np.intp) + _M_MAX
                np.subtract.at(counts, cells, 1)
                np.add.at(apart, cells, 1)
                waiting = [pending[~now]] if not now.all() else []
            buffer[: held - take] = buffer[take: held]
            held -= take
            done += take
    outlier_index = np.concatenate(outliers).astype(np.int64) if outliers else np.zeros(0, np.int64)
    return codes, counts, counts + apart, sums, outlier_index, level_counts


def _search_chunk(y, segment, codes):
    """`(counts, sums, level_counts)` of scaled values `y` (a whole number
    of segments, or the last values), whose codes (each level plus
    `MAX_LEVEL`, `levels`) it writes into `codes`: each reconstruction
    level's count and float64 sum of the values, in order (as `np.bincount`
    sums them), indexed by `m + 2 * MAX_LEVEL`; and each code's count."""
    if _trellis is not None:
        counts, sums = np.zeros(2 * _M_MAX + 1, np.int64), np.zeros(2 * _M_MAX + 1)
        level_counts = np.zeros(2 * MAX_LEVEL + 1, np.int64)
        _trellis.search(y, segment, codes, counts, sums, level_counts)
        return counts, sums, level_counts
    k = levels(y, segment)
    cells = reconstruction(k, segment).astype(np.intp) + _M_MAX
    counts = np.bincount(cells, minlength=2 * _M_MAX + 1)
    sums = np.bincount(cells, weights=y, minlength=2 * _M_MAX + 1)
    codes[...] = k + MAX_LEVEL
    return counts, sums, np.bincount(codes, minlength=2 * MAX_LEVEL + 1)


def _measure(x, blocks, codes, t, table, outlier_index, keep_decoded, digest, stored):
    """The second pass of `encode`: `(measured, decoded, sha256)`, the
    decoded values' `error.Measured` error, the decoded tensor (or None
    unless `keep_decoded`) and their SHA-256 (or None unless `digest`).
    Each block is decoded from its codes as a reader decodes it (and
    rounded to `stored`, if given, before it is measured and hashed)."""
    decoded = np.empty(x.size, np.float32) if keep_decoded else None
    errors = ErrorSums(x.shape[-1] if x.ndim >= 2 else None)
    hasher = hashlib.sha256() if digest else None
    buffer = np.empty(max(block.size for _, block, *_ in blocks), np.float32)  # one for every block
    for start, block, _, block_scale, mode, first in blocks:
        block = uniform.float32(block)
        lead = start % t["segment"]
        out = buffer[: block.size].reshape(block.shape)
        lookup(codes[start - lead: start + block.size], table, out, t, lead)
        if block_scale is not None:
            out *= uniform._shaped(block_scale, mode)
        if outlier_index.size:
            lo, hi = np.searchsorted(outlier_index, [start, start + block.size])
            if hi > lo:
                here = outlier_index[lo:hi] - start
                out.reshape(-1)[here] = block.reshape(-1)[here]
        held = out
        if stored is not None:
            held, out = uniform.as_stored(out, block, None, stored)
        errors.add(block, out, first, kernel=uniform._kernel if mode != uniform._EVERY else None)
        if hasher is not None:
            hasher.update(uniform._little_endian(held))
        if decoded is not None:
            decoded[start: start + out.size] = out.reshape(-1)
    return errors.result(), None if decoded is None else decoded.reshape(x.shape), (
        None if hasher is None else hasher.hexdigest())


# Reconstruction levels lie within +-(2 * MAX_LEVEL).
_M_MAX = 2 * MAX_LEVEL
