"""The code image: integer codes as one 8-bit grayscale PNG.

Codes are laid out row-major: code `i` is the pixel at row `i // width`,
column `i % width`. Pixels after the last code are padding and must be 0.
"""

import hashlib
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin
from zlib_ng import zlib_ng

from weightroll._entropy import bits_per_code
from weightroll._format import limits, rules
from weightroll._format.pixels import Pixels
from weightroll._parallel import MAX_WORKERS, parallel_map, parallel_results
from weightroll.errors import ArchiveError, LimitError

try:  # the inflater for this format's own streams (setup.py builds it where a compiler is found)
    from weightroll._format import _inflate as _fast_inflate
except ImportError:  # zlib-ng inflates them, more slowly
    _fast_inflate = None

# Rows of 4096 pixels keep a 100M-parameter model's image at 4096 x 24415:
# a valid PNG that image viewers open, with a small per-row filter overhead.
MAX_WRITE_WIDTH = 4096

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_shape(n_codes):
    """The `(width, height)` a writer uses for `n_codes` codes (at least 1x1)."""
    n = max(int(n_codes), 1)
    width = min(n, MAX_WRITE_WIDTH)
    return width, -(-n // width)


# IDAT data is split into chunks of this size, as common encoders do.
_IDAT_CHUNK = 1 << 20
# Below this many bits per code, LZ77 matching (runs of zeros in pruned
# tensors) can beat plain Huffman coding, so both are tried.
_TRY_LZ77_BELOW_BITS = 3.0


def _chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# Images of more rows than this are deflated in independent pieces of this
# many rows (512 KiB), on the cores there are (see `_deflate_rows`): small
# enough that a 1M-value model's 245 rows make two pieces (2.7 ms where one
# stream took 5.6: the pieces run on both cores, and each stays in cache)
# and that ResNet50's 6,259 rows share evenly between two cores (1024-row
# pieces took 96 ms, 256-row ones 66), large enough that the cuts cost
# nothing measurable (23 bytes of 843 KB).
_PIECE_ROWS = 128
_ZLIB_HEADER_LEVEL_9 = b"\x78\xda"
_ADLER_BASE = 65521


def _raw_rows(pixels, width, first, stop):
    """Scanlines `[first, stop)` of the image of `Pixels`: filter byte 0,
    then the row's codes (padding 0 after the last code)."""
    rows = np.zeros((stop - first, width + 1), dtype=np.uint8)
    begin, end = first * width, min(stop * width, pixels.size)
    codes = pixels.read(begin, end)
    full = (end - begin) // width
    rows[:full, 1:] = codes[: full * width].reshape(full, width)
    if full * width < end - begin:
        rows[full, 1: 1 + end - begin - full * width] = codes[full * width:]
    return memoryview(rows.reshape(-1))


def _adler32_concat(first, second, second_length):
    """The Adler-32 of two byte strings joined, from theirs: A = A1 + A2 - 1,
    B = B1 + B2 + len2 * (A1 - 1), both mod 65521."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + second_length * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


def _deflate_rows(pixels, width, height, level, strategy):
    """The image's zlib stream, as byte strings to concatenate, yielded in
    order (a taller image's as its pieces are deflated).

    An image of up to `_PIECE_ROWS` rows is one zlib stream. A taller one is
    cut into pieces of `_PIECE_ROWS` rows, each built and deflated on its own
    (raw deflate, ended by a full flush; the last by the final block) under
    one zlib header and Adler-32: a valid stream that inflates like any
    other, the same whatever the machine's number of cores, and no copy of
    the whole raw image is ever made. Huffman-only coding has no matches to
    lose at the cuts, and deflate starts new blocks far more often than once
    per piece.

    zlib-ng writes every stream, about twice as fast as zlib. Huffman-only
    coding, the rule, takes no CPU-specific path in it: its bytes depend on
    zlib-ng's version alone (spec/vectors/environment.json records it). The
    LZ77 alternative (codes below 3 bits) goes through its CPU-specific
    match finders, reported to choose other matches on other architectures.
    """
    if height <= _PIECE_ROWS:
        packer = zlib_ng.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        raw = _raw_rows(pixels, width, 0, height)
        yield packer.compress(raw) + packer.flush()
        return

    def piece(first):
        stop = min(first + _PIECE_ROWS, height)
        raw = _raw_rows(pixels, width, first, stop)
        packer = zlib_ng.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
        data = (packer.compress(raw), packer.flush(zlib.Z_FINISH if stop == height else zlib.Z_FULL_FLUSH))
        return data, zlib_ng.adler32(raw), len(raw)  # the two byte strings kept apart: no copy joins them

    yield _ZLIB_HEADER_LEVEL_9
    adler = 1
    for data, piece_adler, length in parallel_results(piece, range(0, height, _PIECE_ROWS)):
        adler = _adler32_concat(adler, piece_adler, length)
        yield from data
    yield struct.pack(">I", adler)


class Png:
    """A PNG file held as the byte strings it is made of, in order, never
    joined (a joined copy of a big image is as much memory touched for the
    first time: 0.37 s for the LM stack's 365 MB image), with its SHA-256.

    Attributes:
        parts: bytes-like objects whose concatenation is the file.
        sha256: the file's SHA-256, hex.
    """

    def __init__(self, parts, sha256):
        self.parts, self.sha256 = parts, sha256
        self.size = sum(len(part) for part in parts)

    def __len__(self):
        return self.size

    def __bytes__(self):
        return b"".join(self.parts)


def _png_from_stream(stream, width, height):
    """The `Png` of a zlib stream given as byte strings (any iterable, taken
    as it comes: a big image's pieces are framed and hashed while the
    threads deflate the next ones): IHDR, the stream in IDAT chunks of
    `_IDAT_CHUNK` bytes, IEND."""
    parts, hasher = [], hashlib.sha256()

    def emit(part):
        parts.append(part)
        hasher.update(part)

    emit(_PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
    queue, held = [], 0

    def idat(size):  # the first `size` bytes queued, as one IDAT chunk
        emit(struct.pack(">I", size) + b"IDAT")
        crc, left = zlib_ng.crc32(b"IDAT"), size
        while left:
            take = queue[0][:left]
            emit(take)
            crc = zlib_ng.crc32(take, crc)  # 10x zlib's speed here
            left -= len(take)
            queue[0] = queue[0][len(take):]
            if not len(queue[0]):
                queue.pop(0)
        emit(struct.pack(">I", crc))

    for part in stream:
        if len(part):
            queue.append(memoryview(part))
            held += len(part)
        while held >= _IDAT_CHUNK:
            idat(_IDAT_CHUNK)
            held -= _IDAT_CHUNK
    if held:
        idat(held)
    emit(_chunk(b"IEND", b""))
    return Png(parts, hasher.hexdigest())


def encode_png(codes, compress_level=9):
    """Encode codes (a 1-D uint8 array, or `pixels.Pixels`) as PNG bytes:
    `encode_png_parts`, the parts joined.

    Returns:
        `(png_bytes, width, height)`.
    """
    png, width, height = encode_png_parts(codes, compress_level)
    return bytes(png), width, height


def encode_png_parts(codes, compress_level=9):
    """Encode codes (a 1-D uint8 array, or `pixels.Pixels`) as a `Png`.

    Every row uses PNG filter type 0 (None): codes are close to independent,
    and the predictive filters only add entropy to them. The zlib stream is
    Huffman-only (which lands within a few percent of the codes' order-0
    entropy), or full deflate when that is smaller (very low-entropy codes,
    where LZ77 finds runs).

    Returns:
        `(png, width, height)`.
    """
    codes = Pixels.of(codes)
    width, height = image_shape(codes.size)
    if bits_per_code(codes.every(max(1, codes.size >> 16))) >= _TRY_LZ77_BELOW_BITS:  # on <= 128k codes
        return _png_from_stream(_deflate_rows(codes, width, height, compress_level, zlib.Z_HUFFMAN_ONLY),
                                width, height), width, height
    best, best_size = None, None
    for strategy in (zlib.Z_HUFFMAN_ONLY, zlib.Z_DEFAULT_STRATEGY):
        parts = list(_deflate_rows(codes, width, height, compress_level, strategy))
        size = sum(len(part) for part in parts)
        if best is None or size < best_size:
            best, best_size = parts, size
        del parts
    return _png_from_stream(best, width, height), width, height


def read_png_header(data):
    """Parse the PNG signature and IHDR chunk without decoding any pixels.

    Returns:
        A dict with `width`, `height`, `bit_depth`, `color_type`, `interlace`.
    """
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE:
        raise ArchiveError("'weights.png' is not a PNG file (bad signature or too short).",
                           rule=rules.PNG_HEADER)
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ArchiveError("'weights.png' does not start with a valid IHDR chunk.", rule=rules.PNG_HEADER)
    crc = struct.unpack(">I", data[29:33])[0]
    if zlib.crc32(data[12:29]) != crc:
        raise ArchiveError("'weights.png' has a damaged IHDR chunk (CRC mismatch).", rule=rules.PNG_HEADER)
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    return {
        "width": width,
        "height": height,
        "bit_depth": bit_depth,
        "color_type": color_type,
        "interlace": interlace,
    }


# What Pillow raises for PNG bytes it cannot decode: OSError ("image file is
# truncated", "broken data stream"), SyntaxError (a damaged chunk), ValueError
# (a text chunk too large), and a few lower-level errors it lets through.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
                  KeyError, TypeError, Image.DecompressionBombError)


def _printable(error):
    text = "".join(c if c.isprintable() else "?" for c in str(error)[:200])
    return text


def decode_png(data, width, height, n_codes):
    """Decode PNG bytes into the first `n_codes` codes, checking everything.

    The header must declare exactly `width` x `height`, 8-bit grayscale,
    not interlaced; the raw size must be plausible for the compressed size;
    the padding after the last code must be zero.
    """
    header = read_png_header(data)
    expected = {"width": width, "height": height, "bit_depth": 8, "color_type": 0, "interlace": 0}
    for key, want in expected.items():
        if header[key] != want:
            raise ArchiveError(
                f"'weights.png' has {key}={header[key]}, but the manifest requires "
                f"{key}={want} (8-bit grayscale, non-interlaced, {width}x{height}).",
                rule=rules.PNG_HEADER,
            )
    if width > limits.MAX_IMAGE_WIDTH or width * height > limits.MAX_PIXELS:
        raise LimitError(
            f"'weights.png' is {width}x{height}, beyond the reader's limits "
            f"(width <= {limits.MAX_IMAGE_WIDTH}, pixels <= {limits.MAX_PIXELS}).",
            rule=rules.PNG_BOMB,
        )
    raw_size = height * (width + 1)
    if raw_size > limits.DEFLATE_MAX_RATIO * len(data):
        raise LimitError(
            f"'weights.png' claims {raw_size} raw bytes from {len(data)} compressed "
            f"bytes, beyond deflate's maximum ratio of {limits.DEFLATE_MAX_RATIO}:1; "
            "it is a decompression bomb or damaged.",
            rule=rules.PNG_BOMB,
        )
    pixels = _decode_plain(data, width, height)
    if pixels is None:
        pixels = _decode_with_pillow(data, width, height)
    if pixels.size != width * height:
        raise ArchiveError("'weights.png' decoded to the wrong number of pixels.", rule=rules.PNG_DATA)
    if n_codes > pixels.size:
        raise ArchiveError(
            f"The manifest declares {n_codes} codes but 'weights.png' holds only "
            f"{pixels.size} pixels.",
            rule=rules.PNG_DATA,
        )
    if np.any(pixels[n_codes:]):
        raise ArchiveError(
            "'weights.png' has non-zero padding after the last code; padding must be 0.",
            rule=rules.PNG_PADDING,
        )
    return pixels[:n_codes]


def _decode_plain(data, width, height):
    """The pixels of a PNG as writers of this format make it, or None.

    A PNG made of IHDR, IDAT chunks and IEND only, every chunk's CRC right,
    one zlib stream of exactly the image's size, every row filtered with
    type 0: inflated by zlib-ng straight into the pixel array (bounded by
    the image's size), in parts on the cores there are where the stream has
    the cuts `_deflate_rows` leaves (`_inflate`). Anything else, valid or
    not, returns None and goes to Pillow, which decodes every PNG or says
    why not.
    """
    stream = _Stream.of_png(data)
    if stream is None or stream.size < 6 or not _zlib_header_ok(*stream.head(2)):
        return None
    out = np.empty(height * width, np.uint8)
    return out if _inflate(stream, out, width, height * (width + 1)) else None


class _Stream:
    """A zlib stream held in a PNG's IDAT chunks, read by stream offset."""

    def __init__(self, data, spans):
        self.data, self.spans = data, spans  # [(stream offset, start in data, stop in data)]
        self.size = spans[-1][0] + spans[-1][2] - spans[-1][1]

    @classmethod
    def of_png(cls, data):
        """The stream of a PNG whose chunks after IHDR are IDATs then IEND,
        each with its right CRC; else None."""
        view, spans, at = memoryview(data), [], 0
        pos = 33  # signature and IHDR, checked by the caller
        while True:
            if pos + 12 > len(data):
                return None
            length, kind = struct.unpack_from(">I4s", data, pos)
            end = pos + 12 + length
            if end > len(data) or zlib_ng.crc32(view[pos + 4: end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
                return None
            if kind == b"IEND":
                return cls(data, spans) if end == len(data) and not length and spans else None
            if kind != b"IDAT":
                return None
            spans.append((at, pos + 8, end - 4))
            at, pos = at + length, end

    def head(self, count):
        """The stream's first `count` bytes."""
        return b"".join(self.views(0, count))

    def views(self, first, stop):
        """Memoryviews of stream bytes `[first, stop)`, chunk by chunk."""
        view = memoryview(self.data)
        return [view[start + max(first - at, 0): start + min(stop - at, end - start)]
                for at, start, end in self.spans if at < stop and at + end - start > first]

    def count_flushes(self, stops):
        """How many full-flush marks lie in stream bytes `[0, stop)` for
        each of the increasing `stops`, across IDAT chunks too; one pass
        (by the C inflater's `marks`)."""
        counts, found, tail, stops = [], 0, b"", list(stops)
        for at, start, end in self.spans:
            while stops and stops[0] <= at + end - start:  # a stop within (or at the end of) this chunk
                cut = start + stops.pop(0) - at
                counts.append(found + _fast_inflate.marks(self.data, start, cut) +
                              (tail + bytes(self.data[start: min(start + 3, cut)])).count(_FULL_FLUSH_MARK))
            if not stops:
                break
            found += _fast_inflate.marks(self.data, start, end)
            found += (tail + bytes(self.data[start: min(start + 3, end)])).count(_FULL_FLUSH_MARK)  # across chunks
            tail = bytes(self.data[max(end - 3, start): end])
        return counts

    def cut_after_flushes(self, count):
        """Stream offsets just after a full-flush mark, the first at or after
        each of `count - 1` equal shares of the stream (fewer where none is)."""
        cuts = []
        for share in range(1, count):
            target = share * self.size // count
            for at, start, end in self.spans:
                if at + end - start <= target:
                    continue
                found = self.data.find(_FULL_FLUSH_MARK, start + max(target - at, 0), end)
                if found >= 0:
                    cut = at + found - start + len(_FULL_FLUSH_MARK)
                    if (not cuts or cut > cuts[-1]) and cut < self.size - 4:
                        cuts.append(cut)
                    break
        return cuts


_FULL_FLUSH_MARK = b"\x00\x00\xff\xff"  # the empty stored block that ends a full flush
# Two ways to end a deflate stream at once: a final fixed-Huffman block with
# no symbol, and a final empty stored block. An inflater ends exactly on
# both, giving nothing, only from between two blocks, byte-aligned.
_ENDINGS = (b"\x03\x00", b"\x01\x00\x00\xff\xff")
# Images of fewer raw bytes than this are inflated as one part.
_PARALLEL_INFLATE_BYTES = 8 << 20
# Parts per core: the cores stay busy when parts differ, and each part's
# bytes wait little for the part before it to say where they go.
_PARTS_PER_CORE = 4


def _zlib_header_ok(cmf, flg):
    """What zlib checks of a stream's 2-byte header: deflate, a window of at
    most 32 KiB, the check bits, no preset dictionary."""
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0 and not flg & 0x20


def _between_blocks(inflater):
    """Whether `inflater` stands between two deflate blocks, byte-aligned,
    with no bit pending: where a fresh inflater can take over."""
    for ending in _ENDINGS:
        probe = inflater.copy()
        try:
            if probe.decompress(ending) or not probe.eof or probe.unused_data:
                return False
        except zlib_ng.error:
            return False
    return True


class _Budget:
    """Raw bytes the parts may still produce together (no more than the image)."""

    def __init__(self, size):
        import threading

        self.left, self._lock = size, threading.Lock()

    def take(self, count):
        with self._lock:
            self.left -= count
            return self.left >= -1


class _Rows:
    """Scanline bytes written in order from raw offset `start` into the
    pixels `out`, their filter bytes dropped; `ok` turns False on a filter
    byte other than 0 (type None) or bytes beyond the image."""

    def __init__(self, out, width, start):
        self.out, self.width, self.at, self.ok = out, width, start, True

    def write(self, piece):
        raw, width, stride = np.frombuffer(piece, np.uint8), self.width, self.width + 1
        row, column = divmod(self.at, stride)
        self.at += raw.size
        if self.at > (self.out.size // width) * stride:
            self.ok = False
            return
        i = 0
        if column:  # the rest of a row begun in an earlier piece
            i = min(stride - column, raw.size)
            self.out[row * width + column - 1: row * width + column - 1 + i] = raw[:i]
            row += 1
        full = (raw.size - i) // stride
        if full:
            rows = raw[i: i + full * stride].reshape(full, stride)
            self.ok &= not rows[:, 0].any()
            self.out[row * width: (row + full) * width].reshape(full, width)[...] = rows[:, 1:]
            i, row = i + full * stride, row + full
        if i < raw.size:  # the start of a row
            self.ok &= not raw[i]
            self.out[row * width: row * width + raw.size - i - 1] = raw[i + 1:]


def _inflate_range(stream, first, stop, write, budget, last):
    """Inflate stream bytes `[first, stop)` with a raw inflater that has no
    history, passing each output piece to `write`.

    Returns `(length, adler32, trailer)`, or None if the bytes do not inflate
    within the budget, or do not end as asked: `last`, at the stream's end
    (the bytes after it are the trailer); else between two blocks.
    """
    inflater = zlib_ng.decompressobj(-15)
    length, adler, trailer = 0, 1, []
    try:
        for chunk in stream.views(first, stop):
            if inflater.eof:
                trailer.append(bytes(chunk))
                continue
            piece = inflater.decompress(chunk, max(budget.left, 0) + 1)
            if inflater.unconsumed_tail or not budget.take(len(piece)):
                return None
            length, adler = length + len(piece), zlib_ng.adler32(piece, adler)
            write(piece)
            del piece
            if inflater.eof:
                trailer.append(inflater.unused_data)
    except zlib_ng.error:
        return None
    if last:
        return (length, adler, b"".join(trailer)) if inflater.eof else None
    return (length, adler, None) if not inflater.eof and _between_blocks(inflater) else None


def _inflate(stream, out, width, raw_size):
    """Inflate `stream` into the pixels `out`; whether it is one zlib stream
    of `raw_size` bytes, every row of filter type 0.

    A big image's stream is cut after full flushes (as `_deflate_rows`
    leaves them between its pieces) into parts near equal in size, and each
    part is inflated on its own, on the cores there are, by an inflater with
    no history. That gives the bytes a whole inflater gives, and it is
    checked: every part but the last must end between two blocks
    (`_between_blocks`), exactly where the next part starts one, and a part
    that refers back into the one before it fails (it has no history); the
    last must end the stream, followed by the Adler-32 of all the parts'
    bytes. Where a cut is wrong (four bytes that look like a flush but are
    not one) the stream is inflated as one part.
    """
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    cuts = stream.cut_after_flushes(workers * _PARTS_PER_CORE) if raw_size >= _PARALLEL_INFLATE_BYTES else []
    if _fast_inflate is not None:
        done = _inflate_pieces(stream, cuts if workers > 1 else [], out, width, raw_size)
        if done is not None:
            return done
    if workers > 1 and cuts:
        parts = _inflate_parts(stream, [2, *cuts, stream.size], out, width, raw_size)
    else:
        parts = None
    if parts is None:  # one part
        rows = _Rows(out, width, 0)
        part = _inflate_range(stream, 2, stream.size, rows.write, _Budget(raw_size), last=True)
        parts = None if part is None else [(*part, rows.ok)]
    if parts is None or not all(ok for *_, ok in parts):
        return False
    adler, length = 1, 0
    for part_length, part_adler, _, _ in parts:
        adler, length = _adler32_concat(adler, part_adler, part_length), length + part_length
    return length == raw_size and parts[-1][2] == struct.pack(">I", adler)


def _inflate_pieces(stream, cuts, out, width, raw_size):
    """`_inflate` by the C inflater, for a stream as `_deflate_rows` writes
    it: pieces of `_PIECE_ROWS` rows, each after the first starting after a
    full flush, with literals only. A part that starts after the `j`-th
    flush mark starts at raw byte `j` pieces in, so each part is inflated
    straight into its rows, on the cores there are. None where this does
    not hold (another writer's stream, a match, four bytes that look like a
    flush but are not one: the parts do not meet end to end): `_inflate`
    then inflates it with zlib-ng; else whether it is sound (the Adler-32 of
    all the parts' bytes)."""
    piece = _PIECE_ROWS * (width + 1)
    starts = [0] + [count * piece for count in stream.count_flushes(cuts)]
    bounds = [2, *cuts, stream.size]
    if any(a >= b for a, b in zip(starts, starts[1:])) or starts[-1] >= raw_size:
        return None

    def run(i):
        last = i == len(starts) - 1
        return _fast_inflate.rows(stream.views(bounds[i], bounds[i + 1]), out, width, starts[i],
                                  raw_size if last else starts[i + 1], last)

    parts = parallel_map(run, range(len(starts)))
    if any(part is None for part in parts):
        return None
    ends = [start + part[0] for start, part in zip(starts, parts)]
    if ends != starts[1:] + [raw_size]:
        return None
    adler = 1
    for length, part_adler, _ in parts:
        adler = _adler32_concat(adler, part_adler, length)
    return parts[-1][2] == struct.pack(">I", adler)


def _inflate_parts(stream, bounds, out, width, raw_size):
    """`[(length, adler32, trailer, ok)]` of each part `[bounds[i],
    bounds[i + 1])` inflated on its own, its bytes placed in `out` once the
    parts before it say where; None if a part does not inflate as one."""
    import threading

    count = len(bounds) - 1
    starts = [0] + [None] * count  # raw offset where each part starts, once known
    known = [threading.Event() for _ in starts]
    known[0].set()
    budget = _Budget(raw_size)

    def run(i):
        pieces, got = [], None
        rows = _Rows(out, width, 0) if i == 0 else None
        try:
            got = _inflate_range(stream, bounds[i], bounds[i + 1], rows.write if rows else pieces.append, budget,
                                 last=i == count - 1)
        finally:
            known[i].wait()  # set by part i - 1, which started before this one
            if got is not None and starts[i] is not None:
                starts[i + 1] = starts[i] + got[0]
            known[i + 1].set()
        if got is None or starts[i] is None:
            return None
        if rows is None:
            rows = _Rows(out, width, starts[i])
            while pieces:
                rows.write(pieces.pop(0))
        return (*got, rows.ok)

    parts = parallel_map(run, range(count))
    return None if any(part is None for part in parts) else parts


def _decode_with_pillow(data, width, height):
    """Any PNG's pixels, decoded by Pillow, with its errors turned into ArchiveErrors."""
    try:
        # Constructed directly rather than through Image.open: the dimensions
        # were bounded above, so Pillow's process-wide MAX_IMAGE_PIXELS check
        # (which would refuse large honest models) is not needed.
        image = PngImagePlugin.PngImageFile(io.BytesIO(data))
        image.load()
        if image.mode != "L" or image.size != (width, height):
            raise ArchiveError(
                f"'weights.png' decodes as mode {image.mode} {image.size}; "
                f"expected mode L ({width}, {height}).",
                rule=rules.PNG_DATA,
            )
        return np.asarray(image, dtype=np.uint8).reshape(-1)
    except ArchiveError:
        raise
    except _PILLOW_ERRORS as e:
        raise ArchiveError(f"'weights.png' cannot be decoded ({_printable(e)}).", rule=rules.PNG_DATA) from None
