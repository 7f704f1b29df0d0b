"""Regenerate the `.wroll` format test vectors (spec/wroll-v4.md, "Test vectors").

Usage:

    TF_CPP_MIN_LOG_LEVEL=2 python spec/vectors/make_vectors.py [OUTDIR]
    TF_CPP_MIN_LOG_LEVEL=2 python spec/vectors/make_vectors.py --example [ARCHIVE]

The first form writes every vector into OUTDIR (default: the folder of this
script). The second prints the byte-level worked example of spec/wroll-v4.md
for ARCHIVE (default: the committed `dense_codebook_2bit.wroll`).

Valid vectors are written by `weightroll.roll` (format 4.0) from tiny Keras
models whose weights are fixed numbers set with `layer.set_weights` (nothing is
trained or drawn at random). Vectors of older versions are derived from them
(`OLDER`), except `v3_dense_tolerance`, which a 3.0 writer wrote and which is
kept as it is (`FROZEN`). Invalid vectors are derived from valid ones by one
documented edit each and listed in `invalid/index.json` with the rejection rule
(R..) of the spec, the exception class and a stable fragment of its message.

The output is a function of the inputs and of the library versions recorded in
`environment.json` (Python's zipfile and zlib, numpy, zlib-ng, libzstd, Keras's
config format), not of the machine: the same on every CPU and BLAS, with or
without weightroll's C kernels (tests/test_same_bytes.py, tests/test_spec_vectors.py).
"""

import hashlib
import io
import json
import os
import platform
import re
import struct
import sys
import warnings
import zipfile
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from weightroll._format import limits  # noqa: E402  (numpy only: no Keras yet)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = "dense_codebook_2bit"
MANIFEST, RAW_MANIFEST = "manifest.json.zst", "manifest.json"  # 3.x and 4.x; 1.x and 2.x
DECODER_ZST, DECODER_BIN = "decoder.bin.zst", "decoder.bin"  # 4.x; 1.x to 3.x

# --- valid vectors -------------------------------------------------------------


def _reset_names():
    """Reset Keras's auto-naming counters: a seed generator's variable path
    (`seed_generator_N/...`) depends on how many were made before."""
    import keras

    try:
        keras.utils.clear_session(free_memory=False)  # skips a slow gc.collect()
    except TypeError:  # Keras before 3.6
        keras.utils.clear_session()


def _dense_model(name, kernel, bias, dtype=None, dropout_seed=None):
    """Input(4) -> Dense(3) [-> Dropout], every name explicit, weights fixed."""
    import keras

    _reset_names()
    inputs = keras.Input(shape=(4,), name="x")
    dense = keras.layers.Dense(3, name="dense", dtype=dtype)
    outputs = dense(inputs)
    if dropout_seed is not None:
        outputs = keras.layers.Dropout(0.5, seed=dropout_seed, name="dropout")(outputs)
    model = keras.Model(inputs, outputs, name=name)
    dense.set_weights([np.asarray(kernel), np.asarray(bias)])
    return model


def _model_dense_codebook_2bit():
    # Four distinct kernel values: a 2-bit codebook holds them exactly.
    kernel = np.array(
        [[0.1, -0.2, 1.5], [-0.75, 0.1, -0.2], [1.5, -0.75, 0.1], [-0.2, 1.5, -0.75]], np.float32
    )
    bias = np.array([0.125, -0.5, 0.0], np.float32)
    return _dense_model("tiny", kernel, bias)


def _model_dense_reference():
    """A fine-tuned model whose kernel is bit-identical to the base's (frozen)."""
    base = _model_dense_codebook_2bit()
    kernel = base.get_layer("dense").get_weights()[0]
    return _dense_model("tiny_finetuned", kernel, np.array([1.0, 2.0, 3.0], np.float32))


def _base_of_dense_reference():
    """The base model's tensors, as `weightroll.roll(base=...)` takes them."""
    return {v.path: np.array(v.numpy()) for v in _model_dense_codebook_2bit().variables}


def _model_dense_dropout_exact():
    kernel = (np.arange(12, dtype=np.float32).reshape(4, 3) / 8 - 0.5).astype(np.float32)
    bias = np.array([0.25, -1.0, 2.0], np.float32)
    return _dense_model("tiny_dropout", kernel, bias, dropout_seed=1234)


def _model_dense_mlp_8bit():
    kernel = np.array(
        [[0.31, -0.52, 0.08], [0.77, -0.12, -0.94], [0.45, 0.02, -0.33], [-0.61, 0.89, 0.14]], np.float32
    )
    bias = np.array([0.05, -0.07, 0.11], np.float32)
    return _dense_model("tiny_mlp", kernel, bias)


def _model_dense_float16_1bit():
    kernel = np.array(
        [[0.3, -0.7, 0.2], [-0.5, 0.9, -0.1], [0.6, -0.4, 0.8], [-0.3, 0.1, -0.9]], np.float16
    )
    bias = np.array([0.01, -0.02, 0.03], np.float16)
    return _dense_model("tiny_float16", kernel, bias, dtype="float16")


def _model_dense_bfloat16():
    import ml_dtypes

    rng = np.random.default_rng(7)
    kernel = rng.normal(scale=0.5, size=(4, 3)).astype(ml_dtypes.bfloat16)
    bias = np.array([0.01, -0.02, 0.03], ml_dtypes.bfloat16)
    return _dense_model("tiny_bfloat16", kernel, bias, dtype="bfloat16")


def _model_dense_int8():
    """`dense_codebook_8bit`'s Dense(24), quantized by Keras (`model.quantize("int8")`)."""
    import warnings

    model = _model_dense_codebook_8bit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "InputLayer does not have a `quantize` method"
        model.quantize("int8")
    # Few distinct integers, so that a lossless table pays (a real int8 kernel is larger).
    kernel = model.get_layer("dense")._kernel
    kernel.assign((np.arange(int(np.prod(kernel.shape))) % 7 - 3).reshape(kernel.shape).astype("int8"))
    return model


def _model_string_lookup():
    """A StringLookup whose vocabulary travels as an asset file, then a Dense."""
    import keras

    _reset_names()
    lookup = keras.layers.StringLookup(name="lookup")
    lookup.adapt(np.array(["red", "red", "red", "green", "green", "blue"]))  # adapted: an asset, not config
    inputs = keras.Input(shape=(1,), dtype="string", name="x")
    outputs = keras.layers.Dense(2, name="dense")(keras.ops.cast(lookup(inputs), "float32"))
    model = keras.Model(inputs, outputs, name="tiny_lookup")
    model.get_layer("dense").set_weights([np.array([[0.5, -0.25]], np.float32), np.array([0.0, 0.125], np.float32)])
    return model


def _model_dense_codebook_8bit():
    import keras

    _reset_names()
    inputs = keras.Input(shape=(16,), name="x")
    dense = keras.layers.Dense(24, name="dense")
    model = keras.Model(inputs, dense(inputs), name="small")
    # 384 distinct multiples of 1/512 (exact in float32): more than 2**8, so
    # the 8-bit codebook is lossy.
    i = np.arange(384)
    kernel = ((((i * 7919) % 1009) - 504) / 512).astype(np.float32).reshape(16, 24)
    dense.set_weights([kernel, np.zeros(24, np.float32)])
    return model


def _model_dense_tolerance():
    import keras

    _reset_names()
    inputs = keras.Input(shape=(8,), name="x")
    hidden = keras.layers.Dense(16, name="hidden")
    head = keras.layers.Dense(4, name="head")
    model = keras.Model(inputs, head(hidden(inputs)), name="tolerance")
    # Every number is a small multiple of a power of two: exact in float32.
    i = np.arange(128)
    columns = np.array([2.0 ** (k % 8 - 4) for k in range(16)])  # channel scales 1/16 .. 8
    kernel1 = ((((i * 37) % 101) - 50) / 64.0).reshape(8, 16) * columns
    bias1 = np.array([0.0, 0.5] * 8)  # two distinct values: a lossless table
    j = np.arange(64)
    kernel2 = (((j * 53) % 67) - 33) / 128.0
    kernel2[[5, 40]] = [24.0, -31.5]  # far beyond 127 grid steps: outliers
    bias2 = np.array([0.25, -0.25, 0.125, 0.0])
    hidden.set_weights([kernel1.astype(np.float32), bias1.astype(np.float32)])
    head.set_weights([kernel2.reshape(16, 4).astype(np.float32), bias2.astype(np.float32)])
    return model


def _model_dense_trellis():
    """Dense(8) on 1000 inputs: 8000 kernel values, enough that trellis codes
    pay for their larger table. Every number is a multiple of a power of two."""
    import keras

    _reset_names()
    inputs = keras.Input(shape=(1000,), name="x")
    dense = keras.layers.Dense(8, name="dense")
    model = keras.Model(inputs, dense(inputs), name="trellis")
    i = np.arange(8000)
    # Irwin-Hall: four scrambled uniform integers in [-63, 63] summed, close to Gaussian.
    kernel = sum(((i * a + b) % 127) - 63 for a, b in ((37, 11), (53, 5), (71, 29), (97, 3))) / 512.0
    kernel = kernel.reshape(1000, 8) * np.array([2.0 ** (c % 4 - 2) for c in range(8)])  # scales 1/4 .. 2
    kernel.reshape(-1)[[5, 7993]] = [8.0, -8.0]  # about 110 times their column's RMS: outliers
    bias = ((np.arange(8) % 5) - 2) / 8.0
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


