"""How far a coded tensor is from the original, summed block by block.

A coder that decodes a tensor a block at a time (see `uniform.encode`) adds
each block here while it is still in cache, instead of a second pass over
the whole tensor and its decoded copy.

Every sum here is of float64 squares (exact for float32 values), added in an
order that depends on the data's layout alone: each channel's squares one
after the other in C order, and a vector's as `_block_total` describes. The
uniform coder's C kernel (`_kernel.c`) adds the same squares in the same
order, so with or without it, on any CPU, the sums are the same bits, and so
are the steps chosen from them and the errors written in the manifest. (A
BLAS dot product, numpy's einsum or its pairwise reductions would add in an
order that depends on the CPU, the BLAS build or numpy's version.)
"""

import dataclasses
import math

import numpy as np

# A channel may be this many times worse than the tolerance (see `Measured.error`).
CHANNEL_FACTOR = 3.0

# The C kernel's layout of a sum (see `_block_total`): blocks of this many
# values (`uniform._BLOCK`), segments of this many, lanes of partial sums.
BLOCK = 1 << 16
_SEGMENT = 256
_LANES = 8


@dataclasses.dataclass
class Measured:
    """How far a decoded tensor is from the original.

    Attributes:
        error: what a tolerance bounds: the tensor's relative RMSE or, if
            larger, its worst output channel's divided by `CHANNEL_FACTOR`,
            so that no channel (one a batch normalisation will rescale, say)
            is wiped out under a tolerance that only looks at the whole tensor.
        sq_err: sum of squared errors.
        sq_ref: sum of squared original values.
        max_abs: largest absolute error.
    """

    error: float
    sq_err: float
    sq_ref: float
    max_abs: float


def squares(v):
    """`v`'s values squared, as a new flat float64 array (exact for float32
    and float16 values; float64 ones are rounded once)."""
    sq = np.array(v, dtype=np.float64).reshape(-1)
    np.multiply(sq, sq, out=sq)
    return sq


