"""The coding digest of a coded tensor (spec §7.5), from its own parts."""

import hashlib
import struct

import numpy as np


def coding_sha256(dtype, shape, axis, codes, table, scales, outliers):
    """SHA-256 of what a coded tensor's values are computed from: its dtype
    name, rank, shape and scale axis (-1 for none), then its codes, its table
    entries and scales (binary32, little-endian) and its outlier block, each
    as the archive holds them.

    Args:
        dtype: the tensor's dtype name, e.g. `"float32"`.
        shape: the tensor's shape.
        axis: the axis of its scales, or None.
        codes: its uint8 codes.
        table: its table entries.
        scales: its scales, or None.
        outliers: its outlier block (indices then values), bytes-like; empty
            for none.

    Returns:
        The digest as 64 lowercase hex digits.
    """
    header = (dtype.encode("ascii") + b"\0" + struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
              + struct.pack("<i", -1 if axis is None else axis))
    digest = hashlib.sha256(header)
    digest.update(memoryview(np.ascontiguousarray(codes, np.uint8)).cast("B"))
    digest.update(np.ascontiguousarray(table, "<f4").tobytes())
    if scales is not None:
        digest.update(np.ascontiguousarray(scales, "<f4").tobytes())
    digest.update(outliers)
    return digest.hexdigest()
