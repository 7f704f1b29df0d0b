"""Decode an open archive's tensors with numpy, each checked against its digest.

The codebook decoder is table look-ups and per-channel scales; the paper's
MLP decoder is evaluated once on every code (`mlp_decoder.evaluate`).
"""

import itertools

import numpy as np

from weightroll._format import rules
from weightroll._format import manifest as mf
from weightroll._format.digest import coding_sha256, reference_key, tensor_digest
from weightroll._format.mlp_decoder import evaluate as evaluate_mlp
from weightroll._parallel import parallel_map
from weightroll._format.schema import CODED_INTEGER_DTYPES, itemsize, numpy_dtype
from weightroll.coders import trellis  # the codec's own decoding step (its state machine)
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
        scales[scaled["offset"]: scaled["offset"] + scaled["count"]] if scaled else None, outliers,
        entry.get("trellis"))


def decode_tensor(entry, codes, table, scales, exact_bytes, kind):
    """Decode one tensor described by its (validated) manifest entry."""
    job = _Job(entry, codes, table, scales, exact_bytes, kind)
    for part in job.parts:
        job.fill(part)
    return job.finish()


# Values a part of a coded tensor holds (1 MiB of float32): parts share a
# big tensor between the cores, and each part is scaled and cast while it
# is still in cache.
_PART_VALUES = 1 << 18


class _Job:
    """One tensor's decoding: `fill(part)` for each of `parts` (in any order,
    on any thread), then `finish()` gives the array.

    A coded tensor's values are written straight into the array it returns,
    a part at a time: looked up, scaled, then cast to its dtype (through a
    part-sized float buffer where that dtype is not the table's). Each value
    goes through the same float operations as when the whole tensor was
    looked up, scaled and cast at once, so the bits are the same.
    """

    def __init__(self, entry, codes, table, scales, exact_bytes, kind):
        self.entry, self.exact_bytes, self.parts = entry, exact_bytes, []
        dtype, shape = numpy_dtype(entry["dtype"]), entry["shape"]
        self.dtype = dtype
        if entry["storage"] == "exact":
            self.array = _exact(entry, exact_bytes, dtype, shape)
            return
        span = codes[entry["codes"]["offset"]: entry["codes"]["offset"] + entry["codes"]["count"]]
        if kind == "codebook":
            offset, size = entry["table"]["offset"], entry["table"]["size"]
        else:
            offset, size = 0, table.size
        # Trellis codes: the table index depends on the codes before (§6.2); each part
        # works it out (and checks it) from the start of its first segment.
        self.trellis = entry.get("trellis") if kind == "codebook" else None
        top = -1 if self.trellis is not None or not span.size else int(span.max())  # an empty tensor has none
        if top >= size:
            raise ArchiveError(
                f"Tensor '{short(entry['path'])}' has code {top}, outside its {size}-entry table.",
                rule=rules.CODE_OUTSIDE_TABLE,
            )
        self.span, self.lookup = span, table[offset: offset + size]
        if entry["dtype"] in CODED_INTEGER_DTYPES:
            _check_integer_table(entry, self.lookup, dtype)
        self.scales, self.axis = None, None
        if "scales" in entry and kind == "codebook":
            s = entry["scales"]
            self.scales, self.axis = scales[s["offset"]: s["offset"] + s["count"]], s["axis"]
        self.shape = tuple(shape) or (1,)  # a scalar is decoded as one value
        self.array = _aligned_empty(self.shape, dtype)
        self.parts = _parts(self.shape)

    def fill(self, part):
        """Decode one part: `(prefix, first, stop)`, the values whose indices
        start with `prefix`, then lie in `[first, stop)` on the next axis."""
        prefix, first, stop = part
        depth = len(prefix)
        inner = int(np.prod(self.shape[depth + 1:], dtype=np.int64))
        start = (int(np.ravel_multi_index(prefix, self.shape[:depth])) * self.shape[depth] if depth else 0) + first
        begin, end = start * inner, (start + stop - first) * inner
        flat = self.array.reshape(-1)[begin:end]
        values = flat if flat.dtype == self.lookup.dtype else np.empty(end - begin, self.lookup.dtype)
        if self.trellis is None:
            trellis.lookup(self.span[begin:end], self.lookup, values)  # codes < size, checked
        else:
            lead = begin % self.trellis["segment"]
            if trellis.lookup(self.span[begin - lead: end], self.lookup, values, self.trellis, lead):
                self._refuse_trellis(begin, end)
        with np.errstate(all="ignore"):  # float16 overflow is defined (§7.1): inf, no warning
            if self.scales is not None:
                box = (stop - first, *self.shape[depth + 1:])
                values.reshape(box)[...] *= self._scale_view(prefix, first, stop)
            if values is not flat:
                np.copyto(flat, values, casting="unsafe")

    def _refuse_trellis(self, begin, end):
        """Raise R30's error for values `[begin, end)` of a trellis-coded
        tensor, some of whose codes index beyond its table."""
        t = self.trellis
        lead = begin % t["segment"]
        index = trellis.table_indices(self.span[begin - lead: end], t["segment"], t["zero"], t["low"])[0][lead:]
        lowest, highest = int(index.min()), int(index.max())
        raise ArchiveError(
            f"Tensor '{short(self.entry['path'])}' has trellis codes that index entry "
            f"{lowest if lowest < 0 else highest} of its {self.lookup.size}-entry table.",
            rule=rules.CODE_OUTSIDE_TABLE,
        )

    def _scale_view(self, prefix, first, stop):
        """The scales that multiply part `(prefix, first, stop)`, shaped to broadcast over it."""
        depth, axis = len(prefix), self.axis
        if axis < depth:
            return self.scales[prefix[axis]]
        view = [1] * (len(self.shape) - depth)
        view[axis - depth] = self.scales.size
        scales = self.scales.reshape(view)
        return scales[first:stop] if axis == depth else scales

    def finish(self):
        """The tensor's array, once every part is filled."""
        array = self.array
        if self.entry["storage"] == "coded":
            array = array.reshape(self.entry["shape"])
            if "outliers" in self.entry:
                index, exact = _read_outliers(self.exact_bytes, self.entry, self.dtype, array.size)
                array.reshape(-1)[index] = exact
        return array