def _block_total(values):
    """The sum of one block's float64 `values` (at most `BLOCK`; squares, as a
    rule) in the kernel's order: segments of 256 values; in each, eight lanes
    of partial sums (value `8 i + l` to lane `l`, in order), the leftover
    values of a last short segment to lane 0; each lane's segment sums added
    in order; the eight lanes added in order, from lane 0. (`accumulate`
    adds one after the other, in any numpy on any CPU.)"""
    whole = values.size - values.size % _SEGMENT
    lanes = np.zeros(_LANES)
    if whole:
        groups = values[:whole].reshape(-1, _SEGMENT // _LANES, _LANES)  # segment, group, lane
        if groups.shape[0] < 32:  # few segments: one call
            segments = np.add.accumulate(groups, axis=1)[:, -1]
        else:  # many: the same additions, group after group over all segments (faster)
            segments = groups[:, 0].copy()
            for i in range(1, groups.shape[1]):
                segments += groups[:, i]
        lanes = np.add.accumulate(segments, axis=0)[-1]
    rest = values[whole:]
    if rest.size:
        full = rest.size - rest.size % _LANES
        part = np.zeros(_LANES)
        if full:
            part = np.add.accumulate(rest[:full].reshape(-1, _LANES), axis=0)[-1].copy()
        first = float(part[0])
        for value in rest[full:].tolist():
            first += value
        part[0] = first
        lanes = lanes + part
    out = 0.0
    for value in lanes.tolist():
        out += value
    return out


def total(values):
    """The sum of float64 `values` in a fixed order: each `BLOCK` of them
    added one after the other, and those sums in order."""
    out = 0.0
    for start in range(0, values.size, BLOCK):
        out += float(np.add.accumulate(values[start: start + BLOCK])[-1])
    return out


def _add_to_channels(sums, block, first):
    """Add the squares of `block`'s values to the channel sums `sums` in
    place: a block of whole rows of the channels (its last axis a multiple of
    them), each channel's squares one after the other in C order; or a piece
    of one row, channels `first` on, once each."""
    sq = squares(block)
    if not sq.size:
        return
    channels = sums.size
    if np.shape(block)[-1] % channels:
        sums[first: first + sq.size] += sq
        return
    rows = sq.reshape(-1, channels)
    rows[0] += sums
    np.add.accumulate(rows, axis=0, out=rows)  # row after row, whatever the CPU
    sums[:] = rows[-1]


def _block_totals(v):
    """`_block_total` of the squares of each `BLOCK` of `v`'s values, in
    order: what the kernel returns for each block of a vector it codes."""
    flat = np.asarray(v).reshape(-1)
    return [_block_total(squares(flat[start: start + BLOCK])) for start in range(0, flat.size, BLOCK)]


def sum_of_squares(v):
    """The sum of `v`'s squared values (float64), as `ErrorSums` adds a
    vector's: its block totals (`_block_totals`) added in order."""
    out = 0.0
    for part in _block_totals(v):
        out += part
    return out


def channel_sums(matrix, sums=None):
    """Each column's sum of squares of a 2-D array of channels (columns),
    each channel's added row after row (float64, `ErrorSums`' order); added
    to `sums` when given."""
    m = np.asarray(matrix)
    sums = np.zeros(m.shape[1]) if sums is None else sums
    if m.shape[1]:
        rows = max(1, BLOCK // m.shape[1])
        for start in range(0, m.shape[0], rows):
            _add_to_channels(sums, m[start: start + rows], 0)
    return sums


def row_sums(matrix):
    """Each row's sum of squares of a 2-D array, added along the row in
    order (float64): `channel_sums` of its transpose, without a copy of it."""
    m = np.asarray(matrix)
    out = np.zeros(m.shape[0])
    if not m.shape[1]:
        return out
    rows = max(1, BLOCK // m.shape[1])
    for start in range(0, m.shape[0], rows):
        stop = min(start + rows, m.shape[0])
        for column in range(0, m.shape[1], BLOCK):  # a very long row, in pieces
            sq = squares(m[start: stop, column: column + BLOCK]).reshape(stop - start, -1)
            sq[:, 0] += out[start: stop]
            np.add.accumulate(sq, axis=1, out=sq)
            out[start: stop] = sq[:, -1]
    return out


class ErrorSums:
    """Running sums of squared error and of squared values, overall and per
    output channel (the last axis of a tensor of rank 2 or more). With
    channels, the totals are the sums of the channels' sums.

    Every block added without channels is a whole number of `BLOCK`s of a
    vector, or its last part: as the kernel codes a vector.

    Args:
        channels: the number of output channels, or None for a vector.
    """

    def __init__(self, channels):
        self.channels = channels
        self.sq = self.ref = self.high = self.low = 0.0
        self.sq_c, self.ref_c = np.zeros(channels or 1), np.zeros(channels or 1)

    def add(self, original, decoded, first=0, kernel=None):
        """Add a block: `original` and `decoded` of one shape, either a
        whole number of output-channel rows, or (a block narrower than the
        channels) one row's channels `first` on, when `channels` is set.

        With `kernel` (the uniform coder's C kernel, `uniform._kernel`), a
        float32 matrix block is summed by it: the same sums, in one pass each.
        """
        if kernel is not None and original.ndim == 2 and original.dtype == np.float32 and original.size:
            channels = self.channels or 0
            sq, ref, max_abs = kernel.measure(original, np.ascontiguousarray(decoded, np.float32).reshape(
                original.shape), original.shape[1], channels, first, self.sq_c if channels else None,
                self.ref_c if channels else None)
            self.add_totals(sq, ref, max_abs)
            return
        self.add_reference(original, first)
        self.add_error(original - decoded, first)

    def add_reference(self, original, first=0):
        """Add a block's original values (to the norms errors are relative to)."""
        if self.channels:
            _add_to_channels(self.ref_c, original, first)
        else:
            for part in _block_totals(original):  # each block's, as the kernel adds them
                self.ref += part

    def add_error(self, e, first=0, extremes=True):
        """Add a block's errors, original minus decoded; without `extremes`
        the largest absolute error is not tracked (`max_abs` stays 0)."""
        if self.channels:
            _add_to_channels(self.sq_c, e, first)
        else:
            for part in _block_totals(e):
                self.sq += part
        if extremes and e.size:
            self.high, self.low = max(self.high, float(e.max())), min(self.low, float(e.min()))

    def add_totals(self, sq, ref, max_abs):
        """Add sums computed elsewhere (the C kernel, which adds to `sq_c`
        and `ref_c` itself when there are channels, and then passes 0 here)."""
        self.sq += sq
        self.ref += ref
        self.high, self.low = max(self.high, max_abs), min(self.low, -max_abs)

    def copy(self):
        """A new `ErrorSums` holding these sums (to add more to)."""
        other = ErrorSums(self.channels)
        other.__dict__.update(self.__dict__)
        other.sq_c, other.ref_c = self.sq_c.copy(), self.ref_c.copy()
        return other

    def result(self):
        """The `Measured` error of everything added."""
        sq, ref = self.sq, self.ref
        if self.channels:
            sq, ref = sq + total(self.sq_c), ref + total(self.ref_c)
        if ref > 0:
            err = math.sqrt(sq / ref)
        else:
            err = 0.0 if sq == 0 else float("inf")
        if self.channels and err < math.inf:
            err = max(err, math.sqrt(self._worst_channel()) / CHANNEL_FACTOR)
        return Measured(err, sq, ref, max(self.high, -self.low))

    def _worst_channel(self):
        """The largest ratio of a channel's squared error to its squared
        values: infinite for an error on a channel of zeros, none for a
        channel of zeros without error."""
        sq_c, ref_c = self.sq_c, self.ref_c
        nonzero = ref_c > 0
        if nonzero.all():
            return float((sq_c / ref_c).max())
        if (sq_c[~nonzero] > 0).any():
            return math.inf
        return float((sq_c[nonzero] / ref_c[nonzero]).max()) if nonzero.any() else 0.0


# The 16-bit float dtypes whose decoded values are rounded as stored (to
# them) before they are measured and hashed, by `measure` and the coders.
SIXTEEN_BIT_FLOATS = ("float16", "bfloat16")


def measure(original, decoded):
    """The `Measured` error of `decoded` (cast to `original`'s dtype, as it
    will be stored), in one pass over the error, `BLOCK` values at a time."""
    from weightroll.coders import uniform  # its C kernel sums float32 blocks (uniform imports this module)

    a = np.asarray(original)
    channels = a.shape[-1] if a.ndim >= 2 and a.size else None
    a2, d2 = a.reshape(-1, channels or 1), np.asarray(decoded).reshape(-1, channels or 1)
    rows = max(1, BLOCK // (channels or 1))
    sums = ErrorSums(channels)
    for start in range(0, a2.shape[0], rows):  # a block at a time: no copy of the whole tensor
        block, out = a2[start: start + rows], d2[start: start + rows].astype(a.dtype)
        if a.dtype.name in SIXTEEN_BIT_FLOATS:  # rounded as stored, then measured in float32 (as the coders do)
            block, out = block.astype(np.float32), out.astype(np.float32)
        sums.add(block, out, kernel=uniform._kernel if channels else None)
    return sums.result()
