"""The manifest: what an archive holds and where, validated before use.

`validate()` checks types, ranges and internal consistency of a parsed
manifest, so that the decoding code after it can index arrays without
further checks. The rule numbers in messages (R1, R2, ...) refer to
"What a reader MUST reject" in `spec/wroll-v1.md`.
"""

import json
import math

from weightroll._format import limits
from weightroll.errors import ArchiveError, LimitError, VersionError

FORMAT_NAME = "wroll"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"

MANIFEST_MEMBER = "manifest.json"
IMAGE_MEMBER = "weights.png"
DECODER_CONFIG_MEMBER = "decoder.json.zst"
DECODER_WEIGHTS_MEMBER = "decoder.bin"
ARCHITECTURE_MEMBER = "architecture.json.zst"
EXACT_MEMBER = "exact.bin"

CODED_DTYPES = ("float16", "float32", "float64")
EXACT_DTYPES = CODED_DTYPES + (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
)
DECODER_KINDS = ("codebook", "mlp")
MLP_ACTIVATIONS = ("relu",)  # tanh would depend on the platform's libm


def dumps(obj):
    """Canonical JSON bytes: sorted keys, fixed separators, ASCII, no NaN."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ArchiveError(f"JSON object has the key '{key}' twice; keys must be unique.")
        obj[key] = value
    return obj


def loads(data, what):
    """Parse JSON bytes strictly (UTF-8, unique keys, bounded depth)."""
    try:
        text = data.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError:
        raise ArchiveError(f"{what} is not UTF-8 text.") from None
    except RecursionError:
        raise LimitError(f"{what} is nested too deeply to parse.") from None
    except json.JSONDecodeError as e:
        raise ArchiveError(f"{what} is not valid JSON ({e}).") from None


def _reject_constant(name):
    raise ArchiveError(f"JSON holds {name}, which the format does not allow.")


# --- typed field access -------------------------------------------------------


def _get(obj, key, kind, where, optional=False):
    if not isinstance(obj, dict):
        raise ArchiveError(f"manifest.json: {where} must be a JSON object.")
    if key not in obj:
        if optional:
            return None
        raise ArchiveError(f"manifest.json: {where} is missing the field '{key}'.")
    value = obj[key]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise ArchiveError(
            f"manifest.json: {where}.{key} must be of type {kind}; received {type(value).__name__}."
        )
    return value


def _get_count(obj, key, where, upper=limits.MAX_TENSOR_ELEMENTS):
    value = _get(obj, key, "int", where)
    if value < 0:
        raise ArchiveError(f"manifest.json: {where}.{key} must be >= 0; received {value}.")
    if value > upper:
        raise LimitError(f"manifest.json: {where}.{key}={value} exceeds the limit of {upper}.")
    return value


def _get_shape(obj, where):
    shape = _get(obj, "shape", "list", where)
    if len(shape) > limits.MAX_TENSOR_RANK:
        raise LimitError(
            f"manifest.json: {where}.shape has rank {len(shape)}; at most "
            f"{limits.MAX_TENSOR_RANK} is allowed."
        )
    size = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ArchiveError(
                f"manifest.json: {where}.shape must hold non-negative integers; received {shape}."
            )
        size *= dim
        if size > limits.MAX_TENSOR_ELEMENTS:
            raise LimitError(
                f"manifest.json: {where}.shape {shape} has more than "
                f"{limits.MAX_TENSOR_ELEMENTS} elements."
            )
    return shape, size


def check_version(manifest):
    """R3/R4: the format name and a major version this reader understands."""
    if not isinstance(manifest, dict):
        raise ArchiveError("manifest.json must hold a JSON object.")
    if manifest.get("format") != FORMAT_NAME:
        raise ArchiveError(
            f"manifest.json: 'format' must be '{FORMAT_NAME}'; received "
            f"{str(manifest.get('format'))[:40]!r}. This is not a .wroll archive."
        )
    version = manifest.get("format_version")
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        raise ArchiveError(
            f"manifest.json: 'format_version' must look like 'MAJOR.MINOR'; received {str(version)[:40]!r}."
        )
    major = int(parts[0])
    if major != FORMAT_MAJOR:
        hint = (
            "Upgrade weightroll (pip install -U weightroll) to a release that reads it."
            if major > FORMAT_MAJOR
            else "It predates the first published format."
        )
        raise VersionError(
            f"This archive uses .wroll format {version}; this weightroll reads format "
            f"{FORMAT_MAJOR}.x only. {hint}"
        )
    return major, int(parts[1])


def validate(manifest, member_sizes):
    """Validate a parsed manifest against itself and the zip's member sizes.

    Args:
        manifest: the parsed `manifest.json`.
        member_sizes: dict of zip member name to size, excluding the manifest.

    Returns:
        The manifest, unchanged, once every rule holds.
    """
    check_version(manifest)
    members = _get(manifest, "members", "dict", "manifest")
    _check_members(members, member_sizes)

    image = _get(manifest, "image", "dict", "manifest")
    if _get(image, "member", "str", "image") != IMAGE_MEMBER:
        raise ArchiveError(f"manifest.json: image.member must be '{IMAGE_MEMBER}'.")
    width = _get_count(image, "width", "image", limits.MAX_IMAGE_WIDTH)
    height = _get_count(image, "height", "image", limits.MAX_PIXELS)
    n_codes = _get_count(image, "codes", "image", limits.MAX_PIXELS)
    if width < 1 or height < 1 or width * height > limits.MAX_PIXELS:
        raise LimitError(f"manifest.json: image is {width}x{height}; both must be >= 1 and within limits.")
    if n_codes > width * height:
        raise ArchiveError(
            f"manifest.json: image.codes={n_codes} does not fit a {width}x{height} image."
        )

    decoder = _get(manifest, "decoder", "dict", "manifest")
    kind = _get(decoder, "kind", "str", "decoder")
    if kind not in DECODER_KINDS:
        raise ArchiveError(
            f"manifest.json: decoder.kind must be one of {DECODER_KINDS}; received {kind[:40]!r}."
        )
    bits = _get(decoder, "bits", "int", "decoder")
    if not 1 <= bits <= 8:
        raise ArchiveError(f"manifest.json: decoder.bits must be in 1..8; received {bits}.")
    table_size, scales_size = _check_decoder_weights(decoder, kind, members)
    if _get(decoder, "config_member", "str", "decoder") != DECODER_CONFIG_MEMBER:
        raise ArchiveError(f"manifest.json: decoder.config_member must be '{DECODER_CONFIG_MEMBER}'.")
    _get_count(decoder, "config_size", "decoder", limits.MAX_ARCHITECTURE_BYTES)

    architecture = _get(manifest, "architecture", "dict", "manifest")
    if _get(architecture, "member", "str", "architecture") != ARCHITECTURE_MEMBER:
        raise ArchiveError(f"manifest.json: architecture.member must be '{ARCHITECTURE_MEMBER}'.")
    _get_count(architecture, "size", "architecture", limits.MAX_ARCHITECTURE_BYTES)

    for required in (IMAGE_MEMBER, DECODER_CONFIG_MEMBER, DECODER_WEIGHTS_MEMBER, ARCHITECTURE_MEMBER):
        if required not in members:
            raise ArchiveError(f"manifest.json: members must list the required member '{required}'.")

    _check_tensors(manifest, kind, bits, n_codes, table_size, scales_size, members)
    return manifest


def _check_members(members, member_sizes):
    """R5/R6: listed members and zip members are the same set, sizes agree."""
    for name in member_sizes:
        if name not in members:
            raise ArchiveError(
                f"The zip holds a member '{_short(name)}' that manifest.json does not list; "
                "every member must be listed with its checksum."
            )
    for name, entry in members.items():
        where = f"members['{_short(name)}']"
        size = _get_count(entry, "size", where, 1 << 62)
        digest = _get(entry, "sha256", "str", where)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.")
        if name not in member_sizes:
            raise ArchiveError(f"The archive lacks the member '{_short(name)}' that manifest.json lists.")
        if member_sizes[name] != size:
            raise ArchiveError(
                f"Member '{_short(name)}' is {member_sizes[name]} bytes, but manifest.json "
                f"records {size}."
            )


def _check_decoder_weights(decoder, kind, members):
    """The decoder's weight arrays tile decoder.bin; returns the table size."""
    arrays = _get(decoder, "weights", "list", "decoder")
    total = members[DECODER_WEIGHTS_MEMBER]["size"] if DECODER_WEIGHTS_MEMBER in members else 0
    end = 0
    shapes = []
    for i, entry in enumerate(arrays):
        where = f"decoder.weights[{i}]"
        _get(entry, "name", "str", where)
        shape, size = _get_shape(entry, where)
        dtype = _get(entry, "dtype", "str", where)
        if dtype not in ("float32", "float64"):
            raise ArchiveError(f"manifest.json: {where}.dtype must be float32 or float64; received {dtype[:20]!r}.")
        offset = _get_count(entry, "offset", where, 1 << 62)
        if offset != end:
            raise ArchiveError(f"manifest.json: {where}.offset must be {end} (arrays are packed in order).")
        end = offset + size * (4 if dtype == "float32" else 8)
        shapes.append((shape, dtype))
    if end != total:
        raise ArchiveError(
            f"manifest.json: the decoder weights take {end} bytes but '{DECODER_WEIGHTS_MEMBER}' is {total}."
        )
    if kind == "codebook":
        if len(shapes) != 2 or any(len(sh) != 2 or sh[1] != 1 or dt != "float32" for sh, dt in shapes) \
                or shapes[1][0][0] < 1:
            raise ArchiveError(
                "manifest.json: a codebook decoder has two float32 arrays, the table [N, 1] "
                "and the scales [M, 1] with M >= 1."
            )
        return shapes[0][0][0], shapes[1][0][0]
    # mlp: (kernel, bias) pairs chaining 1 -> hidden... -> 1, float64.
    activation = _get(decoder, "activation", "str", "decoder")
    if activation not in MLP_ACTIVATIONS:
        raise ArchiveError(f"manifest.json: decoder.activation must be one of {MLP_ACTIVATIONS}.")
    if len(shapes) % 2 or not 2 <= len(shapes) <= 2 * limits.MAX_MLP_LAYERS:
        raise ArchiveError("manifest.json: an mlp decoder holds 1 to 8 (kernel, bias) pairs.")
    fan_in = 1
    for k in range(0, len(shapes), 2):
        (kshape, kdtype), (bshape, bdtype) = shapes[k], shapes[k + 1]
        if kdtype != "float64" or bdtype != "float64":
            raise ArchiveError("manifest.json: mlp decoder weights must be float64.")
        last = k == len(shapes) - 2
        if len(kshape) != 2 or kshape[0] != fan_in or bshape != [kshape[1]] or (last and kshape[1] != 1):
            raise ArchiveError(
                f"manifest.json: mlp layer {k // 2} has kernel {kshape} and bias {bshape}; "
                f"expected kernel [{fan_in}, units] and bias [units], ending in 1 unit."
            )
        if kshape[1] > limits.MAX_MLP_UNITS:
            raise LimitError(f"manifest.json: mlp layer {k // 2} has more than {limits.MAX_MLP_UNITS} units.")
        fan_in = kshape[1]
    return 0, 0


