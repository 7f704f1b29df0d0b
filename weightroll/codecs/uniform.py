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

import numpy as np

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
        decoded: the decoded tensor (float32), outliers restored.
        step: the grid step in normalised units.
        entropy_bits: the codes' order-0 entropy in bits per code, once
            measured (`select.uniform_bytes` fills it in).
    """

    codes: np.ndarray
    table: np.ndarray
    scales: object
    axis: object
    outlier_index: np.ndarray
    decoded: np.ndarray
    step: float
    entropy_bits: object = None


def channel_scales(values, axis):
    """Root-mean-square of each channel along `axis` (float32, never 0)."""
    x = np.asarray(values)
    if x.dtype == np.float32 and x.ndim >= 2 and axis in (0, x.ndim - 1):
        # float32 sums by einsum: no float64 copy of a large tensor.
        if axis == 0:
            v = x.reshape(x.shape[0], -1)
            sums = np.einsum("ij,ij->i", v, v)
        else:
            v = x.reshape(-1, x.shape[-1])
            sums = np.einsum("ij,ij->j", v, v)
        rms = np.sqrt(sums.astype(np.float64) / (x.size // x.shape[axis]))
    else:
        x = x.astype(np.float64)
        other = tuple(i for i in range(x.ndim) if i != axis)
        rms = np.sqrt(np.mean(x * x, axis=other))
    rms = np.where(rms > 0, rms, 1.0)
    return rms.astype(np.float32)


def broadcast_scales(scales, shape, axis):
    """`scales` shaped to broadcast against a tensor of `shape` along `axis`."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return scales.reshape(view)


# Reconstruction values are the means of the values in each grid cell, taken
# on a strided sample of at most this many values (all of a smaller tensor).
_TABLE_SAMPLE = 1 << 16
# Values are scaled and rounded this many at a time (no full-size temporaries).
_BLOCK = 1 << 16


def _scaled_blocks(x, inverse, axis):
    """`(start, block)`: the flat values from `start` on, times their channel's
    `inverse` (float32, a new array), a block of about `_BLOCK` values at a time."""
    if axis is None or x.ndim == 0:
        flat = x.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            yield start, flat[start: start + _BLOCK] * inverse
        return
    if axis == x.ndim - 1:
        view, factors = x.reshape(-1, x.shape[-1]), inverse.reshape(1, -1)
    elif axis == 0:
        view, factors = x.reshape(x.shape[0], -1), inverse.reshape(-1, 1)
    else:  # any other axis: one block
        yield 0, (x * broadcast_scales(inverse, x.shape, axis)).reshape(-1)
        return
    rows = max(1, _BLOCK // max(view.shape[1], 1))
    for first in range(0, view.shape[0], rows):
        block = view[first: first + rows] * (factors if axis != 0 else factors[first: first + rows])
        yield first * view.shape[1], block.reshape(-1)


def _sample_positions(x, stride, inverse, axis):
    """The scaled values at flat positions `0, stride, 2 * stride, ...`."""
    flat = x.reshape(-1)
    if stride == 1:  # every value: broadcasting, no gather
        return flat * inverse if axis is None else (x * broadcast_scales(inverse, x.shape, axis)).reshape(-1)
    positions = np.arange(0, flat.size, stride)
    if axis is None:
        return flat[positions] * inverse
    if axis == x.ndim - 1:
        return flat[positions] * inverse[positions % x.shape[-1]]
    if axis == 0:
        return flat[positions] * inverse[positions // (flat.size // x.shape[0])]
    return (x * broadcast_scales(inverse, x.shape, axis)).reshape(-1)[positions]


def encode(values, step, axis=None):
    """Code `values` on a uniform grid of `step` after per-channel scaling.

    Args:
        values: a finite float array.
        step: grid step in units of the channel's RMS (e.g. 0.1).
        axis: channel axis for scales, or None for per-tensor scaling.

    Returns:
        A `UniformCode`.
    """
    # float32 throughout, block by block: codes only need to be a
    # deterministic function of the values, and decoding is float32 anyway.
    x = np.asarray(values, np.float32)
    flat = x.reshape(-1)
    if axis is None:
        rms = float(np.sqrt(np.dot(flat, flat) / flat.size)) if flat.size else 1.0
        scales = scale_b = None
        scale = rms if rms > 0 else 1.0
        inverse = np.float32(1.0 / (scale * step))  # values times this are in grid steps
    else:
        scales = channel_scales(x, axis)
        scale_b = broadcast_scales(scales, x.shape, axis)
        inverse = (1.0 / (scales.astype(np.float64) * step)).astype(np.float32)
    # Codes are first offset by 127 (every inlier fits), then moved down to
    # start at 0 once the lowest level is known.
    codes = np.empty(flat.size, np.uint8)
    outliers, lo, hi = [], None, None
    for start, q in _scaled_blocks(x, inverse, axis):
        np.rint(q, out=q)
        if q.max() > _HALF_RANGE or q.min() < -_HALF_RANGE:
            index = np.flatnonzero(np.abs(q) > _HALF_RANGE)
            q[index] = 0
            outliers.append(index.astype(np.int64) + start)
        low, high = int(q.min()), int(q.max())
        lo, hi = (low, high) if lo is None else (min(lo, low), max(hi, high))
        q += np.float32(_HALF_RANGE)
        codes[start: start + q.size] = q.astype(np.uint8)
    lo, hi = (lo, hi) if lo is not None else (0, 0)
    codes -= np.uint8(lo + _HALF_RANGE)
    outlier_index = np.concatenate(outliers) if outliers else np.zeros(0, np.int64)
    # The table: each cell's mean (in steps), from the sample's inliers.
    sample = _sample_positions(x, max(1, flat.size // _TABLE_SAMPLE), inverse, axis)
    cells = np.rint(sample)
    inlier = np.abs(cells) <= _HALF_RANGE
    cells = (cells[inlier] - lo).astype(np.intp)
    size = hi - lo + 1
    counts = np.bincount(cells, minlength=size)
    sums = np.bincount(cells, weights=sample[inlier], minlength=size)
    centres = np.arange(size, dtype=np.float64) + lo
    table = (np.where(counts > 0, sums / np.maximum(counts, 1), centres) * step).astype(np.float32)
    if axis is None:
        table = (table.astype(np.float64) * np.float64(scale)).astype(np.float32)
        decoded = np.take(table, codes)
    else:
        decoded = np.take(table, codes).reshape(x.shape)
        decoded *= scale_b
        decoded = decoded.reshape(-1)
    decoded[outlier_index] = flat[outlier_index]
    return UniformCode(codes, table, scales, axis, outlier_index, decoded.reshape(x.shape), step)


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
        table = (used.astype(np.float64) * float(step)).astype(np.float32)
        decoded = np.take(table, codes)
        scales, scale_step = None, float(step)
    else:
        scales = np.asarray(steps, np.float32).reshape(-1)
        table = used.astype(np.float32)
        decoded = (np.take(table, codes).reshape(x.shape) * broadcast_scales(scales, x.shape, axis)).reshape(-1)
        scale_step = 1.0
    decoded = decoded.astype(np.float32)
    decoded[outlier_index] = np.asarray(x, np.float32).reshape(-1)[outlier_index]
    return UniformCode(codes, table, scales, axis, outlier_index, decoded.reshape(x.shape), scale_step)
