"""The manifest: what an archive holds and where, validated before use.

`validate()` checks types, ranges and internal consistency of a parsed
manifest, so that the decoding code after it can index arrays without
further checks. Every refusal is an `ArchiveError` (or `LimitError`,
`VersionError`) whose `rule` is the number of the rule it enforces in
"What a reader MUST reject" of `spec/wroll-v1.md` (`weightroll._format.rules`).
"""

import json
import math
import re

from weightroll._format import limits, rules
from weightroll.errors import ArchiveError, LimitError, VersionError

FORMAT_NAME = "wroll"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
# The lowest version a writer may label an archive without `coding_sha256`.
FORMAT_VERSION_1_0 = "1.0"

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
            raise _JsonRefused(f"has the key '{_short(key)}' twice; keys must be unique")
        obj[key] = value
    return obj


class _JsonRefused(Exception):
    """Raised inside the JSON parser's hooks; `loads` turns it into an ArchiveError."""


def _reject_constant(name):
    raise _JsonRefused(f"holds {name}, which the format does not allow")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise _JsonRefused(f"holds the number {_short(text)}, which is not finite as a binary64")
    return value


def loads(data, what, rule=rules.JSON_MEMBER):
    """Parse JSON bytes strictly: UTF-8 without a byte order mark, unique keys,
    finite numbers only, nested at most `MAX_JSON_DEPTH` deep.

    Args:
        data: the JSON bytes.
        what: how to name the member in messages, e.g. `"manifest.json"`.
        rule: the spec rule a refusal names. Defaults to the rule for the
            architecture and decoder configs; the manifest's is `MANIFEST_JSON`.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArchiveError(f"{what} is not UTF-8 text (byte {e.start}).", rule=rule) from None
    if text.startswith("\ufeff"):
        raise ArchiveError(f"{what} starts with a byte order mark; JSON text must not.", rule=rule)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _JsonRefused as e:
        raise ArchiveError(f"{what}: the JSON {e}.", rule=rule) from None
    except RecursionError:
        raise LimitError(
            f"{what} is nested too deeply to parse; at most {limits.MAX_JSON_DEPTH} levels are allowed.",
            rule=rule,
        ) from None
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ArchiveError(f"{what} is not valid JSON ({_short(str(e), 120)}).", rule=rule) from None
    depth = json_depth(value)
    if depth > limits.MAX_JSON_DEPTH:
        raise LimitError(
            f"{what} is nested {depth} levels deep; at most {limits.MAX_JSON_DEPTH} are allowed.",
            rule=rule,
        )
    return value


def json_depth(value):
    """How deeply containers nest in a parsed JSON value (a scalar is 0, `{}` is 1).

    Iterative, so that it cannot itself run out of stack.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


# --- typed field access -------------------------------------------------------


def _get(obj, key, kind, where, optional=False):
    if not isinstance(obj, dict):
        raise ArchiveError(f"manifest.json: {where} must be a JSON object.", rule=rules.FIELD_TYPE)
    if key not in obj:
        if optional:
            return None
        raise ArchiveError(f"manifest.json: {where} is missing the field '{key}'.", rule=rules.FIELD_TYPE)
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
            f"manifest.json: {where}.{key} must be of type {kind}; received {_json_type(value)}.",
            rule=rules.FIELD_TYPE,
        )
    return value


def _json_type(value):
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _get_count(obj, key, where, upper, rule):
    """A count `0 <= value <= upper`; above `upper`: `LimitError` for `rule`."""
    value = _get(obj, key, "int", where)
    if value < 0:
        raise ArchiveError(f"manifest.json: {where}.{key} must be >= 0; received {value}.",
                           rule=rules.FIELD_TYPE)
    if value > upper:
        raise LimitError(
            f"manifest.json: {where}.{key}={_short(value, 40)} exceeds the limit of {upper}.", rule=rule
        )
    return value


