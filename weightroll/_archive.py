"""Write and read `.wroll` archives from numpy data (no Keras here).

`write()` serialises an `Encoded` plus the architecture and decoder config;
`RolledArchive` opens an archive, validates its manifest and hands out
checksum-verified members; `decode()` turns it back into numpy tensors.
"""

import hashlib
import io
import os

import numpy as np
import zstandard

from weightroll import _encode, _progress
from weightroll._format import container, image, limits, rules
from weightroll._format import manifest as mf
from weightroll._format.atomic import atomic_write
from weightroll._format.digest import coding_sha256
from weightroll.codecs import mlp
from weightroll.errors import ArchiveError, LimitError

# zstd level 9 for the small JSON members of most models: level 19 makes a
# 7 KB architecture 2 bytes (0.3%) smaller in 20 times the time (1.6 ms,
# 6% of rolling a 1M-value CNN). A large architecture (ResNet50's is
# 150 KB) at 19 takes 60 ms for 5% fewer bytes than level 12.
_ZSTD_LEVEL = 9
_ZSTD_LEVEL_LARGE = 12
_ZSTD_LARGE = 1 << 15


def _zstd(data):
    level = _ZSTD_LEVEL if len(data) <= _ZSTD_LARGE else _ZSTD_LEVEL_LARGE
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def _pack_arrays(arrays, names):
    entries, parts, offset = [], [], 0
    for name, array in zip(names, arrays):
        raw = _encode.little_endian_bytes(array)
        entries.append({"name": name, "shape": list(array.shape), "dtype": array.dtype.name, "offset": offset})
        parts.append(raw)
        offset += len(raw)
    return entries, b"".join(parts)


def decoder_array_names(kind, count):
    if kind == "codebook":
        return ["table", "scales"]
    return [f"dense_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}" for i in range(count)]


def build_members(encoded, decoder_config_json, architecture_json, producer, model_info, roll_value,
                  settings=None, compress_level=9):
    """The archive's members, in order, as `(name, bytes)`, manifest first.

    The codes are handed over: `encoded.codes` is None afterwards, so that
    they are freed as soon as the PNG no longer needs them.

    Returns:
        `(members, manifest)`.
    """
    kind = encoded.decoder["kind"]
    n_codes = int(encoded.codes.size)
    held, encoded.codes = [encoded.codes], None
    png, width, height = image.encode_png(held.pop(), compress_level=compress_level)  # its only holder
    weight_entries, decoder_bin = _pack_arrays(
        encoded.decoder_arrays, decoder_array_names(kind, len(encoded.decoder_arrays))
    )
    payload = [
        (mf.IMAGE_MEMBER, png),
        (mf.DECODER_CONFIG_MEMBER, _zstd(decoder_config_json)),
        (mf.DECODER_WEIGHTS_MEMBER, decoder_bin),
        (mf.ARCHITECTURE_MEMBER, _zstd(architecture_json)),
    ]
    if encoded.exact_bytes:
        payload.append((mf.EXACT_MEMBER, encoded.exact_bytes))
    with_coding_digests = any("coding_sha256" in t for t in encoded.tensors)
    manifest = {
        "format": mf.FORMAT_NAME,
        # The lowest version whose features the archive uses (spec §12).
        "format_version": mf.FORMAT_VERSION if with_coding_digests else mf.FORMAT_VERSION_1_0,
        "producer": producer,
        "model": model_info,
        "image": {"member": mf.IMAGE_MEMBER, "width": width, "height": height, "codes": n_codes},
        "decoder": dict(encoded.decoder, config_member=mf.DECODER_CONFIG_MEMBER,
                        config_size=len(decoder_config_json),
                        weights_member=mf.DECODER_WEIGHTS_MEMBER, weights=weight_entries),
        "architecture": {"member": mf.ARCHITECTURE_MEMBER, "size": len(architecture_json)},
        "tensors": encoded.tensors,
        "members": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in payload
        },
        "roll_value": roll_value,
        "settings": settings or {},
    }
    return [(mf.MANIFEST_MEMBER, mf.dumps(manifest))] + payload, manifest


def write(target, members):
    """Write members to `target`: a path (atomically) or a binary file object."""
    if isinstance(target, (str, os.PathLike)):
        atomic_write(target, lambda f: container.write_members(f, members))
    else:
        container.write_members(target, members)


