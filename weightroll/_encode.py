"""Turn named numpy tensors into codes, a decoder and exact bytes.

Numpy only: this module knows nothing of Keras or of the zip container.
"""

import dataclasses
import hashlib

import numpy as np

from weightroll._format import manifest as mf
from weightroll.codecs import codebook, mlp
from weightroll.errors import WrollError

DECODERS = mf.DECODER_KINDS


@dataclasses.dataclass
class Encoded:
    """Everything the archive needs about the weights, before serialisation."""

    tensors: list  # manifest entries, without "error"
    codes: np.ndarray  # uint8, all coded tensors' codes in order
    decoder: dict  # manifest "decoder" section, without member names
    decoder_arrays: list  # numpy arrays, packed into decoder.bin in order
    exact_bytes: bytes
    decoded: dict  # path -> decoded numpy array


def little_endian_bytes(array):
    """C-order little-endian bytes of `array` (the form digests are taken of)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def tensor_digest(array):
    return hashlib.sha256(little_endian_bytes(array)).hexdigest()


def _dtype_name(array, path):
    name = array.dtype.name
    if name not in mf.EXACT_DTYPES:
        raise WrollError(
            f"Variable '{path}' has dtype {name}, which .wroll cannot store. Supported dtypes: "
            f"{', '.join(mf.EXACT_DTYPES)}. Cast the variable (e.g. keep bfloat16 "
            "models' variables in float32 with a mixed-precision policy) before rolling."
        )
    return name


def codebook_pays(size, itemsize, bits):
    """Whether coding beats storing exactly: codes (1 byte each) plus table
    entries (4 bytes each) against the raw bytes."""
    return size + 4 * min(1 << bits, size) < size * itemsize


def encode(named_tensors, decoder="codebook", bits=8, seed=0):
    """Quantise and code tensors.

    Args:
        named_tensors: sequence of `(path, numpy array)` in archive order.
        decoder: `"codebook"` (per-tensor k-means tables, the default) or
            `"mlp"` (the paper's global grid and regression MLP).
        bits: code width, 1 to 8.
        seed: seed of the MLP fit (ignored by `"codebook"`).

    Returns:
        An `Encoded`.
    """
    if decoder not in DECODERS:
        raise WrollError(f"`decoder` must be one of {DECODERS}. Received: decoder={decoder!r}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise WrollError(f"`bits` must be an integer from 1 to 8. Received: bits={bits!r}")
    bits = int(bits)

    plans = []  # (path, array, dtype name, coded?)
    for path, array in named_tensors:
        array = np.asarray(array)
        dtype = _dtype_name(array, path)
        coded = dtype in mf.CODED_DTYPES and array.size > 0 and bool(np.all(np.isfinite(array)))
        if coded and decoder == "codebook":
            coded = codebook_pays(array.size, array.dtype.itemsize, bits)
        plans.append((path, array, dtype, coded))

    if decoder == "codebook":
        per_tensor, decoder_section, arrays = _codebook(plans, bits)
    else:
        per_tensor, decoder_section, arrays = _mlp(plans, bits, seed)

    entries, codes_parts, exact_parts, decoded = [], [], [], {}
    code_offset = byte_offset = 0
    for (path, array, dtype, coded), coding in zip(plans, per_tensor):
        entry = {"path": path, "shape": [int(d) for d in array.shape], "dtype": dtype}
        if coded:
            tensor_codes, values, table_entry = coding
            entry["storage"] = "coded"
            entry["codes"] = {"offset": code_offset, "count": int(array.size)}
            if table_entry is not None:
                entry["table"] = table_entry
            codes_parts.append(tensor_codes)
            code_offset += array.size
            out = values.astype(array.dtype).reshape(array.shape)
        else:
            raw = little_endian_bytes(array)
            entry["storage"] = "exact"
            entry["bytes"] = {"offset": byte_offset, "size": len(raw)}
            exact_parts.append(raw)
            byte_offset += len(raw)
            out = array.copy()
        entry["sha256"] = tensor_digest(out)
        decoded[path] = out
        entries.append(entry)

    codes = np.concatenate(codes_parts) if codes_parts else np.zeros(0, np.uint8)
    decoder_section = dict(decoder_section, bits=bits)
    return Encoded(entries, codes, decoder_section, arrays, b"".join(exact_parts), decoded)


def _codebook(plans, bits):
    tables, per_tensor, offset = [], [], 0
    for path, array, dtype, coded in plans:
        if not coded:
            per_tensor.append(None)
            continue
        table, codes = codebook.fit_codebook(array, bits)
        per_tensor.append((codes, table[codes], {"offset": offset, "size": int(table.size)}))
        tables.append(table)
        offset += table.size
    table = np.concatenate(tables) if tables else np.zeros(0, np.float32)
    section = {"kind": "codebook"}
    return per_tensor, section, [table.reshape(-1, 1)]


def _mlp(plans, bits, seed):
    coded = [array for _, array, _, c in plans if c]
    if coded:
        lo = min(float(a.min()) for a in coded)
        hi = max(float(a.max()) for a in coded)
    else:
        lo = hi = 0.0
    per_codes = [mlp.grid_codes(a, lo, hi, bits) if c else None for _, a, _, c in plans]
    if coded:
        all_codes = np.concatenate([c for c in per_codes if c is not None])
        all_values = np.concatenate([a.reshape(-1).astype(np.float64) for a in coded])
        params = mlp.fit(all_codes, all_values, bits, seed=seed)
    else:
        params = mlp.fit(np.zeros(1, np.uint8), np.zeros(1), bits, seed=seed)
    table = mlp.evaluate(params, bits)
    per_tensor = [None if c is None else (c, table[c], None) for c in per_codes]
    section = {"kind": "mlp", "activation": mlp.ACTIVATION, "grid": {"min": lo, "max": hi}}
    return per_tensor, section, params
