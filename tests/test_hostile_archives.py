"""Hand-made hostile and broken archives that the test vectors cannot hold
(too large, or about the reader's behaviour rather than a file), each refused
with the error and rule the spec names (spec/wroll-v4.md, "Threat model",
"Limits", "What a reader MUST reject"). numpy only, no Keras.

The one-file-per-rule corpus is `spec/vectors/invalid/`, run by
`tests/test_spec_vectors.py`.
"""

import hashlib
import io
import json
import pathlib
import pickle
import struct
import time
import zipfile

import numpy as np
import pytest
import zstandard

import _manifests
import weightroll
from weightroll._format import reader
from weightroll._format.digest import binding_sha256
from weightroll._format import container, limits, rules
from weightroll._format import manifest as mf
from weightroll.errors import ArchiveError, LimitError, VersionError, WrollError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
TINY = (VECTORS / "dense_codebook_2bit.wroll").read_bytes()
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _members(data=TINY):
    return _manifests.members(data)


def _manifest(data=TINY):
    return _manifests.read(data)


def _repack(manifest=None, replace=None, add=(), fix=True, data=TINY):
    """The tiny archive with the given manifest and member edits, checksums repaired."""
    manifest = _manifest(data) if manifest is None else manifest
    return _manifests.write(data, manifest, replace=replace, add=add, fix=fix)


# --- errors ----------------------------------------------------------------------


def test_errors_carry_their_rule_through_pickling():
    error = ArchiveError("manifest.json: image.codes=13 does not fit a 12x1 image.", rule=rules.IMAGE_FIELDS)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ArchiveError and again.rule == "R8" and str(again) == str(error)
    assert str(error).endswith("(spec rule R8)") and isinstance(error, ValueError)


def test_errors_about_arguments_have_no_rule():
    error = WrollError("Invalid `filepath` argument.")
    assert error.rule is None and str(error) == "Invalid `filepath` argument."


def test_a_missing_file_raises_the_operating_system_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        weightroll.unroll(tmp_path / "absent.wroll")


# --- R4: the version -------------------------------------------------------------


@pytest.mark.parametrize("version", ["\u0661.\u0660", "\u00b2.0", "1.0\n", " 1.0", "1.0000000", "+1.0"])
def test_rejects_a_version_that_is_not_ascii_major_dot_minor(version):
    manifest = {"format": "wroll", "format_version": version}
    with pytest.raises(ArchiveError, match="must look like 'MAJOR.MINOR'") as info:
        mf.check_version(manifest)
    assert type(info.value) is ArchiveError and info.value.rule == "R4"


def test_rejects_a_newer_major_version_naming_the_release_that_wrote_it():
    manifest = {"format": "wroll", "format_version": "5.1",
                "producer": {"name": "weightroll", "version": "1.4.0"}}
    with pytest.raises(VersionError, match=r"Upgrade weightroll .* written by weightroll 1\.4\.0, which does\."):
        mf.check_version(manifest)


# --- R2, R36: JSON ---------------------------------------------------------------


def _nested(depth):
    return ("[" * (depth - 1) + "]" * (depth - 1)).join(["{\"a\":", "}"]).encode()


def test_accepts_json_nested_as_deep_as_the_limit():
    assert mf.json_depth(mf.loads(_nested(limits.MAX_JSON_DEPTH), "x")) == limits.MAX_JSON_DEPTH


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH + 1, 100_000])
def test_rejects_json_nested_deeper_than_the_limit(depth):
    with pytest.raises(LimitError, match="nested") as info:
        mf.loads(_nested(depth), "'architecture.json.zst'")
    assert info.value.rule == "R36"


@pytest.mark.parametrize("text, fragment", [
    (b'{"a":1e999}', "not finite"),
    (b'{"a":-1e400}', "not finite"),
    (b'{"a":' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'\xef\xbb\xbf{"a":1}', "byte order mark"),
    (b'{"a":1,"a":2}', "twice"),
])
def test_rejects_json_that_does_not_parse_one_way(text, fragment):
    with pytest.raises(ArchiveError, match=fragment) as info:
        mf.loads(text, "manifest.json", rule=rules.MANIFEST_JSON)
    assert type(info.value) is ArchiveError and info.value.rule == "R2"


def test_rejects_a_manifest_larger_than_the_limit_before_reading_it(monkeypatch):
    assert len(_manifests.text(TINY)) == 2006 and len(dict(_members())["manifest.json.zst"]) < 1000
    raw = _manifests.write(TINY, _manifests.read(TINY) | {"format_version": "2.0"})  # a 2.0 manifest.json
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(LimitError, match="declares 2006 bytes, more than the 1000 bytes allowed") as info:
        weightroll.unroll(TINY)
    assert info.value.rule == "R44"
    with pytest.raises(LimitError, match="more than the 1000 bytes allowed") as info:
        weightroll.unroll(raw)
    assert info.value.rule == "R2"


