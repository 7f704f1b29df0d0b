"""Decode an open archive's tensors with numpy, each checked against its digest.

The codebook decoder is table look-ups and per-channel scales; the paper's
MLP decoder is evaluated once on every code (`mlp_decoder.evaluate`).
"""

import numpy as np

from weightroll._format import rules
from weightroll._format import manifest as mf
from weightroll._format.digest import coding_sha256, reference_key, tensor_digest
from weightroll._format.mlp_decoder import evaluate as evaluate_mlp
from weightroll.errors import ArchiveError, short


def lookup_tables(archive):
    """`(table, scales)`: the float32 value of every table index, and the scales.

    For `"codebook"` these are stored; for `"mlp"` the table is the network
    evaluated on every code (the numpy fast path) and there are no scales.
    """
    decoder = archive.manifest["decoder"]
    arrays = archive.decoder_arrays()
    if decoder["kind"] == "codebook":
        table, scales = arrays[0][:, 0], arrays[1][:, 0]
        if scales[0] != 1.0:
            raise ArchiveError(
                f"decoder.bin: scales[0] must be 1.0 (the reserved 'no scale' entry); received {scales[0]!r}.",
                rule=rules.SCALES_RESERVED,
            )
    else:
        with np.errstate(all="ignore"):  # overflow becomes inf, refused below
            table, scales = evaluate_mlp(arrays, decoder["bits"], decoder["activation"]), None
    if not np.all(np.isfinite(table)) or (scales is not None and not np.all(np.isfinite(scales))):
        raise ArchiveError("The pix-to-weight decoder yields non-finite weights; the archive is corrupt.",
                           rule=rules.NOT_FINITE)
    return table, scales


def _read_outliers(exact_bytes, entry, dtype, size):
    count = entry["outliers"]["count"]
    start = entry["outliers"]["offset"]
    index = np.frombuffer(exact_bytes, dtype="<i8", count=count, offset=start).astype(np.int64)
    values = np.frombuffer(exact_bytes, dtype=dtype.newbyteorder("<"), count=count, offset=start + 8 * count)
    if count and (index[0] < 0 or index[-1] >= size or np.any(np.diff(index) <= 0)):
        raise ArchiveError(
            f"Tensor '{short(entry['path'])}' has outlier indices that are not strictly increasing "
            f"within [0, {size}).",
            rule=rules.OUTLIER_INDICES,
        )
    return index, values.astype(dtype)


def coding_digest(entry, codes, table, scales, exact_bytes):
    """A coded tensor's `coding_sha256` (spec §7.5), from its manifest entry
    and the archive's codes, decoder arrays and exact bytes."""
    scaled, start, t = entry.get("scales"), entry["codes"]["offset"], entry["table"]
    outliers = b""
    if "outliers" in entry:
        o = entry["outliers"]
        outliers = memoryview(exact_bytes)[o["offset"]: o["offset"] + o["count"] * (8 + np.dtype(entry["dtype"]).itemsize)]
    return coding_sha256(
        entry["dtype"], entry["shape"], scaled["axis"] if scaled else None,
        codes[start: start + entry["codes"]["count"]], table[t["offset"]: t["offset"] + t["size"]],
        scales[scaled["offset"]: scaled["offset"] + scaled["count"]] if scaled else None, outliers)


def decode_tensor(entry, codes, table, scales, exact_bytes, kind):
    """Decode one tensor described by its (validated) manifest entry."""
    with np.errstate(all="ignore"):  # float16 overflow is defined (§7.1): inf, no warning
        return _decode_tensor(entry, codes, table, scales, exact_bytes, kind)


_DECODE_BLOCK = 1 << 16


def _decode_tensor(entry, codes, table, scales, exact_bytes, kind):
    dtype = np.dtype(entry["dtype"])
    shape = entry["shape"]
    if entry["storage"] == "exact":
        start, size = entry["bytes"]["offset"], entry["bytes"]["size"]
        array = np.frombuffer(exact_bytes, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize,
                              offset=start)
        if dtype == np.bool_ and np.any(array.view(np.uint8) > 1):
            raise ArchiveError(
                f"Tensor '{short(entry['path'])}' is bool but its bytes in '{mf.EXACT_MEMBER}' hold "
                "values other than 0x00 and 0x01.",
                rule=rules.BOOL_BYTES,
            )
        return array.astype(dtype).reshape(shape)
    span = codes[entry["codes"]["offset"]: entry["codes"]["offset"] + entry["codes"]["count"]]
    if kind == "codebook":
        offset, size = entry["table"]["offset"], entry["table"]["size"]
    else:
        offset, size = 0, table.size
    top = int(span.max()) if span.size else -1  # an empty tensor has no code to check
    if top >= size:
        raise ArchiveError(
            f"Tensor '{short(entry['path'])}' has code {top}, outside its {size}-entry table.",
            rule=rules.CODE_OUTSIDE_TABLE,
        )
    # Looked up a block at a time: np.take widens each code to an 8-byte
    # index, which for a whole tensor would be twice its float32 values.
    lookup, values = table[offset: offset + size], np.empty(span.size, table.dtype)
    for start in range(0, span.size, _DECODE_BLOCK):
        stop = start + _DECODE_BLOCK
        np.take(lookup, span[start:stop], out=values[start:stop], mode="clip")  # codes < size, checked
    values = values.reshape(shape)
    if "scales" in entry and kind == "codebook":
        s = entry["scales"]
        view = [1] * len(shape)
        view[s["axis"]] = s["count"]
        values *= scales[s["offset"]: s["offset"] + s["count"]].reshape(view)
    array = values.astype(dtype, copy=False)
    if "outliers" in entry:
        index, exact = _read_outliers(exact_bytes, entry, dtype, array.size)
        array.reshape(-1)[index] = exact
    return array