def _get_shape(obj, where):
    shape = _get(obj, "shape", "list", where)
    if len(shape) > limits.MAX_TENSOR_RANK:
        raise LimitError(
            f"manifest.json: {where}.shape has rank {len(shape)}; at most "
            f"{limits.MAX_TENSOR_RANK} is allowed.",
            rule=rules.SHAPE,
        )
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise ArchiveError(
            f"manifest.json: {where}.shape must hold non-negative integers; received {_short(shape)}.",
            rule=rules.SHAPE,
        )
    size = 1
    for dim in shape:
        size *= dim
    if max(shape, default=0) > limits.MAX_TENSOR_ELEMENTS or size > limits.MAX_TENSOR_ELEMENTS:
        raise LimitError(
            f"manifest.json: {where}.shape {_short(shape)} has more than "
            f"{limits.MAX_TENSOR_ELEMENTS} elements (or a dimension that long).",
            rule=rules.SHAPE,
        )
    return shape, size


def _is_digest(value):
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_version(manifest):
    """R3/R4: the format name and a major version this reader understands."""
    if not isinstance(manifest, dict):
        raise ArchiveError("manifest.json must hold a JSON object.", rule=rules.MANIFEST_JSON)
    if manifest.get("format") != FORMAT_NAME:
        raise ArchiveError(
            f"manifest.json: 'format' must be '{FORMAT_NAME}'; received "
            f"{_short(manifest.get('format'), 40)!r}. This is not a .wroll archive.",
            rule=rules.FORMAT_NAME,
        )
    version = manifest.get("format_version")
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ArchiveError(
            "manifest.json: 'format_version' must look like 'MAJOR.MINOR' (ASCII digits); "
            f"received {_short(version, 40)!r}.",
            rule=rules.FORMAT_VERSION,
        )
    major, minor = int(match[1]), int(match[2])
    if major != FORMAT_MAJOR:
        if major > FORMAT_MAJOR:
            producer = manifest.get("producer")
            writer = producer.get("version") if isinstance(producer, dict) else None
            hint = "Upgrade weightroll (pip install -U weightroll) to a release that reads it"
            if isinstance(writer, str) and producer.get("name") == "weightroll":
                hint += f": it was written by weightroll {_short(writer, 40)}, which does"
            hint += "."
        else:
            hint = "It predates the first published format."
        raise VersionError(
            f"This archive uses .wroll format {version}; this weightroll reads format "
            f"{FORMAT_MAJOR}.x only. {hint}",
            rule=rules.FORMAT_VERSION,
        )
    return major, minor


# Two runs of 1 to 6 ASCII digits ("1.0"); `str.isdigit` would also accept "١" and "²".
_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})", re.ASCII)


