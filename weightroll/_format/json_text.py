"""JSON as the format writes and reads it (spec §3): canonical bytes out, strict parsing in."""

import json
import math

from weightroll._format import limits, rules
from weightroll.errors import ArchiveError, LimitError, short


def dumps(obj):
    """Canonical JSON bytes: sorted keys, fixed separators, ASCII, no NaN."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _JsonRefused(f"has the key '{short(key)}' twice; keys must be unique")
        obj[key] = value
    return obj


class _JsonRefused(Exception):
    """Raised inside the JSON parser's hooks; `loads` turns it into an ArchiveError."""


def _reject_constant(name):
    raise _JsonRefused(f"holds {name}, which the format does not allow")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise _JsonRefused(f"holds the number {short(text)}, which is not finite as a binary64")
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
        raise ArchiveError(f"{what} is not valid JSON ({short(str(e), 120)}).", rule=rule) from None
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


def finite_or_none(x):
    """A float for JSON: finite values as-is, anything else as None."""
    x = float(x)
    return x if math.isfinite(x) else None
