"""How far a coded tensor is from the original, summed block by block.

A coder that decodes a tensor a block at a time (see `uniform.encode`) adds
each block here while it is still in cache, instead of a second pass over
the whole tensor and its decoded copy.
"""

import dataclasses
import math

import numpy as np

# A channel may be this many times worse than the tolerance (see `Measured.error`).
CHANNEL_FACTOR = 3.0


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


def sum_of_squares(v):
    """Sum of squares by BLAS; float32 data stays float32 (accurate to ~1e-6
    here, and no float64 copy of a large tensor) unless its sum overflows
    float32, other dtypes go to float64."""
    v = np.asarray(v).reshape(-1)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    with np.errstate(over="ignore"):
        total = float(np.dot(v, v))
    if total == float("inf") and v.dtype == np.float32:  # values beyond ~1e19
        total = sum_of_squares(v.astype(np.float64))
    return total


class ErrorSums:
    """Running sums of squared error and of squared values, overall and per
    output channel (the last axis of a tensor of rank 2 or more). With
    channels, the totals are the sums of the channels' sums.

    Args:
        channels: the number of output channels, or None for a vector.
    """

    def __init__(self, channels):
        self.channels = channels
        self.sq = self.ref = self.high = self.low = 0.0
        self.sq_c, self.ref_c = np.zeros(channels or 1), np.zeros(channels or 1)

    def add(self, original, decoded, first=0):
        """Add a block: `original` and `decoded` of one shape, either a
        whole number of output-channel rows, or (a block narrower than the
        channels) one row's channels `first` on, when `channels` is set."""
        self.add_reference(original, first)
        self.add_error(original - decoded, first)

    def add_reference(self, original, first=0):
        """Add a block's original values (to the norms errors are relative to)."""
        if self.channels:
            self.ref_c = self._per_channel(self.ref_c, original, first)
        else:
            self.ref += sum_of_squares(original)

    def add_error(self, e, first=0, extremes=True):
        """Add a block's errors, original minus decoded; without `extremes`
        the largest absolute error is not tracked (`max_abs` stays 0)."""
        if self.channels:
            self.sq_c = self._per_channel(self.sq_c, e, first)
        else:
            self.sq += sum_of_squares(e)
        if extremes and e.size:
            self.high, self.low = max(self.high, float(e.max())), min(self.low, float(e.min()))

    def add_totals(self, sq, ref, max_abs):
        """Add sums computed elsewhere (the C kernel, which adds to `sq_c`
        and `ref_c` itself when there are channels, and then passes 0 here)."""
        self.sq += sq
        self.ref += ref
        self.high, self.low = max(self.high, max_abs), min(self.low, -max_abs)

    def _per_channel(self, sums, block, first):
        """`sums` (owned by this object) plus the block's per-channel sums of
        squares: float32 sums for float32 data (float64 where they overflow,
        values beyond ~1e19), float64 for other dtypes."""
        if block.dtype not in (np.float32, np.float64):
            block = block.astype(np.float64)
        if block.shape[-1] % self.channels == 0:
            b2 = block.reshape(-1, self.channels)
            with np.errstate(over="ignore"):
                part = np.einsum("ij,ij->j", b2, b2)
            if b2.dtype == np.float32 and np.isinf(part).any():
                b2 = b2.astype(np.float64)
                part = np.einsum("ij,ij->j", b2, b2)
            sums += part
        else:  # a piece of one row: channels first..first + size
            part = block.reshape(-1)
            sums[first: first + part.size] += np.square(part, dtype=np.float64)
        return sums

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
            sq, ref = sq + float(self.sq_c.sum()), ref + float(self.ref_c.sum())
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


# `measure` goes through a tensor this many values at a time, so that the
# error is never a second copy of a large tensor.
_MEASURE_BLOCK = 1 << 16


def measure(original, decoded):
    """The `Measured` error of `decoded` (cast to `original`'s dtype, as it
    will be stored), in one pass over the error."""
    a = np.asarray(original)
    d = np.asarray(decoded, dtype=a.dtype)
    channels = a.shape[-1] if a.ndim >= 2 and a.size else None
    a2, d2 = a.reshape(-1, channels or 1), d.reshape(-1, channels or 1)
    rows = max(1, _MEASURE_BLOCK // (channels or 1))
    sums = ErrorSums(channels)
    for start in range(0, a2.shape[0], rows):
        sums.add(a2[start: start + rows], d2[start: start + rows])
    return sums.result()