def validate(manifest, member_sizes):
    """Validate a parsed manifest against itself and the zip's member sizes (R3 to R21).

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
        raise ArchiveError(f"manifest.json: image.member must be '{IMAGE_MEMBER}'.", rule=rules.IMAGE_FIELDS)
    width = _get_count(image, "width", "image", limits.MAX_IMAGE_WIDTH, rules.IMAGE_FIELDS)
    height = _get_count(image, "height", "image", limits.MAX_PIXELS, rules.IMAGE_FIELDS)
    n_codes = _get_count(image, "codes", "image", limits.MAX_PIXELS, rules.IMAGE_FIELDS)
    if width < 1 or height < 1:
        raise ArchiveError(
            f"manifest.json: image is {width}x{height}; both must be >= 1 (an archive without "
            "codes has a 1x1 image).",
            rule=rules.IMAGE_FIELDS,
        )
    if width * height > limits.MAX_PIXELS:
        raise LimitError(
            f"manifest.json: image is {width}x{height}, more than {limits.MAX_PIXELS} pixels.",
            rule=rules.IMAGE_FIELDS,
        )
    if n_codes > width * height:
        raise ArchiveError(
            f"manifest.json: image.codes={n_codes} does not fit a {width}x{height} image.",
            rule=rules.IMAGE_FIELDS,
        )

    decoder = _get(manifest, "decoder", "dict", "manifest")
    kind = _get(decoder, "kind", "str", "decoder")
    if kind not in DECODER_KINDS:
        raise ArchiveError(
            f"manifest.json: decoder.kind must be one of {DECODER_KINDS}; received {_short(kind, 40)!r}.",
            rule=rules.DECODER_FIELDS,
        )
    bits = _get(decoder, "bits", "int", "decoder")
    if not 1 <= bits <= 8:
        raise ArchiveError(f"manifest.json: decoder.bits must be in 1..8; received {_short(bits, 40)}.",
                           rule=rules.DECODER_FIELDS)
    if _get(decoder, "weights_member", "str", "decoder") != DECODER_WEIGHTS_MEMBER:
        raise ArchiveError(f"manifest.json: decoder.weights_member must be '{DECODER_WEIGHTS_MEMBER}'.",
                           rule=rules.DECODER_FIELDS)
    table_size, scales_size = _check_decoder_weights(decoder, kind, members)
    if _get(decoder, "config_member", "str", "decoder") != DECODER_CONFIG_MEMBER:
        raise ArchiveError(f"manifest.json: decoder.config_member must be '{DECODER_CONFIG_MEMBER}'.",
                           rule=rules.DECODER_FIELDS)
    _get_count(decoder, "config_size", "decoder", limits.MAX_ARCHITECTURE_BYTES, rules.DECODER_FIELDS)

    architecture = _get(manifest, "architecture", "dict", "manifest")
    if _get(architecture, "member", "str", "architecture") != ARCHITECTURE_MEMBER:
        raise ArchiveError(f"manifest.json: architecture.member must be '{ARCHITECTURE_MEMBER}'.",
                           rule=rules.ARCHITECTURE_FIELDS)
    _get_count(architecture, "size", "architecture", limits.MAX_ARCHITECTURE_BYTES, rules.ARCHITECTURE_FIELDS)

    for required in REQUIRED_MEMBERS:
        if required not in members:
            raise ArchiveError(f"manifest.json: members must list the required member '{required}'.",
                               rule=rules.REQUIRED_MEMBERS)

    _check_tensors(manifest, kind, n_codes, table_size, scales_size, members)
    return manifest


REQUIRED_MEMBERS = (IMAGE_MEMBER, DECODER_CONFIG_MEMBER, DECODER_WEIGHTS_MEMBER, ARCHITECTURE_MEMBER)
# Byte offsets and member sizes: far beyond any file, small enough for any int64.
_MAX_OFFSET = 1 << 62


def _check_members(members, member_sizes):
    """R5/R6: listed members and zip members are the same set, sizes agree."""
    for name in member_sizes:
        if name not in members:
            raise ArchiveError(
                f"The zip holds a member '{_short(name)}' that manifest.json does not list; "
                "every member must be listed with its checksum.",
                rule=rules.UNLISTED_MEMBER,
            )
    for name, entry in members.items():
        where = f"members['{_short(name)}']"
        size = _get_count(entry, "size", where, _MAX_OFFSET, rules.MEMBER_ENTRY)
        digest = _get(entry, "sha256", "str", where)
        if not _is_digest(digest):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.",
                               rule=rules.MEMBER_ENTRY)
        if name not in member_sizes:
            raise ArchiveError(f"The archive lacks the member '{_short(name)}' that manifest.json lists.",
                               rule=rules.MEMBER_ENTRY)
        if member_sizes[name] != size:
            raise ArchiveError(
                f"Member '{_short(name)}' is {member_sizes[name]} bytes, but manifest.json "
                f"records {size}.",
                rule=rules.MEMBER_ENTRY,
            )


def _check_decoder_weights(decoder, kind, members):
    """R9: the decoder's weight arrays tile decoder.bin; returns `(N, M)`, the
    sizes of a codebook's table and scales (`(0, 0)` for an MLP)."""
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
            raise ArchiveError(
                f"manifest.json: {where}.dtype must be float32 or float64; received {_short(dtype, 20)!r}.",
                rule=rules.DECODER_FIELDS,
            )
        offset = _get_count(entry, "offset", where, _MAX_OFFSET, rules.DECODER_FIELDS)
        if offset != end:
            raise ArchiveError(f"manifest.json: {where}.offset must be {end} (arrays are packed in order).",
                               rule=rules.DECODER_FIELDS)
        end = offset + size * (4 if dtype == "float32" else 8)
        shapes.append((shape, dtype))
        if end > total:
            break  # reported below, before any shape is trusted
    if end != total:
        at_least = "at least " if len(shapes) < len(arrays) else ""
        raise ArchiveError(
            f"manifest.json: the decoder weights take {at_least}{end} bytes but '{DECODER_WEIGHTS_MEMBER}' "
            f"is {total}.",
            rule=rules.DECODER_FIELDS,
        )
    if kind == "codebook":
        if len(shapes) != 2 or any(len(sh) != 2 or sh[1] != 1 or dt != "float32" for sh, dt in shapes) \
                or shapes[1][0][0] < 1:
            raise ArchiveError(
                "manifest.json: a codebook decoder has two float32 arrays, the table [N, 1] "
                "and the scales [M, 1] with M >= 1.",
                rule=rules.DECODER_FIELDS,
            )
        return shapes[0][0][0], shapes[1][0][0]
    # mlp: (kernel, bias) pairs chaining 1 -> hidden... -> 1, float64.
    activation = _get(decoder, "activation", "str", "decoder")
    if activation not in MLP_ACTIVATIONS:
        raise ArchiveError(f"manifest.json: decoder.activation must be one of {MLP_ACTIVATIONS}.",
                           rule=rules.DECODER_FIELDS)
    if len(shapes) % 2 or not 2 <= len(shapes) <= 2 * limits.MAX_MLP_LAYERS:
        raise ArchiveError(
            f"manifest.json: an mlp decoder holds 1 to {limits.MAX_MLP_LAYERS} (kernel, bias) pairs; "
            f"received {len(shapes)} arrays.",
            rule=rules.DECODER_FIELDS,
        )
    fan_in = 1
    for k in range(0, len(shapes), 2):
        (kshape, kdtype), (bshape, bdtype) = shapes[k], shapes[k + 1]
        if kdtype != "float64" or bdtype != "float64":
            raise ArchiveError("manifest.json: mlp decoder weights must be float64.", rule=rules.DECODER_FIELDS)
        last = k == len(shapes) - 2
        if len(kshape) != 2 or kshape[0] != fan_in or bshape != [kshape[1]] or (last and kshape[1] != 1):
            raise ArchiveError(
                f"manifest.json: mlp layer {k // 2} has kernel {_short(kshape)} and bias {_short(bshape)}; "
                f"expected kernel [{fan_in}, units] and bias [units], ending in 1 unit.",
                rule=rules.DECODER_FIELDS,
            )
        if kshape[1] > limits.MAX_MLP_UNITS:
            raise LimitError(f"manifest.json: mlp layer {k // 2} has more than {limits.MAX_MLP_UNITS} units.",
                             rule=rules.DECODER_FIELDS)
        fan_in = kshape[1]
    return 0, 0


