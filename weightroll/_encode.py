"""Turn named numpy tensors into codes, a decoder and exact bytes.

Numpy only: this module knows nothing of Keras or of the zip container.
"""

import dataclasses
import hashlib

import numpy as np

from weightroll import _progress, report
from weightroll._format import image
from weightroll._format import manifest as mf
from weightroll._parallel import parallel_map
from weightroll.codecs import codebook, mlp, select
from weightroll.errors import WrollError

DECODERS = mf.DECODER_KINDS

# Named quality presets: the largest relative RMSE each coded tensor may have
# (calibrated on the heavy-tailed transformer-like test model: "balanced"
# keeps its output cosine above 0.999 without calibration data) ...
PRESETS = {
    "lossless-ish": 0.003,
    "balanced": 0.01,
    "small": 0.04,
}
# ... and, when calibration data is given, the largest relative RMSE of the
# model's outputs (cosine ~ 1 - x**2 / 2).
OUTPUT_PRESETS = {
    "lossless-ish": 0.01,
    "balanced": 0.04,
    "small": 0.12,
}
DEFAULT_PRESET = "balanced"


@dataclasses.dataclass
class Encoded:
    """Everything the archive needs about the weights, before serialisation."""

    tensors: list  # manifest entries, without "error"
    codes: np.ndarray  # uint8, all coded tensors' codes in order
    decoder: dict  # manifest "decoder" section, without member names
    decoder_arrays: list  # numpy arrays, packed into decoder.bin in order
    exact_bytes: bytes
    decoded: dict  # path -> decoded numpy array (empty unless asked to keep them)
    stats: dict  # path -> report.tensor_error's (error, squared error, squared norm)


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
        return hashlib.sha256(memoryview(array.reshape(-1)).cast("B")).hexdigest()
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
    """Whether a fixed-width codebook beats exact storage: codes (1 byte each)
    plus table entries (4 bytes each) against the raw bytes."""
    return size + 4 * min(1 << bits, size) < size * itemsize


def resolve_quality(decoder, bits, tolerance, quality):
    """Check the rate options and return `(bits, tolerance)`; exactly one is not None."""
    if decoder not in DECODERS:
        raise WrollError(f"`decoder` must be one of {DECODERS}. Received: decoder={decoder!r}")
    if bits is not None and (
        isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8
    ):
        raise WrollError(f"`bits` must be an integer from 1 to 8. Received: bits={bits!r}")
    if quality is not None and quality not in PRESETS:
        raise WrollError(f"`quality` must be one of {sorted(PRESETS)}. Received: quality={quality!r}")
    if tolerance is not None and not isinstance(tolerance, dict):
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise WrollError(
                "`tolerance` must be a relative RMSE in [0, 1), e.g. 0.02. "
                f"Received: tolerance={tolerance!r}"
            )
    given = [name for name, v in (("bits", bits), ("tolerance", tolerance), ("quality", quality)) if v is not None]
    if len(given) > 1:
        raise WrollError(f"Pass at most one of `bits`, `tolerance` and `quality`. Received: {', '.join(given)}")
    if decoder == "mlp":
        if tolerance is not None or quality is not None:
            raise WrollError('decoder="mlp" (the paper\'s global grid) takes `bits` only, not `tolerance` or `quality`.')
        return int(bits or 8), None
    if bits is not None:
        return int(bits), None
    if tolerance is None:
        tolerance = PRESETS[quality or DEFAULT_PRESET]
    return None, tolerance


def resolve_output_tolerance(decoder, bits, tolerance, quality, output_tolerance, has_data):
    """The output target for rate-distortion allocation, or None for none.

    Allocation runs when calibration data is given and the rate is set by a
    preset (or the default) or by `output_tolerance`, never with `bits` or
    a weight `tolerance`.
    """
    if output_tolerance is not None:
        if isinstance(output_tolerance, bool) or not isinstance(output_tolerance, (int, float)) \
                or not 0 < output_tolerance < 1:
            raise WrollError(
                "`output_tolerance` must be a relative RMSE of the outputs in (0, 1), e.g. 0.04. "
                f"Received: output_tolerance={output_tolerance!r}"
            )
        if not has_data:
            raise WrollError("`output_tolerance` needs `validation_data` to measure the outputs on.")
        if decoder != "codebook" or bits is not None or tolerance is not None:
            raise WrollError("`output_tolerance` cannot be combined with `bits`, `tolerance` or decoder=\"mlp\".")
        return float(output_tolerance)
    if not has_data or decoder != "codebook" or bits is not None or tolerance is not None:
        return None
    return OUTPUT_PRESETS[quality or DEFAULT_PRESET]