# Start of every decoded array: what TensorFlow's CPU kernels need to use
# one as it is (see `_keras/deferred.py`), and a cache line.
_ALIGNMENT = 64


def _aligned_empty(shape, dtype):
    """`np.empty(shape, dtype)` starting at a multiple of `_ALIGNMENT` bytes."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start: start + nbytes].view(dtype).reshape(shape)


def _parts(shape):
    """A coded tensor's parts (see `_Job.fill`): ranges on the first axis
    whose rows hold at most `_PART_VALUES` values, under the indices of the
    axes before it; one part for a small tensor."""
    depth = 0
    while depth < len(shape) - 1 and int(np.prod(shape[depth + 1:], dtype=np.int64)) > _PART_VALUES:
        depth += 1
    inner = int(np.prod(shape[depth + 1:], dtype=np.int64))
    step = max(1, _PART_VALUES // max(inner, 1))
    return [(prefix, first, min(first + step, shape[depth]))
            for prefix in np.ndindex(*shape[:depth]) for first in range(0, shape[depth], step)]


def _exact(entry, exact_bytes, dtype, shape):
    """A tensor stored exact, from its little-endian bytes."""
    start, size = entry["bytes"]["offset"], entry["bytes"]["size"]
    array = np.frombuffer(exact_bytes, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize, offset=start)
    if dtype == np.bool_ and np.any(array.view(np.uint8) > 1):
        raise ArchiveError(
            f"Tensor '{short(entry['path'])}' is bool but its bytes in '{mf.EXACT_MEMBER}' hold "
            "values other than 0x00 and 0x01.",
            rule=rules.BOOL_BYTES,
        )
    return array.astype(dtype).reshape(shape)


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
        return self.decode_many([t])[0]

    def decode_many(self, entries):
        """The arrays of tensor entries `entries`, in order, decoded on the
        cores there are: the parts of every tensor (a big one is shared
        between the cores) and the digests are the work of one pool. The
        error raised is the one decoding them one by one would raise first.
        """
        jobs, failures = [None] * len(entries), [None] * len(entries)
        for i, t in enumerate(entries):
            if t["storage"] != "reference":
                jobs[i] = _attempt(failures, i, _Job, t, self._codes, self._table, self._scales, self._exact,
                                   self._kind)
        tasks = [(job.fill, part) for job in jobs if job is not None for part in job.parts]
        codings = [i for i, t in enumerate(entries) if jobs[i] is not None and "coding_sha256" in t]
        tasks += [(self._coding_matches, i, entries[i]) for i in codings]
        done = _run(tasks, sum(job.array.size for job in jobs if job is not None))
        matches = dict(zip(codings, done[len(done) - len(codings):]))
        arrays = [None] * len(entries)
        for i, t in enumerate(entries):
            if failures[i] is None:
                if jobs[i] is None:
                    arrays[i] = _attempt(failures, i, self._reference, t)
                else:
                    arrays[i] = _attempt(failures, i, jobs[i].finish)
            if failures[i] is None and not matches.get(i, True):
                failures[i] = ArchiveError(
                    f"Tensor '{short(t['path'])}': its codes, table, scales or outliers differ from those "
                    "recorded (coding_sha256) when it was rolled; the manifest or data was altered.",
                    rule=rules.CODING_DIGEST,
                )
        hashed = [i for i, t in enumerate(entries) if failures[i] is None and t["storage"] != "reference"
                  and ("coding_sha256" not in t or self._check_values)]
        digests = _run([(tensor_digest, arrays[i]) for i in hashed], sum(arrays[i].size for i in hashed))
        for i, digest in zip(hashed, digests):
            if digest != entries[i]["sha256"]:
                failures[i] = ArchiveError(
                    f"Tensor '{short(entries[i]['path'])}' decodes to values whose SHA-256 differs from the "
                    "one recorded when it was rolled; the manifest or data was altered.",
                    rule=rules.TENSOR_DIGEST,
                )
        for failure in failures:
            if failure is not None:
                raise failure
        return arrays

    def _reference(self, t):
        key = (t["dtype"], tuple(t["shape"]), t["sha256"])
        if self._base is None or key not in self._base:
            raise ArchiveError(
                f"Tensor '{short(t['path'])}' references a base tensor ({t['dtype']} "
                f"{short(t['shape'])}, SHA-256 {t['sha256'][:12]}...) that the given base does not "
                "hold bit for bit; pass the exact base model the archive was rolled against.",
                rule=rules.REFERENCE,
            )
        return np.array(self._base[key], copy=True)

    def _coding_matches(self, i, t):
        return coding_digest(t, self._codes, self._table, self._scales, self._exact) == t["coding_sha256"]

    def close(self):
        pass


# Below this many values, decoding runs on the calling thread: a pool would
# cost more than it saves.
_PARALLEL_VALUES = 1 << 20


def _run(tasks, values):
    """`[function(*args) for function, *args in tasks]`, on the cores there
    are when `values` are worth it."""
    if values < _PARALLEL_VALUES or len(tasks) < 2:
        return [function(*args) for function, *args in tasks]
    return parallel_map(lambda task: task[0](*task[1:]), tasks)


def _attempt(failures, i, function, *args):
    """`function(*args)`, or None with its `ArchiveError` kept as `failures[i]`."""
    try:
        return function(*args)
    except ArchiveError as e:
        failures[i] = e
        return None


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

    def _decoder(self, t):
        shard = self._shards.owner(self._position[id(t)])
        decoder = self._decoders.get(id(shard))
        if decoder is None:
            decoder = self._decoders[id(shard)] = TensorDecoder(shard, *self._options)
        return decoder

    def decode(self, t):
        return self._decoder(t).decode(t)

    def decode_many(self, entries):
        """`TensorDecoder.decode_many`, shard by shard."""
        arrays = []
        for _, group in itertools.groupby(entries, key=lambda t: id(self._shards.owner(self._position[id(t)]))):
            group = list(group)
            arrays += self._decoder(group[0]).decode_many(group)
        return arrays

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


# Values `decode` decodes together (1 GiB of float32): consecutive tensors
# share the cores, and progress is reported batch by batch.
_BATCH_VALUES = 1 << 28


def decode(archive, base=None, progress=None):
    """Decode every tensor of an open archive and verify its digest.

    Returns:
        A dict mapping variable path to a numpy array of the recorded shape and dtype.
    """
    decoder = decoder_for(archive, base)
    decoded = {}
    try:
        batch, values = [], 0
        for i, t in enumerate(decoder.entries):
            batch.append(t)
            values += int(np.prod(t["shape"], dtype=np.int64))
            if values >= _BATCH_VALUES or i == len(decoder.entries) - 1:
                for entry, array in zip(batch, decoder.decode_many(batch)):
                    decoded[entry["path"]] = array
                    if progress is not None:
                        progress(array.size, entry["path"])
                batch, values = [], 0
    finally:
        decoder.close()
    return decoded