class RolledArchive:
    """An opened archive whose manifest has been validated.

    Opening reads the zip directory and `manifest.json` only, and checks
    R1 to R21. Members are read on demand; `verify_members()` checks the
    SHA-256 of every one of them, and the decoding functions below call it
    before they use any member.

    Args:
        source: a path, a binary file object or bytes.
    """

    def __init__(self, source):
        self._file = None
        self._verified = {}  # member name -> its bytes, once its SHA-256 matched
        self._all_verified = False
        if isinstance(source, (str, os.PathLike)):
            self._file = open(source, "rb")
            source = self._file
        try:
            self._members = container.open_members(source)
            names = self._members.names
            if mf.MANIFEST_MEMBER not in names:
                raise ArchiveError("The archive has no 'manifest.json'; it is not a .wroll archive.",
                                   rule=rules.MANIFEST_JSON)
            raw = self._members.read(mf.MANIFEST_MEMBER, limits.MAX_MANIFEST_BYTES, rule=rules.MANIFEST_JSON)
            manifest = mf.loads(raw, "manifest.json", rule=rules.MANIFEST_JSON)
            sizes = {n: self._members.size(n) for n in names if n != mf.MANIFEST_MEMBER}
            self.manifest = mf.validate(manifest, sizes)
        except BaseException:
            self.close()
            raise

    def member_sizes(self):
        """`{name: size}` of every zip member, manifest included, in file order."""
        return {name: self._members.size(name) for name in self._members.names}

    def verify_members(self, keep_image=True):
        """Check every listed member's zip CRC and SHA-256 (R22, R23), once.

        The members this reader decodes are kept for `member()`; the others
        (members of a later minor version) are hashed in pieces and dropped.

        Args:
            keep_image: keep the code image's bytes too. With `False` they are
                hashed in pieces and read (and checked) again when decoded, so
                that they are not held meanwhile (while Keras builds a model).
        """
        if self._all_verified:
            return
        for name in self.manifest["members"]:
            if name in _DECODED_MEMBERS and (keep_image or name != mf.IMAGE_MEMBER):
                self.member(name)
            elif name not in self._verified:
                self._check_sha256(name, self._members.sha256(name))
                self._verified[name] = None
        self._all_verified = True

    def member(self, name):
        """The bytes of member `name`, after checking its CRC and SHA-256 (R22, R23)."""
        data = self._verified.get(name)
        if data is None:
            data = self._members.read(name, self.manifest["members"][name]["size"])
            self._check_sha256(name, hashlib.sha256(data).hexdigest())
            self._verified[name] = data
        return data

    def _check_sha256(self, name, digest):
        if digest != self.manifest["members"][name]["sha256"]:
            raise ArchiveError(
                f"Member '{mf._short(name)}' does not match its SHA-256 checksum in manifest.json; "
                "the archive is damaged or was altered.",
                rule=rules.MEMBER_SHA256,
            )

    def architecture_json(self):
        """The model's architecture JSON bytes, decompressed within the declared size (R35)."""
        return self._zstd_member(mf.ARCHITECTURE_MEMBER, self.manifest["architecture"]["size"])

    def decoder_config_json(self):
        """The pix-to-weight network's Keras config JSON bytes (R35)."""
        return self._zstd_member(mf.DECODER_CONFIG_MEMBER, self.manifest["decoder"]["config_size"])

    def decoder_config(self):
        """The pix-to-weight network's Keras config, parsed strictly (R35, R36)."""
        config = mf.loads(self.decoder_config_json(), f"'{mf.DECODER_CONFIG_MEMBER}'")
        if not isinstance(config, dict):
            raise ArchiveError(f"'{mf.DECODER_CONFIG_MEMBER}' must hold a JSON object (a Keras config).",
                               rule=rules.JSON_MEMBER)
        return config

    def _zstd_member(self, name, declared):
        """A zstd-compressed member's content: one frame, exactly `declared`
        bytes, nothing after it. Never inflates more than `declared + 1` bytes."""
        data = self.member(name)
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' is not a zstd frame ({e}).", rule=rules.ZSTD_MEMBER) from None
        if size not in (-1, declared):  # -1: the frame does not say
            raise ArchiveError(f"'{name}' declares {size} bytes but manifest.json says {declared}.",
                               rule=rules.ZSTD_MEMBER)
        decompressor = zstandard.ZstdDecompressor()
        try:
            # Bounded: a frame that expands without limit stops at declared + 1 bytes.
            with decompressor.stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
                out = reader.read(declared + 1)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' cannot be decompressed ({e}).", rule=rules.ZSTD_MEMBER) from None
        if len(out) > declared:
            raise LimitError(f"'{name}' expands to more than the {declared} bytes manifest.json declares.",
                             rule=rules.ZSTD_MEMBER)
        if len(out) < declared:
            raise ArchiveError(f"'{name}' expands to {len(out)} bytes; manifest.json declares {declared}.",
                               rule=rules.ZSTD_MEMBER)
        # The frame is now known to give exactly `declared` bytes, so decoding it
        # again at once is bounded too; this tells where the frame ends.
        frame = decompressor.decompressobj()
        try:
            frame.decompress(data)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' cannot be decompressed ({e}).", rule=rules.ZSTD_MEMBER) from None
        if not frame.eof:
            raise ArchiveError(f"'{name}' ends inside its zstd frame; it is truncated.", rule=rules.ZSTD_MEMBER)
        if frame.unused_data:
            raise ArchiveError(
                f"'{name}' has {len(frame.unused_data)} bytes after its zstd frame; a member is one frame "
                "and nothing else.",
                rule=rules.ZSTD_MEMBER,
            )
        return out

    def decoder_arrays(self):
        """The pix-to-weight network's weights, as numpy arrays in manifest order."""
        data = self.member(mf.DECODER_WEIGHTS_MEMBER)
        arrays = []
        for entry in self.manifest["decoder"]["weights"]:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            count = int(np.prod(entry["shape"], dtype=np.int64))
            a = np.frombuffer(data, dtype=dtype, count=count, offset=entry["offset"])
            arrays.append(a.astype(a.dtype.newbyteorder("=")).reshape(entry["shape"]))
        return arrays

    def codes(self):
        """All codes of the image, as a 1-D uint8 array."""
        info = self.manifest["image"]
        codes = image.decode_png(self.member(mf.IMAGE_MEMBER), info["width"], info["height"], info["codes"])
        self._verified.pop(mf.IMAGE_MEMBER, None)  # the PNG's bytes are not needed again (read anew if asked)
        return codes

    def close(self):
        self._verified = {}
        self._all_verified = False
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The members a reader of this version decodes; `verify_members` keeps their bytes.
_DECODED_MEMBERS = (mf.IMAGE_MEMBER, mf.DECODER_CONFIG_MEMBER, mf.DECODER_WEIGHTS_MEMBER,
                    mf.ARCHITECTURE_MEMBER, mf.EXACT_MEMBER)


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
            table, scales = mlp.evaluate(arrays, decoder["bits"], decoder["activation"]), None
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
            f"Tensor '{mf._short(entry['path'])}' has outlier indices that are not strictly increasing "
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
                f"Tensor '{mf._short(entry['path'])}' is bool but its bytes in '{mf.EXACT_MEMBER}' hold "
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
            f"Tensor '{mf._short(entry['path'])}' has code {top}, outside its {size}-entry table.",
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
        index.setdefault(_encode.reference_key(array), array)
    return index


