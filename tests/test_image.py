import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from weightroll._entropy import bits_per_code
from weightroll._format import image
from weightroll._format.pixels import Pixels
from weightroll.errors import ArchiveError

def _idat_stream(png):
    """The IDAT chunks joined: the image's zlib stream."""
    stream, pos = b"", 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos: pos + 8])
        stream += png[pos + 8: pos + 8 + length] if kind == b"IDAT" else b""
        pos += 12 + length
    return stream


@pytest.mark.parametrize("n", [1, 5, 4096, 4097, 100_000])
def test_png_round_trips_through_pillow(rng, n):
    codes = rng.integers(0, 256, size=n).astype(np.uint8)
    png, width, height = image.encode_png(codes)
    opened = Image.open(io.BytesIO(png))
    assert opened.mode == "L" and opened.size == (width, height)
    pixels = np.asarray(opened).reshape(-1)
    np.testing.assert_array_equal(pixels[:n], codes)
    np.testing.assert_array_equal(image.decode_png(png, width, height, n), codes)


def test_a_tall_image_deflated_in_pieces_is_one_valid_stream_whatever_the_cores(rng, monkeypatch):
    n = 3 * image._PIECE_ROWS * 4096 + 12345  # three full pieces and a short one
    codes = rng.integers(0, 40, size=n).astype(np.uint8)
    png, width, height = image.encode_png(codes)
    assert height > 3 * image._PIECE_ROWS
    pixels = np.asarray(Image.open(io.BytesIO(png))).reshape(-1)
    np.testing.assert_array_equal(pixels[:n], codes)
    stream = _idat_stream(png)  # one zlib stream, Adler-32 checked
    rows = np.frombuffer(zlib.decompress(stream), np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # filter type 0 on every row
    np.testing.assert_array_equal(rows[:, 1:].reshape(-1)[:n], codes)
    np.testing.assert_array_equal(image.decode_png(png, width, height, n), codes)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert image.encode_png(codes)[0] == png


def test_width_is_at_most_4096_and_the_image_at_least_1x1():
    assert image.image_shape(0) == (1, 1)
    assert image.image_shape(10) == (10, 1)
    assert image.image_shape(100_000_000) == (4096, 24415)


@pytest.mark.parametrize("step", [0.1, 0.3])
def test_png_size_is_within_3_percent_of_the_codes_entropy(rng, step):
    values = rng.standard_t(5, size=1 << 20)
    codes = np.clip(np.rint(values / step) + 128, 0, 255).astype(np.uint8)
    png, _, _ = image.encode_png(codes)
    entropy_bytes = bits_per_code(codes) * codes.size / 8
    assert len(png) <= 1.03 * entropy_bytes


def test_low_entropy_codes_use_lz77_when_it_is_smaller(rng):
    codes = np.zeros(1 << 18, np.uint8)
    codes[rng.integers(0, codes.size, 500)] = 7
    png, _, _ = image.encode_png(codes)
    assert len(png) < codes.size / 8 / 4  # far below Huffman's 1 bit per code


def test_nonzero_padding_is_rejected():
    png, width, height = image.encode_png(np.full(10, 3, np.uint8))
    with pytest.raises(ArchiveError, match="padding"):
        image.decode_png(png, width, height, 9)


def _fixed_codes(n):
    """Codes made by integer arithmetic alone (a linear congruential
    sequence folded to a peaked distribution): the same on every numpy."""
    state = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(1 << 32)
    low, high = state & np.uint64(0xFF), (state >> np.uint64(8)) & np.uint64(0xFF)
    return ((low + high) // np.uint64(4) + np.uint64(64)).astype(np.uint8)  # 64..191, peaked at 128


@pytest.mark.parametrize("n,digest", [
    (3_000, "42fb66bb4ba592b5dc145f464b8146b95dab14c0e8326ec97b2358dc6d6784e2"),  # one stream
    (3 * 128 * 4096 + 999, "5c1bb1e1cfcaab48ddc61e1dfc4d121860a24463b212dff8314b1f1926c4e662"),  # pieces of 128 rows
])
def test_the_image_bytes_are_zlib_ngs_and_the_same_on_every_machine(n, digest):
    """The PNG of fixed codes, against its SHA-256 as zlib-ng 2.3.3 wrote it
    here: Huffman-only deflate takes no CPU-specific path, so this holds on
    every CPU with that zlib-ng (another version may write other bytes)."""
    from zlib_ng import zlib_ng

    png = bytes(image.encode_png(_fixed_codes(n))[0])
    if zlib_ng.ZLIBNG_VERSION != "2.3.3":
        pytest.skip(f"zlib-ng {zlib_ng.ZLIBNG_VERSION} may write other bytes than 2.3.3")
    assert hashlib.sha256(png).hexdigest() == digest


def _tall_png(rng, pieces=5):
    n = pieces * image._PIECE_ROWS * 4096 + 12345
    codes = rng.integers(0, 40, size=n).astype(np.uint8)
    return codes, *image.encode_png(codes)


def _count_parts(monkeypatch):
    """Counts the parts `_inflate_range` inflates (work, not time)."""
    calls = []
    inflate_range = image._inflate_range

    def counted(stream, first, stop, *args, **kwargs):
        calls.append((first, stop))
        return inflate_range(stream, first, stop, *args, **kwargs)

    monkeypatch.setattr(image, "_inflate_range", counted)
    monkeypatch.setattr(image, "_fast_inflate", None)  # these tests are of the zlib-ng path
    monkeypatch.setattr(image, "_PARALLEL_INFLATE_BYTES", 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    return calls


def test_a_tall_image_is_inflated_in_parts_cut_at_its_pieces(rng, monkeypatch):
    codes, png, width, height = _tall_png(rng)
    parts = _count_parts(monkeypatch)
    np.testing.assert_array_equal(image.decode_png(png, width, height, codes.size), codes)
    assert len(parts) == -(-height // image._PIECE_ROWS)  # one per piece: a cut after each flush, none refused
    assert [stop for _, stop in parts[:-1]] == [first for first, _ in parts[1:]]


def test_wrong_cuts_fall_back_to_one_part_with_the_same_pixels(rng, monkeypatch):
    codes, png, width, height = _tall_png(rng)
    parts = _count_parts(monkeypatch)
    stream = image._Stream.of_png(png)
    real = stream.cut_after_flushes(8)
    monkeypatch.setattr(image._Stream, "cut_after_flushes", lambda self, count: [real[0] - 1000, *real[1:]])
    np.testing.assert_array_equal(image.decode_png(png, width, height, codes.size), codes)
    assert parts[-1] == (2, stream.size)  # the whole stream, after the parts failed


def test_a_stream_that_refers_back_across_a_cut_is_inflated_as_one(monkeypatch):
    width, height = 4096, 600
    row = np.arange(width + 1, dtype=np.uint8) % 7
    row[0] = 0
    raw = np.tile(row, height)
    png = bytes(image._png_from_stream([zlib.compress(raw.tobytes(), 9)], width, height))  # LZ77 across rows
    parts = _count_parts(monkeypatch)
    monkeypatch.setattr(image._Stream, "cut_after_flushes", lambda self, count: [self.size // 2])
    pixels = image.decode_png(png, width, height, width * height)
    np.testing.assert_array_equal(pixels, raw.reshape(height, width + 1)[:, 1:].reshape(-1))
    assert len(parts) >= 2 and parts[-1][0] == 2  # tried in parts, then inflated whole


# ------------------------------------------------- the C inflater (_inflate.c)

needs_inflater = pytest.mark.skipif(image._fast_inflate is None, reason="the C inflater is not built")


def test_the_c_inflater_is_built_where_ci_requires_it():
    if os.environ.get("WEIGHTROLL_REQUIRE_KERNEL") != "1":
        pytest.skip("WEIGHTROLL_REQUIRE_KERNEL=1 is set by .ci/run")
    assert image._fast_inflate is not None, "setup.py did not build weightroll/_format/_inflate.c"


class _Rows:
    """Counts the C inflater's parts: `(start, last, result)` each."""

    def __init__(self, monkeypatch):
        self.calls, self.real = [], image._fast_inflate
        monkeypatch.setattr(image, "_fast_inflate", self)
        monkeypatch.setattr(image, "_PARALLEL_INFLATE_BYTES", 0)
        monkeypatch.setattr("os.cpu_count", lambda: 2)

    def rows(self, pieces, out, width, start, limit, last):
        result = self.real.rows(pieces, out, width, start, limit, last)
        self.calls.append((start, last, result))
        return result

    def marks(self, data, start, end):
        return self.real.marks(data, start, end)


@needs_inflater
def test_the_c_inflater_puts_each_part_straight_into_its_rows(rng, monkeypatch):
    codes, png, width, height = _tall_png(rng)
    parts = _Rows(monkeypatch)
    np.testing.assert_array_equal(image.decode_png(png, width, height, codes.size), codes)
    piece = image._PIECE_ROWS * (width + 1)
    assert len(parts.calls) > 1 and all(result is not None for *_, result in parts.calls)
    calls = sorted(parts.calls, key=lambda call: call[0])  # in the order of the stream (they run in parallel)
    assert all(start % piece == 0 for start, *_ in calls) and [last for _, last, _ in calls] == [False] * (
        len(calls) - 1) + [True]


@needs_inflater
@pytest.mark.parametrize("pieces", [0, 1, 3])
def test_the_c_inflater_and_zlib_ng_give_the_same_pixels(rng, monkeypatch, pieces):
    codes = rng.integers(0, 256, size=pieces * image._PIECE_ROWS * 4096 + 777).astype(np.uint8)
    codes[::5] = 17  # some codes more common than others: a real Huffman code, short and long
    png, width, height = image.encode_png(codes)
    fast = image.decode_png(bytes(png), width, height, codes.size)
    monkeypatch.setattr(image, "_fast_inflate", None)
    np.testing.assert_array_equal(fast, image.decode_png(bytes(png), width, height, codes.size))
    np.testing.assert_array_equal(fast, codes)


@needs_inflater
def test_matches_filters_and_false_flush_marks_go_to_zlib_ng(rng, monkeypatch):
    width, height = 4096, 600
    row = np.arange(width + 1, dtype=np.uint8) % 7
    row[0] = 0
    raw = np.tile(row, height)
    lz77 = bytes(image._png_from_stream([zlib.compress(raw.tobytes(), 9)], width, height))
    buffer = io.BytesIO()
    Image.fromarray(raw.reshape(height, width + 1)[:, 1:]).save(buffer, format="PNG")  # Pillow's own filters
    parts = _Rows(monkeypatch)
    for png in (lz77, buffer.getvalue()):
        pixels = image.decode_png(png, width, height, width * height)
        np.testing.assert_array_equal(pixels, raw.reshape(height, width + 1)[:, 1:].reshape(-1))
    assert any(result is None for *_, result in parts.calls)
    codes, png, width, height = _tall_png(rng)
    # As if a false mark lay before the first cut: every part's start one piece late.
    cut, count = image._Stream.cut_after_flushes, image._Stream.count_flushes
    monkeypatch.setattr(image._Stream, "cut_after_flushes", lambda self, n: cut(self, n)[:-1])
    monkeypatch.setattr(image._Stream, "count_flushes", lambda self, stops: [c + 1 for c in count(self, stops)])
    parts.calls.clear()
    np.testing.assert_array_equal(image.decode_png(png, width, height, codes.size), codes)
    assert parts.calls  # tried, refused where the parts do not meet, and inflated by zlib-ng


def _outcome(png, width, height, n):
    try:
        return image.decode_png(png, width, height, n).tobytes()
    except ArchiveError as e:
        return type(e)


@needs_inflater
def test_damaged_streams_give_what_zlib_ng_gives(rng, monkeypatch):
    codes, png, width, height = _tall_png(rng, pieces=2)
    stream = image._Stream.of_png(png)
    data = bytearray(b"".join(stream.views(0, stream.size)))
    monkeypatch.setattr(image, "_PARALLEL_INFLATE_BYTES", 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    fast = image._fast_inflate
    for trial in range(150):
        damaged = bytearray(data)
        for at in rng.integers(2, len(data), size=int(rng.integers(1, 4))):
            damaged[at] ^= int(rng.integers(1, 256))
        if trial % 3 == 0:  # cut short
            damaged = damaged[: int(rng.integers(2, len(damaged)))]
        bad = bytes(image._png_from_stream([bytes(damaged)], width, height))
        monkeypatch.setattr(image, "_fast_inflate", fast)
        with_c = _outcome(bad, width, height, codes.size)
        monkeypatch.setattr(image, "_fast_inflate", None)
        assert with_c == _outcome(bad, width, height, codes.size)


def test_pixels_read_slice_and_sample_as_the_joined_codes_do():
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in (5, 0, 1, 4096, 77, 3)]
    whole = np.concatenate(parts)
    px = Pixels(parts)
    assert px.size == whole.size and np.array_equal(px.read(0, px.size), whole)
    for begin, end in [(0, 5), (3, 9), (5, 6), (0, whole.size), (4000, 4200), (4180, whole.size + 10), (7, 7)]:
        assert np.array_equal(px.read(begin, end), whole[begin:end])
        part = px.slice(begin, end)
        assert np.array_equal(part.read(0, part.size), whole[begin:end])
    for stride in (1, 2, 7, 100, 5000):
        assert np.array_equal(px.every(stride), whole[::stride])


@pytest.mark.parametrize("sizes", [(1000,), (300_000, 1, 4095, 250_000), (64 * 4096 + 5, 128 * 4096 - 5, 777)])
def test_an_image_of_pixels_in_parts_is_the_image_of_the_joined_codes(sizes):
    # Parts that end inside rows and inside the 128-row pieces deflated apart.
    rng = np.random.default_rng(4)
    parts = [rng.integers(0, 40, n, dtype=np.uint8) for n in sizes]
    assert image.encode_png(Pixels(parts)) == image.encode_png(np.concatenate(parts))


@pytest.mark.parametrize("seekable", [True, False])
def test_a_png_of_parts_is_zipped_and_hashed_as_its_joined_bytes_are(seekable):
    from weightroll._format import container

    class Unseekable(io.RawIOBase):  # a stream: zipfile writes data descriptors
        def __init__(self):
            self.out = io.BytesIO()

        def writable(self):
            return True

        def write(self, b):
            return self.out.write(b)

    codes = np.random.default_rng(5).integers(0, 30, 300 * 4096 + 17).astype(np.uint8)  # three 128-row pieces
    png, _, _ = image.encode_png_parts(codes)
    assert len(png.parts) > 10 and png.sha256 == hashlib.sha256(bytes(png)).hexdigest()
    written = []
    for data in (png, bytes(png)):
        target = io.BytesIO() if seekable else Unseekable()
        container.write_members(target, [("a.json", b"{}"), ("weights.png", data), ("b", b"x")])
        written.append((target if seekable else target.out).getvalue())
    assert written[0] == written[1]