def itemsize(dtype):
    """Bytes per element of one of `EXACT_DTYPES` (`bool` is one byte)."""
    return 1 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit())) // 8



def _check_tensors(manifest, kind, n_codes, table_size, scales_size, members):
    """R12 to R21, and the sum of R13."""
    tensors = _get(manifest, "tensors", "list", "manifest")
    exact_size = members[EXACT_MEMBER]["size"] if EXACT_MEMBER in members else 0
    seen = set()
    total = 0
    code_ranges, byte_ranges = [], []
    for i, entry in enumerate(tensors):
        where = f"tensors[{i}]"
        path = _get(entry, "path", "str", where)
        if path in seen:
            raise ArchiveError(f"manifest.json: tensor path '{_short(path)}' appears twice.",
                               rule=rules.TENSOR_PATH)
        seen.add(path)
        where = f"tensor '{_short(path)}'"
        shape, size = _get_shape(entry, where)
        total += size
        if total > limits.MAX_TENSOR_ELEMENTS:
            raise LimitError(
                f"manifest.json: the tensors up to {where} hold more than {limits.MAX_TENSOR_ELEMENTS} "
                "elements in all.",
                rule=rules.SHAPE,
            )
        dtype = _get(entry, "dtype", "str", where)
        if not _is_digest(_get(entry, "sha256", "str", where)):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.",
                               rule=rules.TENSOR_SHA256_FIELD)
        storage = _get(entry, "storage", "str", where)
        coding_digest = _get(entry, "coding_sha256", "str", where, optional=True)
        if coding_digest is not None and not (_is_digest(coding_digest) and storage == "coded"
                                              and kind == "codebook"):
            raise ArchiveError(
                f"manifest.json: {where}.coding_sha256 must be 64 lowercase hex digits, on a coded "
                "tensor of a codebook archive only.",
                rule=rules.TENSOR_SHA256_FIELD,
            )
        if storage == "coded":
            if dtype not in CODED_DTYPES:
                raise ArchiveError(
                    f"manifest.json: {where} is coded but has dtype {_short(dtype, 20)!r}; coded tensors "
                    f"are {CODED_DTYPES}.",
                    rule=rules.STORAGE_DTYPE,
                )
            code_ranges.append(_check_codes(entry, where, path, size, n_codes))
            if kind == "codebook":
                _check_table(entry, where, size, table_size)
                _check_scales(entry, where, shape, scales_size)
            else:
                for field, rule in (("table", rules.TABLE_RANGE), ("scales", rules.SCALES_RANGE)):
                    if field in entry:
                        raise ArchiveError(
                            f"manifest.json: {where} has '{field}', but an mlp decoder has no "
                            f"{field}; the field would be ignored, so it must be absent.",
                            rule=rule,
                        )
            outliers = _get(entry, "outliers", "dict", where, optional=True)
            if outliers is not None:
                o_off = _get_count(outliers, "offset", where + ".outliers", _MAX_OFFSET, rules.OUTLIERS_RANGE)
                o_count = _get_count(outliers, "count", where + ".outliers", limits.MAX_TENSOR_ELEMENTS,
                                     rules.OUTLIERS_RANGE)
                o_size = o_count * (8 + itemsize(dtype))
                if o_count > size or o_off + o_size > exact_size:
                    raise ArchiveError(
                        f"manifest.json: {where} has {o_count} outliers at bytes [{o_off}, {o_off + o_size}) "
                        f"of '{EXACT_MEMBER}' ({exact_size} bytes, tensor of {size} values).",
                        rule=rules.OUTLIERS_RANGE,
                    )
                byte_ranges.append((o_off, o_off + o_size, path))
        elif storage == "exact":
            if dtype not in EXACT_DTYPES:
                raise ArchiveError(f"manifest.json: {where} has unsupported dtype {_short(dtype, 20)!r}.",
                                   rule=rules.STORAGE_DTYPE)
            span = _get(entry, "bytes", "dict", where)
            offset = _get_count(span, "offset", where + ".bytes", _MAX_OFFSET, rules.EXACT_RANGE)
            nbytes = _get_count(span, "size", where + ".bytes", _MAX_OFFSET, rules.EXACT_RANGE)
            if nbytes != size * itemsize(dtype):
                raise ArchiveError(
                    f"manifest.json: {where} is {_short(shape)} {dtype} ({size * itemsize(dtype)} bytes) "
                    f"but records {nbytes} bytes.",
                    rule=rules.EXACT_RANGE,
                )
            if offset + nbytes > exact_size:
                raise ArchiveError(
                    f"manifest.json: {where} needs bytes [{offset}, {offset + nbytes}) of '{EXACT_MEMBER}', "
                    f"which is {exact_size} bytes.",
                    rule=rules.EXACT_RANGE,
                )
            byte_ranges.append((offset, offset + nbytes, path))
        elif storage == "reference":
            if dtype not in EXACT_DTYPES:
                raise ArchiveError(f"manifest.json: {where} has unsupported dtype {_short(dtype, 20)!r}.",
                                   rule=rules.STORAGE_DTYPE)
        else:
            raise ArchiveError(
                f"manifest.json: {where}.storage must be 'coded', 'exact' or 'reference'; "
                f"received {_short(storage, 20)!r}.",
                rule=rules.STORAGE_DTYPE,
            )
    _check_disjoint(code_ranges, "codes")
    _check_disjoint(byte_ranges, f"'{EXACT_MEMBER}' bytes")


