"""The archive as a file: paths, file objects, determinism, atomic writes, refusals."""

import io
import zipfile

import keras
import numpy as np
import pytest

import _manifests
import weightroll
from weightroll._format import container, manifest_member
from weightroll._format.json_text import dumps
from weightroll.errors import ArchiveError, VersionError

UNITS = 40


def _model(seed=0, dtype="float32"):
    keras.utils.set_random_seed(seed)
    # Explicit names: Keras numbers auto-generated names per process, and the
    # names are part of the archive.
    return keras.Sequential(
        [keras.Input((30,), name="x"), keras.layers.Dense(UNITS, dtype=dtype, name="hidden"),
         keras.layers.Dense(3, dtype=dtype, name="head")],
        name="tiny",
    )


def test_refuses_a_path_without_the_wroll_suffix(tmp_path):
    with pytest.raises(weightroll.WrollError, match="Invalid filepath extension for saving"):
        weightroll.roll(_model(), tmp_path / "model.keras")


def test_an_unbuilt_model_rolls_and_loads_unbuilt_as_keras_saves_it(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    weightroll.roll(model, tmp_path / "m.wroll")
    assert weightroll.unroll(tmp_path / "m.wroll") == {}
    assert not weightroll.load_rolled(tmp_path / "m.wroll").built


@pytest.mark.parametrize("bits", [0, 9, 2.5, True])
def test_refuses_bits_outside_1_to_8(tmp_path, bits):
    with pytest.raises(weightroll.WrollError, match="`bits`"):
        weightroll.roll(_model(), tmp_path / "m.wroll", bits=bits)


def test_refuses_an_unknown_decoder(tmp_path):
    with pytest.raises(weightroll.WrollError, match="`decoder`"):
        weightroll.roll(_model(), tmp_path / "m.wroll", decoder="jpeg")


def test_file_objects_work_both_ways():
    buf = io.BytesIO()
    report = weightroll.roll(_model(), buf)
    assert report.filepath is None and report.archive_bytes == len(buf.getvalue())
    buf.seek(0)
    assert set(weightroll.unroll(buf)) == {v.path for v in _model().variables}
    buf.seek(0)
    assert isinstance(weightroll.load_rolled(buf), keras.Sequential)


@pytest.mark.slow
def test_same_model_and_options_give_the_same_bytes(tmp_path):
    for decoder in ("codebook", "mlp"):
        a, b = io.BytesIO(), io.BytesIO()
        weightroll.roll(_model(), a, decoder=decoder)
        weightroll.roll(_model(), b, decoder=decoder)
        assert a.getvalue() == b.getvalue(), decoder


def test_members_are_stored_in_a_fixed_order_with_a_fixed_timestamp():
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)
    infos = zipfile.ZipFile(buf).infolist()
    assert [i.filename for i in infos][:5] == [
        "manifest.json.zst", "weights.png", "decoder.json.zst", "decoder.bin.zst", "architecture.json.zst"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}


def test_a_failed_write_leaves_the_previous_archive_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.wroll"
    weightroll.roll(_model(seed=0), path)
    before = path.read_bytes()

    def broken(fileobj, members):
        fileobj.write(b"PK half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(container, "write_members", broken)
    with pytest.raises(OSError, match="disk full"):
        weightroll.roll(_model(seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.wroll"]  # no temp file left


def test_non_finite_weights_are_stored_exactly(tmp_path):
    model = _model()
    kernel = model.layers[0].kernel.numpy()
    kernel[0, :3] = [np.nan, np.inf, -np.inf]
    model.layers[0].kernel.assign(kernel)
    weightroll.roll(model, tmp_path / "m.wroll")
    decoded = weightroll.unroll(tmp_path / "m.wroll")[model.layers[0].kernel.path]
    np.testing.assert_array_equal(decoded.view(np.uint32), kernel.view(np.uint32))


def test_weights_whose_squares_overflow_float32_are_stored_exactly(tmp_path):
    model = _model()
    kernel = model.layers[0].kernel.numpy() * np.float32(1e30)
    model.layers[0].kernel.assign(kernel)
    weightroll.roll(model, tmp_path / "m.wroll")
    with weightroll._format.reader.RolledArchive(tmp_path / "m.wroll") as archive:
        entry = next(t for t in archive.manifest["tensors"] if t["path"] == model.layers[0].kernel.path)
    assert entry["storage"] == "exact"
    decoded = weightroll.unroll(tmp_path / "m.wroll")[model.layers[0].kernel.path]
    np.testing.assert_array_equal(decoded, kernel)


def test_the_coder_measures_values_whose_float32_squares_overflow(rng):
    from weightroll.coders import select

    x = (rng.normal(size=(64, 32)) * 1e30).astype(np.float32)
    with np.errstate(all="raise"):  # squares summed in float64: nothing overflows
        choice = select.choose(x, 0.01, 4)
    assert choice.kind == "uniform"
    e = x.astype(np.float64) - choice.code.decoded
    assert np.sqrt((e ** 2).sum() / (x.astype(np.float64) ** 2).sum()) <= 0.01


def test_float16_variables_come_back_as_float16(tmp_path):
    model = _model(dtype="float16")
    weightroll.roll(model, tmp_path / "m.wroll")
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    for v in loaded.variables:
        assert v.dtype == "float16"
    kernel = weightroll.unroll(tmp_path / "m.wroll")[model.layers[0].kernel.path]
    assert np.abs(kernel.astype(float) - model.layers[0].kernel.numpy()).max() < 0.01


def test_not_a_zip_is_an_archive_error(tmp_path):
    path = tmp_path / "m.wroll"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        weightroll.unroll(path)


def _rewrite(buf, edit):
    """Re-zip an archive after `edit(name, data) -> data` (None drops the member)."""
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    members = []
    for info in src.infolist():
        data = edit(info.filename, src.read(info))
        if data is not None:
            members.append((info.filename, data))
    out = io.BytesIO()
    container.write_members(out, members)
    out.seek(0)
    return out


def test_a_member_that_changed_is_named_in_the_error():
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)

    def flip(name, data):
        if name == "decoder.bin.zst":
            data = bytearray(data)
            data[5] ^= 0x40
            data = bytes(data)
        return data

    with pytest.raises(ArchiveError, match="'decoder.bin.zst' does not match its SHA-256"):
        weightroll.unroll(_rewrite(buf, flip))


def test_a_newer_major_version_says_which_weightroll_reads_it():
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)
    newer = _with_manifest(buf, lambda m: m.update(format_version="5.0"))
    with pytest.raises(VersionError, match="format 5.0.*Upgrade weightroll"):
        weightroll.unroll(newer)


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_a_manifest_in_the_other_versions_member_is_refused(version):
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)
    manifest = _manifests.read(buf)
    manifest["format_version"] = version
    moved = "manifest.json" if version == "3.0" else "manifest.json.zst"
    out = io.BytesIO()
    container.write_members(out, [(moved, manifest_member.pack(dumps(manifest), moved))] + _manifests.members(buf)[1:])
    with pytest.raises(ArchiveError, match="the member and the version disagree") as info:
        weightroll.unroll(io.BytesIO(out.getvalue()))
    assert info.value.rule == "R44"


