"""Entropy-coded uniform codes with per-channel scales and exact outliers.

A tensor is divided by one scale per channel (or one for the whole tensor),
rounded to a uniform grid of step `step`, and each grid cell is reconstructed
as the mean of the values that fell in it (a table entry), so decoding is
`table[code] * scale[channel]`. Values more than 127 steps from zero do not
fit an 8-bit code; they are stored exactly beside the image (outliers).

At a given error, uniform steps with entropy coding need fewer bits than a
fixed-rate codebook of the same error: the PNG's Huffman coding spends few
bits on the common small codes.
"""

import dataclasses
import hashlib
import math

import numpy as np

from weightroll._entropy import bits_from_counts
from weightroll.coders import error
from weightroll.coders.error import ErrorSums

try:  # the fused C loops (setup.py builds them where a compiler is found)
    from weightroll.coders import _kernel
except ImportError:  # numpy does the same work in more passes
    _kernel = None

_HALF_RANGE = 127  # codes 0..254 around a centre of 127; 255 stays unused


@dataclasses.dataclass
class UniformCode:
    """One tensor's uniform coding.

    Attributes:
        codes: uint8 codes, one per value, C order.
        table: float32 reconstruction values (normalised units), indexed by code.
        scales: float32 per-channel scales, or None for one scale of 1.
        axis: the channel axis of `scales`, or None.
        outlier_index: int64 flat indices of values stored exactly (sorted).
        decoded: the decoded tensor (float32), outliers restored, or None
            when `encode` was asked not to keep it.
        step: the grid step in normalised units.
        entropy_bits: the codes' order-0 entropy in bits per code: `encode`
            estimates it on its table sample (exact up to 64k values);
            otherwise `select.uniform_bytes` measures it.
        measured: `error.Measured` of the decoded values, or None.
        sha256: hex SHA-256 of the decoded float32 values in C order, or
            None when not asked for.
        trellis: for trellis codes (see `trellis`), the manifest's
            `{"segment", "zero", "low"}`; None for uniform codes.
    """

    codes: np.ndarray
    table: np.ndarray
    scales: object
    axis: object
    outlier_index: np.ndarray
    decoded: np.ndarray
    step: float
    entropy_bits: object = None
    measured: object = None
    sha256: object = None
    trellis: object = None


