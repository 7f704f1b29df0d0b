"""The digests an archive records: of a tensor's values, and of a coded tensor's
parts (spec §7.5); and how a base tensor is recognised (§9)."""

import hashlib
import struct

import numpy as np

from weightroll._format.json_text import dumps


def coding_sha256(dtype, shape, axis, codes, table, scales, outliers, trellis=None):
    """SHA-256 of what a coded tensor's values are computed from: its dtype
    name, rank, shape and scale axis (-1 for none), for trellis codes their
    segment, zero and low (4.0), then its codes, its table entries and
    scales (binary32, little-endian) and its outlier block, each as the
    archive holds them.

    Args:
        dtype: the tensor's dtype name, e.g. `"float32"`.
        shape: the tensor's shape.
        axis: the axis of its scales, or None.
        codes: its uint8 codes.
        table: its table entries.
        scales: its scales, or None.
        outliers: its outlier block (indices then values), bytes-like; empty
            for none.
        trellis: its `trellis` field (`{"segment", "zero", "low"}`), or None.

    Returns:
        The digest as 64 lowercase hex digits.
    """
    header = (dtype.encode("ascii") + b"\0" + struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
              + struct.pack("<i", -1 if axis is None else axis))
    if trellis is not None:
        header += b"trellis\0" + struct.pack("<Iii", trellis["segment"], trellis["zero"], trellis["low"])
    digest = hashlib.sha256(header)
    digest.update(memoryview(np.ascontiguousarray(codes, np.uint8)).cast("B"))
    digest.update(np.ascontiguousarray(table, "<f4").tobytes())
    if scales is not None:
        digest.update(np.ascontiguousarray(scales, "<f4").tobytes())
    digest.update(outliers)
    return digest.hexdigest()


def little_endian_bytes(array):
    """C-order little-endian bytes of `array` (the form digests are taken of)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def tensor_digest(array):
    """SHA-256 of the array's C-order little-endian bytes, hashed in place when
    they are already laid out so (no copy of a large tensor)."""
    array = np.asarray(array)
    if array.size and array.flags.c_contiguous and (array.dtype.byteorder in ("<", "|") or
                                     (array.dtype.byteorder == "=" and np.little_endian)):
        return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()
    return hashlib.sha256(little_endian_bytes(array)).hexdigest()


def reference_key(array):
    """How a base tensor is recognised: dtype, shape and SHA-256 of its bytes."""
    array = np.asarray(array)
    return array.dtype.name, tuple(int(d) for d in array.shape), tensor_digest(array)


# The fields of a tensor entry that `binding_sha256` covers (spec §4.9).
BOUND_FIELDS = ("key", "path", "dtype", "shape", "storage", "sha256", "coding_sha256")


def binding_sha256(entry):
    """SHA-256 of the canonical JSON of a tensor entry's `BOUND_FIELDS` (those
    it has): its names bound to its data's digests, so that a path or key
    moved onto other data is refused."""
    return hashlib.sha256(dumps({k: entry[k] for k in BOUND_FIELDS if k in entry})).hexdigest()