VALID = [
    # name, model builder, roll() arguments, what it exercises
    (EXAMPLE, _model_dense_codebook_2bit, {"decoder": "codebook", "bits": 2},
     "Dense(3) on 4 inputs; 2-bit codebook: the kernel is coded (exactly: 4 distinct values), "
     "the bias is stored exact. The spec's worked example."),
    ("dense_dropout_exact", _model_dense_dropout_exact, {"decoder": "codebook", "tolerance": 0.02},
     "Dense(3) + Dropout(seed=1234); tolerance 0.02: every tensor is too small for codes to pay "
     "and is exact. The dropout's seed-generator state is not saved, as in a .keras file."),
    ("dense_mlp_8bit", _model_dense_mlp_8bit, {"decoder": "mlp", "bits": 8},
     "Dense(3) on 4 inputs; the paper's MLP decoder, 8 bits: every tensor is coded."),
    ("dense_float16_1bit", _model_dense_float16_1bit, {"decoder": "codebook", "bits": 1},
     "float16 Dense(3); 1-bit codebook: the kernel is coded (float32 table cast to float16), "
     "the bias is exact float16."),
    ("dense_bfloat16", _model_dense_bfloat16, {"decoder": "codebook", "bits": 2},
     "bfloat16 Dense(3); 2-bit codebook: the kernel is coded (float32 table, each value rounded "
     "to bfloat16 to nearest, ties to even), the bias is exact bfloat16. Format 2.0."),
    ("dense_int8", _model_dense_int8, {},
     "dense_codebook_8bit's Dense(24) quantized by Keras to int8: the int8 kernel is coded losslessly "
     "(a table of its distinct integers), its float32 scale and the bias are stored exactly "
     "(a quantized model is rolled losslessly). Format 2.0."),
    ("string_lookup", _model_string_lookup, {"decoder": "codebook", "bits": 2},
     "StringLookup adapted to [red, green, blue] -> Dense(2): the vocabulary travels as the asset "
     "'layers/string_lookup/vocabulary.txt'; the Dense's tensors are coded. Format 2.0."),
    ("dense_codebook_8bit", _model_dense_codebook_8bit, {"decoder": "codebook", "bits": 8},
     "Dense(24) on 16 inputs; 8-bit codebook, lossy k-means on 384 distinct values."),
    ("dense_reference", _model_dense_reference, {"decoder": "codebook", "bits": 2, "base": "base"},
     "The worked example's kernel, fine-tuned bias; rolled with base= the worked example's "
     "tensors: the kernel is stored as a reference, the new bias exact. Readers need the base: "
     "dense_reference.base.json."),
    ("dense_tolerance", _model_dense_tolerance, {"decoder": "codebook", "tolerance": 0.05},
     "Dense(16) -> Dense(4); tolerance 0.05: uniform codes with per-channel scales, a lossless "
     "table, uniform codes with two exact outliers, and an exact bias."),
    ("dense_trellis", _model_dense_trellis, {"decoder": "codebook", "tolerance": 0.05},
     "Dense(8) on 1000 inputs; tolerance 0.05: the kernel's 8000 values are trellis codes (format "
     "4.0: segments of 1024, the last one 832 long) with per-channel scales and two exact outliers; "
     "the bias, five distinct values, a lossless table."),
]


def _expected(archive_path, base=None):
    """{path: {shape, dtype, values, sha256}} of an archive, via weightroll.unroll."""
    import weightroll

    return _entries(weightroll.unroll(archive_path, base=base))


def load_base(path):
    """The base tensors of a `NAME.base.json` file as a dict of arrays, or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        entries = json.load(f)
    return {p: np.array(e["values"], dtype=e["dtype"]).reshape(e["shape"]) for p, e in entries.items()}


def _entries(arrays):
    """{path: {shape, dtype, values, sha256}} of a dict of arrays, in its order."""
    from weightroll._encode import tensor_digest

    out = {}  # in archive order, which is model.variables order
    for path, array in arrays.items():
        out[path] = {
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "values": (array.astype(np.float32) if array.dtype.name == "bfloat16" else array).reshape(-1).tolist(),
            "sha256": tensor_digest(array),
        }
    return out


def _write_json(path, obj, sort_keys=True):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=sort_keys, allow_nan=False) + "\n")


# --- zip, manifest and PNG helpers for the edited archives ---------------------


def read_members(data):
    """The `(name, bytes)` members of zip bytes, in stored order."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def zip_bytes(members):
    from weightroll._format.container import write_members

    buf = io.BytesIO()
    with warnings.catch_warnings():  # a duplicate name is wanted in one vector
        warnings.simplefilter("ignore", UserWarning)
        write_members(buf, members)
    return buf.getvalue()


def manifest_text(members):
    """The manifest's JSON text: `manifest.json.zst` decompressed (3.x), or `manifest.json` (1.x, 2.x)."""
    from weightroll._format import manifest_member

    found = dict(members)
    if MANIFEST in found:
        return manifest_member.unpack(found[MANIFEST])
    return found[RAW_MANIFEST]


def manifest_of(members):
    return json.loads(manifest_text(members))


def _manifest_first(members, text, member=None):
    """`members` with the manifest replaced by `text`, compressed as the writer
    does into `member` (default: the one the text's version names, or
    `manifest.json.zst` when it names none)."""
    from weightroll._format import manifest_member

    if member is None:
        try:
            version = json.loads(text).get("format_version")
        except (ValueError, AttributeError):
            version = None
        member = manifest_member.member_for(version)
    others = [(n, d) for n, d in members if n not in (MANIFEST, RAW_MANIFEST)]
    return [(member, manifest_member.pack(text, member))] + others