def describe_settings(decoder, bits, tolerance, quality, output_tolerance=None):
    """The rate setting as recorded in the manifest and the report."""
    if output_tolerance is not None:
        settings = {"output_tolerance": output_tolerance}
        if quality is not None or output_tolerance == OUTPUT_PRESETS[DEFAULT_PRESET]:
            settings["quality"] = quality or DEFAULT_PRESET
        return settings
    bits, tolerance = resolve_quality(decoder, bits, tolerance, quality)
    if bits is not None:
        return {"bits": bits}
    settings = {"tolerance": tolerance if not isinstance(tolerance, dict) else "per-tensor"}
    if quality is not None or tolerance == PRESETS[DEFAULT_PRESET]:
        settings["quality"] = quality or DEFAULT_PRESET
    return settings


def reference_key(array):
    """How a base tensor is recognised: dtype, shape and SHA-256 of its bytes."""
    array = np.asarray(array)
    return array.dtype.name, tuple(int(d) for d in array.shape), tensor_digest(array)


def encode(named_tensors, decoder="codebook", bits=None, tolerance=None, quality=None, seed=0,
           base_keys=None, keep_decoded=True):
    """Quantise and code tensors.

    Args:
        named_tensors: sequence of `(path, numpy array)` in archive order.
        decoder: `"codebook"` (table look-up, the default) or `"mlp"` (the
            paper's global grid and regression MLP).
        bits: fixed code width, 1 to 8: per-tensor k-means codebooks of at
            most `2**bits` entries (or the paper's grid for `"mlp"`).
        tolerance: largest relative RMSE per coded tensor; the cheapest code
            meeting it is chosen per tensor. A float, or a dict path -> float.
        quality: a preset name from `PRESETS`, mapped to a tolerance.
        seed: seed of the MLP fit (ignored by `"codebook"`).
        base_keys: optional set of `reference_key`s of a base model's tensors;
            a tensor bit-identical to one of them is stored as a reference.
        keep_decoded: keep every decoded tensor in `Encoded.decoded` (to run
            the rolled model); without it, each is dropped once its digest and
            error are recorded.

    Returns:
        An `Encoded`.
    """
    bits, tolerance = resolve_quality(decoder, bits, tolerance, quality)
    plans, referenced = [], {}  # plans: (path, array, dtype name, codable?)
    for path, array in named_tensors:
        array = np.asarray(array)
        dtype = _dtype_name(array, path)
        if base_keys and array.size and reference_key(array) in base_keys:
            referenced[path] = array
            codable = False
        else:
            codable = dtype in mf.CODED_DTYPES and array.size > 0 and bool(np.all(np.isfinite(array)))
        plans.append((path, array, dtype, codable))
    if decoder == "mlp":
        per_tensor, section, arrays = _mlp(plans, bits, seed)
    else:
        per_tensor, section, arrays = _codebook(plans, bits, tolerance, keep_decoded)
    per_tensor = ["reference" if path in referenced else c for (path, *_), c in zip(plans, per_tensor)]
    if decoder == "mlp":  # the codebook codings were finished in the workers
        per_tensor = [c if c in (None, "reference") else _finish(p, c, keep_decoded)
                      for p, c in zip(plans, per_tensor)]
    return _assemble(plans, per_tensor, dict(section, bits=bits if bits is not None else 8), arrays,
                     keep_decoded)


def _finish(plan, coding, keep):
    """Turn a coding's values into the decoded tensor: cast, restore outliers,
    then record its digest and error. The tensor itself is kept only if asked,
    so that rolling never holds every decoded tensor at once."""
    path, array, _, _ = plan
    out = np.asarray(coding.pop("values"), dtype=array.dtype).reshape(array.shape)  # no copy if float32
    index = coding.get("outliers")
    if index is not None and index.size:
        out.reshape(-1)[index] = array.reshape(-1)[index]
    coding["sha256"] = tensor_digest(out)
    coding["entropy_bits"] = image.code_entropy_bits(coding["codes"])  # for the layout
    measured = coding.pop("measured", None)
    if measured is not None and array.dtype == np.float32:  # measured on these very values
        coding["stats"] = report.error_from_sums(measured.sq_err, measured.sq_ref, measured.max_abs)
    else:
        coding["stats"] = report.tensor_error(array, out)
    coding["out"] = out if keep else None
    return coding


