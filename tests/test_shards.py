"""Sharded archives (spec §4.13): an index beside self-checking shard files."""

import hashlib
import os
import types

import keras
import numpy as np
import pytest

import _manifests
import weightroll
from weightroll._format import limits, reader, shards, writer
from weightroll._format.decode import decoder_for
from weightroll.errors import ArchiveError, LimitError

KB = 1024 / 1024**3  # max_shard_size is in GB, as Keras takes it


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, name="a"),
                             keras.layers.Dense(256, name="b"), keras.layers.Dense(10, name="c")])


@pytest.fixture
def sharded(tmp_path):
    model = _model()
    weightroll.roll(model, tmp_path / "m.wroll", max_shard_size=100 * KB, tolerance=0.0)
    return model, tmp_path


def test_a_small_shard_size_writes_an_index_and_numbered_shards(sharded):
    _, folder = sharded
    assert sorted(os.listdir(folder)) == ["m-00001-of-00003.wroll", "m-00002-of-00003.wroll",
                                          "m-00003-of-00003.wroll", "m.wroll"]


def test_each_shard_is_an_archive_of_its_own(sharded):
    _, folder = sharded
    total = 0
    for name in ("m-00001-of-00003.wroll", "m-00002-of-00003.wroll", "m-00003-of-00003.wroll"):
        total += len(weightroll.unroll(folder / name))
    assert total == 6


def test_a_sharded_archive_loads_and_unrolls_as_one_file_would(sharded, tmp_path):
    model, folder = sharded
    x = np.random.default_rng(1).normal(size=(4, 32)).astype("float32")
    np.testing.assert_array_equal(weightroll.load_rolled(folder / "m.wroll").predict(x, verbose=0),
                                  model.predict(x, verbose=0))
    weights = weightroll.unroll(folder / "m.wroll")
    assert list(weights) == [v.path for v in model.weights]
    fresh = _model()
    weightroll.load_weights(fresh, folder / "m.wroll")
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_missing_shard_is_refused(sharded):
    _, folder = sharded
    os.remove(folder / "m-00002-of-00003.wroll")
    with pytest.raises(FileNotFoundError):
        weightroll.unroll(folder / "m.wroll")


def test_a_shard_from_another_roll_is_refused(sharded, tmp_path):
    _, folder = sharded
    other = tmp_path / "other"
    other.mkdir()
    model = _model()
    model.get_layer("b").kernel.assign(np.zeros((256, 256), "float32"))
    weightroll.roll(model, other / "m.wroll", max_shard_size=100 * KB, tolerance=0.0)
    os.replace(other / "m-00002-of-00003.wroll", folder / "m-00002-of-00003.wroll")
    with pytest.raises(ArchiveError, match="not the shard that was written") as info:
        weightroll.unroll(folder / "m.wroll")
    assert info.value.rule == "R43"


def test_a_sharded_index_read_from_a_file_object_is_refused(sharded):
    _, folder = sharded
    with pytest.raises(ArchiveError, match="read from its path"):
        weightroll.unroll((folder / "m.wroll").open("rb"))


def test_max_shard_size_must_be_a_positive_number(tmp_path):
    with pytest.raises(weightroll.WrollError, match="max_shard_size"):
        weightroll.roll(_model(), tmp_path / "m.wroll", max_shard_size=0)


# --- limits, with synthetic manifests: nothing of the claimed size is allocated ---


def _reference_shard(folder, name, values, index):
    """A shard holding one referenced tensor of `values` float32 values (no data)."""
    entry = {"path": f"t{index}", "key": f"vars/{index}", "shape": [values], "dtype": "float32",
             "storage": "reference", "sha256": "0" * 64}
    encoded = types.SimpleNamespace(tensors=[entry], codes=np.zeros(0, np.uint8), decoder={"kind": "codebook", "bits": 8},
                                    decoder_arrays=[np.zeros((0, 1), np.float32), np.ones((1, 1), np.float32)],
                                    exact_bytes=b"")
    members, _ = writer.build_members(encoded, b"{}", None, {}, {}, {}, keyed=True)
    writer.write(os.path.join(folder, name), members)
    return {"file": name, "manifest_sha256": writer.manifest_sha256(members), "tensors": 1}