def iter_decoded(archive, base=None, skip_references=False, check_values=False):
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
            f"(e.g. '{mf._short(references[0]['path'])}'); pass the base it was rolled against "
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
                    f"Tensor '{mf._short(t['path'])}' references a base tensor ({t['dtype']} "
                    f"{mf._short(t['shape'])}, SHA-256 {t['sha256'][:12]}...) that the given base does not "
                    "hold bit for bit; pass the exact base model the archive was rolled against.",
                    rule=rules.REFERENCE,
                )
            array = np.array(base[key], copy=True)
        else:
            array = decode_tensor(t, codes, table, scales, exact_bytes, kind)
            if "coding_sha256" in t and coding_digest(t, codes, table, scales, exact_bytes) != t["coding_sha256"]:
                raise ArchiveError(
                    f"Tensor '{mf._short(t['path'])}': its codes, table, scales or outliers differ from those "
                    "recorded (coding_sha256) when it was rolled; the manifest or data was altered.",
                    rule=rules.CODING_DIGEST,
                )
            if ("coding_sha256" not in t or check_values) and _encode.tensor_digest(array) != t["sha256"]:
                raise ArchiveError(
                    f"Tensor '{mf._short(t['path'])}' decodes to values whose SHA-256 differs from the "
                    "one recorded when it was rolled; the manifest or data was altered.",
                    rule=rules.TENSOR_DIGEST,
                )
        _progress.advance(array.size, t["path"])
        yield t["path"], array


def decode(archive, base=None):
    """Decode every tensor of an open archive and verify its digest.

    Returns:
        A dict mapping variable path to a numpy array of the recorded shape and dtype.
    """
    return dict(iter_decoded(archive, base))


def unroll(filepath, base=None):
    """Decode a `.wroll` archive's weights without Keras or TensorFlow.

    Only numpy, pillow, zstandard and zlib-ng are used, so light tools and other
    runtimes can read archives.

    Args:
        filepath: path of the archive (or a binary file object).
        base: for an archive rolled with `base=`, the base model's weights
            as a dict or list of numpy arrays (e.g. `{v.path: v.numpy() for v
            in base_model.variables}`). Defaults to `None`.

    Returns:
        A dict mapping each variable's path (e.g. `"dense/kernel"`) to a numpy
        array with the variable's shape and dtype.

    Example:

    ```python
    weights = weightroll.unroll("model.wroll")
    print({path: w.shape for path, w in weights.items()})
    ```
    """
    index = None if base is None else base_index(base)
    with RolledArchive(filepath) as archive:
        return decode(archive, index)