def base_index(arrays):
    """Index base tensors by `(dtype, shape, sha256)` for reference look-ups.

    Args:
        arrays: an iterable of numpy arrays, or a dict whose values are.
    """
    if isinstance(arrays, dict):
        arrays = arrays.values()
    index = {}
    for array in arrays:
        array = np.asarray(array)
        index.setdefault(reference_key(array), array)
    return index


def iter_decoded(archive, base=None, skip_references=False, check_values=False, progress=None):
    """Decode an open archive's tensors one at a time, each checked against its digest.

    A coded tensor with a `coding_sha256` (format 1.1) is checked by it: it
    covers everything the values are computed from, at a quarter of the
    bytes to hash. Every other tensor is checked by the SHA-256 of its values.

    Args:
        archive: an open `RolledArchive`.
        base: for archives that reference a base model's tensors, a dict
            from `base_index`.
        skip_references: leave referenced tensors out (then no base is needed).
        check_values: also check the values' SHA-256 of tensors that have a
            coding digest (what `inspect_wroll --verify` does).
        progress: optional `progress(values, path)`, called after each tensor.

    Yields:
        `(path, array)` in archive order, arrays of the recorded shape and dtype.
    """
    manifest = archive.manifest
    tensors = manifest["tensors"]
    kind = manifest["decoder"]["kind"]
    references = [t for t in tensors if t["storage"] == "reference"]
    if references and base is None and not skip_references:
        raise ArchiveError(
            f"This archive stores {len(references)} tensors as references to a base model "
            f"(e.g. '{short(references[0]['path'])}'); pass the base it was rolled against "
            "(`base=`) to load it.",
            rule=rules.REFERENCE,
        )
    archive.verify_members()  # every member's SHA-256, before any of them is used
    coded = any(t["storage"] == "coded" for t in tensors)
    codes = archive.codes() if coded else None
    table, scales = lookup_tables(archive) if coded else (None, None)
    has_exact = mf.EXACT_MEMBER in manifest["members"]
    exact_bytes = archive.member(mf.EXACT_MEMBER) if has_exact else b""
    for t in tensors:
        if t["storage"] == "reference":
            if skip_references:
                continue
            key = (t["dtype"], tuple(t["shape"]), t["sha256"])
            if key not in base:
                raise ArchiveError(
                    f"Tensor '{short(t['path'])}' references a base tensor ({t['dtype']} "
                    f"{short(t['shape'])}, SHA-256 {t['sha256'][:12]}...) that the given base does not "
                    "hold bit for bit; pass the exact base model the archive was rolled against.",
                    rule=rules.REFERENCE,
                )
            array = np.array(base[key], copy=True)
        else:
            array = decode_tensor(t, codes, table, scales, exact_bytes, kind)
            if "coding_sha256" in t and coding_digest(t, codes, table, scales, exact_bytes) != t["coding_sha256"]:
                raise ArchiveError(
                    f"Tensor '{short(t['path'])}': its codes, table, scales or outliers differ from those "
                    "recorded (coding_sha256) when it was rolled; the manifest or data was altered.",
                    rule=rules.CODING_DIGEST,
                )
            if ("coding_sha256" not in t or check_values) and tensor_digest(array) != t["sha256"]:
                raise ArchiveError(
                    f"Tensor '{short(t['path'])}' decodes to values whose SHA-256 differs from the "
                    "one recorded when it was rolled; the manifest or data was altered.",
                    rule=rules.TENSOR_DIGEST,
                )
        if progress is not None:
            progress(array.size, t["path"])
        yield t["path"], array


def decode(archive, base=None, progress=None):
    """Decode every tensor of an open archive and verify its digest.

    Returns:
        A dict mapping variable path to a numpy array of the recorded shape and dtype.
    """
    return dict(iter_decoded(archive, base, progress=progress))