def _index(folder, listed):
    empty = types.SimpleNamespace(tensors=[], codes=np.zeros(0, np.uint8), decoder={"kind": "codebook", "bits": 8},
                                  decoder_arrays=[np.zeros((0, 1), np.float32), np.ones((1, 1), np.float32)],
                                  exact_bytes=b"")
    members, _ = writer.build_members(empty, b"{}", b"{}", {}, {}, {}, keyed=True, shards=listed)
    writer.write(os.path.join(folder, "index.wroll"), members)
    return os.path.join(folder, "index.wroll")


def test_a_sharded_archive_past_2_to_the_33_values_is_accepted_by_design(tmp_path):
    per_shard = limits.MAX_TENSOR_ELEMENTS  # each shard at its own limit
    listed = [_reference_shard(tmp_path, f"s{i}.wroll", per_shard, i) for i in range(3)]
    with reader.RolledArchive(_index(tmp_path, listed)) as index:
        decoder = decoder_for(index, skip_references=True)
        assert decoder._shards.total_values == 3 * per_shard > 1 << 33
        decoder.close()


def test_the_shards_together_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TOTAL_ELEMENTS", 2 * limits.MAX_TENSOR_ELEMENTS)
    listed = [_reference_shard(tmp_path, f"s{i}.wroll", limits.MAX_TENSOR_ELEMENTS, i) for i in range(3)]
    with reader.RolledArchive(_index(tmp_path, listed)) as index, pytest.raises(LimitError) as info:
        decoder_for(index, skip_references=True)
    assert info.value.rule == "R43"


def test_a_shard_path_outside_the_index_folder_is_refused(tmp_path):
    listed = [_reference_shard(tmp_path, "s0.wroll", 4, 0)]
    listed[0]["file"] = "../s0.wroll"
    path = _index(tmp_path, listed)
    with pytest.raises(ArchiveError, match="plain file name") as info:
        weightroll.unroll(path)
    assert info.value.rule == "R43"


def test_an_index_with_tensors_of_its_own_is_refused(sharded):
    _, folder = sharded
    shard_manifest = _manifests.read(folder / "m-00001-of-00003.wroll")
    manifest = _manifests.read(folder / "m.wroll")
    manifest["tensors"] = shard_manifest["tensors"][:1]
    (folder / "bad.wroll").write_bytes(_manifests.write(folder / "m.wroll", manifest))
    with pytest.raises(ArchiveError, match="holds no tensors of its own") as info:
        weightroll.unroll(folder / "bad.wroll")
    assert info.value.rule == "R43"


def test_the_index_records_the_sha256_of_each_shards_manifest_text(sharded):
    _, folder = sharded
    index = _manifests.read(folder / "m.wroll")
    for listed in index["shards"]:
        members = _manifests.members(folder / listed["file"])
        assert members[0][0] == "manifest.json.zst"  # compressed; the digest is of the text it holds
        assert listed["manifest_sha256"] == hashlib.sha256(_manifests.text(members)).hexdigest()


def test_groups_keep_each_shard_within_the_size_and_a_large_tensor_alone():
    entries = [{"shape": [10], "dtype": "float32"}, {"shape": [10], "dtype": "float32"},
               {"shape": [100], "dtype": "float32"}, {"shape": [5], "dtype": "float32"}]
    assert shards.groups(entries, 80) == [[0, 1], [2], [3]]


def test_inspect_of_an_index_counts_the_shards_tensors_and_verifies_them(sharded):
    from weightroll import inspection
    from weightroll._format import reader as reader_lib

    model, folder = sharded
    with reader_lib.RolledArchive(folder / "m.wroll") as archive:
        doc = inspection.describe(archive, folder / "m.wroll")
        assert doc["model"]["parameters"] == sum(int(np.prod(v.shape)) for v in model.weights)
        assert [row["file"] for row in doc["shards"]] == ["m-00001-of-00003.wroll", "m-00002-of-00003.wroll",
                                                         "m-00003-of-00003.wroll"]
        assert inspection.verify(archive)["tensors_checked"] == 6
