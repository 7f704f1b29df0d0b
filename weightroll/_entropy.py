"""Order-0 entropy of 8-bit codes (numpy only)."""

import numpy as np

# Codes are counted this many at a time: `np.bincount` widens its input to
# 64-bit integers, 8 bytes for every 1-byte code.
_CHUNK = 1 << 16


def code_counts(codes):
    """How often each of the 256 code values occurs in a uint8 array."""
    flat = np.asarray(codes, np.uint8).reshape(-1)
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.size, _CHUNK):
        counts += np.bincount(flat[start: start + _CHUNK], minlength=256)
    return counts


def bits_per_code(codes):
    """Empirical order-0 entropy of `codes`, in bits per code (0 for none)."""
    return bits_from_counts(code_counts(codes))


def bits_from_counts(counts):
    """Order-0 entropy of codes occurring `counts` times each, in bits per code (0 for none)."""
    counts = np.asarray(counts)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())
