"""An independent reader of `.wroll` archives, written from spec/wroll-v4.md alone.

It shares no code with the `weightroll` package: it is an oracle that the package's
reader is tested against (tests/test_reference_reader.py). It reads formats 1.x to 4.x:
4.x's trellis codes (§6.2) and compressed decoder arrays (`decoder.bin.zst`, §4.7) as
well as the raw `decoder.bin` of earlier versions. It decodes valid archives and checks
every checksum and digest that the spec defines (zip CRC-32, member SHA-256s, the zstd
members' sizes, tensor `sha256` and `coding_sha256`), but it implements only some of the
rejection rules of §15.

    import reference_reader
    tensors = reference_reader.read("model.wroll")        # {path: numpy array}
    tensors = reference_reader.read("ft.wroll", base={"dense/kernel": kernel, ...})
"""

import hashlib
import json
import zipfile
import zlib

import numpy as np
import zstandard

PNG_SIGNATURE = bytes.fromhex("89504e470d0a1a0a")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # §14
MAX_DECODER_BYTES = 256 * 1024 * 1024  # §14: what decoder.bin.zst (4.x) may decompress to
TRELLIS_NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]])  # §6.2: next[state][k mod 2]


def _strict_json(data):  # §3: UTF-8 (no BOM), no repeated key, finite numbers only
    def pairs(items):
        if len({k for k, _ in items}) != len(items):
            raise ValueError("JSON object repeats a key")
        return dict(items)

    def number(text):
        value = float(text)
        if not np.isfinite(value):
            raise ValueError(f"JSON number {text} is not finite")
        return value

    def constant(name):
        raise ValueError(f"JSON token {name} is not allowed")

    return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_float=number,
                      parse_constant=constant)


def _zstd(data, size):
    """§2.3, §4.7, §10.1 (R35): one zstd frame that decompresses to exactly `size` bytes, and
    nothing after it; a content size in its header, if any, must be `size`. At most `size + 1`
    bytes are ever decompressed."""
    try:
        declared = zstandard.frame_content_size(data)  # -1 when the header does not say
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd member is not a zstd frame ({e})") from None
    if declared not in (-1, size):
        raise ValueError(f"zstd frame declares {declared} bytes, not {size}")
    try:  # one frame only, and no more than one byte past `size` of it
        # One read: it fills its buffer unless the frame ends first (a second read would go on
        # into whatever follows the frame).
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            text = reader.read(size + 1)
        if len(text) != size:
            raise ValueError(f"zstd member decompresses to {'more' if len(text) > size else 'fewer'} "
                             f"than {size} bytes")
        # Now known to be a frame of `size` bytes: decompress it again to find where it ends.
        frame = zstandard.ZstdDecompressor().decompressobj()
        frame.decompress(data)  # libzstd checks the checksum
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd member does not decompress ({e})") from None
    if not frame.eof or frame.unused_data:
        raise ValueError("zstd member is not exactly one frame")
    return text


def _zstd_json(data, size):
    return _strict_json(_zstd(data, size))


def _manifest(archive):
    """§2.3: the manifest and the member it came from: `manifest.json.zst` (3.x, 4.x), one zstd
    frame that declares its size, within MAX_MANIFEST_BYTES; `manifest.json` (1.x, 2.x)."""
    names = set(archive.namelist())
    if {"manifest.json", "manifest.json.zst"} <= names:
        raise ValueError("the archive has two manifests")
    if "manifest.json.zst" in names:
        member = "manifest.json.zst"
        frame = archive.read(member)
        size = zstandard.frame_content_size(frame)  # -1 when the header does not say
        if not 0 <= size <= MAX_MANIFEST_BYTES:
            raise ValueError("manifest.json.zst declares no content size, or more than MAX_MANIFEST_BYTES")
        text = _zstd(frame, size)
    else:
        member = "manifest.json"
        text = archive.read(member)  # a KeyError when there is none
    manifest = _strict_json(text)
    major = manifest["format_version"].split(".")[0]
    if manifest["format"] != "wroll" or major not in ("1", "2", "3", "4"):
        raise ValueError(f"unsupported format {manifest['format']} {manifest['format_version']}")
    if (member == "manifest.json.zst") != (int(major) >= 3):
        raise ValueError(f"a format {manifest['format_version']} manifest in {member}")
    return manifest, member