def _check_codes(entry, where, path, size, n_codes):
    """R16: the coded tensor's codes; returns its range."""
    codes = _get(entry, "codes", "dict", where)
    offset = _get_count(codes, "offset", where + ".codes", limits.MAX_PIXELS, rules.CODE_RANGE)
    count = _get_count(codes, "count", where + ".codes", limits.MAX_PIXELS, rules.CODE_RANGE)
    if count != size:
        raise ArchiveError(f"manifest.json: {where} has {size} values but {count} codes.",
                           rule=rules.CODE_RANGE)
    if offset + count > n_codes:
        raise ArchiveError(
            f"manifest.json: {where} needs {count} codes at offset {offset}, but the image holds "
            f"{n_codes} codes.",
            rule=rules.CODE_RANGE,
        )
    return offset, offset + count, path


def _check_table(entry, where, count, table_size):
    """R17: a codebook tensor's table entries."""
    table = _get(entry, "table", "dict", where)
    t_off = _get_count(table, "offset", where + ".table", limits.MAX_TENSOR_ELEMENTS, rules.TABLE_RANGE)
    t_size = _get_count(table, "size", where + ".table", limits.MAX_TENSOR_ELEMENTS, rules.TABLE_RANGE)
    if t_size > 256 or t_off + t_size > table_size or (count and t_size == 0):
        raise ArchiveError(
            f"manifest.json: {where} uses table entries [{t_off}, {t_off + t_size}) but the "
            f"decoder table has {table_size} entries (and a tensor with codes 1 to 256 of them).",
            rule=rules.TABLE_RANGE,
        )


