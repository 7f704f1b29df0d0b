"""`tools/inspect_wroll` (and `weightroll.inspect`) on archives built from numpy alone."""

import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from weightroll import _encode
from weightroll._format import writer
from weightroll import inspection as inspect_lib
from weightroll._format import container
from weightroll._format import manifest as mf

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "inspect_wroll")
PRODUCER = {"name": "weightroll", "version": "0.1.0", "keras_version": "3.15.1", "backend": "tensorflow"}
HIDDEN = 48
MAX_PICTURE_SIDE = 2000
# Beyond the number of tensors that each get rows of their own in the picture.
MANY_TENSORS = 600

TOP_KEYS = {"inspect_schema", "file", "format", "format_version", "producer", "model", "archive_bytes",
            "float32_bytes", "compression_ratio", "members", "image", "decoder", "settings", "roll_value",
            "tensors", "shards", "verify", "picture"}
TENSOR_KEYS = {"path", "shape", "dtype", "parameters", "storage", "quantizer", "bits", "levels", "codes",
               "table", "scales", "outliers", "decoder_entry", "bytes", "error"}


def _tensors(rng, prefix="tiny"):
    return [
        (f"{prefix}/dense/kernel", rng.normal(size=(32, HIDDEN)).astype("float32")),
        (f"{prefix}/dense/bias", rng.normal(size=HIDDEN).astype("float32") * 0.1),
        (f"{prefix}/dense_1/kernel", rng.normal(size=(HIDDEN, 10)).astype("float32")),
        ("seed_generator/state", np.array([3, 7], "int64")),
    ]


def _write_archive(path, tensors, name="tiny", decoder="codebook", compress_level=9, base_keys=None):
    encoded = _encode.encode(tensors, decoder=decoder, bits=8, base_keys=base_keys)
    members, _ = writer.build_members(
        encoded,
        decoder_config_json=b'{"class_name": "Functional"}\n',
        architecture_json=b'{"class_name": "Sequential", "config": {}}',
        producer=PRODUCER,
        model_info={"name": name, "class_name": "Sequential", "parameters": sum(a.size for _, a in tensors)},
        roll_value={"weights": {"relative_rmse": 0.003, "max_abs_error": 0.01}, "outputs": None},
        compress_level=compress_level,
    )
    writer.write(path, members)
    return path


@pytest.fixture
def archive(tmp_path, rng):
    return _write_archive(tmp_path / "tiny.wroll", _tensors(rng))


def _tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=120)


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _rewrite(path, members):
    with open(path, "wb") as f:
        container.write_members(f, members)


