"""Make a valid `.wroll` vector whose code image uses every PNG row filter and extra chunks.

weightroll writes `weights.png` with filter type 0 on every row, one IDAT chunk per MiB and no
ancillary chunk, so its own vectors never show a reader the rest of what spec/wroll-v4.md §5
requires readers to handle: "all five PNG row filters and any number of IDAT chunks", and
ancillary chunks, which readers may ignore. This script takes a valid vector and re-encodes
its code image with the same codes:

* the image is reshaped to `--width` columns (default 37: 11 rows for the 384 codes of
  dense_codebook_8bit), the padding pixels after `image.codes` being 0. Writers use
  `width = min(n, 4096)`, but readers accept any shape within the limits (§4.6), and the
  vectors' images are all one row, too few for five filters;
* row `y` is filtered with type `y % 5` (None, Sub, Up, Average, Paeth; PNG spec §9, 8-bit
  grayscale: one byte per pixel);
* the zlib stream is split into three IDAT chunks, and the chunks are
  IHDR, tEXt, wrOl, IDAT, IDAT, IDAT, wrOl (empty), IEND. `wrOl` is a private, ancillary,
  safe-to-copy chunk type unknown to any reader.

The manifest's `image.width`, `image.height` and `members["weights.png"]` are updated and the
manifest written canonically (§3) and compressed into `manifest.json.zst` as weightroll does
(§2.3: one zstd frame with its content size and checksum, level 15); every other member is
copied byte for byte, and the zip is written as the reference writer does (§2.1). The decoded tensors are the source's, so the
`.expected.json` is the source's, copied.

    python spec/png_variants/make_png_variants.py [SOURCE.wroll [OUT.wroll]] [--width W]

The defaults regenerate spec/png_variants/png_filters_and_chunks.wroll from
spec/vectors/dense_codebook_8bit.wroll. Only the standard library, numpy and zstandard are used.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import zipfile
import zlib

import numpy as np
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "vectors", "dense_codebook_8bit.wroll")
OUT = os.path.join(HERE, "png_filters_and_chunks.wroll")
SIGNATURE = bytes.fromhex("89504e470d0a1a0a")
MANIFEST = "manifest.json.zst"
ORDER = [MANIFEST, "weights.png", "decoder.json.zst", "decoder.bin.zst", "decoder.bin",  # 4.x; 3.x
         "architecture.json.zst", "exact.bin"]


def chunks(png):
    """[(type, data)] of a PNG, CRCs checked."""
    assert png[:8] == SIGNATURE, "not a PNG"
    out, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + data) == int.from_bytes(png[pos + 8 + length:pos + 12 + length], "big")
        out.append((kind, data))
        pos += 12 + length
    return out


def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def unfiltered_codes(png, codes):
    """The first `codes` pixels of a PNG written by weightroll: 8-bit grayscale, filter 0 only."""
    found = chunks(png)
    ihdr = found[0][1]
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    assert found[0][0] == b"IHDR" and ihdr[8:] == bytes([8, 0, 0, 0, 0]), "not 8-bit grayscale"
    raw = np.frombuffer(zlib.decompress(b"".join(d for k, d in found if k == b"IDAT")), np.uint8)
    rows = raw.reshape(height, width + 1)
    assert not rows[:, 0].any(), "the source uses filters other than 0"
    return rows[:, 1:].reshape(-1)[:codes]


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered_scanlines(pixels):
    """The PNG scanlines of a 2-D uint8 image, row y filtered with type y % 5."""
    image = pixels.astype(np.int64)
    out = []
    for y, x in enumerate(image):
        a = np.concatenate([[0], x[:-1]])  # the pixel to the left (0 before the first)
        b = image[y - 1] if y else np.zeros_like(x)  # the pixel above (0 on the first row)
        c = np.concatenate([[0], b[:-1]])  # above and to the left
        kind = y % 5
        predictor = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
        out.append(bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def encode_png(codes, width):
    height = -(-max(len(codes), 1) // width)
    pixels = np.zeros(width * height, np.uint8)
    pixels[:len(codes)] = codes
    stream = zlib.compress(filtered_scanlines(pixels.reshape(height, width)), 9)
    cut1, cut2 = len(stream) // 3, 2 * len(stream) // 3
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    png = SIGNATURE + chunk(b"IHDR", ihdr)
    png += chunk(b"tEXt", b"Comment\0every PNG row filter, three IDAT chunks, ancillary chunks")
    png += chunk(b"wrOl", b"a private ancillary chunk that readers ignore\0\xff\x00IDAT")
    png += chunk(b"IDAT", stream[:cut1]) + chunk(b"IDAT", stream[cut1:cut2]) + chunk(b"IDAT", stream[cut2:])
    png += chunk(b"wrOl", b"") + chunk(b"IEND", b"")
    return png, height


def canonical_json(value):
    """The manifest's canonical form (§3): sorted keys, no whitespace, ASCII, final newline."""
    return (json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                       allow_nan=False) + "\n").encode("ascii")


def compress(text):
    """The manifest's zstd frame as weightroll writes one of up to 1 MiB (§2.3)."""
    return zstandard.ZstdCompressor(level=15, write_checksum=True, write_content_size=True).compress(text)


def write_zip(members):
    """A zip as the reference writer makes it (§2.1): stored, 1980-01-01, mode 0644, in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in [n for n in ORDER if n in members]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, 0o100644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def variant(source, width):
    """The bytes of the variant of the `.wroll` archive `source` (bytes)."""
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        names = archive.namelist()
        members = {name: archive.read(name) for name in names}
    assert names == [n for n in ORDER if n in names], "members out of the writer's order"
    assert write_zip(members) == source, "the source is not as the reference writer makes it"
    text = zstandard.ZstdDecompressor().decompress(members[MANIFEST])
    manifest = json.loads(text)
    assert canonical_json(manifest) == text, "the manifest is not canonical"
    assert compress(text) == members[MANIFEST], "the manifest is not compressed as weightroll does"
    image = manifest["image"]
    png, height = encode_png(unfiltered_codes(members["weights.png"], image["codes"]), width)
    image["width"], image["height"] = width, height
    manifest["members"]["weights.png"] = {"sha256": hashlib.sha256(png).hexdigest(), "size": len(png)}
    members["weights.png"], members[MANIFEST] = png, compress(canonical_json(manifest))
    return write_zip(members)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default=SOURCE)
    parser.add_argument("out", nargs="?", default=OUT)
    parser.add_argument("--width", type=int, default=37)
    args = parser.parse_args(argv)
    with open(args.source, "rb") as f:
        data = variant(f.read(), args.width)
    with open(args.out, "wb") as f:
        f.write(data)
    expected = args.source[: -len(".wroll")] + ".expected.json"
    shutil.copyfile(expected, args.out[: -len(".wroll")] + ".expected.json")
    print(f"wrote {args.out} ({len(data)} bytes) and its .expected.json")


if __name__ == "__main__":
    main()
