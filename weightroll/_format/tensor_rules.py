"""The rules each entry of `tensors` must keep (spec R12 to R21): its path,
shape, dtype and digests, then the codes, table entries, scales, outliers
or exact bytes its storage kind points at, none of them shared with another
tensor."""

from weightroll._format import limits, rules
from weightroll._format.fields import MAX_OFFSET, get, get_count, get_shape, is_digest
from weightroll._format.digest import binding_sha256
from weightroll._format.schema import (CODED_DTYPES, CODED_INTEGER_DTYPES, EXACT_DTYPES, EXACT_MEMBER, TRELLIS_MAJOR,
                                      itemsize)
from weightroll.errors import ArchiveError, LimitError, short

class _Layout:
    """What the tensors are checked against, and the ranges they claim so far."""

    def __init__(self, major, kind, n_codes, table_size, scales_size, exact_size):
        self.major, self.kind, self.n_codes = major, kind, n_codes
        self.table_size, self.scales_size, self.exact_size = table_size, scales_size, exact_size
        self.code_ranges, self.byte_ranges = [], []


def check_tensors(manifest, major, kind, n_codes, table_size, scales_size, members):
    """R12 to R21 (and R40 from 2.0) for every entry of `manifest["tensors"]`, and the sum of R13."""
    tensors = get(manifest, "tensors", "list", "manifest")
    exact_size = members[EXACT_MEMBER]["size"] if EXACT_MEMBER in members else 0
    layout = _Layout(major, kind, n_codes, table_size, scales_size, exact_size)
    seen, keys, total = set(), set(), 0
    for i, entry in enumerate(tensors):
        path = get(entry, "path", "str", f"tensors[{i}]")
        if path in seen:
            raise ArchiveError(f"manifest.json: tensor path '{short(path)}' appears twice.",
                               rule=rules.TENSOR_PATH)
        seen.add(path)
        where = f"tensor '{short(path)}'"
        shape, size = get_shape(entry, where)
        total += size
        if total > limits.MAX_TENSOR_ELEMENTS:
            raise LimitError(
                f"manifest.json: the tensors up to {where} hold more than {limits.MAX_TENSOR_ELEMENTS} "
                "elements in all.",
                rule=rules.SHAPE,
            )
        dtype = get(entry, "dtype", "str", where)
        if not is_digest(get(entry, "sha256", "str", where)):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.",
                               rule=rules.TENSOR_SHA256_FIELD)
        storage = get(entry, "storage", "str", where)
        coding_digest = get(entry, "coding_sha256", "str", where, optional=True)
        if coding_digest is not None and not (is_digest(coding_digest) and storage == "coded"
                                              and kind == "codebook"):
            raise ArchiveError(
                f"manifest.json: {where}.coding_sha256 must be 64 lowercase hex digits, on a coded "
                "tensor of a codebook archive only.",
                rule=rules.TENSOR_SHA256_FIELD,
            )
        if major < TRELLIS_MAJOR:  # a field older versions do not define: ignored (§12)
            entry.pop("trellis", None)
        check = _STORAGE.get(storage)
        if check is None:
            raise ArchiveError(
                f"manifest.json: {where}.storage must be {_one_of(_STORAGE)}; "
                f"received {short(storage, 20)!r}.",
                rule=rules.STORAGE_DTYPE,
            )
        check(entry, where, path, dtype, shape, size, layout)
        if major >= 2:
            _check_binding(entry, where, keys)
    _check_disjoint(layout.code_ranges, "codes")
    _check_disjoint(layout.byte_ranges, f"'{EXACT_MEMBER}' bytes")