def _flip_byte_inside(path, name):
    """Flip one byte in the middle of member `name`'s data, in place (the zip CRC then fails)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    data[start + info.file_size // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_summary_names_format_producer_model_members_and_ratio(archive):
    result = _tool(archive)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "wroll 1.1, written by weightroll 0.1.0, Keras 3.15.1 (tensorflow backend)" in out
    assert "tiny (Sequential)" in out
    assert f"{32 * HIDDEN + HIDDEN + HIDDEN * 10 + 2:,} in 4 tensors" in out
    for member in (mf.RAW_MANIFEST_MEMBER, mf.IMAGE_MEMBER, mf.DECODER_CONFIG_MEMBER, mf.DECODER_WEIGHTS_MEMBER,
                   mf.ARCHITECTURE_MEMBER, mf.EXACT_MEMBER):
        assert member in out
    assert "float32 weights" in out and "relative RMSE 0.003" in out
    assert "not checked (use --verify)" in out


def test_the_compressed_manifest_is_shown_with_its_size_and_its_decompressed_size():
    vector = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors", "dense_codebook_2bit.wroll")
    doc = json.loads(_tool(vector, "--json").stdout)
    manifest = doc["members"][0]
    with zipfile.ZipFile(vector) as zf:
        size = zf.getinfo("manifest.json.zst").file_size
    assert manifest == {"name": "manifest.json.zst", "size": size, "sha256": None, "content_size": 2006}
    assert size < 2006
    sizes = {m["name"]: m["content_size"] for m in doc["members"]}
    assert sizes["architecture.json.zst"] == 1341 and sizes["weights.png"] is None
    assert sizes["decoder.bin.zst"] == 20  # 4 table entries and 1 scale, float32
    assert re.search(rf"manifest\.json\.zst +{size:,} bytes \(2,006 decompressed\)", _tool(vector).stdout)


def test_tensors_flag_adds_one_row_per_tensor(archive):
    out = _tool(archive, "--tensors").stdout
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:4] == ["path", "shape", "dtype", "storage"]
    assert [row.split()[0] for row in table[1:]] == [p for p, _ in _tensors(np.random.default_rng(0))]
    assert "32x48" in out and "exact.bin[" in out


def test_json_has_the_documented_keys(archive):
    doc = json.loads(_tool(archive, "--json").stdout)
    assert set(doc) == TOP_KEYS
    assert doc["inspect_schema"] == inspect_lib.JSON_SCHEMA
    assert set(doc["producer"]) == {"name", "version", "keras_version", "backend"}
    assert set(doc["model"]) == {"name", "class_name", "parameters"}
    assert set(doc["decoder"]) == {"kind", "bits", "activation", "table_entries", "parameters"}
    assert set(doc["roll_value"]) == {"weights", "outputs"}
    assert all(set(m) == {"name", "size", "sha256", "content_size"} for m in doc["members"])
    assert all(set(t) == TENSOR_KEYS for t in doc["tensors"])
    assert doc["verify"] is None and doc["picture"] is None


def test_json_sizes_agree_with_the_file(archive):
    doc = json.loads(_tool(archive, "--json").stdout)
    assert doc["archive_bytes"] == os.path.getsize(archive)
    with zipfile.ZipFile(archive) as zf:
        assert {m["name"]: m["size"] for m in doc["members"]} == {i.filename: i.file_size for i in zf.infolist()}
    assert doc["float32_bytes"] == 4 * doc["model"]["parameters"]
    assert doc["compression_ratio"] == pytest.approx(doc["float32_bytes"] / doc["archive_bytes"], rel=1e-3)
    coded = [t for t in doc["tensors"] if t["storage"] == "coded"]
    assert sum(t["codes"]["count"] for t in coded) == doc["image"]["codes"]


def test_verify_passes_on_a_sound_archive(archive):
    result = _tool(archive, "--verify", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verify"] == {"ok": True, "members_checked": len(doc["members"]) - 1,  # all but the manifest
                             "tensors_checked": 4, "base_references": 0, "error": None}


def test_verify_counts_base_model_references_without_checking_them(tmp_path, rng):
    tensors = _tensors(rng)
    base_keys = {_encode.reference_key(tensors[0][1])}  # the first kernel comes from a base model
    path = _write_archive(tmp_path / "fine_tuned.wroll", tensors, base_keys=base_keys)
    result = _tool(path, "--verify", "--json", "--image", tmp_path / "fine_tuned.png")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["verify"]["tensors_checked"], doc["verify"]["base_references"]) == (3, 1)
    assert doc["tensors"][0]["storage"] == "reference" and doc["tensors"][0]["bytes"] == 0


def test_summary_reads_only_the_manifest(archive):
    _flip_byte_inside(archive, mf.IMAGE_MEMBER)
    assert _tool(archive).returncode == 0
    assert _tool(archive, "--verify").returncode == 1


def test_verify_fails_on_a_flipped_byte_in_weights_png(archive):
    _flip_byte_inside(archive, mf.IMAGE_MEMBER)
    result = _tool(archive, "--verify")
    assert result.returncode == 1
    assert "FAILED" in result.stdout
    assert result.stderr.startswith("inspect_wroll: error: verification failed:")
    assert f"'{mf.IMAGE_MEMBER}'" in result.stderr and "Traceback" not in result.stderr


def test_verify_fails_on_a_changed_member_whose_zip_crc_is_right(archive):
    members = [(name, bytes(b ^ 1 for b in data) if name == mf.ARCHITECTURE_MEMBER else data)
               for name, data in _members(archive)]
    _rewrite(archive, members)
    result = _tool(archive, "--verify", "--json")
    assert result.returncode == 1
    verify = json.loads(result.stdout)["verify"]
    assert verify["ok"] is False and f"'{mf.ARCHITECTURE_MEMBER}' does not match its SHA-256" in verify["error"]


def test_verify_fails_on_a_truncated_file(archive):
    data = open(archive, "rb").read()
    open(archive, "wb").write(data[: len(data) * 2 // 3])
    result = _tool(archive, "--verify")
    assert result.returncode == 1
    assert "not a readable zip" in result.stderr and result.stdout == ""


def test_verify_fails_on_a_missing_member(archive):
    _rewrite(archive, [(name, data) for name, data in _members(archive) if name != mf.DECODER_WEIGHTS_MEMBER])
    result = _tool(archive, "--verify")
    assert result.returncode == 1
    assert f"lacks the member '{mf.DECODER_WEIGHTS_MEMBER}'" in result.stderr


def test_missing_file_is_one_error_line(tmp_path):
    result = _tool(tmp_path / "absent.wroll")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"inspect_wroll: error: No such file or directory: '{tmp_path / 'absent.wroll'}'"]


def test_usage_error_exits_2(archive):
    assert inspect_lib.main([str(archive), "--no-such-flag"]) == 2
    assert inspect_lib.main([]) == 2


def test_names_are_sanitised_before_printing(tmp_path, rng):
    tensors = [("evil\x1b[2J\x07/kernel", rng.normal(size=(64, 8)).astype("float32"))]
    path = _write_archive(tmp_path / "evil.wroll", tensors, name="bad\rname\x1b]0;owned\x07")
    result = _tool(path, "--tensors")
    assert result.returncode == 0
    assert not any(c in result.stdout for c in "\x1b\x07\r")
    assert "evil?[2J?/kernel" in result.stdout and "bad?name?]0;owned?" in result.stdout
    raw = _tool(path, "--json").stdout
    assert "\x1b" not in raw and json.loads(raw)["tensors"][0]["path"] == tensors[0][0]


def test_quiet_prints_nothing_and_keeps_the_exit_code(archive, capsys):
    assert inspect_lib.main([str(archive), "--verify", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_image_is_a_png_of_sensible_size(archive, tmp_path):
    picture = tmp_path / "tiny.png"
    result = _tool(archive, "--image", picture, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["picture"] == str(picture)
    with Image.open(picture) as image:
        image.verify()
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert 600 <= image.width <= MAX_PICTURE_SIDE and 400 <= image.height <= MAX_PICTURE_SIDE
        assert len(image.getcolors(1 << 16) or []) > 50  # a colour map, not a blank page


@pytest.mark.slow
def test_image_of_many_tensors_stays_within_2000_pixels(tmp_path, rng):
    tensors = []
    for i in range(MANY_TENSORS // 3):
        tensors += [(f"net/block_{i}/dense/kernel", rng.normal(size=(128, 128)).astype("float32")),
                    (f"net/block_{i}/dense/bias", rng.normal(size=128).astype("float32")),
                    (f"net/block_{i}/norm/gamma", rng.normal(1.0, 0.1, size=128).astype("float32"))]
    path = _write_archive(tmp_path / "many.wroll", tensors, decoder="mlp", compress_level=1)
    picture = tmp_path / "many.png"
    assert inspect_lib.main([str(path), "--image", str(picture), "--quiet"]) == 0
    with Image.open(picture) as image:
        assert max(image.size) <= MAX_PICTURE_SIDE


def test_image_refuses_damaged_codes(archive, tmp_path):
    _flip_byte_inside(archive, mf.IMAGE_MEMBER)
    assert inspect_lib.main([str(archive), "--image", str(tmp_path / "x.png"), "--quiet"]) == 1
    assert not (tmp_path / "x.png").exists()


def test_inspect_imports_neither_keras_nor_tensorflow(archive, tmp_path):
    code = (
        "import sys\n"
        "from weightroll import cli, inspection as inspect\n"
        f"assert inspect.main([{str(archive)!r}, '--verify', '--image', {str(tmp_path / 'p.png')!r}, '-q']) == 0\n"
        f"assert cli.main(['inspect', {str(archive)!r}, '--tensors', '-q']) == 0\n"
        "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
