"""Typed access to a parsed manifest's fields: a field of the wrong type, a
negative count or one past its limit is refused, naming the field."""

from weightroll._format import limits, rules
from weightroll.errors import ArchiveError, LimitError, short

# Byte offsets and member sizes: far beyond any file, small enough for any int64.
MAX_OFFSET = 1 << 62


def get(obj, key, kind, where, optional=False):
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


def get_count(obj, key, where, upper, rule):
    """A count `0 <= value <= upper`; above `upper`: `LimitError` for `rule`."""
    value = get(obj, key, "int", where)
    if value < 0:
        raise ArchiveError(f"manifest.json: {where}.{key} must be >= 0; received {value}.",
                           rule=rules.FIELD_TYPE)
    if value > upper:
        raise LimitError(
            f"manifest.json: {where}.{key}={short(value, 40)} exceeds the limit of {upper}.", rule=rule
        )
    return value


def get_shape(obj, where):
    shape = get(obj, "shape", "list", where)
    if len(shape) > limits.MAX_TENSOR_RANK:
        raise LimitError(
            f"manifest.json: {where}.shape has rank {len(shape)}; at most "
            f"{limits.MAX_TENSOR_RANK} is allowed.",
            rule=rules.SHAPE,
        )
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise ArchiveError(
            f"manifest.json: {where}.shape must hold non-negative integers; received {short(shape)}.",
            rule=rules.SHAPE,
        )
    size = 1
    for dim in shape:
        size *= dim
    if max(shape, default=0) > limits.MAX_TENSOR_ELEMENTS or size > limits.MAX_TENSOR_ELEMENTS:
        raise LimitError(
            f"manifest.json: {where}.shape {short(shape)} has more than "
            f"{limits.MAX_TENSOR_ELEMENTS} elements (or a dimension that long).",
            rule=rules.SHAPE,
        )
    return shape, size


def is_digest(value):
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