def short_floats(values):
    """float32 `values` rounded to 11 significant bits (half to even), with
    float32's exponent range: float16's precision without its overflow and
    underflow. Tables and scales are kept so: the error that adds is a few
    ten-thousandths of a value, far below a code's, and the decoder's arrays
    then compress to about half (`decoder.bin.zst`, format 4.0)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    kept = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return kept.view(np.float32).reshape(np.shape(values))


def channel_scales(values, axis):
    """Root-mean-square of each channel along `axis` (float32, never 0):
    each channel's float64 sum of squares in C order, the same bits with or
    without the kernel (see `error`)."""
    x = np.asarray(values)
    if x.ndim < 2:  # one scale per value
        x = x.astype(np.float64)
        rms = np.sqrt(x * x)
    else:
        if axis == x.ndim - 1:
            sums = _column_sums(x.reshape(-1, x.shape[-1]))
        elif axis == 0:
            sums = _row_sums(x.reshape(x.shape[0], -1))
        else:  # a middle axis: its channels as columns, in C order
            sums = _column_sums(np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]))
        rms = np.sqrt(sums / max(1, x.size // max(1, x.shape[axis])))
    rms = np.where(rms > 0, rms, 1.0)
    return short_floats(rms.astype(np.float32))


def working(values):
    """`values` as the coders work on them: C-contiguous, in float32, except
    16-bit floats (bfloat16, float16), which stay as they are and are made
    float32 a block at a time (`float32`), so that coding a big 16-bit
    tensor holds no float32 copy of it."""
    x = np.asarray(values)
    if x.dtype.name in error.SIXTEEN_BIT_FLOATS:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, np.float32)


def float32(block):
    """A block of `working` values in float32 (itself when it already is):
    16-bit floats convert exactly, so every figure is the same bits as if
    the tensor had been float32 from the start."""
    return block if block.dtype == np.float32 else np.ascontiguousarray(block, np.float32)


def _kernel_takes(m):
    """Whether the kernel can sum `m` (in float32 blocks): C-contiguous
    float32 or 16-bit float values (bfloat16's dtype is not of kind "f")."""
    return (_kernel is not None and (m.dtype == np.float32 or m.dtype.name in error.SIXTEEN_BIT_FLOATS)
            and m.flags.c_contiguous and m.size)


def _sum_of_squares(flat):
    """`error.sum_of_squares` of a flat array, by the kernel where it is built."""
    if not _kernel_takes(flat):
        return error.sum_of_squares(flat)
    out = 0.0
    for start in range(0, flat.size, error.BLOCK):
        block = float32(flat[start: start + error.BLOCK])
        out += _kernel.reference(block, block.size, 0, 0, None)
    return out


def _column_sums(m):
    """`error.channel_sums` of a 2-D array, by the kernel where it is built,
    a block of rows at a time (each channel's squares still added in order)."""
    sums = np.zeros(m.shape[1])
    rows = max(1, _BLOCK // max(1, m.shape[1]))
    for start in range(0, m.shape[0], rows):
        block = m[start: start + rows]
        if _kernel_takes(m):
            _kernel.reference(float32(block), m.shape[1], m.shape[1], 0, sums)
        else:
            error.channel_sums(block, sums)
    return sums


def _row_sums(m):
    """`error.row_sums` of a 2-D array, by the kernel where it is built: the
    rows are its channels, summed a tile of `_TILE` rows by as many columns
    at a time (transposed), each row's tiles in order. (Tiles of all the rows
    by one column each read a 205M-value embedding at 9 ns a value.)"""
    if not _kernel_takes(m):
        return error.row_sums(m)
    sums = np.zeros(m.shape[0])
    columns = max(1, _BLOCK // _TILE)
    for first in range(0, m.shape[0], _TILE):
        rows = sums[first: first + _TILE]
        for start in range(0, m.shape[1], columns):
            piece = np.ascontiguousarray(m[first: first + _TILE, start: start + columns].T, np.float32)
            _kernel.reference(piece, rows.size, rows.size, 0, rows)
    return sums


_TILE = 256


def broadcast_scales(scales, shape, axis):
    """`scales` shaped to broadcast against a tensor of `shape` along `axis`."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return scales.reshape(view)


# Reconstruction values are the means of the values in each grid cell, taken
# on a strided sample of this many to twice as many values (all of a tensor
# below twice this size); the code entropy is estimated on it too.
_TABLE_SAMPLE = 1 << 16
# Rows are sampled when the sample gets at least this many of them.
_SAMPLE_ROWS = 8
# Values are scaled and rounded this many at a time (no full-size temporaries);
# a vector's error sums are added block by block (see `error`).
_BLOCK = error.BLOCK


def _blocks(x, inverse, scales, axis):
    """`(start, block, factors, scale, mode, first)` for blocks of about
    `_BLOCK` values of `x` (`working` values) in C order: `block` a 2-D view
    of the values from flat position `start` on (made float32 by the caller:
    `float32`); `factors` what each value is multiplied by to
    be in grid steps, and `scale` what its decoded value is multiplied by
    (None for one scale, the table's), both float32 and laid out by `mode`
    (see `_shaped`). A block holds whole rows of the last axis, or, when a
    row is longer than `_BLOCK`, a piece of one row that starts at its
    channel `first`."""
    if axis is not None and x.ndim >= 2 and axis not in (0, x.ndim - 1):  # any other axis: one block
        shaped = (-1, x.shape[-1])
        yield (0, x.reshape(shaped), np.broadcast_to(broadcast_scales(inverse, x.shape, axis), x.shape).reshape(shaped),
               np.broadcast_to(broadcast_scales(scales, x.shape, axis), x.shape).reshape(shaped), _EVERY, 0)
        return
    per_row = axis == 0 and x.ndim >= 2
    if per_row:  # rows of the first axis
        view = x.reshape(x.shape[0], -1)
    else:  # rows of the channel matrix; a vector (or scalar) is one row
        view = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(1, -1)
    per_column = axis is not None and not per_row
    width = view.shape[1]
    if width > _BLOCK:  # long rows, in pieces (a whole number of channels for per-row scales)
        channels = x.shape[-1] if per_row else 1
        piece = max(channels, _BLOCK // channels * channels)
        for row in range(view.shape[0]):
            for first in range(0, width, piece):
                block = view[row: row + 1, first: first + piece]
                start = row * width + first
                if per_row:
                    yield start, block, inverse[row: row + 1], scales[row: row + 1], _ONE, 0
                elif per_column:
                    part = slice(first, first + piece)
                    yield start, block, inverse[part], scales[part], _COLUMNS, first
                else:
                    yield start, block, inverse, None, _ONE, first
        return
    rows = max(1, _BLOCK // max(width, 1))
    for first in range(0, view.shape[0], rows):
        block = view[first: first + rows]
        if per_row:
            part = slice(first, first + rows)
            yield first * width, block, inverse[part], scales[part], _ROWS, 0
        elif per_column:
            yield first * width, block, inverse, scales, _COLUMNS, 0
        else:
            yield first * width, block, inverse, None, _ONE, 0


# How per-value factors are laid out for a 2-D block (the kernel's modes):
# one for all, one per row, one per column; or, numpy only, one per value.
_ONE, _ROWS, _COLUMNS, _EVERY = 0, 1, 2, 3


def _shaped(factors, mode):
    """`factors` (see `_blocks`) shaped to broadcast against their block."""
    if mode == _ONE:
        return factors[0]
    if mode == _ROWS:
        return factors.reshape(-1, 1)
    if mode == _COLUMNS:
        return factors.reshape(1, -1)
    return factors


def _scaling(x, axis):
    """`(scale, scales)`: the tensor's RMS (1 for none) and None for
    per-tensor scaling, or None and `channel_scales(x, axis)`."""
    if axis is not None:
        return None, channel_scales(x, axis)
    flat = x.reshape(-1)
    rms = math.sqrt(_sum_of_squares(flat) / flat.size) if flat.size else 1.0
    return (rms if rms > 0 else 1.0), None


def _inverse(scale, scales, step):
    """What values are multiplied by to be in grid steps: a float32 array
    of one for one `scale`, else one per channel of `scales`."""
    if scales is None:
        return np.array([1.0 / (scale * step)], np.float32)
    return (1.0 / (scales.astype(np.float64) * step)).astype(np.float32)


def _table_sample(x, inverse, axis):
    """Scaled values (times their channel's `inverse`) of a sample of about
    `_TABLE_SAMPLE` to twice as many values, all of a smaller tensor: every
    k-th row of the channel matrix (of the first axis, for per-row scales),
    whole rows so that the sample mixes what each row holds as the tensor
    does, without index arrays."""
    stride = max(1, x.size // _TABLE_SAMPLE)
    if axis is not None and x.ndim >= 2 and axis not in (0, x.ndim - 1):  # rows of the scaled channel matrix
        scaled = (float32(x) * broadcast_scales(inverse, x.shape, axis)).reshape(-1, x.shape[-1])
        return scaled[::stride] if scaled.shape[0] >= _SAMPLE_ROWS * stride else scaled.reshape(-1)[::stride]
    if x.ndim < 2:  # a vector (scales per value, if any) or a scalar
        return float32(x.reshape(-1)[::stride]) * (inverse if axis is None else inverse[::stride])
    view = x.reshape(x.shape[0], -1) if axis == 0 else x.reshape(-1, x.shape[-1])
    if view.shape[0] >= _SAMPLE_ROWS * stride:
        if axis is None:
            return float32(view[::stride]) * inverse
        factors = inverse[::stride].reshape(-1, 1) if axis == 0 else inverse.reshape(1, -1)
        return float32(view[::stride]) * factors
    # Too few rows to sample rows from: every `stride`-th value.
    flat = x.reshape(-1)
    positions = np.arange(0, flat.size, stride)
    sample = float32(flat[positions])
    if axis is None:
        return sample * inverse
    if axis == 0:
        return sample * inverse[positions // view.shape[1]]
    return sample * inverse[positions % x.shape[-1]]


def encode(values, step, axis=None, keep_decoded=True, digest=False, stored=None):
    """Code `values` on a uniform grid of `step` after per-channel scaling.

    The codes are decoded and measured block by block as they are made, so
    the error (and, if asked, the decoded values' SHA-256) costs no second
    pass over the tensor.

    Args:
        values: a finite float array.
        step: grid step in units of the channel's RMS (e.g. 0.1).
        axis: channel axis for scales, or None for per-tensor scaling.
        keep_decoded: return the decoded tensor; without it `decoded` is None
            and no decoded copy of the tensor is ever held.
        digest: also hash the decoded float32 values (`sha256`).
        stored: the 16-bit float dtype the values are stored in, or None
            for float32: the decoded values are rounded to it before they
            are measured, kept and hashed (in that dtype), as a reader gets
            them (`as_stored`).

    Returns:
        A `UniformCode`, its `measured` error filled in.
    """
    # float32 throughout, block by block: codes only need to be a
    # deterministic function of the values, and decoding is float32 anyway.
    x = working(values)  # blocks are views of it
    flat = x.reshape(-1)
    if flat.size == 0:
        return _empty(x, step, axis, keep_decoded, digest)
    scale, scales = _scaling(x, axis)
    inverse = _inverse(scale, scales, step)  # values times this are in grid steps
    # The table first, from a sample: each grid cell's mean (in steps) for
    # the levels -127..127; then one pass codes, decodes and measures each
    # block while it is in cache.
    table, level_counts = _cell_means(x, inverse, axis, step)
    if axis is None:
        table = _times_scale(table, scale)
    codes = np.empty(flat.size, np.uint8)
    decoded = np.empty(flat.size, np.float32) if keep_decoded else None
    sums = ErrorSums(x.shape[-1] if x.ndim >= 2 else None)
    kept = ErrorSums(sums.channels) if stored is not None else sums  # the error as stored
    hasher = hashlib.sha256() if digest else None
    outliers, lo, hi = [], None, None
    for start, block, factors, block_scale, mode, first in _blocks(x, inverse, scales, axis):
        block = float32(block)
        block_codes = codes[start: start + block.size]
        out, index, low, high = _code_block(block, factors, block_scale, mode, table, block_codes, sums, first)
        if index is not None:
            outliers.append(index.astype(np.int64) + start)
        lo, hi = (low, high) if lo is None else (min(lo, low), max(hi, high))
        held = out
        if stored is not None:
            held, out = as_stored(out.reshape(block.shape), block, index, stored)
            kept.add(block, out, first, kernel=_kernel if mode != _EVERY else None)
        if hasher is not None:
            hasher.update(_little_endian(held))
        if decoded is not None:
            decoded[start: start + out.size] = out.reshape(-1)
    lo, hi = (lo, hi) if lo is not None else (0, 0)
    codes -= np.uint8(lo + _HALF_RANGE)
    outlier_index = np.concatenate(outliers) if outliers else np.zeros(0, np.int64)
    table = table[lo + _HALF_RANGE: hi + _HALF_RANGE + 1]
    return UniformCode(codes, table, scales, axis, outlier_index,
                       None if decoded is None else decoded.reshape(x.shape), step,
                       entropy_bits=bits_from_counts(level_counts), measured=kept.result(),
                       sha256=None if hasher is None else hasher.hexdigest())


def as_stored(out, block, index, stored):
    """`(held, out)`: decoded float32 values `out` (the shape of `block`)
    with the outliers at flat `index` (or None) given their exact values
    from `block`, rounded to the dtype `stored` (`held`), and those again
    as float32."""
    if index is not None and index.size:
        out = np.array(out)
        out.reshape(-1)[index] = block.reshape(-1)[index]
    held = out.astype(stored)
    return held, held.astype(np.float32)


def _little_endian(array):
    """`array`'s values as little-endian bytes (the digests' form), in place where they are."""
    return array if np.little_endian or array.itemsize == 1 else array.view(f"u{array.itemsize}").byteswap()


def _code_block(block, factors, scale, mode, table, codes, sums, first):
    """Code, decode and measure one block of `_blocks`: write its codes
    (level + 127; outside values at level 0) into `codes`, add its error to
    `sums`, and return `(decoded, outside, lowest, highest)`: the decoded
    values (float32, the block's shape or flat), the flat indices of values
    more than 127 steps out (stored exactly) or None, and the extreme levels.
    The C kernel does it in one pass where it is built; numpy in several."""
    if _kernel is not None and mode != _EVERY:
        out = np.empty(block.size, np.float32)
        sq, ref, max_abs, low, high, outside = _kernel.code(
            block, block.shape[1], factors, mode, table, scale, codes, out, sums.channels or 0, first,
            sums.sq_c if sums.channels else None, sums.ref_c if sums.channels else None, True, True)
        sums.add_totals(sq, ref, max_abs)
        index = None
        if outside:  # rare: find them again, by the same rule
            index = np.flatnonzero(_outside(np.rint(block * _shaped(factors, mode))))
        return out, index, low, high
    q = block * _shaped(factors, mode)
    np.rint(q, out=q)
    index = None
    low, high = q.min(), q.max()
    if not (high <= _HALF_RANGE and low >= -_HALF_RANGE):  # NaN too
        index = np.flatnonzero(_outside(q))
        q.reshape(-1)[index] = 0
        low, high = q.min(), q.max()
    q += np.float32(_HALF_RANGE)
    block_codes = codes.reshape(q.shape)
    np.copyto(block_codes, q, casting="unsafe")
    out = np.take(table, block_codes)
    if scale is not None:
        out *= _shaped(scale, mode)
    if index is not None:
        out.reshape(-1)[index] = block.reshape(-1)[index]
    sums.add(block, out, first)
    return out, index, int(low), int(high)


def _empty(x, step, axis, keep_decoded, digest):
    """The code of a tensor with no values: one table entry, unit scales."""
    scales = None if axis is None else np.ones(x.shape[axis], np.float32)
    sha256 = hashlib.sha256().hexdigest() if digest else None
    return UniformCode(np.zeros(0, np.uint8), np.zeros(1, np.float32), scales, axis, np.zeros(0, np.int64),
                       x.astype(np.float32) if keep_decoded else None, step, entropy_bits=0.0,
                       measured=ErrorSums(None).result(), sha256=sha256)


def _cell_means(x, inverse, axis, step):
    """`(table, counts)` from a sample of `x` (see `_means`)."""
    sample = np.ascontiguousarray(_table_sample(x, inverse, axis).reshape(-1))  # a middle axis's is strided
    if _kernel is not None and sample.size:
        counts, sums = np.zeros(_LEVELS, np.int64), np.zeros(_LEVELS)
        outside = _kernel.level_sums(sample, sample.size, _UNIT, _ONE, counts, sums)
        return _table(counts, sums, outside, step), counts
    table, counts, _, _ = _means(sample, step)
    return table, counts


_LEVELS = 2 * _HALF_RANGE + 1
_UNIT = np.ones(1, np.float32)


def _means(values, step):
    """`(table, counts, index, outside)` of scaled `values` (1-D): for each
    level -127..127, the mean (times `step`) of the values that round to it,
    or the level itself when none does (see `_table`); how many values the
    codes put at each level; each value's level plus 127 (an intp index into
    the table); and a bool mask of the values more than 127 steps out (None
    when there are none), which count, and index, at level 0, where their
    codes point, but take no part in the means."""
    cells = np.rint(values)
    outside = None
    if cells.size and not (cells.max() <= _HALF_RANGE and cells.min() >= -_HALF_RANGE):  # NaN too
        outside = _outside(cells)
        cells[outside] = 0
    cells += np.float32(_HALF_RANGE)
    index = cells.astype(np.intp)
    counts = np.bincount(index, minlength=_LEVELS)
    if outside is None:
        sums = np.bincount(index, weights=values, minlength=_LEVELS)
        return _table(counts, sums, 0, step), counts, index, outside
    inside = ~outside
    sums = np.bincount(index[inside], weights=values[inside], minlength=_LEVELS)
    return _table(counts, sums, int(np.count_nonzero(outside)), step), counts, index, outside


def _table(counts, sums, outside, step):
    """The table (float32, in units of the scale) from each level's count
    and sum of scaled values, `outside` of the count at level 0 being values
    beyond the codes, which take no part in the means."""
    inside_counts = counts.copy()
    inside_counts[_HALF_RANGE] -= outside
    return short_floats((np.where(inside_counts > 0, sums / np.maximum(inside_counts, 1), _CENTRES) * step)
                        .astype(np.float32))


_CENTRES = np.arange(-_HALF_RANGE, _HALF_RANGE + 1, dtype=np.float64)


def _outside(levels):
    """Which rounded `levels` lie beyond the codes' +-127 (NaN too): values
    stored exactly, the rule the C kernel applies as well."""
    return ~(np.abs(levels) <= _HALF_RANGE)


def _times_scale(table, scale):
    """A per-tensor code's table: entries in units of the tensor's RMS
    `scale`, multiplied by it (in float64, rounded once to float32)."""
    return short_floats((table.astype(np.float64) * np.float64(scale)).astype(np.float32))


class Trial:
    """One tensor coded at candidate steps, measured without making its
    codes: the step search's inner loop (see `select`).

    The scales and the original values' norms are computed once; each step
    then costs one scaling, rounding, table and error pass. For a tensor of
    at most `_BLOCK` values (all of it the table sample, one block) the
    figures are exactly those of `encode(values, step, axis)`.

    Args:
        values: a finite float array.
        axis: channel axis for scales, or None for per-tensor scaling.
    """

    def __init__(self, values, axis=None):
        self.x = x = np.ascontiguousarray(values, np.float32)
        self.axis = axis
        self.scale, self.scales = _scaling(x, axis)
        self.reference = sums = ErrorSums(x.shape[-1] if x.ndim >= 2 else None)
        blocks = _blocks(x, _inverse(self.scale, self.scales, 1.0), self.scales, axis)
        for _, block, _, _, mode, first in blocks:
            if _kernel is not None and mode != _EVERY:  # as the kernel's `code` adds them
                ref = _kernel.reference(block, block.shape[1], sums.channels or 0, first,
                                        sums.ref_c if sums.channels else None)
                sums.add_totals(0.0, ref, 0.0)
            else:
                sums.add_reference(block, first)

    def at(self, step):
        """`TrialResult` of coding at `step`."""
        x, axis = self.x, self.axis
        inverse = _inverse(self.scale, self.scales, step)
        blocks = list(_blocks(x, inverse, self.scales, axis))
        if _kernel is not None and all(mode != _EVERY for *_, mode, _ in blocks):
            return self._native(blocks, step)
        y = x * (inverse if axis is None else broadcast_scales(inverse, x.shape, axis))
        table, counts, index, outside = _means(y.reshape(-1), step)
        if axis is None:
            table = _times_scale(table, self.scale)
        out = np.take(table, index).reshape(x.shape)
        if axis is not None:
            out *= broadcast_scales(self.scales, x.shape, axis)
        if outside is not None:
            outside = outside.reshape(x.shape)
            out[outside] = x[outside]
        sums = self.reference.copy()
        sums.add_error(np.subtract(x, out, out=out), extremes=False)
        return _trial_result(sums, counts, 0 if outside is None else int(outside.sum()))

    def _native(self, blocks, step):
        """`at` by the C kernel: level sums, then the error, block by block."""
        counts, level_sums, outside = np.zeros(_LEVELS, np.int64), np.zeros(_LEVELS), 0
        for _, block, factors, _, mode, _ in blocks:
            outside += _kernel.level_sums(block, block.shape[1], factors, mode, counts, level_sums)
        table = _table(counts, level_sums, outside, step)
        if self.axis is None:
            table = _times_scale(table, self.scale)
        sums = self.reference.copy()
        channels = sums.channels or 0
        for _, block, factors, scale, mode, first in blocks:
            sq = _kernel.code(block, block.shape[1], factors, mode, table, scale, None, None, channels, first,
                              sums.sq_c if channels else None, None, False, False)[0]
            sums.add_totals(sq, 0.0, 0.0)
        return _trial_result(sums, counts, outside)


def _trial_result(sums, counts, outliers):
    levels = np.flatnonzero(counts)
    return TrialResult(sums.result(), bits_from_counts(counts), outliers,
                       int(levels[-1] - levels[0] + 1) if levels.size else 1)


@dataclasses.dataclass
class TrialResult:
    """What coding a tensor at one step gives (see `Trial`).

    Attributes:
        measured: the `error.Measured` error.
        entropy_bits: the codes' order-0 entropy, bits per code.
        outliers: how many values would be stored exactly.
        table_size: how many table entries the codes would span.
    """

    measured: object
    entropy_bits: float
    outliers: int
    table_size: int


def from_levels(values, levels, exact, steps, axis=None):
    """A `UniformCode` for integer grid levels chosen elsewhere (e.g. by GPTQ).

    Each value decodes to `levels * step` of its channel; only the levels in
    use enter the table, so a wide but sparse grid costs no unused entries.

    Args:
        values: the original float array.
        levels: integer levels of `values`' shape, at most 255 distinct
            among the values not kept exactly.
        exact: bool array of `values`' shape: values stored exactly (outliers).
        steps: float32 grid steps, one per channel along `axis` (1-D), or a
            scalar step for the whole tensor when `axis` is None.
        axis: the channel axis of `steps`, or None.

    Returns:
        A `UniformCode` (its `step` is 1 when the steps are channel scales).
    """
    x = np.asarray(values)
    q = np.asarray(levels).reshape(-1)
    out = np.asarray(exact, bool).reshape(-1)
    used, counts = np.unique(q[~out], return_counts=True)
    if used.size == 0:
        used, counts = np.zeros(1, q.dtype), np.ones(1, np.int64)
    if used.size > 2 * _HALF_RANGE + 1:
        raise ValueError(f"{used.size} distinct levels do not fit 8-bit codes (255 at most).")
    # Codes rank the levels by frequency (commonest first): every tensor's
    # codes then fall off alike from 0, so tensors sharing a deflate block
    # share one Huffman table at little cost.
    by_count = np.argsort(-counts, kind="stable")  # code -> position among the sorted levels
    rank = np.empty_like(by_count)
    rank[by_count] = np.arange(by_count.size)  # position -> code
    codes = rank[np.searchsorted(used, q).clip(0, used.size - 1)].astype(np.uint8)
    used = used[by_count]  # the levels in code order
    codes[out] = 0  # the commonest code: the cheapest filler
    outlier_index = np.flatnonzero(out).astype(np.int64)
    if axis is None:
        step = np.float32(steps)
        table = short_floats((used.astype(np.float64) * float(step)).astype(np.float32))
        decoded = np.take(table, codes)
        scales, scale_step = None, float(step)
    else:
        scales = short_floats(np.asarray(steps, np.float32).reshape(-1))
        table = used.astype(np.float32)
        decoded = (np.take(table, codes).reshape(x.shape) * broadcast_scales(scales, x.shape, axis)).reshape(-1)
        scale_step = 1.0
    decoded = decoded.astype(np.float32)
    decoded[outlier_index] = np.asarray(x, np.float32).reshape(-1)[outlier_index]
    return UniformCode(codes, table, scales, axis, outlier_index, decoded.reshape(x.shape), scale_step)