def test_report_of_a_tiny_model_says_larger_not_0_point_something_smaller():
    tiny = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1, name="d")], name="tiny2")
    report = weightroll.roll(tiny, io.BytesIO())
    assert report.compression_ratio < 1
    assert "larger than float32" in str(report)


def _with_manifest(buf, edit):
    """The archive in `buf` with its manifest edited in place by `edit`, in the
    member its (edited) version names."""
    return io.BytesIO(_manifests.edit(buf, edit))


def test_coded_tensors_carry_a_coding_digest_and_archives_say_4_0():
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)
    manifest = _manifests.read(buf)
    assert manifest["format_version"] == "4.0"
    assert all(t["key"].startswith("layers/") and len(t["binding_sha256"]) == 64 for t in manifest["tensors"])
    coded = [t for t in manifest["tensors"] if t["storage"] == "coded"]
    assert coded and all(len(t["coding_sha256"]) == 64 for t in coded)
    assert not any("coding_sha256" in t for t in manifest["tensors"] if t["storage"] != "coded")


def test_unroll_checks_the_coding_digest_and_verify_also_checks_the_values(tmp_path):
    buf = io.BytesIO()
    weightroll.roll(_model(), buf)
    expected = weightroll.unroll(io.BytesIO(buf.getvalue()))

    def wrong_values_digest(manifest):  # the values' digest alone is wrong (and bound as such)
        from weightroll._format.digest import binding_sha256

        t = next(t for t in manifest["tensors"] if t["storage"] == "coded")
        t["sha256"] = "0" * 64
        t["binding_sha256"] = binding_sha256(t)

    edited = _with_manifest(buf, wrong_values_digest)
    got = weightroll.unroll(edited)  # the coding digest vouches for the values
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    path = tmp_path / "m.wroll"
    path.write_bytes(edited.getvalue())
    from weightroll import inspection as inspect
    from weightroll._format import reader

    with reader.RolledArchive(str(path)) as archive, pytest.raises(ArchiveError) as info:
        inspect.verify(archive)
    assert info.value.rule == "R33"


def test_a_1_0_archive_without_coding_digests_is_checked_by_its_values():
    buf = io.BytesIO()
    weightroll.roll(_model(), buf, bits=8)  # k-means codes: no trellis, so a 3.0 (and 1.0) form exists
    expected = weightroll.unroll(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO(_manifests.as_3_0(buf))
    assert all(np.array_equal(v, expected[k]) for k, v in weightroll.unroll(io.BytesIO(buf.getvalue())).items())

    def as_1_0(manifest):
        manifest["format_version"] = "1.0"
        for t in manifest["tensors"]:
            t.pop("coding_sha256", None)

    old = _with_manifest(buf, as_1_0)
    got = weightroll.unroll(io.BytesIO(old.getvalue()))
    assert all(np.array_equal(got[k], expected[k]) for k in expected)

    def and_wrong(manifest):
        as_1_0(manifest)
        next(t for t in manifest["tensors"] if t["storage"] == "coded")["sha256"] = "0" * 64

    with pytest.raises(ArchiveError, match="decodes to values whose SHA-256 differs") as info:
        weightroll.unroll(_with_manifest(buf, and_wrong))
    assert info.value.rule == "R33"