def _assemble(plans, per_tensor, section, arrays, keep):
    entries, codes_parts, exact_parts, decoded, stats = [], [], [], {}, {}
    byte_offset = 0
    for i, (path, array, dtype, _) in enumerate(plans):
        coding, per_tensor[i] = per_tensor[i], None  # let each coding go once used
        entry = {"path": path, "shape": [int(d) for d in array.shape], "dtype": dtype}
        if coding == "reference" or coding is None:
            if coding == "reference":
                entry["storage"] = "reference"
            else:
                raw = little_endian_bytes(array)
                entry["storage"] = "exact"
                entry["bytes"] = {"offset": byte_offset, "size": len(raw)}
                exact_parts.append(raw)
                byte_offset += len(raw)
            entry["sha256"] = tensor_digest(array)
            stats[path] = report.exact_error(array)
            out = array
        else:
            entry["storage"] = "coded"
            entry["codes"] = {"offset": None, "count": int(array.size)}  # set by _lay_out
            entry.update(coding["entry"])
            codes_parts.append((entry, coding["codes"], coding["entropy_bits"]))
            index = coding.get("outliers")
            if index is not None and index.size:
                raw = little_endian_bytes(index.astype(np.int64)) + little_endian_bytes(array.reshape(-1)[index])
                entry["outliers"] = {"offset": byte_offset, "count": int(index.size)}
                exact_parts.append(raw)
                byte_offset += len(raw)
            entry["sha256"] = coding["sha256"]
            stats[path] = coding["stats"]
            out = coding["out"]
        if keep:
            decoded[path] = out
        entries.append(entry)
    codes = _lay_out(codes_parts)
    return Encoded(entries, codes, section, arrays, b"".join(exact_parts), decoded, stats)


def _lay_out(parts):
    """Concatenate tensors' codes into the image, setting each entry's offset.

    Tensors whose codes have similar statistics sit together (ordered by code
    entropy, in tenths of a bit, then archive order): deflate adapts its
    Huffman tables block by block, so neighbours alike code tighter.
    """
    order = sorted(range(len(parts)), key=lambda i: (-round(parts[i][2], 1), i))
    out = np.empty(sum(codes.size for _, codes, _ in parts), np.uint8)
    offset = 0
    for i in order:
        (entry, codes, _), parts[i] = parts[i], None  # each tensor's codes go once copied
        entry["codes"]["offset"] = offset
        out[offset: offset + codes.size] = codes
        offset += codes.size
    return out


def _code_one(plan, bits, tolerance, keep):
    """One tensor's finished coding (None: store it exactly), with progress reported."""
    coding = _code_one_quietly(plan, bits, tolerance)
    if coding is not None:
        coding = _finish(plan, coding, keep)
    _progress.advance(plan[1].size, plan[0])
    return coding


def _code_one_quietly(plan, bits, tolerance):
    path, array, dtype, codable = plan
    if not codable:
        return None
    if bits is not None:
        if not codebook_pays(array.size, array.dtype.itemsize, bits):
            return None
        table, codes = codebook.fit_codebook(array, bits)
        return {"table": table, "codes": codes, "values": table[codes], "entry": {"quantizer": "kmeans"}}
    tol = tolerance.get(path, 0.0) if isinstance(tolerance, dict) else tolerance
    choice = select.choose(array, tol, array.dtype.itemsize)
    if choice.kind == "lossless":
        table, codes = choice.code
        return {"table": table, "codes": codes, "values": table[codes], "entry": {"quantizer": "lossless"}}
    if choice.kind == "uniform":
        code = choice.code
        coding = {"table": code.table, "codes": code.codes, "values": code.decoded.reshape(-1),
                  "outliers": code.outlier_index, "measured": choice.measured,
                  "entry": {"quantizer": "uniform", "step": float(code.step)}}
        if code.scales is not None:
            coding["scales"] = code.scales
            coding["entry"]["scales"] = {"axis": int(code.axis), "count": int(code.scales.size)}
        return coding
    return None


def _codebook(plans, bits, tolerance, keep):
    tables, scale_parts = [], [np.ones(1, np.float32)]  # scales[0] == 1: "no scale"
    table_offset, scale_offset = 0, 1
    # Largest tensors first keeps both workers busy; results keep archive order.
    order = sorted(range(len(plans)), key=lambda i: -plans[i][1].size)
    codings = dict(zip(order, parallel_map(lambda i: _code_one(plans[i], bits, tolerance, keep), order)))
    per_tensor = []
    for i in range(len(plans)):
        coding = codings[i]
        if coding is not None and "scales" in coding:
            coding["entry"]["scales"]["offset"] = scale_offset
            scale_parts.append(coding["scales"])
            scale_offset += coding["scales"].size
        if coding is not None:
            coding["entry"]["table"] = {"offset": table_offset, "size": int(coding["table"].size)}
            tables.append(coding["table"])
            table_offset += coding["table"].size
        per_tensor.append(coding)
    table = np.concatenate(tables) if tables else np.zeros(0, np.float32)
    scales = np.concatenate(scale_parts)
    return per_tensor, {"kind": "codebook"}, [table.reshape(-1, 1), scales.reshape(-1, 1)]


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
    per_tensor = [
        None if c is None else {"codes": c, "values": table[c], "entry": {"quantizer": "grid"}} for c in per_codes
    ]
    section = {"kind": "mlp", "activation": mlp.ACTIVATION, "grid": {"min": lo, "max": hi}}
    return per_tensor, section, params