def _unfilter(raw, width, height):
    """Undo the PNG row filters 0-4 (8-bit grayscale: one byte per pixel); pixels row-major."""
    out = np.zeros((height + 1, width + 1), np.uint8)  # row 0, column 0: the zeros before the image
    for y in range(1, height + 1):
        start = (y - 1) * (width + 1)  # each scanline: its filter type, then `width` filtered bytes
        kind, line = raw[start], np.frombuffer(raw, np.uint8, width, start + 1)
        if kind == 0:  # None
            out[y, 1:] = line
        elif kind == 1:  # Sub: add the pixel to the left, modulo 256
            out[y, 1:] = np.cumsum(line, dtype=np.uint8)
        elif kind == 2:  # Up: add the pixel above
            out[y, 1:] = line + out[y - 1, 1:]
        elif kind in (3, 4):  # Average, Paeth: one pixel at a time
            prior, cur = out[y - 1].tolist(), [0]
            for x in range(1, width + 1):
                a, b, c = cur[x - 1], prior[x], prior[x - 1]
                if kind == 3:
                    predictor = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur.append((int(line[x - 1]) + predictor) & 255)
            out[y] = cur
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
    return out[1:, 1:].reshape(-1)


def decode_png(data, image):
    """The pixels of `weights.png` (§5), row-major, as uint8; checks IHDR against `image`."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    pos, header, idat = 8, None, []
    while True:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) != int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big"):
            raise ValueError(f"PNG chunk {kind!r} has a wrong CRC")
        pos += 12 + length
        if kind == b"IHDR":
            header = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"), *body[8:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif not kind[0] & 0x20:  # ancillary chunks (lower-case first letter) are ignored
            raise ValueError(f"unknown critical PNG chunk {kind!r}")
    width, height = image["width"], image["height"]
    if header != (width, height, 8, 0, 0, 0, 0):
        raise ValueError(f"PNG header {header} is not {width}x{height} 8-bit grayscale")
    inflater = zlib.decompressobj()
    raw = inflater.decompress(b"".join(idat), height * (width + 1))  # bounded by the image size
    if len(raw) != height * (width + 1) or not inflater.eof:
        raise ValueError("PNG pixel data is not one zlib stream of the image's size")
    pixels = _unfilter(raw, width, height)
    if pixels[image["codes"]:].any():
        raise ValueError("PNG padding pixels are not 0")
    return pixels[:image["codes"]]


def _array(blob, dtype, count, offset):  # little-endian numbers in a member (§7.4)
    return np.frombuffer(blob, _dtype(dtype).newbyteorder("<"), count, offset).astype(_dtype(dtype))


def _decoder_blob(decoder, members, major):
    """§4.7: the bytes of the decoder's arrays: `decoder.bin` (1.x to 3.x), or what
    `decoder.bin.zst` (4.x) decompresses to, whose length W is where the last array ends."""
    if major < 4:
        if decoder["weights_member"] != "decoder.bin":
            raise ValueError("decoder.weights_member is not decoder.bin")
        return members["decoder.bin"]
    if decoder["weights_member"] != "decoder.bin.zst" or "decoder.bin.zst" not in members:
        raise ValueError("a 4.x archive keeps its decoder arrays in decoder.bin.zst")
    size = 0
    for w in decoder["weights"]:  # packed in order from 0 (R9)
        if w["offset"] != size or w["dtype"] not in ("float32", "float64"):
            raise ValueError("decoder arrays are not packed float32/float64 arrays")
        size += int(np.prod(w["shape"], dtype=np.int64)) * _dtype(w["dtype"]).itemsize
    if size > MAX_DECODER_BYTES:  # before anything is decompressed
        raise ValueError(f"decoder arrays take {size} bytes, more than MAX_DECODER_BYTES")
    return _zstd(members["decoder.bin.zst"], size)


def _value_table(decoder, blob):
    """§6: (T, S) for a codebook; for an MLP, (the 2**bits binary32 values, None)."""
    arrays = [_array(blob, w["dtype"], int(np.prod(w["shape"])), w["offset"]).reshape(w["shape"])
              for w in decoder["weights"]]
    if decoder["kind"] == "codebook":
        table, scales = arrays[0].reshape(-1), arrays[1].reshape(-1)  # T then S (R9's order)
        if scales[0] != 1.0 or not (np.isfinite(table).all() and np.isfinite(scales).all()):
            raise ValueError("codebook: S[0] is not 1.0 or an entry is not finite")
        return table, scales
    if decoder["activation"] != "relu":
        raise ValueError(f"unknown MLP activation {decoder['activation']!r}")
    h = np.arange(2 ** decoder["bits"], dtype=np.float64)[:, None]  # the codes, unscaled
    for i in range(0, len(arrays), 2):
        kernel, bias = arrays[i], arrays[i + 1]
        z = np.repeat(bias[None, :], len(h), axis=0)
        for k in range(kernel.shape[0]):  # ((B + h0 W0) + h1 W1) + ..., no FMA, no reordering
            z = z + h[:, k:k + 1] * kernel[k][None, :]
        h = np.maximum(z, 0.0) if i + 2 < len(arrays) else z  # relu on hidden layers only
    values = h[:, 0].astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("MLP decoder yields a value that is not finite")
    return values, None


def trellis_indices(c, segment, zero, low):
    """§6.2: the table indices `i_j = m - low` of trellis codes `c`. The state machine restarts at
    0 every `segment` codes, so the segments run side by side, one column of codes at a time."""
    k = c.astype(np.int64) - zero  # the levels
    width = max(1, min(segment, len(k)))  # a segment longer than the tensor ends with it
    rows = -(-len(k) // width)
    grid = np.zeros(rows * width, np.int64)
    grid[:len(k)] = k
    grid = grid.reshape(rows, width)  # one segment a row (the last one padded, its padding unused)
    m = np.empty_like(grid)
    state = np.zeros(rows, np.int64)
    for j in range(width):
        level = grid[:, j]
        m[:, j] = np.where(state <= 1, 2 * level, 2 * level - np.sign(level))  # Q0 or Q1
        state = TRELLIS_NEXT[state, level % 2]  # numpy's % is in {0, 1} for negative levels too
    return m.reshape(-1)[:len(k)] - low


def _coded(t, codes, decoder, table, scales, exact, major):
    """A coded tensor (§7.1, trellis codes §6.2, outliers §8.2), checking its `coding_sha256`
    (§7.5) when it has one."""
    shape, count, axis = t["shape"], t["codes"]["count"], t.get("scales", {}).get("axis", -1)
    c = codes[t["codes"]["offset"]:][:count]
    trellis = t.get("trellis") if major >= 4 else None  # before 4.0 an unknown field, ignored (§12)
    header = (t["dtype"].encode("ascii") + b"\0" + np.array(len(shape), "<u4").tobytes()
              + np.array(shape, "<u8").tobytes() + np.array(axis, "<i4").tobytes())
    if trellis is not None:  # R45, and the digest's trellis bytes (§7.5 item 3)
        if decoder["kind"] != "codebook" or not isinstance(trellis, dict):
            raise ValueError(f"{t['path']}: trellis codes belong to coded tensors of codebook archives")
        segment, zero, low = (trellis[name] for name in ("segment", "zero", "low"))
        if not (all(type(v) is int for v in (segment, zero, low))
                and 1 <= segment <= 2 ** 16 and -255 <= zero <= 255 and -510 <= low <= 510):
            raise ValueError(f"{t['path']}: trellis {trellis} is out of range")
        header += b"trellis\0" + np.array(segment, "<u4").tobytes() + np.array([zero, low], "<i4").tobytes()
    digest = hashlib.sha256(header + c.tobytes())
    if decoder["kind"] == "mlp":  # the network's 2**bits values; no table or scales allowed
        if "table" in t or "scales" in t:
            raise ValueError(f"{t['path']}: an MLP archive's coded tensor has a table or scales")
        own = table
    else:  # its own slice of the codebook, of at most 256 entries (1021 for trellis codes, R17)
        if t["table"]["size"] > (1021 if trellis is not None else 256) \
                or t["table"]["offset"] + t["table"]["size"] > len(table):
            raise ValueError(f"{t['path']}: table entries outside the codebook, or too many")
        own = table[t["table"]["offset"]:][:t["table"]["size"]]
        digest.update(own.astype("<f4").tobytes())
    index = c if trellis is None else trellis_indices(c, segment, zero, low)
    if (index >= len(own)).any() or (index < 0).any():
        raise ValueError(f"{t['path']}: code outside the table")
    values = own[index].reshape(shape)
    if "scales" in t:  # one binary32 product per element, the scale of its index along `axis`
        per_index = scales[t["scales"]["offset"]:][:t["scales"]["count"]]
        digest.update(per_index.astype("<f4").tobytes())
        values = values * per_index.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    values = values.astype(_dtype(t["dtype"])).reshape(-1)  # to float16/bfloat16: nearest, ties to even; ints exact
    if "outliers" in t:  # k int64 indices, then k values of the dtype
        k, o = t["outliers"]["count"], t["outliers"]["offset"]
        index = _array(exact, "int64", k, o)
        if (np.diff(index) <= 0).any() or (index < 0).any() or (index >= count).any():
            raise ValueError(f"{t['path']}: outlier indices not increasing or out of range")
        values[index] = _array(exact, t["dtype"], k, o + 8 * k)
        digest.update(exact[o:o + k * (8 + values.itemsize)])
    if "coding_sha256" in t and digest.hexdigest() != t["coding_sha256"]:
        raise ValueError(f"{t['path']}: coding_sha256 differs")
    return values.reshape(shape)


def _key(array):  # §9: (dtype, shape, SHA-256 of the little-endian bytes)
    array = np.ascontiguousarray(array)
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return array.dtype.name, list(array.shape), hashlib.sha256(data).hexdigest()


def read(path, base=None):
    """Decode the archive at `path` into {tensor path: numpy array}, in manifest order.

    `base`: the base model's tensors (a dict of arrays, or any iterable of arrays), needed
    only when the archive holds references (§9); without it such an archive is refused.
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                raise ValueError(f"member {info.filename} is compressed or encrypted")
        manifest, manifest_member = _manifest(archive)
        if set(archive.namelist()) != {manifest_member, *manifest["members"]}:
            raise ValueError("the zip's members are not those the manifest lists")
        members = {}
        for name, entry in manifest["members"].items():  # zipfile checks each CRC-32
            members[name] = data = archive.read(name)
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"member {name}: size or SHA-256 differs from the manifest")
    decoder = manifest["decoder"]
    _zstd_json(members["decoder.json.zst"], decoder["config_size"])
    if manifest.get("architecture") is not None:  # optional from 2.0: absent in a weights-only archive (§4.8)
        _zstd_json(members["architecture.json.zst"], manifest["architecture"]["size"])
    major = int(manifest["format_version"].split(".")[0])
    codes = decode_png(members["weights.png"], manifest["image"])
    table, scales = _value_table(decoder, _decoder_blob(decoder, members, major))
    exact = members.get("exact.bin", b"")
    by_key = {}
    for array in (base.values() if isinstance(base, dict) else base or ()):
        by_key.setdefault(repr(_key(array)), array)
    tensors = {}
    for t in manifest["tensors"]:
        if t["storage"] == "coded":
            value = _coded(t, codes, decoder, table, scales, exact, major)
        elif t["storage"] == "exact":
            offset, size = t["bytes"]["offset"], t["bytes"]["size"]
            if t["dtype"] == "bool" and set(exact[offset:offset + size]) - {0, 1}:
                raise ValueError(f"{t['path']}: bool byte other than 0 and 1")
            count = size // _dtype(t["dtype"]).itemsize
            value = _array(exact, t["dtype"], count, offset).reshape(t["shape"])
        elif t["storage"] == "reference":
            key = repr((t["dtype"], t["shape"], t["sha256"]))
            if key not in by_key:
                raise ValueError(f"{t['path']} is a reference to a base tensor: "
                                 + ("none has its dtype, shape and sha256" if base is not None
                                    else "pass base= (the base model's tensors)"))
            value = np.array(by_key[key])
        else:
            raise ValueError(f"{t['path']}: unknown storage {t['storage']!r}")
        if _key(value)[2] != t["sha256"]:  # checked for coded tensors too, as an oracle should
            raise ValueError(f"{t['path']}: sha256 differs")
        tensors[t["path"]] = value
    return tensors


def _dtype(name):
    """A dtype name of the spec as numpy's; bfloat16 (2.0) is ml_dtypes'."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
