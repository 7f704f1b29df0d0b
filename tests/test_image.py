import io
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from weightroll._entropy import bits_per_code
from weightroll._format import image
from weightroll.errors import ArchiveError

DEFLATE = image._deflate


@pytest.fixture(params=["c", "zlib-ng"])
def deflater(request, monkeypatch):
    """Huffman-only pieces by `_deflate.c`, or by zlib-ng (its fallback)."""
    if request.param == "c" and DEFLATE is None:
        pytest.skip("_deflate.c is not built (setup.py)")
    monkeypatch.setattr(image, "_deflate", DEFLATE if request.param == "c" else None)
    return request.param


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


def test_a_tall_image_deflated_in_pieces_is_one_valid_stream_whatever_the_cores(rng, monkeypatch, deflater):
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
def test_png_size_is_within_3_percent_of_the_codes_entropy(rng, step, deflater):
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


def _skewed(rng, n):
    """One dominant code and a few rare ones: Huffman codes past 15 bits
    unless they are limited."""
    codes = np.full(n, 9, np.uint8)
    codes[rng.choice(n, 300, replace=False)] = rng.integers(0, 255, 300)
    return codes


@pytest.mark.parametrize("kind", ["uniform bytes", "two codes", "skewed", "zeros", "one code", "normal"])
@pytest.mark.parametrize("width,rows", [(4096, 128), (97, 5), (1, 700), (5000, 1)])
def test_huffman_pieces_inflate_to_the_scanlines(rng, kind, width, rows):
    if DEFLATE is None:
        pytest.skip("_deflate.c is not built (setup.py)")
    n = {"uniform bytes": 20_000, "two codes": 90_001, "skewed": 200_000, "zeros": 10_000, "one code": 7,
         "normal": 300_000}[kind]
    codes = {"uniform bytes": lambda: rng.integers(0, 256, n), "two codes": lambda: rng.integers(0, 2, n),
             "skewed": lambda: _skewed(rng, n), "zeros": lambda: np.zeros(n), "one code": lambda: np.full(n, 200),
             "normal": lambda: np.clip(rng.normal(127, 6, n), 0, 254)}[kind]().astype(np.uint8)
    height = -(-n // width)
    stream, adler = b"", 1
    for first in range(0, height, rows):
        stop = min(first + rows, height)
        size = (stop - first) * (width + 1)
        out = np.empty(image._huffman_bound(size), np.uint8)
        length, piece_adler = DEFLATE.huffman_rows(codes, width, first, stop, stop == height, out)
        stream += out[:length].tobytes()
        padded = np.zeros((stop - first) * width, np.uint8)
        part = codes[first * width: stop * width]
        padded[:part.size] = part
        raw = np.zeros((stop - first, width + 1), np.uint8)
        raw[:, 1:] = padded.reshape(stop - first, width)
        assert piece_adler == zlib.adler32(raw.tobytes())
    inflater = zlib.decompressobj(-15)
    rows_out = np.frombuffer(inflater.decompress(stream), np.uint8).reshape(height, width + 1)
    assert inflater.eof and not inflater.unused_data
    assert not rows_out[:, 0].any()
    np.testing.assert_array_equal(rows_out[:, 1:].reshape(-1)[:n], codes)
    assert not rows_out[:, 1:].reshape(-1)[n:].any()


def test_huffman_rows_refuses_bad_arguments():
    if DEFLATE is None:
        pytest.skip("_deflate.c is not built (setup.py)")
    codes = np.ones(100, np.uint8)
    with pytest.raises(ValueError, match="too small"):
        DEFLATE.huffman_rows(codes, 10, 0, 10, True, np.empty(20, np.uint8))
    with pytest.raises(ValueError, match="bad rows"):
        DEFLATE.huffman_rows(codes, 10, 5, 5, True, np.empty(1000, np.uint8))
    with pytest.raises(ValueError, match="bad rows"):
        DEFLATE.huffman_rows(codes, 0, 0, 1, True, np.empty(1000, np.uint8))
    with pytest.raises(ValueError, match="bad rows"):
        DEFLATE.huffman_rows(codes, 10, -1, 1, True, np.empty(1000, np.uint8))
    with pytest.raises(ValueError, match="bad rows"):  # width + 1 would overflow
        DEFLATE.huffman_rows(codes, sys.maxsize, 0, 1, True, np.empty(1000, np.uint8))
    with pytest.raises(ValueError, match="too small"):  # refused at once, not after a long run
        DEFLATE.huffman_rows(b"", sys.maxsize - 1, 0, 1, True, bytearray(16))
    with pytest.raises(ValueError, match="codes must hold uint8"):
        DEFLATE.huffman_rows(codes.astype(np.float32), 10, 0, 1, True, np.empty(1000, np.uint8))
    with pytest.raises(ValueError, match="out must hold uint8"):
        DEFLATE.huffman_rows(codes, 10, 0, 1, True, np.empty(1000, np.float64))


def test_a_piece_that_outgrows_its_first_buffer_is_written_again(rng, monkeypatch, deflater):
    bound = image._huffman_bound
    monkeypatch.setattr(image, "_huffman_bound", lambda size, bits=15: 16 if bits < 15 else bound(size))
    codes = rng.integers(0, 256, size=300 * 4096).astype(np.uint8)  # three pieces
    png, width, height = image.encode_png(codes)
    np.testing.assert_array_equal(image.decode_png(png, width, height, codes.size), codes)