def repack(members, manifest=None, replace=None, drop=(), add=(), fix=True, rebind=True):
    """A new archive from `members` with the given edits.

    Args:
        manifest: the manifest to write (default: the original, unchanged).
        replace: dict name -> new bytes for existing members.
        drop: member names to leave out of the zip.
        add: `(name, bytes)` to append to the zip.
        fix: recompute `members[...]` size and sha256 for every listed member
            present in the zip, so that the edit gets past R6 and R21.
        rebind: recompute each tensor's `binding_sha256` (2.0), so that an
            edit of a tensor entry reaches the rule it is meant for, not R40.
    """
    from weightroll._format.digest import binding_sha256
    from weightroll._format.manifest import dumps

    replace = replace or {}
    manifest = manifest_of(members) if manifest is None else manifest
    payload = [(n, replace.get(n, d)) for n, d in members if n not in (MANIFEST, RAW_MANIFEST) and n not in drop]
    payload += list(add)
    if fix:
        for name, data in payload:
            if name in manifest.get("members", {}):
                manifest["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if rebind and isinstance(tensors, list):
        for t in tensors:
            if isinstance(t, dict) and "binding_sha256" in t:
                try:
                    t["binding_sha256"] = binding_sha256(t)
                except (KeyError, TypeError, ValueError):  # an entry the edit left unhashable
                    pass
    return zip_bytes(_manifest_first(payload, dumps(manifest)))


def repack_manifest_bytes(members, manifest_bytes):
    """An archive whose manifest text is exactly `manifest_bytes`, compressed
    into `manifest.json.zst` as the writer does."""
    return zip_bytes(_manifest_first(members, manifest_bytes, MANIFEST))


def _central_entries(data):
    """Offsets of the central-directory entries of zip bytes, by name."""
    eocd = data.rindex(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack("<HII", data[eocd + 10: eocd + 20])
    out, pos = {}, cd_offset
    for _ in range(count):
        nlen, xlen, clen = struct.unpack("<HHH", data[pos + 28: pos + 34])
        name = data[pos + 46: pos + 46 + nlen].decode()
        local = struct.unpack("<I", data[pos + 42: pos + 46])[0]
        out[name] = (pos, local)
        pos += 46 + nlen + xlen + clen
    return out


def patch_entry(data, name, local_field=None, central_field=None, value=None, fmt="<H"):
    """Overwrite one field of a member's local header and/or central entry."""
    data = bytearray(data)
    central, local = _central_entries(bytes(data))[name]
    if local_field is not None:
        struct.pack_into(fmt, data, local + local_field, value)
    if central_field is not None:
        struct.pack_into(fmt, data, central + central_field, value)
    return bytes(data)


def member_data_offset(data, name):
    _, local = _central_entries(data)[name]
    nlen, xlen = struct.unpack("<HH", data[local + 26: local + 30])
    return local + 30 + nlen + xlen


def png_chunk(ctype, body):
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_bytes(pixels, bit_depth=8, color_type=0, interlace=0, idat=None, size=None):
    """A PNG of a 2-D uint8 array (filter 0 on every row).

    `idat` replaces the IDAT chunk's body and `size`, a `(width, height)`, the
    dimensions written in IHDR.
    """
    pixels = np.asarray(pixels, np.uint8)
    height, width = pixels.shape[:2]
    if size is not None:
        width, height = size
    if idat is None:
        rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
        idat = zlib.compress(rows, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def _zstd(data, content_size=True, level=19):
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=content_size).compress(data)


def _frame_header(frame):
    """`(header length, offset of the content size field, its length)` of a zstd frame (RFC 8878 §3.1.1.1)."""
    descriptor = frame[4]
    single_segment = descriptor >> 5 & 1
    fcs_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    dictionary_bytes = (0, 1, 2, 4)[descriptor & 3]
    fcs_at = 5 + (0 if single_segment else 1) + dictionary_bytes
    return fcs_at + fcs_bytes, fcs_at, fcs_bytes


def _declare_size(frame, size):
    """`frame` with the content size of its header set to `size` (same field width)."""
    _, at, width = _frame_header(frame)
    value = size - 256 if width == 2 else size  # a 2-byte field holds size - 256
    return frame[:at] + value.to_bytes(width, "little") + frame[at + width:]


def _unzstd(data):
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


# --- invalid vectors -------------------------------------------------------------


def _edit(fn):
    """Apply `fn` to a deep copy of a manifest and return the copy."""
    def apply(manifest):
        manifest = json.loads(json.dumps(manifest))
        fn(manifest)
        return manifest
    return apply


def _tensor(manifest, path):
    return next(t for t in manifest["tensors"] if t["path"] == path)


def invalid_vectors(bases):
    """Yield `(name, bytes, rule, error class, message fragment, operation, edit[, base])`.

    `base`, when given, names the `NAME.base.json` whose tensors the reader is
    given as `base=`.

    `bases` maps a valid vector's name to its archive bytes.
    """
    tiny = bases[EXAMPLE]
    tm = read_members(tiny)
    tman = manifest_of(tm)
    tdict = dict(tm)
    dm = read_members(bases["dense_dropout_exact"])
    mm = read_members(bases["dense_mlp_8bit"])
    um = read_members(bases["dense_tolerance"])
    uman = manifest_of(um)
    udict = dict(um)
    trm = read_members(bases["dense_trellis"])
    v30 = read_members(as_version(tiny, "3.0"))  # the worked example as format 3.0 stores it

    from weightroll._format.manifest import dumps

    def man(fn, members=tm):
        return repack(members, _edit(fn)(manifest_of(members)))

    def kernel(fn):
        return man(lambda m: fn(_tensor(m, "dense/kernel")))

    def bias(fn):
        return man(lambda m: fn(_tensor(m, "dense/bias")))

    def tol_tensor(path, fn):
        return man(lambda m: fn(_tensor(m, path)), um)

    text = manifest_text(tm)

    # R1: the zip container
    yield ("not_a_zip", b"This is not a .wroll archive, nor any zip.\n", "R1", "ArchiveError",
           "not a readable zip", "unroll", "A short text file.")
    yield ("empty_file", b"", "R1", "ArchiveError", "not a readable zip", "unroll", "Zero bytes.")
    yield ("truncated", tiny[: len(tiny) // 2], "R1", "ArchiveError", "not a readable zip", "unroll",
           f"The first half ({len(tiny) // 2} bytes) of {EXAMPLE}.wroll: no end of central directory.")
    yield ("duplicate_member", zip_bytes(tm + [("weights.png", tdict["weights.png"])]), "R1",
           "ArchiveError", "appears twice", "unroll",
           "weights.png written a second time at the end of the zip.")
    yield ("encrypted_member", patch_entry(tiny, "weights.png", 6, 8, 0x1), "R1", "ArchiveError",
           "is encrypted", "unroll",
           "General-purpose flag bit 0 (encrypted) set on weights.png, local header and central entry.")
    yield ("deflated_member", patch_entry(tiny, "weights.png", 8, 10, 8), "R1", "ArchiveError",
           "compression method 8", "unroll",
           "Compression method of weights.png set to 8 (deflate) in both headers; data left stored.")
    size = len(tdict["weights.png"])
    yield ("sizes_disagree", patch_entry(tiny, "weights.png", None, 20, size + 1, fmt="<I"), "R1",
           "ArchiveError", "a stored member's sizes must agree", "unroll",
           "Central-directory compressed size of weights.png set to its size + 1.")
    yield ("bytes_before_zip", b"MZ" + bytes(62) + tiny, "R1", "ArchiveError", "bytes before the archive",
           "unroll", f"64 bytes (MZ and zeros, like an executable stub) put in front of {EXAMPLE}.wroll; "
           "the zip's offsets are left relative to its own start.")
    png_header = _central_entries(tiny)["weights.png"][1]
    yield ("members_overlap", patch_entry(tiny, DECODER_ZST, None, 42, png_header, fmt="<I"), "R1",
           "ArchiveError", "overlap in the file", "unroll",
           "The central-directory entry of decoder.bin.zst points at weights.png's local header "
           f"(offset {png_header}).")

    # R2: a manifest present and strict JSON (the edited text compressed again)
    yield ("manifest_missing", zip_bytes([(n, d) for n, d in tm if n != MANIFEST]), "R2",
           "ArchiveError", "The archive has no manifest", "unroll", "manifest.json.zst left out of the zip.")
    yield ("manifest_not_json", repack_manifest_bytes(tm, text[:-40]), "R2", "ArchiveError",
           "manifest.json is not valid JSON", "unroll", "The last 40 bytes of the manifest text cut off.")
    yield ("manifest_not_utf8", repack_manifest_bytes(tm, text.replace(b'"tiny"', b'"t\xffny"')),
           "R2", "ArchiveError", "manifest.json is not UTF-8", "unroll",
           "Byte 0xFF inside the model name string.")
    yield ("manifest_duplicate_key",
           repack_manifest_bytes(tm, text.replace(b"{", b'{"format": "wroll",', 1)),
           "R2", "ArchiveError", "has the key 'format' twice", "unroll",
           "A second \"format\" key inserted at the top of the manifest object.")
    yield ("manifest_nan",
           repack_manifest_bytes(tm, re.sub(rb'"relative_rmse":( ?)0\.0', rb'"relative_rmse":\1NaN', text, 1)),
           "R2", "ArchiveError", "JSON holds NaN", "unroll",
           "The first relative_rmse (an informative field) written as the bare token NaN.")
    yield ("manifest_not_object", repack_manifest_bytes(tm, b"[]\n"), "R2", "ArchiveError",
           "must hold a JSON object", "unroll", "The manifest text is an empty array.")
    deep = limits.MAX_JSON_DEPTH - 1  # inside the manifest object and "settings": one level too many
    yield ("manifest_too_deep", man(lambda m: m["settings"].update(x=json.loads("[" * deep + "]" * deep))),
           "R2", "LimitError", f"nested {limits.MAX_JSON_DEPTH + 1} levels deep", "unroll",
           f"settings.x (an informative field) set to {deep} nested empty arrays: the manifest is "
           f"{limits.MAX_JSON_DEPTH + 1} levels deep.")
    yield ("manifest_number_not_finite",
           repack_manifest_bytes(tm, text.replace(b'"bits":2}', b'"bits":1e999}')),
           "R2", "ArchiveError", "holds the number 1e999, which is not finite", "unroll",
           "settings.bits (an informative field) written as 1e999, which overflows binary64.")

    # R44 (3.0 and later): the manifest's member, one zstd frame declaring its size
    frame = tdict[MANIFEST]
    plain = [(n, d) for n, d in tm if n != MANIFEST]
    yield ("manifest_frame_without_size",
           zip_bytes([(MANIFEST, _zstd(text, content_size=False))] + plain), "R44", "ArchiveError",
           "does not declare its content size", "unroll",
           "manifest.json.zst written as a zstd frame without a content size in its header.")
    padded = text + b" " * (limits.MAX_MANIFEST_BYTES + 1 - len(text))  # JSON whitespace
    yield ("manifest_frame_too_large",
           zip_bytes([(MANIFEST, _zstd(padded, level=1))] + plain), "R44", "LimitError",
           f"declares {limits.MAX_MANIFEST_BYTES + 1} bytes, more than the {limits.MAX_MANIFEST_BYTES}",
           "unroll", f"The manifest text followed by spaces to MAX_MANIFEST_BYTES + 1 = "
           f"{limits.MAX_MANIFEST_BYTES + 1} bytes (still one JSON text), compressed to one frame that "
           "declares that size.")
    yield ("manifest_frame_trailing_data", zip_bytes([(MANIFEST, frame + b"\x00")] + plain), "R44",
           "ArchiveError", "has 1 bytes after its zstd frame", "unroll",
           "One zero byte appended to manifest.json.zst after its frame.")
    yield ("manifest_frame_size_mismatch", zip_bytes([(MANIFEST, _declare_size(frame, len(text) + 1))] + plain),
           "R44", "ArchiveError", "'manifest.json.zst' cannot be decompressed", "unroll",
           f"The frame header's content size set to {len(text) + 1}, one byte more than the frame holds.")
    relabelled = _edit(lambda m: m.update(format_version="2.0"))(tman)
    yield ("manifest_both_members",
           zip_bytes(tm + [(RAW_MANIFEST, dumps(relabelled))]), "R44", "ArchiveError",
           "has both 'manifest.json.zst' and 'manifest.json'", "unroll",
           "The manifest, relabelled \"2.0\", also stored raw as manifest.json at the end of the zip.")
    yield ("manifest_4_0_uncompressed", zip_bytes(_manifest_first(tm, text, RAW_MANIFEST)), "R44",
           "ArchiveError", "the member and the version disagree", "unroll",
           "The 4.0 manifest text stored raw as manifest.json instead of manifest.json.zst.")
    yield ("manifest_2_0_compressed", zip_bytes(_manifest_first(tm, dumps(relabelled), MANIFEST)), "R44",
           "ArchiveError", "the member and the version disagree", "unroll",
           "The manifest relabelled \"2.0\", still compressed in manifest.json.zst (a 2.0 manifest is "
           "manifest.json).")

    # R3, R4: format name and version
    yield ("format_name", man(lambda m: m.update(format="zip")), "R3", "ArchiveError",
           "'format' must be 'wroll'", "unroll", "format set to \"zip\".")
    yield ("version_5_0", man(lambda m: m.update(format_version="5.0")), "R4", "VersionError",
           "reads formats 1.x, 2.x, 3.x and 4.x only", "unroll", "format_version set to \"5.0\".")
    yield ("version_0_9", man(lambda m: m.update(format_version="0.9")), "R4", "VersionError",
           "reads formats 1.x, 2.x, 3.x and 4.x only", "unroll",
           "format_version set to \"0.9\" (in manifest.json, as a version before 3.0 is stored).")
    yield ("version_malformed", man(lambda m: m.update(format_version="1.0.0")), "R4", "ArchiveError",
           "must look like 'MAJOR.MINOR'", "unroll", "format_version set to \"1.0.0\".")
    yield ("version_number", man(lambda m: m.update(format_version=1.0)), "R4", "ArchiveError",
           "must look like 'MAJOR.MINOR'", "unroll", "format_version written as the JSON number 1.0.")
    yield ("version_arabic_digits", man(lambda m: m.update(format_version="\u0661.\u0660")), "R4",
           "ArchiveError", "must look like 'MAJOR.MINOR'", "unroll",
           "format_version set to \"\\u0661.\\u0660\", one and zero in Arabic-Indic digits (Unicode decimal "
           "digits, but not ASCII).")

    # R5, R6: members
    yield ("unlisted_member", repack(tm, add=[("notes.txt", b"hello\n")]), "R5", "ArchiveError",
           "does not list", "unroll", "A member notes.txt added to the zip but not to members.")
    yield ("listed_member_missing", repack(tm, drop=["exact.bin"]), "R6", "ArchiveError",
           "lacks the member 'exact.bin'", "unroll", "exact.bin left out of the zip, still listed.")
    yield ("member_size_mismatch",
           repack(tm, _edit(lambda m: m["members"]["exact.bin"].update(size=13))(tman), fix=False),
           "R6", "ArchiveError", "but manifest.json records 13", "unroll",
           "members[\"exact.bin\"].size set to 13 (the member is 12 bytes).")
    yield ("member_sha256_malformed",
           repack(tm, _edit(lambda m: m["members"]["exact.bin"].update(sha256="AB" * 32))(tman), fix=False),
           "R6", "ArchiveError", "sha256 must be 64 lowercase hex digits", "unroll",
           "members[\"exact.bin\"].sha256 set to 64 upper-case hex digits.")

    # R7: field types
    yield ("field_wrong_type", man(lambda m: m["image"].update(width="12")), "R7", "ArchiveError",
           "image.width must be of type int", "unroll", "image.width written as the string \"12\".")
    yield ("field_missing", kernel(lambda t: t.pop("sha256")), "R7", "ArchiveError",
           "is missing the field 'sha256'", "unroll", "The kernel's sha256 field removed.")

    # R8: image section
    yield ("image_member_name", man(lambda m: m["image"].update(member="codes.png")), "R8", "ArchiveError",
           "image.member must be 'weights.png'", "unroll", "image.member set to \"codes.png\".")
    yield ("image_zero_width", man(lambda m: m["image"].update(width=0)), "R8", "ArchiveError",
           "both must be >= 1", "unroll", "image.width set to 0.")
    yield ("image_too_many_codes", man(lambda m: m["image"].update(codes=13)), "R8", "ArchiveError",
           "does not fit a 12x1 image", "unroll", "image.codes set to 13 for a 12x1 image.")

    # R9: decoder section
    yield ("decoder_kind", man(lambda m: m["decoder"].update(kind="lut")), "R9", "ArchiveError",
           "decoder.kind must be one of", "unroll", "decoder.kind set to \"lut\".")
    yield ("decoder_bits", man(lambda m: m["decoder"].update(bits=9)), "R9", "ArchiveError",
           "decoder.bits must be in 1..8", "unroll", "decoder.bits set to 9.")
    yield ("decoder_table_shape", man(lambda m: m["decoder"]["weights"][0].update(shape=[4])), "R9",
           "ArchiveError", "a codebook decoder has two float32 arrays", "unroll",
           "The codebook table's shape set to [4] (same byte count).")
    yield ("decoder_bin_size", man(lambda m: m["decoder"]["weights"][1].update(shape=[2, 1]), v30), "R9",
           "ArchiveError", "the decoder weights take 24 bytes but 'decoder.bin' is 20", "unroll",
           "The worked example as format 3.0 stores it (decoder.bin raw), the scales array's shape set to "
           "[2, 1] while decoder.bin holds 4 + 1 entries.")
    too_large = (limits.MAX_DECODER_BYTES - 16) // 4 + 1  # scales after the 16 bytes of the table
    yield ("decoder_arrays_too_large", man(lambda m: m["decoder"]["weights"][1].update(shape=[too_large, 1])),
           "R9", "LimitError", f"the decoder weights take more than {limits.MAX_DECODER_BYTES} bytes", "unroll",
           f"The scales array's shape set to [{too_large}, 1]: the arrays would end at byte "
           f"{16 + 4 * too_large}, past MAX_DECODER_BYTES (decoder.bin.zst is left as it is, 20 bytes).")
    yield ("decoder_config_member", man(lambda m: m["decoder"].update(config_member="decoder.json")), "R9",
           "ArchiveError", "decoder.config_member must be 'decoder.json.zst'", "unroll",
           "decoder.config_member set to \"decoder.json\".")
    yield ("decoder_weights_member", man(lambda m: m["decoder"].update(weights_member=DECODER_BIN)), "R9",
           "ArchiveError", "decoder.weights_member must be 'decoder.bin.zst'", "unroll",
           "decoder.weights_member set to \"decoder.bin\", the member of format 3.x and earlier.")
    yield ("decoder_config_too_large", man(lambda m: m["decoder"].update(config_size=1 << 30)), "R9",
           "LimitError", "decoder.config_size=1073741824 exceeds the limit", "unroll",
           "decoder.config_size set to 2**30.")
    yield ("mlp_activation", man(lambda m: m["decoder"].update(activation="gelu"), mm),
           "R9", "ArchiveError", "decoder.activation must be one of", "unroll",
           "dense_mlp_8bit with decoder.activation set to \"gelu\".")

    # R10, R11: architecture section, required members
    yield ("architecture_too_large", man(lambda m: m["architecture"].update(size=1 << 30)), "R10",
           "LimitError", "architecture.size=1073741824 exceeds the limit", "unroll",
           "architecture.size set to 2**30.")
    no_json = _edit(lambda m: m["members"].pop("decoder.json.zst"))(tman)
    yield ("required_member_unlisted", repack(tm, no_json, drop=["decoder.json.zst"]), "R11", "ArchiveError",
           "must list the required member 'decoder.json.zst'", "unroll",
           "decoder.json.zst removed from the zip and from members.")
    no_zst = _edit(lambda m: m["members"].pop(DECODER_ZST))(tman)
    yield ("decoder_bin_zst_unlisted", repack(tm, no_zst, drop=[DECODER_ZST]), "R11", "ArchiveError",
           "must list the required member 'decoder.bin.zst'", "unroll",
           "decoder.bin.zst removed from the zip and from members (a 4.0 archive needs it).")

    # R12 - R21: tensors
    yield ("tensor_duplicate_path", bias(lambda t: t.update(path="dense/kernel")), "R12", "ArchiveError",
           "tensor path 'dense/kernel' appears twice", "unroll", "The bias's path set to \"dense/kernel\".")
    yield ("shape_negative", kernel(lambda t: t.update(shape=[-4, -3])), "R13", "ArchiveError",
           "must hold non-negative integers", "unroll", "The kernel's shape set to [-4, -3].")
    yield ("shape_too_many_elements", bias(lambda t: t.update(shape=[1 << 17, 1 << 17])), "R13",
           "LimitError", "has more than 8589934592 elements", "unroll",
           "The bias's shape set to [131072, 131072] (2**34 elements).")
    yield ("shape_rank", bias(lambda t: t.update(shape=[1] * 33)), "R13", "LimitError", "has rank 33",
           "unroll", "The bias's shape set to 33 ones.")

    def huge_references(m):
        for i in range(2):
            m["tensors"].append({"dtype": "float32", "path": f"huge_{i}", "sha256": "0" * 64,
                                 "shape": [limits.MAX_TENSOR_ELEMENTS], "storage": "reference"})
    yield ("tensors_too_many_elements_in_all", man(huge_references), "R13", "LimitError",
           f"hold more than {limits.MAX_TENSOR_ELEMENTS} elements in all", "unroll",
           f"Two reference tensors of shape [{limits.MAX_TENSOR_ELEMENTS}] appended: each within the limit, "
           "not their sum.")
    yield ("tensor_sha256_malformed", kernel(lambda t: t.update(sha256=t["sha256"][:63])), "R14",
           "ArchiveError", "sha256 must be 64 lowercase hex digits", "unroll",
           "The kernel's sha256 cut to 63 hex digits.")
    yield ("coding_sha256_malformed", kernel(lambda t: t.update(coding_sha256=t["coding_sha256"].upper())),
           "R14", "ArchiveError", "coding_sha256 must be 64 lowercase hex digits", "unroll",
           "The kernel's coding_sha256 in upper case.")
    yield ("coding_sha256_on_exact", bias(lambda t: t.update(coding_sha256=t["sha256"])), "R14",
           "ArchiveError", "on a coded tensor of a codebook archive only", "unroll",
           "The exact bias given a coding_sha256 (its sha256).")
    yield ("storage_unknown", bias(lambda t: t.update(storage="packed")), "R15", "ArchiveError",
           "storage must be 'coded', 'exact' or 'reference'", "unroll", "The bias's storage set to \"packed\".")
    yield ("coded_int_dtype", kernel(lambda t: t.update(dtype="int32")), "R15", "ArchiveError",
           "is coded but has dtype 'int32'", "unroll", "The coded kernel's dtype set to \"int32\".")
    yield ("exact_dtype_unknown", bias(lambda t: t.update(dtype="complex64")), "R15", "ArchiveError",
           "has unsupported dtype 'complex64'", "unroll", "The exact bias's dtype set to \"complex64\".")
    yield ("code_count_mismatch", kernel(lambda t: t["codes"].update(count=11)), "R16", "ArchiveError",
           "but 11 codes", "unroll", "The kernel's codes.count set to 11 for shape [4, 3].")
    yield ("code_range_outside_image", kernel(lambda t: t["codes"].update(offset=1)), "R16", "ArchiveError",
           "but the image holds 12 codes", "unroll", "The kernel's codes.offset set to 1 (needs codes 1..12).")
    yield ("table_range_outside_table", kernel(lambda t: t["table"].update(offset=1)), "R17", "ArchiveError",
           "uses table entries [1, 5)", "unroll", "The kernel's table.offset set to 1 (the table has 4 entries).")
    yield ("scales_offset_reserved", tol_tensor("hidden/kernel", lambda t: t["scales"].update(offset=0)),
           "R18", "ArchiveError", "uses scales [0, 16)", "unroll",
           "dense_tolerance with hidden/kernel's scales.offset set to 0 (the reserved entry).")
    yield ("scales_axis_mismatch", tol_tensor("hidden/kernel", lambda t: t["scales"].update(axis=0)),
           "R18", "ArchiveError", "which does not match its shape", "unroll",
           "dense_tolerance with hidden/kernel's scales.axis set to 0 (8 rows, 16 scales).")
    yield ("scales_outside", tol_tensor("hidden/kernel", lambda t: t["scales"].update(offset=2)),
           "R18", "ArchiveError", "uses scales [2, 18)", "unroll",
           "dense_tolerance with hidden/kernel's scales.offset set to 2 (the decoder has 17 scales).")
    yield ("mlp_tensor_table",
           man(lambda m: _tensor(m, "dense/kernel").update(table={"offset": 0, "size": 256}), mm),
           "R17", "ArchiveError", "has 'table', but an mlp decoder has no table", "unroll",
           "dense_mlp_8bit with a table field {offset 0, size 256} added to the kernel.")
    yield ("mlp_tensor_scales",
           man(lambda m: _tensor(m, "dense/kernel").update(scales={"offset": 1, "count": 3, "axis": 1}), mm),
           "R18", "ArchiveError", "has 'scales', but an mlp decoder has no scales", "unroll",
           "dense_mlp_8bit with a scales field {offset 1, count 3, axis 1} added to the kernel.")
    yield ("outliers_outside", tol_tensor("head/kernel", lambda t: t["outliers"].update(offset=20)),
           "R19", "ArchiveError", "has 2 outliers at bytes [20, 44)", "unroll",
           "dense_tolerance with head/kernel's outliers.offset set to 20 (exact.bin is 40 bytes).")
    yield ("exact_size_mismatch", bias(lambda t: t["bytes"].update(size=8)), "R20", "ArchiveError",
           "records 8 bytes", "unroll", "The bias's bytes.size set to 8 (3 float32 take 12).")
    yield ("exact_range_outside", bias(lambda t: t["bytes"].update(offset=4)), "R20", "ArchiveError",
           "needs bytes [4, 16)", "unroll", "The bias's bytes.offset set to 4 (exact.bin is 12 bytes).")

    def bias_coded(t):
        t.update(storage="coded", codes={"offset": 9, "count": 3}, table={"offset": 0, "size": 4})
        t.pop("bytes")
    yield ("code_ranges_overlap", bias(bias_coded), "R21", "ArchiveError", "overlap in their codes",
           "unroll", "The bias made coded with codes [9, 12), inside the kernel's codes [0, 12).")
    yield ("exact_ranges_overlap",
           man(lambda m: _tensor(m, "dense/bias")["bytes"].update(offset=40), dm),
           "R21", "ArchiveError", "overlap in their 'exact.bin' bytes", "unroll",
           "dense_dropout_exact with the bias's bytes.offset set to 40, inside the kernel's [0, 48).")
    yield ("outliers_overlap_exact", tol_tensor("head/bias", lambda t: t["bytes"].update(offset=16)),
           "R21", "ArchiveError", "overlap in their 'exact.bin' bytes", "unroll",
           "dense_tolerance with head/bias's bytes at [16, 32), inside head/kernel's outliers [0, 24).")

    # R22, R23: member bytes
    raw = bytearray(tiny)
    raw[member_data_offset(tiny, "exact.bin")] ^= 0x01
    yield ("zip_crc_mismatch", bytes(raw), "R22", "ArchiveError", "Zip member 'exact.bin' cannot be read",
           "unroll", "One bit of exact.bin's data flipped in place (zip CRC-32 and sha256 left).")
    flipped = bytearray(tdict["exact.bin"])
    flipped[0] ^= 0x01
    yield ("member_sha256_mismatch", repack(tm, replace={"exact.bin": bytes(flipped)}, fix=False), "R23",
           "ArchiveError", "Member 'exact.bin' does not match its SHA-256", "unroll",
           "One bit of exact.bin flipped, zip rewritten (valid CRC-32), manifest sha256 left.")
    arch_zst = bytearray(tdict["architecture.json.zst"])
    arch_zst[-1] ^= 0x01
    yield ("architecture_sha256_mismatch",
           repack(tm, replace={"architecture.json.zst": bytes(arch_zst)}, fix=False),
           "R23", "ArchiveError", "Member 'architecture.json.zst' does not match its SHA-256", "unroll",
           "One bit of architecture.json.zst flipped, zip rewritten, manifest sha256 left: unroll does "
           "not decode the architecture, but checks every member.")
    ddict = dict(dm)
    png_flipped = bytearray(ddict["weights.png"])
    png_flipped[-5] ^= 0x01
    yield ("uncoded_image_sha256_mismatch", repack(dm, replace={"weights.png": bytes(png_flipped)}, fix=False),
           "R23", "ArchiveError", "Member 'weights.png' does not match its SHA-256", "unroll",
           "dense_dropout_exact (no coded tensor, so the image is never decoded) with one bit of "
           "weights.png's IEND chunk flipped, zip rewritten, manifest sha256 left.")

    # R24 - R27: the PNG
    codes = np.array([2, 1, 3, 0, 2, 1, 3, 0, 2, 1, 3, 0], np.uint8)

    def png(data):
        return repack(tm, replace={"weights.png": data})
    yield ("png_signature", png(b"GIF89a" + bytes(40)), "R24", "ArchiveError", "is not a PNG file",
           "unroll", "weights.png replaced by 46 bytes starting with GIF89a (checksums updated).")
    bad_crc = bytearray(tdict["weights.png"])
    bad_crc[29] ^= 0xFF
    yield ("png_ihdr_crc", png(bytes(bad_crc)), "R24", "ArchiveError", "damaged IHDR chunk", "unroll",
           "First byte of the IHDR CRC inverted (checksums updated).")
    yield ("png_width_mismatch", png(png_bytes(np.zeros((2, 6), np.uint8))), "R24", "ArchiveError",
           "has width=6, but the manifest requires width=12", "unroll",
           "weights.png replaced by a 6x2 image; manifest says 12x1.")
    yield ("png_rgb", png(png_bytes(np.zeros((1, 12, 3), np.uint8), color_type=2)), "R24",
           "ArchiveError", "has color_type=2", "unroll", "weights.png replaced by a 12x1 RGB image.")
    yield ("png_interlaced", png(png_bytes(codes.reshape(1, 12), interlace=1)), "R24", "ArchiveError",
           "has interlace=1", "unroll", "weights.png with the IHDR interlace byte set to 1.")
    bomb = png_bytes(np.zeros((1, 1), np.uint8), size=(4096, 1 << 20))
    yield ("png_bomb", repack(tm, _edit(lambda m: m["image"].update(width=4096, height=1 << 20))(tman),
                              replace={"weights.png": bomb}),
           "R25", "LimitError", "beyond deflate's maximum ratio", "unroll",
           f"weights.png header claims 4096x1048576 pixels in {len(bomb)} bytes; manifest agrees.")
    yield ("png_corrupt_data", png(png_bytes(codes.reshape(1, 12), idat=b"\x78\xda" + bytes(8))), "R26",
           "ArchiveError", "'weights.png' cannot be decoded", "unroll",
           "weights.png with a valid 12x1 header and an IDAT that is not a zlib stream.")
    padded = np.zeros((1, 16), np.uint8)
    padded[0, :12] = codes
    padded[0, 15] = 7
    yield ("png_nonzero_padding", repack(tm, _edit(lambda m: m["image"].update(width=16))(tman),
                                         replace={"weights.png": png_bytes(padded)}),
           "R27", "ArchiveError", "non-zero padding", "unroll",
           "A 16x1 image (manifest width 16): 12 codes, then padding 0, 0, 0, 7.")

    # R28 - R32: decoding
    # An edit of the decoder's arrays edits what decoder.bin.zst decompresses to and compresses it
    # again as the writer does (4.x); in an older archive it edits decoder.bin.
    floats = np.frombuffer(decoder_bytes(tm), "<f4").copy()  # table (4 entries), then scales (1)

    def decoder_bin(values, members=tm):
        return repack(members, replace=with_decoder_bytes(members, np.asarray(values, "<f4").tobytes()))
    edited = floats.copy()
    edited[4] = 2.0
    yield ("scales_first_not_one", decoder_bin(edited), "R28", "ArchiveError", "scales[0] must be 1.0",
           "unroll", "scales[0] (the last 4 bytes of the decoder's arrays) set to 2.0 in decoder.bin.zst "
           "(compressed again, checksums updated).")
    edited = floats.copy()
    edited[0] = np.inf
    yield ("table_not_finite", decoder_bin(edited), "R29", "ArchiveError", "yields non-finite weights",
           "unroll", "Table entry 0 in decoder.bin.zst set to +inf (compressed again, checksums updated).")
    ufloats = np.frombuffer(decoder_bytes(um), "<f4").copy()
    scales_at = uman["decoder"]["weights"][1]["offset"] // 4
    ufloats[scales_at + 3] = np.nan
    yield ("scales_not_finite", decoder_bin(ufloats, um), "R29", "ArchiveError", "yields non-finite weights",
           "unroll", "dense_tolerance with scales[3] in decoder.bin.zst set to NaN (compressed again, "
           "checksums updated).")
    mlp_weights = manifest_of(mm)["decoder"]["weights"]
    mbin = bytearray(decoder_bytes(mm))
    struct.pack_into("<d", mbin, mlp_weights[-1]["offset"], float("inf"))
    yield ("mlp_not_finite", repack(mm, replace=with_decoder_bytes(mm, mbin)), "R29", "ArchiveError",
           "yields non-finite weights", "unroll",
           "dense_mlp_8bit with the output bias (dense_2/bias) set to +inf in decoder.bin.zst (compressed "
           "again, checksums updated).")
    yield ("code_outside_table", kernel(lambda t: t["table"].update(size=3)), "R30", "ArchiveError",
           "has code 3, outside its 3-entry table", "unroll",
           "The kernel's table.size set to 3; its codes include 3.")
    trellis_kernel = _tensor(manifest_of(trm), "dense/kernel")
    low = trellis_kernel["trellis"]["low"]
    yield ("trellis_index_outside_table", _trellis_edit(trm, low=low + 1), "R30", "ArchiveError",
           "has trellis codes that index entry -1 of its", "unroll",
           f"dense_trellis with the kernel's trellis.low set to {low + 1} (from {low}): the codes of its "
           "lowest reconstruction level now index entry -1. Its coding_sha256, which covers low, is "
           "computed again, so that only the index check fails.")
    outliers = _tensor(uman, "head/kernel")["outliers"]
    ebin = bytearray(udict["exact.bin"])
    start = outliers["offset"]
    first, second = struct.unpack_from("<qq", ebin, start)
    struct.pack_into("<qq", ebin, start, second, first)
    yield ("outlier_indices_unordered", repack(um, replace={"exact.bin": bytes(ebin)}), "R31", "ArchiveError",
           "outlier indices that are not strictly increasing", "unroll",
           f"dense_tolerance with head/kernel's two outlier indices ({first}, {second}) swapped in "
           "exact.bin (checksums updated).")
    rm = read_members(bases["dense_reference"])
    yield ("reference_without_base", bases["dense_reference"], "R32", "ArchiveError",
           "pass the base it was rolled against", "unroll",
           "dense_reference.wroll unchanged, read without a base.")
    other = "0" * 64
    yield ("reference_not_in_base", man(lambda m: _tensor(m, "dense/kernel").update(sha256=other), rm), "R32",
           "ArchiveError", "that the given base does not hold bit for bit", "unroll",
           "dense_reference with the kernel's sha256 set to 64 zeros; read with "
           "dense_reference.base.json as the base.", "dense_reference.base.json")
    swapped = floats.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    yield ("coding_digest_mismatch", decoder_bin(swapped), "R39", "ArchiveError",
           "differ from those recorded (coding_sha256)", "unroll",
           "Table entries 0 and 1 in decoder.bin.zst swapped (compressed again, checksums updated): the "
           "data are self-consistent, only the kernel's coding digest notices.")
    yield ("trellis_digest_mismatch", _trellis_edit(trm, segment=512, digest=False), "R39", "ArchiveError",
           "differ from those recorded (coding_sha256)", "unroll",
           "dense_trellis with the kernel's trellis.segment set to 512 (from 1024), its coding_sha256 left: "
           "the digest covers the trellis field.")

    # What a format 1.0 writer wrote: decoder.bin raw, the manifest raw, no coding digests.
    v10 = read_members(as_version(tiny, "1.0", strip_coding=True))
    yield ("digest_mismatch", decoder_bin(swapped, v10), "R33", "ArchiveError",
           "decodes to values whose SHA-256 differs", "unroll",
           "A format 1.0 archive (the worked example as format 1.0 stores it: decoder.bin and manifest.json "
           "raw, no coding_sha256 fields) with table entries 0 and 1 of decoder.bin swapped (checksums "
           "updated): only the tensor digest notices.")

    # R34: bool bytes
    def bias_bool(t):
        t.update(dtype="bool", shape=[12])  # the same 12 bytes, so the same digest
    yield ("bool_not_0_or_1", bias(bias_bool), "R34", "ArchiveError", "values other than 0x00 and 0x01",
           "unroll", "The exact bias relabelled bool of shape [12]: its bytes (and digest) are unchanged, "
           "but 0x3e and 0xbf are not bools.")

    # R35: decoder.bin.zst (4.x), one zstd frame of exactly the bytes the arrays take, nothing after it
    frame = tdict[DECODER_ZST]
    raw = decoder_bytes(tm)
    yield ("decoder_bin_not_zstd", repack(tm, replace={DECODER_ZST: raw}), "R35", "ArchiveError",
           "'decoder.bin.zst' is not a zstd frame", "unroll",
           f"decoder.bin.zst replaced by the {len(raw)} bytes it decompresses to, stored raw as decoder.bin "
           "was before 4.0 (checksums updated).")
    yield ("decoder_frame_size_mismatch", repack(tm, replace={DECODER_ZST: _declare_size(frame, len(raw) + 1)}),
           "R35", "ArchiveError", f"'decoder.bin.zst' declares {len(raw) + 1} bytes but manifest.json says "
           f"{len(raw)}", "unroll",
           f"decoder.bin.zst's frame header declaring {len(raw) + 1} bytes, one more than the frame holds and "
           "than the arrays take (checksums updated).")
    yield ("decoder_frame_trailing_data", repack(tm, replace={DECODER_ZST: frame + b"\x00"}), "R35",
           "ArchiveError", "'decoder.bin.zst' has 1 bytes after its zstd frame", "unroll",
           "One zero byte appended to decoder.bin.zst after its frame (checksums updated).")
    yield ("decoder_arrays_longer_than_frame",
           repack(tm, _edit(lambda m: m["decoder"]["weights"][1].update(shape=[2, 1]))(tman),
                  replace={DECODER_ZST: _zstd(raw, content_size=False)}),
           "R35", "ArchiveError", f"'decoder.bin.zst' expands to {len(raw)} bytes; manifest.json declares "
           f"{len(raw) + 4}", "unroll",
           f"The scales array's shape set to [2, 1] (the arrays take {len(raw) + 4} bytes), decoder.bin.zst "
           f"a frame of the {len(raw)} bytes without a content size (checksums updated).")

    # R45 (4.0): the trellis field
    yield ("trellis_segment_zero", _trellis_edit(trm, segment=0), "R45", "ArchiveError",
           "trellis.segment must be in [1, 65536]", "unroll",
           "dense_trellis with the kernel's trellis.segment set to 0 (coding_sha256 computed again).")
    yield ("trellis_zero_out_of_range", _trellis_edit(trm, zero=300), "R45", "ArchiveError",
           "trellis.zero must be in [-255, 255]", "unroll",
           "dense_trellis with the kernel's trellis.zero set to 300 (coding_sha256 computed again).")
    yield ("trellis_in_mlp",
           man(lambda m: _tensor(m, "dense/kernel").update(trellis={"segment": 1024, "zero": 0, "low": 0}), mm),
           "R45", "ArchiveError", "has 'trellis', which only a codebook decoder defines", "unroll",
           "dense_mlp_8bit with a trellis field {segment 1024, zero 0, low 0} added to the kernel.")

    # R35 - R38: the architecture member and the decoder config (read by Keras loaders only)
    arch_json = _unzstd(tdict["architecture.json.zst"])
    yield ("architecture_size_mismatch", man(lambda m: m["architecture"].update(size=100)), "R35",
           "ArchiveError", "but manifest.json says 100", "load_rolled",
           f"architecture.size set to 100; the zstd frame declares {len(arch_json)}.")
    yield ("architecture_not_zstd", repack(tm, replace={"architecture.json.zst": b"not zstd at all\n"}),
           "R35", "ArchiveError", "is not a zstd frame", "load_rolled",
           "architecture.json.zst replaced by plain text (checksums updated).")
    yield ("architecture_expands_beyond",
           repack(tm, _edit(lambda m: m["architecture"].update(size=len(arch_json) - 1))(tman),
                  replace={"architecture.json.zst": _zstd(arch_json, content_size=False)}),
           "R35", "LimitError", f"expands to more than the {len(arch_json) - 1} bytes", "load_rolled",
           "A zstd frame without a content size; architecture.size one byte short of the output.")
    dup = arch_json.replace(b"{", b'{"module":"keras",', 1)
    yield ("architecture_duplicate_key",
           repack(tm, _edit(lambda m: m["architecture"].update(size=len(dup)))(tman),
                  replace={"architecture.json.zst": _zstd(dup)}),
           "R36", "ArchiveError", "has the key 'module' twice", "load_rolled",
           "A second \"module\" key at the top of the architecture JSON (sizes and checksums updated).")
    yield from _keras_loader_vectors(tm, arch_json, man, bases)


def _trellis_edit(members, digest=True, **fields):
    """`members` (dense_trellis) with the kernel's `trellis` fields set to
    `fields`; with `digest`, its `coding_sha256` computed again over the
    edited field (spec §7.5), so that the edit reaches the rule it is for."""
    from weightroll._format.decode import coding_digest
    from weightroll._format.image import decode_png

    manifest = manifest_of(members)
    kernel = _tensor(manifest, "dense/kernel")
    kernel["trellis"].update(fields)
    if digest:
        found = dict(members)
        codes = decode_png(found["weights.png"], manifest["image"]["width"], manifest["image"]["height"],
                           manifest["image"]["codes"])
        table, scales = (a.reshape(-1) for a in _decoder_arrays(members, manifest))
        kernel["coding_sha256"] = coding_digest(kernel, codes, table, scales, found.get("exact.bin", b""))
    return repack(members, manifest)


def _decoder_arrays(members, manifest):
    """The decoder's arrays of an archive, as the manifest lays them out."""
    raw = decoder_bytes(members)
    return [np.frombuffer(raw, "<" + ("f4" if w["dtype"] == "float32" else "f8"), int(np.prod(w["shape"])),
                          w["offset"]).reshape(w["shape"]) for w in manifest["decoder"]["weights"]]


def _with_architecture(members, text, content_size=True, size=None):
    """`members` with architecture.json.zst holding `text` (sizes and checksums updated)."""
    manifest = manifest_of(members)
    manifest["architecture"]["size"] = len(text) if size is None else size
    return repack(members, manifest, replace={"architecture.json.zst": _zstd(text, content_size)})


def _architecture_of(model):
    from weightroll._keras.model_io import architecture_json

    return architecture_json(model)


def _keras_loader_vectors(tm, arch_json, man, bases=None):
    """Invalid vectors that only a reader of the JSON members (a Keras loader) notices: R35 to R38."""
    import keras

    config = json.loads(arch_json)

    def arch_text(obj):
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")

    # R35: one zstd frame of exactly the declared size, nothing after it
    yield ("architecture_shorter_than_declared",
           _with_architecture(tm, arch_json, content_size=False, size=len(arch_json) + 1),
           "R35", "ArchiveError",
           f"expands to {len(arch_json)} bytes; manifest.json declares {len(arch_json) + 1}",
           "load_rolled", "A zstd frame without a content size; architecture.size one byte more than the output.")
    trailing = repack(tm, replace={"architecture.json.zst": _zstd(arch_json) + b"\x00"})
    yield ("architecture_trailing_data", trailing, "R35", "ArchiveError", "has 1 bytes after its zstd frame",
           "load_rolled", "One zero byte appended to architecture.json.zst after its frame (checksums updated).")
    yield ("decoder_config_size_mismatch", man(lambda m: m["decoder"].update(config_size=100)), "R35",
           "ArchiveError", "'decoder.json.zst' declares", "load_rolled",
           "decoder.config_size set to 100; the zstd frame declares the real size.")

    # R36: strict JSON, an object, not too deep
    deep = dict(config, x_deep=json.loads("[" * (limits.MAX_JSON_DEPTH) + "]" * (limits.MAX_JSON_DEPTH)))
    yield ("architecture_too_deep", _with_architecture(tm, arch_text(deep)), "R36", "LimitError",
           f"nested {limits.MAX_JSON_DEPTH + 1} levels deep", "load_rolled",
           f"A key x_deep holding {limits.MAX_JSON_DEPTH} nested empty arrays added to the architecture object.")
    yield ("architecture_not_object", _with_architecture(tm, b"[]"), "R36", "ArchiveError",
           "must hold a JSON object", "load_rolled", "The architecture JSON is an empty array.")
    manifest = manifest_of(tm)
    manifest["decoder"]["config_size"] = 1
    yield ("decoder_config_not_json", repack(tm, manifest, replace={"decoder.json.zst": _zstd(b"{")}), "R36",
           "ArchiveError", "'decoder.json.zst' is not valid JSON", "load_rolled",
           "decoder.json.zst replaced by a frame of the one byte '{' (sizes and checksums updated).")

    # R37: the architecture builds a keras.Model, without running stored code in safe mode
    unsafe = json.loads(arch_json)
    dense = next(layer for layer in unsafe["config"]["layers"] if layer["name"] == "dense")
    dense["config"]["activation"] = {"class_name": "__lambda__", "config": {"value": "bm90IGJ5dGVjb2Rl"}}
    yield ("architecture_lambda", _with_architecture(tm, arch_text(unsafe)), "R37", "UnsafeArchiveError",
           "a Python lambda serialised as bytecode in layer 'dense'", "load_rolled",
           "The dense layer's activation replaced by a serialised Python lambda, as Keras writes one "
           "(its `value`, base64 of 'not bytecode', is not runnable: readers must refuse it unread).")
    unknown = json.loads(arch_json)
    dense = next(layer for layer in unknown["config"]["layers"] if layer["name"] == "dense")
    dense["class_name"] = "NoSuchLayer"
    yield ("architecture_unknown_class", _with_architecture(tm, arch_text(unknown)), "R37", "WrollError",
           "The model's architecture cannot be rebuilt", "load_rolled",
           "The dense layer's class_name set to \"NoSuchLayer\".")
    _reset_names()
    layer = keras.saving.serialize_keras_object(keras.layers.Dense(3, name="dense"))
    yield ("architecture_not_a_model", _with_architecture(tm, arch_text(layer)), "R37", "WrollError",
           "describes a Dense, not a keras.Model", "load_rolled",
           "The architecture replaced by the config of a lone Dense(3) layer.")

    # R38: one variable per tensor, same shapes, same kinds of dtype
    _reset_names()
    inputs = keras.Input(shape=(4,), name="x")
    no_bias = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="dense")(inputs), name="tiny")
    yield ("variables_count_mismatch", _with_architecture(tm, _architecture_of(no_bias)), "R38", "WrollError",
           "Layer 'dense' expected 1 variables, but received 2 variables", "load_rolled",
           "The architecture of the same model built with use_bias=False (one variable for two tensors).")
    _reset_names()
    inputs = keras.Input(shape=(5,), name="x")
    wider = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs), name="tiny")
    yield ("variable_shape_mismatch", _with_architecture(tm, _architecture_of(wider)), "R38", "WrollError",
           "Variable 'dense/kernel' has shape (5, 3), but the archive's tensor 'dense/kernel' has shape (4, 3)",
           "load_rolled", "The architecture of the same model on 5 inputs instead of 4.")
    # R40 (2.0): names bound to data
    def swap_paths(m):
        a, b = _tensor(m, "dense/kernel"), _tensor(m, "dense/bias")
        a["path"], b["path"] = b["path"], a["path"]
    yield ("binding_paths_swapped", repack(tm, _edit(swap_paths)(manifest_of(tm)), rebind=False), "R40", "ArchiveError",
           "binding_sha256 does not match", "unroll",
           "The kernel's and the bias's paths swapped, their bindings left as written.")
    yield ("binding_key_missing", man(lambda m: _tensor(m, "dense/bias").pop("key")), "R7", "ArchiveError",
           "is missing the field 'key'", "unroll", "The bias's key removed (a 2.0 tensor needs one).")
    yield ("binding_key_twice", man(lambda m: _tensor(m, "dense/bias").update(key=_tensor(m, "dense/kernel")["key"])),
           "R40", "ArchiveError", "unique in the archive", "unroll", "The bias given the kernel's key (rebound).")
    # R41 (2.0): asset paths
    lm = read_members(bases["string_lookup"])
    asset = manifest_of(lm)["assets"][0]["path"]

    def escape(m):
        m["assets"][0]["path"] = "../" + asset
    yield ("asset_path_escapes", repack(lm, _edit(escape)(manifest_of(lm))), "R41", "ArchiveError",
           "must be a unique relative path", "load_rolled", "The vocabulary's asset path given a leading '../'.")
    yield ("asset_member_missing", repack(lm, drop=("assets/" + asset,)), "R6", "ArchiveError",
           "lacks the member", "load_rolled", "The vocabulary's asset member left out of the zip.")
    # R43 (2.0): a sharded archive's index
    def escape_shard(m):
        m["tensors"] = []
        m["shards"] = [{"file": "../outside.wroll", "manifest_sha256": "0" * 64, "tensors": 2}]
    yield ("shard_file_escapes", man(escape_shard), "R43", "ArchiveError", "must be a unique plain file name",
           "unroll", "An index (no tensors) listing the shard '../outside.wroll', outside its folder.")
    # R42 (2.0): integer tables
    qm = read_members(bases["dense_int8"])
    qman = manifest_of(qm)
    coded_int = next(t for t in qman["tensors"] if t["dtype"] == "int8" and t["storage"] == "coded")
    table = bytearray(decoder_bytes(qm))
    struct.pack_into("<f", table, 4 * coded_int["table"]["offset"], 0.5)
    yield ("integer_table_fraction", repack(qm, replace=with_decoder_bytes(qm, table)), "R42", "ArchiveError",
           "not integers in [-128, 127]", "unroll",
           "The int8 kernel's first table entry set to 0.5 in decoder.bin.zst (compressed again).")
    yield ("variable_dtype_kind", man(lambda m: _tensor(m, "dense/bias").update(dtype="int32")), "R38",
           "WrollError",
           "Variable 'dense/bias' is float32, but the archive's tensor 'dense/bias' is int32", "load_rolled",
           "The exact bias relabelled int32: the same 12 bytes and digest, so unroll returns it, but a float "
           "variable does not take an integer tensor.")


