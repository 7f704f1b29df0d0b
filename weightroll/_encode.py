"""Turn named numpy tensors into codes, a decoder and exact bytes.

Numpy only: this module knows nothing of Keras or of the zip container.
"""

import dataclasses
import math

import numpy as np

from weightroll import _progress, report
from weightroll._entropy import bits_per_code
from weightroll._format import manifest as mf
from weightroll._format.digest import coding_sha256, little_endian_bytes, reference_key, tensor_digest  # noqa: F401
from weightroll._format.pixels import Pixels
from weightroll._parallel import parallel_map
from weightroll.coders import codebook, error, mlp, select, uniform
from weightroll.errors import WrollError

DECODERS = mf.DECODER_KINDS

# Named quality presets. Without calibration data, each is a budget of
# relative RMSE over the weight matrices that `spread_tolerance` shares out
# by size (vectors get the value itself) ...
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
# No tensor's share of a preset's budget exceeds this many times the preset's
# value (`spread_tolerance`).
SPREAD_CAP = 2.0
_FLOATS = ("float16", "float32", "float64", "bfloat16")


def spread_tolerance(named_tensors, tolerance, exclude=()):
    """Share a preset's error budget among tensors, at the fewest bits.

    Each weight matrix (a floating-point tensor of rank 2 or more: kernels,
    embeddings, convolution filters) perturbs its layer's output by about
    its own relative RMSE. Taking those perturbations to reach the outputs
    with equal gains, independently, the matrices' total is the sum of their
    squared relative errors, `m * tolerance**2` for `m` matrices each coded at
    `tolerance`. Uniform codes cost `-log2(t)` bits per value plus a constant
    that does not depend on `t`, so that budget costs the fewest bits when
    each matrix's squared tolerance is proportional to its number of values:
    large matrices get more than `tolerance`, small ones less. No matrix gets
    more than `SPREAD_CAP * tolerance` (the capped ones' excess goes to the
    others), so that no single layer (the output layer, whose error reaches
    the outputs undamped) takes much more than the preset. Vectors (biases,
    normalisation scales) and tensors in `exclude` keep `tolerance`.

    Measured (no data; `benchmarks/bench_real.py`'s held-out inputs),
    against `tolerance` on every tensor: MTCNN R-Net 8.50 -> 7.29 bits per
    value with output error 0.0087 -> 0.0064, O-Net 7.60 -> 6.52 bits with
    0.0051 -> 0.0041; the digits CNN 7.57 -> 7.01 bits with 0.0018 -> 0.0011.

    Args:
        named_tensors: `(path, tensor)` pairs, tensors as `encode` takes them.
        tolerance: the preset's relative RMSE.
        exclude: paths that keep `tolerance` and take no share (lossless ones).

    Returns:
        A dict path -> tolerance.
    """
    out = {path: tolerance for path, _ in named_tensors}
    sizes = {}
    for path, source in named_tensors:
        shape, dtype = tensor_shape(source), tensor_dtype(source)
        if path not in exclude and len(shape) >= 2 and dtype in _FLOATS and math.prod(shape) > 0:
            sizes[path] = math.prod(shape)
    if not sizes or tolerance <= 0:
        return out
    # Water-filling with a ceiling: t_i**2 = k * n_i, capped at (cap * t)**2;
    # capping some matrices leaves more of the budget to share among the rest.
    ceiling = (SPREAD_CAP * tolerance) ** 2
    budget, capped = len(sizes) * tolerance ** 2, set()
    while True:
        free = [n for path, n in sizes.items() if path not in capped]
        k = (budget - len(capped) * ceiling) / sum(free)
        more = {path for path, n in sizes.items() if path not in capped and k * n > ceiling}
        if not more:
            break
        capped |= more
    for path, n in sizes.items():
        out[path] = SPREAD_CAP * tolerance if path in capped else math.sqrt(k * n)
    return out


@dataclasses.dataclass
class Encoded:
    """Everything the archive needs about the weights, before serialisation."""

    tensors: list  # manifest entries, without "error"
    codes: Pixels  # uint8, all coded tensors' codes in image order
    decoder: dict  # manifest "decoder" section, without member names
    decoder_arrays: list  # numpy arrays, packed into decoder.bin(.zst) in order
    exact_bytes: bytes
    decoded: dict  # path -> decoded numpy array (empty unless asked to keep them)
    stats: dict  # path -> report.tensor_error's (error, squared error, squared norm)