def _with_manifest_frame(frame):
    others = [(n, d) for n, d in _members() if n != "manifest.json.zst"]
    buffer = io.BytesIO()
    container.write_members(buffer, [("manifest.json.zst", frame)] + others)
    return buffer.getvalue()


def test_a_manifest_frame_declaring_more_than_the_limit_is_refused_unread(monkeypatch):
    monkeypatch.setattr(zstandard.ZstdDecompressor, "stream_reader", None)  # nothing may be inflated
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(limits.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(LimitError, match=f"declares {limits.MAX_MANIFEST_BYTES + 1} bytes") as info:
        weightroll.unroll(_with_manifest_frame(frame))
    assert info.value.rule == "R44"


def test_a_manifest_frame_without_its_size_is_refused_unread(monkeypatch):
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(_manifests.text(TINY))
    monkeypatch.setattr(zstandard.ZstdDecompressor, "stream_reader", None)
    with pytest.raises(ArchiveError, match="does not declare its content size") as info:
        weightroll.unroll(_with_manifest_frame(frame))
    assert info.value.rule == "R44"


@pytest.mark.parametrize("cut", [1, 8])
def test_a_truncated_manifest_frame_is_refused(cut):
    frame = dict(_members())["manifest.json.zst"][:-cut]
    with pytest.raises(ArchiveError, match="manifest.json.zst") as info:
        weightroll.unroll(_with_manifest_frame(frame))
    assert info.value.rule == "R44"


def test_a_second_frame_after_the_manifest_is_refused():
    frame = dict(_members())["manifest.json.zst"]
    with pytest.raises(ArchiveError, match="bytes after its zstd frame") as info:
        weightroll.unroll(_with_manifest_frame(frame + frame))
    assert info.value.rule == "R44"


# --- R1: the zip -----------------------------------------------------------------


def _central_offset(data, name):
    eocd = data.rindex(b"PK\x05\x06")
    count, _, start = struct.unpack("<HII", data[eocd + 10: eocd + 20])
    pos = start
    for _ in range(count):
        nlen, xlen, clen = struct.unpack("<HHH", data[pos + 28: pos + 34])
        if data[pos + 46: pos + 46 + nlen].decode() == name:
            return pos
        pos += 46 + nlen + xlen + clen
    raise KeyError(name)


@pytest.mark.parametrize("name, fragment", [("weights.png", "overlap in the file"),
                                            ("exact.bin", "runs into the central directory")])
def test_rejects_a_member_whose_declared_size_is_absurd(name, fragment):
    # A zip bomb's shape: the directory claims 4 GiB for a member of a few bytes.
    data = bytearray(TINY)
    entry = _central_offset(TINY, name)
    struct.pack_into("<II", data, entry + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    start = time.perf_counter()
    with pytest.raises(ArchiveError, match=fragment) as info:
        weightroll.unroll(bytes(data))
    assert info.value.rule == "R1" and time.perf_counter() - start < 1


def test_reads_an_archive_written_with_data_descriptors():
    # What the writer produces on a file object that cannot seek (spec §2.1).
    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.buffer = io.BytesIO()

        def writable(self):
            return True

        def write(self, data):
            return self.buffer.write(data)

    out = Unseekable()
    container.write_members(out, _members())
    data = out.buffer.getvalue()
    assert zipfile.ZipFile(io.BytesIO(data)).infolist()[0].flag_bits & 0x08
    assert weightroll.unroll(data).keys() == weightroll.unroll(TINY).keys()


# --- R5, R23: every member, and no member becomes a path ---------------------------


@pytest.mark.parametrize("name", ["../../evil.txt", "/tmp/evil.txt", "sub/../../evil.txt", "C:\\evil.txt"])
def test_a_member_named_like_a_path_is_never_written(tmp_path, monkeypatch, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    manifest = _manifest()
    manifest["members"][name] = {}
    data = _repack(manifest, add=[(name, b"not for the file system\n")])
    assert set(weightroll.unroll(data)) == {"dense/kernel", "dense/bias"}  # a listed unknown member
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "b"]
    assert not pathlib.Path("/tmp/evil.txt").exists()


def test_an_unlisted_member_is_refused_with_its_name_made_printable():
    name = "\x1b[2Jnotes.txt"
    with pytest.raises(ArchiveError, match=r"'\?\[2Jnotes\.txt' that manifest\.json does not list") as info:
        weightroll.unroll(_repack(add=[(name, b"hello")]))
    assert "\x1b" not in str(info.value) and info.value.rule == "R5"


def test_rejects_a_member_it_does_not_know_whose_checksum_does_not_match():
    manifest = _manifest()
    manifest["members"]["x_future.bin"] = {"size": 5, "sha256": "0" * 64}
    with pytest.raises(ArchiveError, match="'x_future.bin' does not match its SHA-256") as info:
        weightroll.unroll(_repack(manifest, add=[("x_future.bin", b"hello")], fix=False))
    assert info.value.rule == "R23"


def test_checks_every_member_before_decoding_any():
    with reader.RolledArchive(TINY) as archive:
        archive.verify_members()
        assert set(archive._verified) == set(archive.manifest["members"])


# --- R13: shapes -----------------------------------------------------------------


def test_rejects_a_huge_dimension_even_beside_a_zero():
    manifest = _manifest()
    manifest["tensors"].append({"path": "empty", "shape": [0, 1 << 40], "dtype": "float32",
                                "storage": "reference", "sha256": EMPTY_SHA256})
    with pytest.raises(LimitError, match="has more than") as info:
        weightroll.unroll(_repack(manifest))
    assert info.value.rule == "R13"


# --- R30: an empty coded tensor ----------------------------------------------------


def test_an_empty_coded_tensor_with_an_empty_table_decodes():
    manifest = _manifest()
    empty = {"path": "empty", "key": "vars/empty", "shape": [0, 3], "dtype": "float32", "storage": "coded",
             "codes": {"offset": 12, "count": 0}, "table": {"offset": 0, "size": 0}, "sha256": EMPTY_SHA256}
    empty["binding_sha256"] = binding_sha256(empty)
    manifest["tensors"].append(empty)
    weights = weightroll.unroll(_repack(manifest))
    assert weights["empty"].shape == (0, 3) and weights["empty"].dtype == np.float32


# --- R35: zstd members, bounded ----------------------------------------------------


def _with_architecture(frame, size):
    manifest = _manifest()
    manifest["architecture"]["size"] = size
    return _repack(manifest, replace={"architecture.json.zst": frame})


def test_a_zstd_bomb_is_refused_after_decompressing_no_more_than_declared():
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(256 << 20))
    assert len(bomb) < 64 << 10  # 256 MiB of zeros in a few KiB
    start = time.perf_counter()
    with reader.RolledArchive(_with_architecture(bomb, 1341)) as archive:
        with pytest.raises(LimitError, match="expands to more than the 1341 bytes") as info:
            archive.architecture_json()
    assert info.value.rule == "R35" and time.perf_counter() - start < 2


def test_a_zstd_frame_declaring_a_huge_size_is_refused_unread():
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 20))
    with reader.RolledArchive(_with_architecture(frame, 1341)) as archive:
        with pytest.raises(ArchiveError, match="declares 1048576 bytes but manifest.json says 1341") as info:
            archive.architecture_json()
    assert info.value.rule == "R35"


