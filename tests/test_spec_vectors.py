"""The format specification's test vectors (spec/wroll-v4.md, spec/vectors/).

(a) every valid vector unrolls to exactly the expected tensors, bit for bit;
(b) every invalid vector is refused with the listed exception, message and rule, and every rule
    has at least one;
(c) make_vectors.py regenerates byte-identical files (the writer is deterministic, with and
    without its C kernels), and the vectors of each version are what they say they are;
(d) the worked example, rule list and limits in the spec agree with the vectors and code.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import filecmp  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import weightroll  # noqa: E402
from weightroll import errors  # noqa: E402
from weightroll._format import limits, rules  # noqa: E402

SPEC_DIR = pathlib.Path(__file__).resolve().parents[1] / "spec"
VECTORS = SPEC_DIR / "vectors"
SPEC = SPEC_DIR / "wroll-v4.md"
VALID = sorted(p.name[: -len(".wroll")] for p in VECTORS.glob("*.wroll"))
INDEX = json.loads((VECTORS / "invalid" / "index.json").read_text())


def _load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_array(entry):
    from weightroll._format.schema import numpy_dtype

    return np.array(entry["values"], dtype=numpy_dtype(entry["dtype"])).reshape(entry["shape"])


def _base(name):
    """The base tensors a vector was rolled against (`NAME.base.json`), or None."""
    path = VECTORS / name
    if not path.is_file():
        return None
    return {p: _expected_array(e) for p, e in json.loads(path.read_text()).items()}


# --- (a) valid vectors ---------------------------------------------------------


def test_the_vectors_are_there():
    assert {"dense_codebook_2bit", "dense_dropout_exact", "dense_mlp_8bit", "dense_float16_1bit",
            "dense_codebook_8bit", "dense_tolerance", "dense_trellis", "dense_reference", "minor_version_4_9",
            "v3_dense_tolerance", "v3_trellis_ignored", "v2_dense_tolerance",
            "v1_dense_codebook_2bit"} <= set(VALID)
    for name in VALID:
        assert (VECTORS / f"{name}.expected.json").is_file()
        assert (VECTORS / f"{name}.wroll").stat().st_size < 16 * 1024


@pytest.mark.parametrize("name", VALID)
def test_valid_vector_unrolls_to_the_expected_tensors(name):
    expected = json.loads((VECTORS / f"{name}.expected.json").read_text())
    weights = weightroll.unroll(VECTORS / f"{name}.wroll", base=_base(f"{name}.base.json"))
    assert list(weights) == list(expected)  # archive order is model.variables order
    for path, entry in expected.items():
        array = weights[path]
        assert array.dtype.name == entry["dtype"], path
        assert list(array.shape) == entry["shape"], path
        want = _expected_array(entry)
        assert array.tobytes() == want.tobytes(), path  # bit-exact, -0.0 included
        little_endian = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        assert hashlib.sha256(little_endian).hexdigest() == entry["sha256"], path


@pytest.mark.parametrize("name", VALID)
def test_valid_vector_loads_into_keras_with_each_tensor_in_its_variable(name):
    expected = json.loads((VECTORS / f"{name}.expected.json").read_text())
    model = weightroll.load_rolled(VECTORS / f"{name}.wroll", compile=False,
                                   base=_base(f"{name}.base.json"))
    by_path = {v.path: v for v in model.variables}
    for path, entry in expected.items():
        value = np.asarray(by_path[path].numpy())
        assert value.dtype.name == entry["dtype"]
        assert value.tobytes() == _expected_array(entry).tobytes(), path


# --- (b) invalid vectors -------------------------------------------------------


def test_every_invalid_file_is_indexed():
    on_disk = sorted(p.name for p in (VECTORS / "invalid").glob("*.wroll"))
    assert on_disk == sorted(e["file"] for e in INDEX)
    assert len({e["file"] for e in INDEX}) == len(INDEX)


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"][: -len(".wroll")] for e in INDEX])
def test_invalid_vector_is_refused(entry):
    cls = getattr(errors, entry["error"])
    read = {"unroll": weightroll.unroll, "load_rolled": weightroll.load_rolled}[entry["operation"]]
    base = _base(entry["base"]) if "base" in entry else None
    with pytest.raises(cls, match=re.escape(entry["match"])) as info:
        read(VECTORS / "invalid" / entry["file"], base=base)
    assert type(info.value) is cls, f"{entry['rule']}: raised {type(info.value).__name__}"
    assert info.value.rule == entry["rule"], str(info.value)
    assert str(info.value).endswith(f"(spec rule {entry['rule']})")


def test_every_rule_has_an_invalid_vector():
    assert sorted({e["rule"] for e in INDEX}, key=lambda r: int(r[1:])) == list(rules.ALL)


# --- (c) golden bytes ----------------------------------------------------------


def _committed_files():
    skip = {"make_vectors.py"}
    return sorted(
        p.relative_to(VECTORS).as_posix()
        for p in VECTORS.rglob("*")
        if p.is_file() and p.name not in skip and "__pycache__" not in p.parts
    )


def _differing(dir_a, dir_b, names):
    return [n for n in names if not filecmp.cmp(dir_a / n, dir_b / n, shallow=False)]


@pytest.mark.slow
@pytest.mark.parametrize("coder", ["kernel", "numpy"])
def test_make_vectors_regenerates_byte_identical_files(tmp_path, monkeypatch, coder):
    """On any machine (CPU, vector units, BLAS), with the uniform coder's C
    kernel and the trellis coder's C loops and without them: the committed
    bytes, as long as the libraries whose output they hold are the versions
    environment.json records."""
    from weightroll.coders import trellis, uniform

    if coder == "kernel" and uniform._kernel is None and trellis._trellis is None:
        pytest.skip("the C kernels are not built (setup.py); the numpy run checks the bytes")
    if coder == "numpy":
        monkeypatch.setattr(uniform, "_kernel", None)
        monkeypatch.setattr(trellis, "_trellis", None)
    make_vectors = _load_make_vectors()
    written = make_vectors.generate(str(tmp_path / "a"))
    assert written == _committed_files()
    committed_env = json.loads((VECTORS / "environment.json").read_text())
    current_env = json.loads((tmp_path / "a" / "environment.json").read_text())
    if current_env != committed_env:
        # Other library versions may compress or serialise differently; the
        # writer must still be deterministic here: a second run, same bytes.
        make_vectors.generate(str(tmp_path / "b"))
        assert _differing(tmp_path / "a", tmp_path / "b", written) == []
        changed = {k: (committed_env.get(k), current_env.get(k))
                   for k in set(committed_env) | set(current_env) if committed_env.get(k) != current_env.get(k)}
        pytest.skip(f"vectors were generated with other library versions {changed}; regenerate them "
                    "with `python spec/vectors/make_vectors.py` (the writer was deterministic here)")
    assert _differing(tmp_path / "a", VECTORS, written) == []


# --- (d) the spec text -----------------------------------------------------------


def _spec_text():
    return SPEC.read_text(encoding="utf-8")


def _spec_blocks():
    pattern = re.compile(r"<!-- example:([a-z0-9-]+) -->\s*```[a-z]*\n(.*?)\n```", re.S)
    return dict(pattern.findall(_spec_text()))


def test_worked_example_matches_the_vector():
    make_vectors = _load_make_vectors()
    blocks = _spec_blocks()
    actual = make_vectors.worked_example(str(VECTORS / f"{make_vectors.EXAMPLE}.wroll"))
    for name in ("manifest", "manifest-indented", "members", "zip-local-header", "zip-central-entry", "zip-end-record",
                 "png-ihdr", "png-scanline", "decoder-bin-zst", "decoder-bin", "exact-bin", "decoder-json",
                 "architecture", "trellis-walk"):
        assert name in blocks, f"the spec lacks the worked-example block '{name}'"
    for name, text in blocks.items():
        assert name in actual, f"unknown worked-example block '{name}'"
        assert text == actual[name], (
            f"worked-example block '{name}' differs from the vector; print the current blocks with "
            "`python spec/vectors/make_vectors.py --example`")


def test_worked_example_manifest_is_the_vector_manifest():
    import zipfile

    import zstandard

    with zipfile.ZipFile(VECTORS / "dense_codebook_2bit.wroll") as zf:
        manifest = zstandard.ZstdDecompressor().decompress(zf.read("manifest.json.zst"))
    assert _spec_blocks()["manifest"].encode("ascii") + b"\n" == manifest


@pytest.mark.parametrize("name, version, member, decoder_member", [
    ("dense_codebook_2bit", "4.0", "manifest.json.zst", "decoder.bin.zst"),
    ("minor_version_4_9", "4.9", "manifest.json.zst", "decoder.bin.zst"),
    ("v3_dense_tolerance", "3.0", "manifest.json.zst", "decoder.bin"),
    ("v2_dense_tolerance", "2.0", "manifest.json", "decoder.bin"),
    ("v1_dense_codebook_2bit", "1.1", "manifest.json", "decoder.bin"),
])
def test_each_major_version_has_a_valid_vector_with_its_members(name, version, member, decoder_member):
    import _manifests

    members = _manifests.members(VECTORS / f"{name}.wroll")
    assert members[0][0] == member and not {member} ^ ({n for n, _ in members} & set(_manifests.NAMES))
    manifest = _manifests.read(members)
    assert manifest["format_version"] == version
    assert members[3][0] == decoder_member == manifest["decoder"]["weights_member"]
    assert not {"decoder.bin", "decoder.bin.zst"} - {decoder_member} & {n for n, _ in members}


def test_every_4_0_vector_keeps_its_decoder_arrays_compressed():
    import _manifests
    import zstandard

    for name in VALID:
        members = dict(_manifests.members(VECTORS / f"{name}.wroll"))
        manifest = _manifests.read(VECTORS / f"{name}.wroll")
        if not manifest["format_version"].startswith("4."):
            assert "decoder.bin" in members, name
            if name != "v3_trellis_ignored":  # the one older vector with the field, to be ignored
                assert not any("trellis" in t for t in manifest["tensors"]), name
            continue
        last = manifest["decoder"]["weights"][-1]
        size = last["offset"] + int(np.prod(last["shape"])) * (4 if last["dtype"] == "float32" else 8)
        frame = members["decoder.bin.zst"]
        assert zstandard.frame_content_size(frame) == size, name  # weightroll's frames declare it
        assert len(zstandard.ZstdDecompressor().decompress(frame)) == size, name


def test_a_vector_has_trellis_codes_with_scales_and_outliers():
    import _manifests

    coded = [t for name in VALID if not name.startswith(("v1_", "v2_", "v3_"))
             for t in _manifests.read(VECTORS / f"{name}.wroll")["tensors"] if "trellis" in t]
    assert coded, "no valid vector has trellis codes"
    full = [t for t in coded if "scales" in t and "outliers" in t and t["quantizer"] == "trellis"]
    assert full, "no trellis-coded tensor has both scales and outliers"
    kernel = full[0]
    assert kernel["codes"]["count"] % kernel["trellis"]["segment"], "a last, shorter segment too"
    assert kernel["codes"]["count"] > kernel["trellis"]["segment"]


def test_the_3_0_vector_is_the_one_a_3_0_writer_wrote():
    make_vectors = _load_make_vectors()
    for name, sha256 in make_vectors.FROZEN.items():
        assert hashlib.sha256((VECTORS / f"{name}.wroll").read_bytes()).hexdigest() == sha256, name
    expected = {name: json.loads((VECTORS / f"{name}.expected.json").read_text())
                for name in ("v3_dense_tolerance", "v3_trellis_ignored", "v2_dense_tolerance")}
    assert expected["v3_trellis_ignored"] == expected["v3_dense_tolerance"] == expected["v2_dense_tolerance"]


def test_every_rule_in_the_index_is_in_the_spec():
    text = _spec_text()
    defined = set(re.findall(r"^\*\*(R\d+)\.\*\*", text, re.M))
    assert defined == {f"R{i}" for i in range(1, len(defined) + 1)}  # numbered without gaps
    assert {e["rule"] for e in INDEX} <= defined


def test_every_rule_in_the_spec_has_one_constant_in_the_code():
    defined = re.findall(r"^\*\*(R\d+)\.\*\*", _spec_text(), re.M)
    constants = [v for k, v in vars(rules).items() if k.isupper() and k != "ALL"]
    assert sorted(constants, key=lambda r: int(r[1:])) == defined  # one each, none left over
    assert rules.ALL == tuple(defined)


def test_the_spec_lists_the_vectors_of_every_rule():
    text = _spec_text()
    for rule in rules.ALL:
        row = re.search(rf"^\| {rule} \| (.+) \|$", text, re.M)
        assert row, f"the spec's table of invalid vectors lacks {rule}"
        listed = set(re.findall(r"`([a-z0-9_]+)`", row.group(1)))
        assert listed == {e["file"][: -len(".wroll")] for e in INDEX if e["rule"] == rule}, rule


def test_limits_table_matches_the_code():
    text = _spec_text()
    names = [n for n in dir(limits) if n.isupper()]
    assert names
    for name in names:
        row = re.search(rf"^\| `{name}` \| ([0-9 ]+?) \|", text, re.M)
        assert row, f"the spec's limits table lacks {name}"
        assert int(row.group(1).replace(" ", "")) == getattr(limits, name), name