def _dtype_name(array, path):
    name = array.dtype.name
    if name not in mf.EXACT_DTYPES[mf.FORMAT_MAJOR]:
        raise WrollError(
            f"Variable '{path}' has dtype {name}, which .wroll cannot store. Supported dtypes: "
            f"{', '.join(mf.EXACT_DTYPES[mf.FORMAT_MAJOR])}. Cast the variable to one of them before rolling."
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
    preset = decoder == "codebook" and bits is None and tolerance is None
    bits, tolerance = resolve_quality(decoder, bits, tolerance, quality)
    if bits is not None:
        return {"bits": bits}
    settings = {"tolerance": tolerance if not isinstance(tolerance, dict) else "per-tensor"}
    if preset:  # a budget, shared out by `spread_tolerance`
        settings.update(quality=quality or DEFAULT_PRESET, spread=SPREAD_CAP)
    return settings


@dataclasses.dataclass
class Lazy:
    """A tensor read only when its turn to be coded comes (a model's variable,
    say), so that rolling never holds a copy of every tensor at once.

    Attributes:
        size: the number of values.
        read: a function of no arguments returning the tensor as numpy.
        shape: the tensor's shape.
        dtype: the name of the tensor's dtype.
    """

    size: int
    read: object
    shape: tuple = ()
    dtype: str = None


def read_tensor(source):
    """A tensor given to `encode`, as a numpy array."""
    return np.asarray(source.read() if isinstance(source, Lazy) else source)


def tensor_size(source):
    return source.size if isinstance(source, Lazy) else np.asarray(source).size


def tensor_shape(source):
    return tuple(source.shape) if isinstance(source, Lazy) else np.shape(source)


def tensor_dtype(source):
    return source.dtype if isinstance(source, Lazy) else np.asarray(source).dtype.name


def encode(named_tensors, decoder="codebook", bits=None, tolerance=None, quality=None, seed=0, lossless=(),
           base_keys=None, keep_decoded=True, dependent=True):
    """Quantise and code tensors.

    Args:
        named_tensors: sequence of `(path, tensor)` in archive order, each
            tensor a numpy array or a `Lazy` one.
        decoder: `"codebook"` (table look-up, the default) or `"mlp"` (the
            paper's global grid and regression MLP).
        bits: fixed code width, 1 to 8: per-tensor k-means codebooks of at
            most `2**bits` entries (or the paper's grid for `"mlp"`).
        tolerance: largest relative RMSE per coded tensor; the cheapest code
            meeting it is chosen per tensor. A float, or a dict path -> float
            or path -> `uniform.UniformCode` (a tensor coded beforehand, as
            rate-distortion allocation does; used as given).
        quality: a preset name from `PRESETS`, mapped to a tolerance
            (the default when neither `bits` nor `tolerance` is given),
            which `spread_tolerance` shares out among the tensors.
        seed: seed of the MLP fit (ignored by `"codebook"`).
        base_keys: optional set of `reference_key`s of a base model's tensors;
            a tensor bit-identical to one of them is stored as a reference.
        lossless: paths of tensors stored without loss whatever the other
            options say (an optimizer's state, for an exact resume).
        keep_decoded: keep every decoded tensor in `Encoded.decoded` (to run
            the rolled model); without it, each is dropped once its digest and
            error are recorded.
        dependent: whether trellis codes may be chosen (format 4.0; writers
            of older versions turn them off).

    Returns:
        An `Encoded`.
    """
    preset = decoder == "codebook" and bits is None and tolerance is None
    bits, tolerance = resolve_quality(decoder, bits, tolerance, quality)
    named = list(named_tensors)
    if preset:  # lossless tensors and a base's (stored as references) take no share
        tolerance = spread_tolerance(named, tolerance, exclude=set(lossless) | _references(named, base_keys))
    if decoder == "mlp":
        results, section, arrays = _mlp(named, bits, seed, base_keys, keep_decoded)
    else:
        results = [None] * len(named)

        def run(batch):
            for i in batch:
                path = named[i][0]
                results[i] = _encode_one(*named[i], None if path in lossless else bits,
                                         0.0 if path in lossless else tolerance, base_keys, keep_decoded, dependent)

        parallel_map(run, _batches([tensor_size(t) for _, t in named]))
        section, arrays = _codebook_tables(results)
    return _assemble(results, dict(section, bits=bits if bits is not None else 8), arrays)


def _references(named_tensors, base_keys):
    """Paths of the tensors that will be stored as references to `base_keys`
    (hashing only those whose dtype and shape some base tensor has)."""
    if not base_keys:
        return set()
    kinds = {key[:2] for key in base_keys}
    found = set()
    for path, source in named_tensors:
        shape = tuple(int(d) for d in tensor_shape(source))
        if (tensor_dtype(source), shape) in kinds and reference_key(read_tensor(source)) in base_keys:
            found.add(path)
    return found


# Tensors below this many values are coded in batches of about this many
# values, each batch on one thread: their numpy calls are too short to gain
# from threads, and threads contending for the GIL make them slower.
_SMALL = 1 << 20


def _batches(sizes):
    """Tensor indices grouped into tasks, largest first (which keeps the
    workers busy): each large tensor alone, small ones together."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    tasks, batch, total = [], [], 0
    for i in order:
        if sizes[i] >= _SMALL:
            tasks.append([i])
            continue
        batch.append(i)
        total += sizes[i]
        if total >= _SMALL:
            tasks.append(batch)
            batch, total = [], 0
    if batch:
        tasks.append(batch)
    return tasks


def _storage(path, array, base_keys):
    """`(storage, digest)`: "reference" (with the tensor's SHA-256) for a base
    tensor, "coded" for one that codes may hold (finite floats, see
    `_codable`), else "exact"."""
    dtype = _dtype_name(array, path)
    if base_keys and array.size:
        key = reference_key(array)
        if key in base_keys:
            return "reference", key[2]
    if dtype in mf.CODED_DTYPES[mf.FORMAT_MAJOR] and array.size > 0 and _codable(array):
        return "coded", None
    return "exact", None


def _codable(array):
    """Whether codes can hold a float tensor: no NaN or infinity, and a sum
    of squares that float32 arithmetic can hold (the coder measures its
    error in float32; weights beyond ~1e19 are stored exactly). BLAS dot
    products with no temporary for float32 and float64; 16-bit floats are
    made float32 a chunk at a time."""
    flat = array.reshape(-1)
    if flat.dtype in (np.float32, np.float64):
        chunks = [flat]
    else:
        chunks = (flat[start: start + _CODABLE_CHUNK].astype(np.float32)
                  for start in range(0, flat.size, _CODABLE_CHUNK))
    total = np.float32(0)
    with np.errstate(over="ignore", invalid="ignore"):
        for chunk in chunks:
            total = np.float32(total + np.float32(np.dot(chunk, chunk)))
        return bool(np.isfinite(total))


_CODABLE_CHUNK = 1 << 20


def _encode_one(path, source, bits, tolerance, base_keys, keep, dependent=True):
    """Read, code and measure one tensor; what the archive needs of it."""
    array = read_tensor(source)
    storage, digest = _storage(path, array, base_keys)
    coding = _code(path, array, bits, tolerance, keep, dependent) if storage == "coded" else None
    if storage == "coded" and coding is None:
        storage = "exact"  # coding does not pay
    return _result(path, array, storage, coding, keep, digest=digest)


def _result(path, array, storage, coding, keep, digest=None):
    """One tensor's manifest fields, bytes, digest and error, without the
    tensor itself unless `keep`: decoded values for a coded tensor, its
    outliers' bytes, or an exact tensor's bytes."""
    result = {"path": path, "shape": [int(d) for d in array.shape], "dtype": array.dtype.name,
              "storage": storage}
    if storage == "coded":
        values, values_digest = coding.pop("values"), coding.pop("sha256", None)
        # Decoded float32 values come with their digest, outliers restored.
        out = None if values is None else np.asarray(values, dtype=array.dtype).reshape(array.shape)
        index = coding.pop("outliers", None)
        if index is not None and index.size:
            if values_digest is None:
                out.reshape(-1)[index] = array.reshape(-1)[index]
            result["outliers"] = (int(index.size), little_endian_bytes(index.astype(np.int64)) +
                                  little_endian_bytes(array.reshape(-1)[index]))
        result["sha256"] = values_digest or tensor_digest(out)
        measured = coding.pop("measured", None)
        if coding.pop("exact", False):  # a lossless code decodes to the values themselves
            result["stats"] = report.exact_error(array)
        elif measured is not None:  # measured on these very values (as stored: select.choose)
            result["stats"] = report.error_from_sums(measured.sq_err, measured.sq_ref, measured.max_abs)
        else:
            result["stats"] = report.tensor_error(array, out)
        if coding.get("entropy_bits") is None:  # for the layout
            coding["entropy_bits"] = bits_per_code(coding["codes"])
        if "table" in coding:  # a codebook's tensor: its coding digest (spec §7.5), here on its worker
            axis = coding["entry"]["scales"]["axis"] if "scales" in coding["entry"] else None
            coding["entry"]["coding_sha256"] = coding_sha256(
                array.dtype.name, array.shape, axis, coding["codes"], coding["table"], coding.get("scales"),
                result["outliers"][1] if "outliers" in result else b"", coding["entry"].get("trellis"))
        result["coding"] = coding
    else:
        if storage == "exact":
            result["raw"] = little_endian_bytes(array)
        result["sha256"] = digest or tensor_digest(array)
        result["stats"] = report.exact_error(array)
        out = array
    result["out"] = out if keep else None
    _progress.advance(array.size, path)
    return result


def _assemble(results, section, arrays):
    entries, codes_parts, exact_parts, decoded, stats = [], [], [], {}, {}
    byte_offset = 0
    for i, result in enumerate(results):
        results[i] = None  # let each tensor's data go once used
        path = result["path"]
        entry = {key: result[key] for key in ("path", "shape", "dtype", "storage", "sha256")}
        if result["storage"] == "exact":
            entry["bytes"] = {"offset": byte_offset, "size": len(result["raw"])}
            exact_parts.append(result["raw"])
            byte_offset += len(result["raw"])
        elif result["storage"] == "coded":
            coding = result["coding"]
            entry["codes"] = {"offset": None, "count": int(coding["codes"].size)}  # set by _lay_out
            entry.update(coding["entry"])
            codes_parts.append((entry, coding["codes"], coding["entropy_bits"]))
            if "outliers" in result:
                count, raw = result["outliers"]
                entry["outliers"] = {"offset": byte_offset, "count": count}
                exact_parts.append(raw)
                byte_offset += len(raw)
        stats[path] = result["stats"]
        if result["out"] is not None:
            decoded[path] = result["out"]
        entries.append(entry)
    codes = _lay_out(codes_parts)
    return Encoded(entries, codes, section, arrays, b"".join(exact_parts), decoded, stats)


def _lay_out(parts):
    """Order tensors' codes in the image, setting each entry's offset: the
    image's `Pixels`, the codes' own arrays in that order (not joined).

    Tensors whose codes have similar statistics sit together (ordered by code
    entropy, in tenths of a bit, then archive order): deflate adapts its
    Huffman tables block by block, so neighbours alike code tighter.
    """
    order = sorted(range(len(parts)), key=lambda i: (-round(parts[i][2], 1), i))
    offset = 0
    for i in order:
        entry, codes, _ = parts[i]
        entry["codes"]["offset"] = offset
        offset += codes.size
    return Pixels([parts[i][1] for i in order])


def _code(path, array, bits, tolerance, keep=True, dependent=True):
    """A codable tensor's coding, or None to store it exactly. Without `keep`
    a float32 tensor's uniform code holds no decoded values ("values" is
    None), only their digest ("sha256")."""
    if array.dtype.kind in "iu":  # integers (a quantized kernel) are only ever coded losslessly
        bits, tolerance = None, 0.0
    if bits is not None:
        if not codebook_pays(array.size, array.dtype.itemsize, bits):
            return None
        table, codes = codebook.fit_codebook(array, bits)
        return {"table": table, "codes": codes, "values": table[codes], "entry": {"quantizer": "kmeans"}}
    tol = tolerance.get(path, 0.0) if isinstance(tolerance, dict) else tolerance
    if isinstance(tol, uniform.UniformCode):  # coded beforehand (rate-distortion allocation)
        if tol.codes.size != array.size:
            raise WrollError(f"The code given for '{path}' has {tol.codes.size} values; the tensor has {array.size}.")
        choice = select.Choice("uniform", select.uniform_bytes(tol), tol)
    else:
        # The decoded values are hashed as they are made, float32 ones and
        # 16-bit floats (rounded as stored): others are digested in their own
        # dtype once cast back.
        in_place = array.dtype == np.float32 or array.dtype.name in error.SIXTEEN_BIT_FLOATS
        choice = select.choose(array, tol, array.dtype.itemsize, keep_decoded=keep or not in_place,
                               digest=in_place, dependent=dependent)
    if choice.kind == "lossless":
        table, codes, bits = choice.code
        return {"table": table, "codes": codes, "values": table[codes], "entropy_bits": bits, "exact": True,
                "entry": {"quantizer": "lossless"}}
    if choice.kind == "uniform":
        code = choice.code
        coding = {"table": code.table, "codes": code.codes,
                  "values": None if code.decoded is None else code.decoded.reshape(-1),
                  "sha256": code.sha256, "outliers": code.outlier_index, "measured": choice.measured,
                  "entropy_bits": code.entropy_bits,
                  "entry": {"quantizer": "uniform", "step": float(code.step)}}
        if code.trellis is not None:
            coding["entry"].update(quantizer="trellis", trellis=dict(code.trellis))
        if code.scales is not None:
            coding["scales"] = code.scales
            coding["entry"]["scales"] = {"axis": int(code.axis), "count": int(code.scales.size)}
        return coding
    return None


def _codebook_tables(results):
    """Place every coded tensor's table and scales in the decoder's two arrays."""
    tables, scale_parts = [], [np.ones(1, np.float32)]  # scales[0] == 1: "no scale"
    table_offset, scale_offset = 0, 1
    for result in results:
        coding = result.get("coding")
        if coding is None:
            continue
        if "scales" in coding:
            coding["entry"]["scales"]["offset"] = scale_offset
            scale_parts.append(coding.pop("scales"))
            scale_offset += scale_parts[-1].size
        coding["entry"]["table"] = {"offset": table_offset, "size": int(coding["table"].size)}
        tables.append(coding.pop("table"))
        table_offset += tables[-1].size
    table = np.concatenate(tables) if tables else np.zeros(0, np.float32)
    scales = np.concatenate(scale_parts)
    return {"kind": "codebook"}, [table.reshape(-1, 1), scales.reshape(-1, 1)]


def _mlp(named, bits, seed, base_keys, keep):
    """The paper's method: one min-max grid for all coded tensors and one MLP
    fitted to all their values (so every tensor is read first)."""
    plans = []  # (path, array, storage)
    for path, source in named:
        array = read_tensor(source)
        plans.append((path, array, _storage(path, array, base_keys)[0]))
    coded = [array for _, array, storage in plans if storage == "coded"]
    if coded:
        lo = min(float(a.min()) for a in coded)
        hi = max(float(a.max()) for a in coded)
    else:
        lo = hi = 0.0
    per_codes = [mlp.grid_codes(a, lo, hi, bits) if storage == "coded" else None for _, a, storage in plans]
    if coded:
        all_codes = np.concatenate([c for c in per_codes if c is not None])
        all_values = np.concatenate([a.reshape(-1).astype(np.float64) for a in coded])
        params = mlp.fit(all_codes, all_values, bits, seed=seed)
    else:
        params = mlp.fit(np.zeros(1, np.uint8), np.zeros(1), bits, seed=seed)
    table = mlp.evaluate(params, bits)
    results = [
        _result(path, array, storage, None if c is None else
                {"codes": c, "values": table[c], "entry": {"quantizer": "grid"}}, keep)
        for (path, array, storage), c in zip(plans, per_codes)
    ]
    section = {"kind": "mlp", "activation": mlp.ACTIVATION, "grid": {"min": lo, "max": hi}}
    return results, section, params