def _itemsize(dtype):
    return 1 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit())) // 8


def _check_tensors(manifest, kind, bits, n_codes, table_size, scales_size, members):
    tensors = _get(manifest, "tensors", "list", "manifest")
    exact_size = members[EXACT_MEMBER]["size"] if EXACT_MEMBER in members else 0
    seen = set()
    code_ranges, byte_ranges = [], []
    for i, entry in enumerate(tensors):
        where = f"tensors[{i}]"
        path = _get(entry, "path", "str", where)
        if path in seen:
            raise ArchiveError(f"manifest.json: tensor path '{_short(path)}' appears twice.")
        seen.add(path)
        where = f"tensor '{_short(path)}'"
        shape, size = _get_shape(entry, where)
        dtype = _get(entry, "dtype", "str", where)
        digest = _get(entry, "sha256", "str", where)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.")
        storage = _get(entry, "storage", "str", where)
        if storage == "coded":
            if dtype not in CODED_DTYPES:
                raise ArchiveError(f"manifest.json: {where} is coded but has dtype {dtype[:20]!r}; coded tensors are {CODED_DTYPES}.")
            codes = _get(entry, "codes", "dict", where)
            offset = _get_count(codes, "offset", where + ".codes", limits.MAX_PIXELS)
            count = _get_count(codes, "count", where + ".codes", limits.MAX_PIXELS)
            if count != size:
                raise ArchiveError(f"manifest.json: {where} has shape {shape} ({size} values) but {count} codes.")
            if offset + count > n_codes:
                raise ArchiveError(
                    f"manifest.json: {where} needs {count} codes at offset {offset}, but the image holds {n_codes} codes."
                )
            code_ranges.append((offset, offset + count, path))
            if kind == "codebook":
                table = _get(entry, "table", "dict", where)
                t_off = _get_count(table, "offset", where + ".table")
                t_size = _get_count(table, "size", where + ".table")
                if t_size > 256 or t_off + t_size > table_size or (count and t_size == 0):
                    raise ArchiveError(
                        f"manifest.json: {where} uses table entries [{t_off}, {t_off + t_size}) but the "
                        f"decoder table has {table_size} entries (and a tensor at most 256)."
                    )
                scales = _get(entry, "scales", "dict", where, optional=True)
                if scales is not None:
                    s_off = _get_count(scales, "offset", where + ".scales")
                    s_count = _get_count(scales, "count", where + ".scales")
                    axis = _get_count(scales, "axis", where + ".scales", limits.MAX_TENSOR_RANK)
                    if axis >= len(shape) or s_count != shape[axis]:
                        raise ArchiveError(
                            f"manifest.json: {where} has scales along axis {axis} with {s_count} entries, "
                            f"which does not match its shape {shape}."
                        )
                    if s_off < 1 or s_off + s_count > scales_size:
                        raise ArchiveError(
                            f"manifest.json: {where} uses scales [{s_off}, {s_off + s_count}) but the decoder "
                            f"has {scales_size} scales (index 0 is reserved)."
                        )
            outliers = _get(entry, "outliers", "dict", where, optional=True)
            if outliers is not None:
                o_off = _get_count(outliers, "offset", where + ".outliers", 1 << 62)
                o_count = _get_count(outliers, "count", where + ".outliers")
                o_size = o_count * (8 + _itemsize(dtype))
                if o_count > size or o_off + o_size > exact_size:
                    raise ArchiveError(
                        f"manifest.json: {where} has {o_count} outliers at bytes [{o_off}, {o_off + o_size}) "
                        f"of '{EXACT_MEMBER}' ({exact_size} bytes, tensor of {size} values)."
                    )
                byte_ranges.append((o_off, o_off + o_size, path))
        elif storage == "exact":
            if dtype not in EXACT_DTYPES:
                raise ArchiveError(f"manifest.json: {where} has unsupported dtype {dtype[:20]!r}.")
            span = _get(entry, "bytes", "dict", where)
            offset = _get_count(span, "offset", where + ".bytes", 1 << 62)
            nbytes = _get_count(span, "size", where + ".bytes", 1 << 62)
            itemsize = _itemsize(dtype)
            if nbytes != size * itemsize:
                raise ArchiveError(f"manifest.json: {where} is {shape} {dtype} ({size * itemsize} bytes) but records {nbytes} bytes.")
            if offset + nbytes > exact_size:
                raise ArchiveError(
                    f"manifest.json: {where} needs bytes [{offset}, {offset + nbytes}) of '{EXACT_MEMBER}', "
                    f"which is {exact_size} bytes."
                )
            byte_ranges.append((offset, offset + nbytes, path))
        elif storage == "reference":
            if dtype not in EXACT_DTYPES:
                raise ArchiveError(f"manifest.json: {where} has unsupported dtype {dtype[:20]!r}.")
        else:
            raise ArchiveError(
                f"manifest.json: {where}.storage must be 'coded', 'exact' or 'reference'; "
                f"received {storage[:20]!r}."
            )
    _check_disjoint(code_ranges, "codes")
    _check_disjoint(byte_ranges, f"'{EXACT_MEMBER}' bytes")


def _check_disjoint(ranges, what):
    ranges = sorted(r for r in ranges if r[1] > r[0])
    for (s0, e0, p0), (s1, e1, p1) in zip(ranges, ranges[1:]):
        if s1 < e0:
            raise ArchiveError(
                f"manifest.json: tensors '{_short(p0)}' and '{_short(p1)}' overlap in their {what}."
            )


def _short(text):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= 80 else text[:77] + "..."


def finite_or_none(x):
    """A float for JSON: finite values as-is, anything else as None."""
    x = float(x)
    return x if math.isfinite(x) else None