def forward_compatible(bases):
    """A valid archive from a future minor version: 4.9, with unknown fields."""
    members = read_members(bases[EXAMPLE])
    manifest = manifest_of(members)
    manifest["format_version"] = "4.9"
    manifest["x_future_section"] = {"note": "unknown fields are ignored"}
    manifest["tensors"][0]["x_future_field"] = [1, 2, 3]
    manifest["decoder"]["x_future_field"] = True
    return repack(members, manifest)


def decoder_bytes(members):
    """The decoder's arrays, as `decoder.bin` holds them: `decoder.bin.zst`
    decompressed (4.x), or `decoder.bin` (1.x to 3.x)."""
    found = dict(members)
    return _unzstd(found[DECODER_ZST]) if DECODER_ZST in found else found[DECODER_BIN]


def with_decoder_bytes(members, raw):
    """`replace=` for `repack`: the decoder's arrays set to `raw`, compressed
    as weightroll's writer does in a 4.x archive, raw in an older one."""
    from weightroll._format.writer import _zstd as writer_zstd

    if DECODER_ZST in dict(members):
        return {DECODER_ZST: writer_zstd(bytes(raw))}
    return {DECODER_BIN: bytes(raw)}


def as_version(data, version, strip_coding=False):
    """An archive of format 3.0 or 4.0 (without trellis codes) as format
    `version` stores it: relabelled; before 4.0, its decoder's arrays raw in
    `decoder.bin` (`decoder.weights_member` too); before 3.0, the manifest
    raw in `manifest.json`; before 2.0, its tensors without `key` and
    `binding_sha256` (assigned by position). Nothing else changed between
    the versions, so but for the tables and scales that 4.0 writers round to
    11 significant bits (none in a k-means or lossless table), this is what
    their writers wrote. `strip_coding` drops the `coding_sha256` fields too
    (a 1.0 archive has none)."""
    members = read_members(data)
    manifest = manifest_of(members)
    major = int(version.split(".")[0])
    if major < 4 and DECODER_ZST in dict(members):
        assert not any("trellis" in t for t in manifest["tensors"]), "trellis codes are 4.0"
        raw = decoder_bytes(members)
        members = [(DECODER_BIN, raw) if n == DECODER_ZST else (n, d) for n, d in members]
        del manifest["members"][DECODER_ZST]
        manifest["members"][DECODER_BIN] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        manifest["decoder"]["weights_member"] = DECODER_BIN
    manifest["format_version"] = version
    for t in manifest["tensors"]:
        if major < 2:
            del t["key"], t["binding_sha256"]
        if strip_coding:
            t.pop("coding_sha256", None)
    return repack(members, manifest, fix=False, rebind=False)