def _check_binding(entry, where, keys):
    """R40: a unique key, and the binding digest of the entry's names and digests."""
    key = get(entry, "key", "str", where)
    if not key or len(key) > 4096 or key in keys or not key.isprintable():
        raise ArchiveError(f"manifest.json: {where}.key {short(key)!r} must be 1 to 4096 printable "
                           "characters, unique in the archive.", rule=rules.BINDING)
    keys.add(key)
    if get(entry, "binding_sha256", "str", where) != binding_sha256(entry):
        raise ArchiveError(
            f"manifest.json: {where}.binding_sha256 does not match its key, path, dtype, shape, storage "
            "and digests: a name was moved onto other data, or the entry was altered.",
            rule=rules.BINDING,
        )


def _check_coded(entry, where, path, dtype, shape, size, layout):
    coded = CODED_DTYPES[layout.major]
    if dtype not in coded or (dtype in CODED_INTEGER_DTYPES and layout.kind != "codebook"):
        raise ArchiveError(
            f"manifest.json: {where} is coded but has dtype {short(dtype, 20)!r}; coded tensors "
            f"are {coded} (integers with a codebook decoder only).",
            rule=rules.STORAGE_DTYPE,
        )
    layout.code_ranges.append(_check_codes(entry, where, path, size, layout.n_codes))
    dependent = "trellis" in entry
    if dependent:
        _check_trellis(entry, where, layout.kind)
    if layout.kind == "codebook":
        _check_table(entry, where, size, layout.table_size, MAX_TRELLIS_TABLE if dependent else 256)
        if dtype in CODED_INTEGER_DTYPES and "scales" in entry:
            raise ArchiveError(f"manifest.json: {where} is {dtype}; an integer tensor has no scales.",
                               rule=rules.SCALES_RANGE)
        _check_scales(entry, where, shape, layout.scales_size)
    else:
        for field, rule in (("table", rules.TABLE_RANGE), ("scales", rules.SCALES_RANGE)):
            if field in entry:
                raise ArchiveError(
                    f"manifest.json: {where} has '{field}', but an mlp decoder has no "
                    f"{field}; the field would be ignored, so it must be absent.",
                    rule=rule,
                )
    outliers = get(entry, "outliers", "dict", where, optional=True)
    if outliers is not None:
        o_off = get_count(outliers, "offset", where + ".outliers", MAX_OFFSET, rules.OUTLIERS_RANGE)
        o_count = get_count(outliers, "count", where + ".outliers", limits.MAX_TENSOR_ELEMENTS,
                            rules.OUTLIERS_RANGE)
        o_size = o_count * (8 + itemsize(dtype))
        if o_count > size or o_off + o_size > layout.exact_size:
            raise ArchiveError(
                f"manifest.json: {where} has {o_count} outliers at bytes [{o_off}, {o_off + o_size}) "
                f"of '{EXACT_MEMBER}' ({layout.exact_size} bytes, tensor of {size} values).",
                rule=rules.OUTLIERS_RANGE,
            )
        layout.byte_ranges.append((o_off, o_off + o_size, path))


def _check_exact(entry, where, path, dtype, shape, size, layout):
    _check_exact_dtype(where, dtype, layout.major)
    span = get(entry, "bytes", "dict", where)
    offset = get_count(span, "offset", where + ".bytes", MAX_OFFSET, rules.EXACT_RANGE)
    nbytes = get_count(span, "size", where + ".bytes", MAX_OFFSET, rules.EXACT_RANGE)
    if nbytes != size * itemsize(dtype):
        raise ArchiveError(
            f"manifest.json: {where} is {short(shape)} {dtype} ({size * itemsize(dtype)} bytes) "
            f"but records {nbytes} bytes.",
            rule=rules.EXACT_RANGE,
        )
    if offset + nbytes > layout.exact_size:
        raise ArchiveError(
            f"manifest.json: {where} needs bytes [{offset}, {offset + nbytes}) of '{EXACT_MEMBER}', "
            f"which is {layout.exact_size} bytes.",
            rule=rules.EXACT_RANGE,
        )
    layout.byte_ranges.append((offset, offset + nbytes, path))