def test_a_second_zstd_frame_after_the_first_is_refused():
    text = json.dumps({"class_name": "Functional"}).encode()
    packer = zstandard.ZstdCompressor()
    with reader.RolledArchive(_with_architecture(packer.compress(text) * 2, len(text))) as archive:
        with pytest.raises(ArchiveError, match="bytes after its zstd frame") as info:
            archive.architecture_json()
    assert info.value.rule == "R35"


# --- the writer: atomic replacement --------------------------------------------------

_WRITE_LOOP = r"""
import io, sys, zipfile
from weightroll._format import reader, writer
archives = []
for source in sys.argv[2:]:
    with zipfile.ZipFile(source) as zf:
        archives.append([(info.filename, zf.read(info)) for info in zf.infolist()])
writer.write(sys.argv[1], archives[0])
print("looping", flush=True)
while True:
    for members in archives:
        writer.write(sys.argv[1], members)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_kills_at_any_moment_of_rewriting_leave_one_whole_archive(tmp_path):
    import random
    import select
    import signal
    import subprocess
    import sys

    sources = [VECTORS / "dense_codebook_2bit.wroll", VECTORS / "dense_codebook_8bit.wroll"]
    whole = {source.read_bytes() for source in sources}
    path = tmp_path / "m.wroll"
    for delay in random.Random(0).sample(range(5, 120), 4):  # milliseconds after the first write
        child = subprocess.Popen([sys.executable, "-c", _WRITE_LOOP, str(path)] + [str(s) for s in sources],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            ready, _, _ = select.select([child.stdout], [], [], 60)
            assert ready and child.stdout.readline() == b"looping\n"
            time.sleep(delay / 1000)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        assert path.read_bytes() in whole
        weightroll.unroll(path)


def test_decoder_array_names_are_informative_a_reader_does_not_need_them():
    manifest = _manifest()
    for entry in manifest["decoder"]["weights"]:
        del entry["name"]
    assert weightroll.unroll(_repack(manifest)).keys() == weightroll.unroll(TINY).keys()
