"""spec/reference_reader.py, a reader written from the spec alone, against weightroll.

(a) for every valid vector (spec/vectors/*.wroll and spec/png_variants/*.wroll), the reference
    reader and `weightroll.unroll` return the same tensors, bit for bit;
(b) the reference reader agrees with the vector's `.expected.json`;
(c) the reference reader is independent: it imports nothing from weightroll;
(d) it refuses the invalid vectors of the rules it implements (its checks are not vacuous);
(e) spec/png_variants/png_filters_and_chunks.wroll really has every PNG row filter, several
    IDAT chunks and ancillary chunks, and make_png_variants.py regenerates it;
(f) its trellis state machine (spec §6.2) gives the indices weightroll's does, C and numpy.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ast  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import _manifests  # noqa: E402
import weightroll  # noqa: E402

SPEC_DIR = pathlib.Path(__file__).resolve().parents[1] / "spec"
VECTORS = SPEC_DIR / "vectors"
PNG_VARIANTS = SPEC_DIR / "png_variants"
VALID = sorted(list(VECTORS.glob("*.wroll")) + list(PNG_VARIANTS.glob("*.wroll")))
VALID_IDS = [p.name[: -len(".wroll")] for p in VALID]
INVALID = json.loads((VECTORS / "invalid" / "index.json").read_text())

# The rules about a valid archive's data that the reference reader enforces (zip CRC, member
# digests, PNG, decoder values, codes, outliers, references, tensor digests, bool bytes, the
# zstd members, the trellis field).
CHECKED_RULES = {"R22", "R23", "R24", "R25", "R26", "R27", "R28", "R29", "R30", "R31", "R32",
                 "R33", "R34", "R35", "R39", "R44", "R45"}
# And the vectors of other rules about the decoder's arrays that it refuses (4.x: where they
# are, how long they may be; before: how long they are).
CHECKED_FILES = {"decoder_arrays_too_large.wroll", "decoder_bin_zst_unlisted.wroll",
                 "decoder_weights_member.wroll", "decoder_bin_size.wroll"}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_reader = _load(SPEC_DIR / "reference_reader.py", "reference_reader")


def _expected_array(entry):
    return np.array(entry["values"], dtype=entry["dtype"]).reshape(entry["shape"])


def _base(name):
    """The tensors of spec/vectors/NAME (a `.base.json`), or None when there is none."""
    path = VECTORS / name
    if not path.is_file():
        return None
    return {p: _expected_array(e) for p, e in json.loads(path.read_text()).items()}


def _base_for(vector):
    return _base(vector.name[: -len(".wroll")] + ".base.json")


def _little_endian_sha256(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()


# --- (a) and (b) -----------------------------------------------------------------


def test_the_vectors_are_there():
    assert "png_filters_and_chunks" in VALID_IDS
    assert {"dense_codebook_2bit", "dense_mlp_8bit", "dense_tolerance", "dense_reference", "dense_trellis",
            "v3_dense_tolerance", "v3_trellis_ignored", "v2_dense_tolerance", "v1_dense_codebook_2bit"} <= set(VALID_IDS)


@pytest.mark.parametrize("vector", VALID, ids=VALID_IDS)
def test_reference_reader_equals_unroll(vector):
    ours = reference_reader.read(vector, base=_base_for(vector))
    theirs = weightroll.unroll(vector, base=_base_for(vector))
    assert list(ours) == list(theirs)
    for path, array in ours.items():
        assert isinstance(array, np.ndarray), path
        assert array.dtype == theirs[path].dtype, path
        assert array.shape == theirs[path].shape, path
        assert array.tobytes() == theirs[path].tobytes(), path  # bit for bit, -0.0 and NaNs included


@pytest.mark.parametrize("vector", VALID, ids=VALID_IDS)
def test_reference_reader_agrees_with_expected_json(vector):
    expected = json.loads(vector.with_name(vector.name[: -len(".wroll")] + ".expected.json").read_text())
    ours = reference_reader.read(vector, base=_base_for(vector))
    assert list(ours) == list(expected)  # archive order
    for path, entry in expected.items():
        array = ours[path]
        assert array.dtype.name == entry["dtype"], path
        assert list(array.shape) == entry["shape"], path
        assert array.tobytes() == _expected_array(entry).tobytes(), path
        assert _little_endian_sha256(array) == entry["sha256"], path


def test_a_reference_needs_the_base():
    with pytest.raises(ValueError, match="base"):
        reference_reader.read(VECTORS / "dense_reference.wroll")
    with pytest.raises(ValueError, match="base"):
        reference_reader.read(VECTORS / "dense_reference.wroll", base={})


# --- (c) independence --------------------------------------------------------------


def test_reference_reader_imports_nothing_from_weightroll():
    tree = ast.parse((SPEC_DIR / "reference_reader.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module"):
            pytest.fail("dynamic import in reference_reader.py")
    assert imported <= {"hashlib", "json", "zipfile", "zlib", "numpy", "zstandard", "ml_dtypes"}, imported
    assert not any(name.split(".")[0] == "weightroll" for name in imported)


# --- (d) refusals ------------------------------------------------------------------


@pytest.mark.parametrize("entry", [e for e in INVALID if e["rule"] in CHECKED_RULES or e["file"] in CHECKED_FILES],
                         ids=lambda e: e["file"][: -len(".wroll")])
def test_reference_reader_refuses_invalid_vector(entry):
    base = _base(entry["base"]) if "base" in entry else None
    # Not one error class, as weightroll's: zipfile and zlib raise their own.
    with pytest.raises((ValueError, zipfile.BadZipFile, zlib.error)):
        reference_reader.read(VECTORS / "invalid" / entry["file"], base=base)


# --- (e) the PNG variant -------------------------------------------------------------


def _png_chunks(png):
    chunks, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        chunks.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _variant_png():
    with zipfile.ZipFile(PNG_VARIANTS / "png_filters_and_chunks.wroll") as archive:
        return archive.read("weights.png"), _manifests.read(PNG_VARIANTS / "png_filters_and_chunks.wroll")


def test_png_variant_uses_every_filter_several_idat_and_ancillary_chunks():
    png, manifest = _variant_png()
    chunks = _png_chunks(png)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds.count(b"IDAT") >= 2
    assert b"tEXt" in kinds and b"wrOl" in kinds  # wrOl: private, ancillary, unknown to all
    width, height = manifest["image"]["width"], manifest["image"]["height"]
    raw = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    assert len(raw) == height * (width + 1)
    assert {raw[y * (width + 1)] for y in range(height)} == {0, 1, 2, 3, 4}
    assert manifest["image"]["codes"] < width * height  # a padded last row too


def test_png_variant_decodes_like_pillow():
    image = pytest.importorskip("PIL.Image")
    png, manifest = _variant_png()
    pixels = np.asarray(image.open(io.BytesIO(png))).reshape(-1)
    assert np.array_equal(reference_reader.decode_png(png, manifest["image"]), pixels[: manifest["image"]["codes"]])


@pytest.mark.parametrize("width", [1, 2, 7, 64])
def test_every_filter_round_trips_on_random_codes(width):
    """make_png_variants filters, the reference reader unfilters; Pillow checks both when present."""
    make_png_variants = _load(PNG_VARIANTS / "make_png_variants.py", "make_png_variants")
    rng = np.random.default_rng(width)
    for codes in (rng.integers(0, 256, 5 * width + 3, dtype=np.uint8),  # noise: every wrap-around
                  np.repeat(rng.integers(0, 4, 11 * width, dtype=np.uint8), 3)):  # runs: Paeth's ties
        png, height = make_png_variants.encode_png(codes, width)
        image = {"width": width, "height": height, "codes": len(codes)}
        assert np.array_equal(reference_reader.decode_png(png, image), codes)
        try:
            from PIL import Image
        except ImportError:
            continue
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))).reshape(-1)[: len(codes)], codes)


def test_png_variant_keeps_the_source_manifest_but_the_image():
    source = _manifests.read(VECTORS / "dense_codebook_8bit.wroll")
    _, variant = _variant_png()
    for manifest in (source, variant):
        del manifest["image"]["width"], manifest["image"]["height"], manifest["members"]["weights.png"]
    assert variant == source


def test_make_png_variants_regenerates_the_vector(tmp_path):
    make_png_variants = _load(PNG_VARIANTS / "make_png_variants.py", "make_png_variants")
    out = tmp_path / "png_filters_and_chunks.wroll"
    make_png_variants.main([str(VECTORS / "dense_codebook_8bit.wroll"), str(out)])
    committed = PNG_VARIANTS / "png_filters_and_chunks.wroll"
    assert (tmp_path / "png_filters_and_chunks.expected.json").read_bytes() == \
        committed.with_name("png_filters_and_chunks.expected.json").read_bytes()
    if out.read_bytes() != committed.read_bytes():
        # Another zlib may deflate the same scanlines differently: then only the bytes differ.
        with zipfile.ZipFile(out) as a, zipfile.ZipFile(committed) as b:
            png_a, png_b = a.read("weights.png"), b.read("weights.png")
        idat = [zlib.decompress(b"".join(d for k, d in _png_chunks(p) if k == b"IDAT")) for p in (png_a, png_b)]
        assert idat[0] == idat[1], "make_png_variants.py no longer makes the committed vector"
        pytest.skip(f"zlib {zlib.ZLIB_RUNTIME_VERSION} deflates the scanlines differently")


def test_png_variant_loads_into_keras():
    expected = json.loads((PNG_VARIANTS / "png_filters_and_chunks.expected.json").read_text())
    model = weightroll.load_rolled(PNG_VARIANTS / "png_filters_and_chunks.wroll", compile=False)
    assert len(model.variables) == len(expected)
    for variable, entry in zip(model.variables, expected.values()):
        assert np.asarray(variable.numpy()).tobytes() == _expected_array(entry).tobytes(), variable.path


def test_reference_reader_reads_a_weights_only_archive(tmp_path):
    """A weights-only archive (what `WeightRollCheckpoint(save_weights_only=True)` writes) has no
    architecture member (§4.8)."""
    import keras

    from weightroll._keras import roll as roll_lib

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    path = tmp_path / "model.weights.wroll"
    roll_lib.write_snapshot(roll_lib.snapshot(model, weights_only=True), path)
    with zipfile.ZipFile(path) as archive:
        assert "architecture.json.zst" not in archive.namelist()
    ours, theirs = reference_reader.read(path), weightroll.unroll(path)
    assert {p: a.tobytes() for p, a in ours.items()} == {p: a.tobytes() for p, a in theirs.items()}


# --- (f) trellis codes ---------------------------------------------------------------


@pytest.mark.parametrize("coder", ["C", "numpy"])
def test_trellis_indices_agree_with_weightroll(monkeypatch, coder):
    """Random codes (every level parity, states and restarts): the reference reader's state
    machine, written from §6.2, and weightroll's give the same table indices."""
    from weightroll.coders import trellis

    if coder == "C" and trellis._trellis is None:
        pytest.skip("the trellis C loops are not built (setup.py)")
    if coder == "numpy":
        monkeypatch.setattr(trellis, "_trellis", None)
    rng = np.random.default_rng(45)
    for count, segment, zero, low in ((0, 1, 0, 0), (1, 1, 0, 0), (7, 1, 3, -6), (1000, 3, 128, -256),
                                      (5000, 1024, 13, -26), (3000, 4096, 255, 510), (2500, 1 << 16, 0, -510)):
        codes = rng.integers(0, 256, count, dtype=np.uint8)
        ours = reference_reader.trellis_indices(codes, segment, zero, low)
        theirs, lowest, highest = trellis.table_indices(codes, segment, zero, low)
        assert np.array_equal(ours, theirs.astype(np.int64)), (count, segment, zero, low)
        assert (lowest, highest) == ((int(ours.min()), int(ours.max())) if count else (0, -1))


def test_a_trellis_field_counts_only_from_4_0():
    """v3_trellis_ignored is v3_dense_tolerance with a `trellis` field that a 3.0 reader does not
    know: ignored, it decodes to the same tensors; applied, its indices would leave the table."""
    plain = reference_reader.read(VECTORS / "v3_dense_tolerance.wroll")
    edited = reference_reader.read(VECTORS / "v3_trellis_ignored.wroll")
    assert {p: a.tobytes() for p, a in plain.items()} == {p: a.tobytes() for p, a in edited.items()}
    manifest = _manifests.read(VECTORS / "v3_trellis_ignored.wroll")
    kernel = next(t for t in manifest["tensors"] if "trellis" in t)
    with zipfile.ZipFile(VECTORS / "v3_trellis_ignored.wroll") as archive:
        codes = reference_reader.decode_png(archive.read("weights.png"), manifest["image"])
    start = kernel["codes"]["offset"]
    index = reference_reader.trellis_indices(codes[start: start + kernel["codes"]["count"]],
                                             **kernel["trellis"])
    assert index.max() >= kernel["table"]["size"]
