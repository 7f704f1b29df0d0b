"""Decode an open archive's tensors with numpy, each checked against its digest.

The codebook decoder is table look-ups and per-channel scales; the paper's
MLP decoder is evaluated once on every code (`mlp_decoder.evaluate`).
"""

import numpy as np

from weightroll._format import rules
from weightroll._format import manifest as mf
from weightroll._format.digest import coding_sha256, reference_key, tensor_digest
from weightroll._format.mlp_decoder import evaluate as evaluate_mlp
from weightroll._format.schema import CODED_INTEGER_DTYPES, itemsize, numpy_dtype
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
        outliers = memoryview(exact_bytes)[o["offset"]: o["offset"] + o["count"] * (8 + itemsize(entry["dtype"]))]
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
    dtype = numpy_dtype(entry["dtype"])
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
    if entry["dtype"] in CODED_INTEGER_DTYPES:
        _check_integer_table(entry, lookup, dtype)
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


def _check_integer_table(entry, lookup, dtype):
    """R42: a coded integer tensor's table holds integers its dtype can hold,
    so that the cast back is exact."""
    info = np.iinfo(dtype)
    if np.any(lookup != np.round(lookup)) or np.any(lookup < info.min) or np.any(lookup > info.max):
        raise ArchiveError(
            f"Tensor '{short(entry['path'])}' is {entry['dtype']} but its table holds values that are "
            f"not integers in [{info.min}, {info.max}].",
            rule=rules.INTEGER_TABLE,
        )


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


class TensorDecoder:
    """Decodes an open archive's tensors on demand, each checked against its digests.

    Every member's SHA-256 is checked first; then the codes, the decoder's
    tables and the exact bytes are read once, and `decode(entry)` gives one
    tensor at a time, in any order (a loader asks by key).

    Args:
        archive: an open `RolledArchive`.
        base: for archives that reference a base model's tensors, a dict
            from `base_index`; None when `skip_references` or none are needed.
        skip_references: referenced tensors will not be asked for.
        check_values: also check the values' SHA-256 of tensors that have a
            coding digest (what `inspect_wroll --verify` does).
    """

    def __init__(self, archive, base=None, skip_references=False, check_values=False):
        manifest = archive.manifest
        self.entries = manifest["tensors"]
        self._kind = manifest["decoder"]["kind"]
        self._base, self._check_values = base, check_values
        references = [t for t in self.entries if t["storage"] == "reference"]
        if references and base is None and not skip_references:
            raise ArchiveError(
                f"This archive stores {len(references)} tensors as references to a base model "
                f"(e.g. '{short(references[0]['path'])}'); pass the base it was rolled against "
                "(`base=`) to load it.",
                rule=rules.REFERENCE,
            )
        archive.verify_members()  # every member's SHA-256, before any of them is used
        coded = any(t["storage"] == "coded" for t in self.entries)
        self._codes = archive.codes() if coded else None
        self._table, self._scales = lookup_tables(archive) if coded else (None, None)
        has_exact = mf.EXACT_MEMBER in manifest["members"]
        self._exact = archive.member(mf.EXACT_MEMBER) if has_exact else b""

    def decode(self, t):
        """The array of tensor entry `t`, of its recorded shape and dtype."""
        if t["storage"] == "reference":
            key = (t["dtype"], tuple(t["shape"]), t["sha256"])
            if self._base is None or key not in self._base:
                raise ArchiveError(
                    f"Tensor '{short(t['path'])}' references a base tensor ({t['dtype']} "
                    f"{short(t['shape'])}, SHA-256 {t['sha256'][:12]}...) that the given base does not "
                    "hold bit for bit; pass the exact base model the archive was rolled against.",
                    rule=rules.REFERENCE,
                )
            return np.array(self._base[key], copy=True)
        codes, table, scales, exact = self._codes, self._table, self._scales, self._exact
        array = decode_tensor(t, codes, table, scales, exact, self._kind)
        if "coding_sha256" in t and coding_digest(t, codes, table, scales, exact) != t["coding_sha256"]:
            raise ArchiveError(
                f"Tensor '{short(t['path'])}': its codes, table, scales or outliers differ from those "
                "recorded (coding_sha256) when it was rolled; the manifest or data was altered.",
                rule=rules.CODING_DIGEST,
            )
        if ("coding_sha256" not in t or self._check_values) and tensor_digest(array) != t["sha256"]:
            raise ArchiveError(
                f"Tensor '{short(t['path'])}' decodes to values whose SHA-256 differs from the "
                "one recorded when it was rolled; the manifest or data was altered.",
                rule=rules.TENSOR_DIGEST,
            )
        return array

    def close(self):
        pass


class ShardedDecoder:
    """`TensorDecoder` over a sharded archive's shards (spec §4.13): the
    entries of every shard, in index order, each decoded by its own shard's
    decoder (a shard's codes are read when its first tensor is asked for)."""

    def __init__(self, index, base=None, skip_references=False, check_values=False):
        from weightroll._format.shards import ShardSet

        self._shards = ShardSet(index)
        self._options = (base, skip_references, check_values)
        self._decoders = {}
        self.entries = self._shards.entries
        self._position = {id(entry): i for i, entry in enumerate(self.entries)}

    def decode(self, t):
        shard = self._shards.owner(self._position[id(t)])
        decoder = self._decoders.get(id(shard))
        if decoder is None:
            decoder = self._decoders[id(shard)] = TensorDecoder(shard, *self._options)
        return decoder.decode(t)

    def close(self):
        self._decoders = {}
        self._shards.close()


def decoder_for(archive, base=None, skip_references=False, check_values=False):
    """A `TensorDecoder`, or a `ShardedDecoder` for a sharded archive's index."""
    if archive.manifest.get("shards"):
        return ShardedDecoder(archive, base, skip_references, check_values)
    return TensorDecoder(archive, base, skip_references, check_values)


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
    decoder = decoder_for(archive, base, skip_references, check_values)
    try:
        for t in decoder.entries:
            if t["storage"] == "reference" and skip_references:
                continue
            array = decoder.decode(t)
            if progress is not None:
                progress(array.size, t["path"])
            yield t["path"], array
    finally:
        decoder.close()


def decode(archive, base=None, progress=None):
    """Decode every tensor of an open archive and verify its digest.

    Returns:
        A dict mapping variable path to a numpy array of the recorded shape and dtype.
    """
    return dict(iter_decoded(archive, base, progress=progress))