def _check_reference(entry, where, path, dtype, shape, size, layout):
    _check_exact_dtype(where, dtype, layout.major)


def _check_exact_dtype(where, dtype, major):
    if dtype not in EXACT_DTYPES[major]:
        raise ArchiveError(f"manifest.json: {where} has unsupported dtype {short(dtype, 20)!r}.",
                           rule=rules.STORAGE_DTYPE)


def _one_of(names):
    names = [f"'{n}'" for n in names]
    return ", ".join(names[:-1]) + " or " + names[-1]


# Each storage kind's own rules (spec §4.9), by the value of `storage`.
_STORAGE = {"coded": _check_coded, "exact": _check_exact, "reference": _check_reference}


def _check_codes(entry, where, path, size, n_codes):
    """R16: the coded tensor's codes; returns its range."""
    codes = get(entry, "codes", "dict", where)
    offset = get_count(codes, "offset", where + ".codes", limits.MAX_PIXELS, rules.CODE_RANGE)
    count = get_count(codes, "count", where + ".codes", limits.MAX_PIXELS, rules.CODE_RANGE)
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


def _check_table(entry, where, count, table_size, most):
    """R17: a codebook tensor's table entries, 1 to `most` of them."""
    table = get(entry, "table", "dict", where)
    t_off = get_count(table, "offset", where + ".table", limits.MAX_TENSOR_ELEMENTS, rules.TABLE_RANGE)
    t_size = get_count(table, "size", where + ".table", limits.MAX_TENSOR_ELEMENTS, rules.TABLE_RANGE)
    if t_size > most or t_off + t_size > table_size or (count and t_size == 0):
        raise ArchiveError(
            f"manifest.json: {where} uses table entries [{t_off}, {t_off + t_size}) but the "
            f"decoder table has {table_size} entries (and a tensor with codes 1 to {most} of them).",
            rule=rules.TABLE_RANGE,
        )


# A trellis-coded tensor's levels `k = code - zero` and its reconstruction
# levels `m` (|m| <= 2 |k| <= 510) index at most this many table entries.
MAX_TRELLIS_TABLE = 1021
MAX_SEGMENT = 1 << 16


def _check_trellis(entry, where, kind):
    """R45: the `trellis` field of a coded tensor of a codebook archive."""
    t = get(entry, "trellis", "dict", where)
    if kind != "codebook":
        raise ArchiveError(f"manifest.json: {where} has 'trellis', which only a codebook decoder defines.",
                           rule=rules.TRELLIS)
    for name, low, high in (("segment", 1, MAX_SEGMENT), ("zero", -255, 255), ("low", -510, 510)):
        value = get(t, name, "int", where + ".trellis")
        if not low <= value <= high:
            raise ArchiveError(f"manifest.json: {where}.trellis.{name} must be in [{low}, {high}]; "
                               f"received {short(value, 40)}.", rule=rules.TRELLIS)


def _check_scales(entry, where, shape, scales_size):
    """R18: a codebook tensor's optional scales."""
    scales = get(entry, "scales", "dict", where, optional=True)
    if scales is None:
        return
    s_off = get_count(scales, "offset", where + ".scales", limits.MAX_TENSOR_ELEMENTS, rules.SCALES_RANGE)
    s_count = get_count(scales, "count", where + ".scales", limits.MAX_TENSOR_ELEMENTS, rules.SCALES_RANGE)
    axis = get_count(scales, "axis", where + ".scales", limits.MAX_TENSOR_RANK, rules.SCALES_RANGE)
    if axis >= len(shape) or s_count != shape[axis]:
        raise ArchiveError(
            f"manifest.json: {where} has scales along axis {axis} with {s_count} entries, "
            f"which does not match its shape {short(shape)}.",
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
                f"manifest.json: tensors '{short(p0)}' and '{short(p1)}' overlap in their {what}.",
                rule=rules.OVERLAP,
            )