def _check_scales(entry, where, shape, scales_size):
    """R18: a codebook tensor's optional scales."""
    scales = _get(entry, "scales", "dict", where, optional=True)
    if scales is None:
        return
    s_off = _get_count(scales, "offset", where + ".scales", limits.MAX_TENSOR_ELEMENTS, rules.SCALES_RANGE)
    s_count = _get_count(scales, "count", where + ".scales", limits.MAX_TENSOR_ELEMENTS, rules.SCALES_RANGE)
    axis = _get_count(scales, "axis", where + ".scales", limits.MAX_TENSOR_RANK, rules.SCALES_RANGE)
    if axis >= len(shape) or s_count != shape[axis]:
        raise ArchiveError(
            f"manifest.json: {where} has scales along axis {axis} with {s_count} entries, "
            f"which does not match its shape {_short(shape)}.",
            rule=rules.SCALES_RANGE,
        )
    if s_off < 1 or s_off + s_count > scales_size:
        raise ArchiveError(
            f"manifest.json: {where} uses scales [{s_off}, {s_off + s_count}) but the decoder "
            f"has {scales_size} scales (index 0 is reserved).",
            rule=rules.SCALES_RANGE,
        )


def _check_disjoint(ranges, what):
    """R21: no two non-empty ranges share a code or a byte."""
    ranges = sorted(r for r in ranges if r[1] > r[0])
    for (s0, e0, p0), (s1, e1, p1) in zip(ranges, ranges[1:]):
        if s1 < e0:
            raise ArchiveError(
                f"manifest.json: tensors '{_short(p0)}' and '{_short(p1)}' overlap in their {what}.",
                rule=rules.OVERLAP,
            )


def _short(value, limit=80):
    """`value` as text safe to print in a message: printable, at most `limit` characters."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_or_none(x):
    """A float for JSON: finite values as-is, anything else as None."""
    x = float(x)
    return x if math.isfinite(x) else None