def with_ignored_trellis(data):
    """A 3.0 archive whose uniform-coded tensor has a `trellis` field (with
    `segment` 1 every code would be its own segment): 3.x defines no such
    field, so readers ignore it (spec §12) and decode as without it."""
    members = read_members(data)
    manifest = manifest_of(members)
    assert manifest["format_version"] == "3.0"
    tensor = _tensor(manifest, "hidden/kernel")
    tensor["trellis"] = {"segment": 1, "zero": 0, "low": 0}
    tensor["quantizer"] = "trellis"
    return repack(members, manifest, fix=False, rebind=False)


# Vectors kept as an earlier release wrote them: `generate` copies each (it
# cannot write them again: weightroll writes 4.0 now) after checking its SHA-256.
FROZEN = {
    # dense_tolerance as weightroll wrote it in format 3.0 (decoder.bin raw,
    # tables and scales of full binary32 precision).
    "v3_dense_tolerance": "25ade04e409bd5d089a9938477c6cc01ec5b2f3b98a8ab7ac5c79271d1160f76",
}

# Valid vectors of older MAJOR versions (and one with an unknown field), each
# derived from a vector above: a 4.x reader reads them as their own readers did.
OLDER = [
    ("v3_trellis_ignored", "v3_dense_tolerance", with_ignored_trellis),
    ("v2_dense_tolerance", "v3_dense_tolerance", lambda data: as_version(data, "2.0")),
    ("v1_dense_codebook_2bit", EXAMPLE, lambda data: as_version(data, "1.1")),
]


# --- generation ------------------------------------------------------------------


def environment():
    """The versions the bytes of the vectors depend on, besides this script and
    weightroll's code. Nothing about the machine: the coders' sums, the trellis
    search and the MLP's fit are the same bits on every CPU and BLAS, with or
    without weightroll's C kernels, and zlib-ng's Huffman-only deflate takes no
    CPU-specific path."""
    import keras
    import zstandard
    from zlib_ng import zlib_ng

    import weightroll

    major_minor = ".".join(platform.python_version_tuple()[:2])
    return {
        "python": major_minor,  # zipfile writes the container
        "weightroll": weightroll.__version__,  # the manifest's producer
        "keras": keras.__version__,  # the architecture's config, the manifest's producer
        "keras_backend": keras.backend.backend(),
        "numpy": ".".join(np.__version__.split(".")[:2]),  # its algorithms (sort, histogram, rint...)
        "python_zlib": zlib.ZLIB_RUNTIME_VERSION,  # zlib.compress: the hand-made PNGs of invalid vectors
        "zlib_ng": zlib_ng.ZLIBNG_VERSION,  # the code image's deflate
        "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),  # the zstd members
    }


def generate(outdir):
    """Write every vector into `outdir`; return the relative paths written, sorted."""
    import weightroll

    os.makedirs(os.path.join(outdir, "invalid"), exist_ok=True)
    written, bases = [], {}
    for name, build, kwargs, _ in VALID:
        path = os.path.join(outdir, name + ".wroll")
        kwargs = dict(kwargs)
        if kwargs.get("base") == "base":
            base = _base_of_dense_reference()
            kwargs["base"] = base
            _write_json(os.path.join(outdir, name + ".base.json"), _entries(base), sort_keys=False)
            written.append(name + ".base.json")
        weightroll.roll(build(), path, **kwargs)
        with open(path, "rb") as f:
            bases[name] = f.read()
        written.append(name + ".wroll")

    future = "minor_version_4_9"
    with open(os.path.join(outdir, future + ".wroll"), "wb") as f:
        f.write(forward_compatible(bases))
    written.append(future + ".wroll")
    for name, sha256 in FROZEN.items():
        with open(os.path.join(HERE, name + ".wroll"), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(f"{name}.wroll is not the archive an earlier release wrote; restore it from git")
        if os.path.abspath(outdir) != HERE:
            with open(os.path.join(outdir, name + ".wroll"), "wb") as f:
                f.write(data)
        bases[name] = data
        written.append(name + ".wroll")
    for name, source, convert in OLDER:
        data = convert(bases[source])
        with open(os.path.join(outdir, name + ".wroll"), "wb") as f:
            f.write(data)
        bases[name] = data
        written.append(name + ".wroll")

    for rel in [r for r in written if r.endswith(".wroll")]:
        stem = rel[: -len(".wroll")]
        base = load_base(os.path.join(outdir, stem + ".base.json"))
        _write_json(os.path.join(outdir, stem + ".expected.json"),
                    _expected(os.path.join(outdir, rel), base), sort_keys=False)
        written.append(stem + ".expected.json")

    index = []
    for name, data, rule, error, match, operation, edit, *base in invalid_vectors(bases):
        rel = f"invalid/{name}.wroll"
        with open(os.path.join(outdir, rel), "wb") as f:
            f.write(data)
        written.append(rel)
        entry = {"file": f"{name}.wroll", "rule": rule, "error": error, "match": match,
                 "operation": operation, "edit": edit}
        if base:
            entry["base"] = base[0]
        index.append(entry)
    _write_json(os.path.join(outdir, "invalid", "index.json"), index, sort_keys=False)
    written.append("invalid/index.json")

    _write_json(os.path.join(outdir, "environment.json"), environment())
    written.append("environment.json")
    return sorted(written)


# --- the worked example ---------------------------------------------------------


def worked_example(archive_path):
    """The blocks of the spec's worked example, as text, for one archive."""
    import zstandard

    with open(archive_path, "rb") as f:
        data = f.read()
    blocks = {"archive-size": str(len(data))}
    rows = ["name                   header  data    size  CRC-32"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {}
        for info in zf.infolist():
            start = member_data_offset(data, info.filename)
            rows.append(f"{info.filename:<22} {info.header_offset:>6} {start:>5} {info.file_size:>7}  {info.CRC:08x}")
            members[info.filename] = zf.read(info)
        eocd = data.rindex(b"PK\x05\x06")
        cd_offset = struct.unpack("<I", data[eocd + 16: eocd + 20])[0]
        rows.append(f"central directory      {cd_offset:>6}        {eocd - cd_offset:>5}")
        rows.append(f"end of central dir     {eocd:>6}        {len(data) - eocd:>5}")
    blocks["members"] = "\n".join(rows)
    first = _central_entries(data)[MANIFEST][0]
    blocks["zip-local-header"] = _hex(data[:30 + len(MANIFEST)])
    blocks["zip-central-entry"] = _hex(data[first: first + 46 + len(MANIFEST)])
    blocks["zip-end-record"] = _hex(data[eocd:])
    frame = members[MANIFEST]
    blocks["manifest-frame-header"] = _hex(frame[:_frame_header(frame)[0]])
    text = manifest_text(list(members.items()))
    blocks["manifest"] = text.decode("ascii").rstrip("\n")
    blocks["manifest-indented"] = json.dumps(json.loads(text), indent=1, sort_keys=True)
    png = members["weights.png"]
    blocks["png-ihdr"] = _hex(png[:33])
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    blocks["png-scanline"] = _hex(zlib.decompress(png[41: 41 + idat_len]))
    frame = members[DECODER_ZST]
    blocks["decoder-bin-zst"] = _hex(frame)
    blocks["decoder-bin"] = _hex(_unzstd(frame))
    if "exact.bin" in members:
        blocks["exact-bin"] = _hex(members["exact.bin"])
    blocks["architecture"] = json.dumps(
        json.loads(zstandard.ZstdDecompressor().decompress(members["architecture.json.zst"])), indent=1,
        sort_keys=True)
    blocks["decoder-json"] = json.dumps(
        json.loads(zstandard.ZstdDecompressor().decompress(members["decoder.json.zst"])), indent=1,
        sort_keys=True)
    trellis = os.path.join(os.path.dirname(os.path.abspath(archive_path)), TRELLIS_EXAMPLE + ".wroll")
    if os.path.exists(trellis):  # the vector beside the archive
        blocks["trellis-walk"] = trellis_walk(trellis)
    return blocks


TRELLIS_EXAMPLE = "dense_trellis"


def trellis_walk(archive_path, count=10):
    """The first `count` elements of the trellis-coded kernel of `archive_path`
    decoded by hand (spec §6.2), one row each; checked against weightroll."""
    import weightroll
    from weightroll._format.image import decode_png

    with open(archive_path, "rb") as f:
        members = read_members(f.read())
    manifest = manifest_of(members)
    kernel = next(t for t in manifest["tensors"] if "trellis" in t)
    image = manifest["image"]
    codes = decode_png(dict(members)["weights.png"], image["width"], image["height"], image["codes"])
    table, scales = (a.reshape(-1) for a in _decoder_arrays(members, manifest))
    t, s, axis = kernel["table"]["offset"], kernel["scales"]["offset"], kernel["scales"]["axis"]
    segment, zero, low = (kernel["trellis"][k] for k in ("segment", "zero", "low"))
    assert axis == len(kernel["shape"]) - 1  # the element's channel is j % shape[-1]
    decoded = weightroll.unroll(archive_path)[kernel["path"]].reshape(-1)
    o = kernel["outliers"]
    exact = dict(members)["exact.bin"]
    outliers = dict(zip(np.frombuffer(exact, "<i8", o["count"], o["offset"]).tolist(),
                        np.frombuffer(exact, "<f4", o["count"], o["offset"] + 8 * o["count"])))
    rows = [" j  code  state   k    m  index  T[t+index]    channel  S[s+channel]  value"]
    state = 0
    for j in range(count):
        if j % segment == 0:
            state = 0
        c = int(codes[kernel["codes"]["offset"] + j])
        k = c - zero
        m = 2 * k if state <= 1 else 2 * k - (k > 0) + (k < 0)
        index = m - low
        channel = j % kernel["shape"][-1]
        value = np.float32(table[t + index]) * np.float32(scales[s + channel])
        shown = f"{float(value):.9g}"
        if j in outliers:  # the code still drives the state; the value is the outlier's
            value = outliers[j]
            shown = f"outlier: {float(value):.9g}"
        assert value.tobytes() == decoded[j].tobytes(), j
        rows.append(f"{j:>2}  {c:>4}  {state:>5}  {k:>3}  {m:>3}  {index:>5}  {float(table[t + index]):<12.9g}  "
                    f"{channel:>7}  {float(scales[s + channel]):<12.9g}  {shown}")
        state = [[0, 2], [2, 0], [1, 3], [3, 1]][state][k % 2]
    return "\n".join(rows)


def _hex(data):
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i: i + 16]
        lines.append(f"{i:04x}: " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines)


def main(argv):
    if argv[:1] == ["--example"]:
        path = argv[1] if len(argv) > 1 else os.path.join(HERE, EXAMPLE + ".wroll")
        for name, text in worked_example(path).items():
            print(f"<!-- example:{name} -->\n{text}\n")
        return 0
    outdir = argv[0] if argv else HERE
    for rel in generate(outdir):
        print(rel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
