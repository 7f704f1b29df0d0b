"""Paths TensorFlow's gfile reads (gs://, ...), tested with its in-memory ram:// filesystem,
which goes through the same gfile code as gs://."""

import uuid

import keras
import numpy as np
import pytest

import weightroll
from weightroll import inspection

tf = pytest.importorskip("tensorflow")


@pytest.fixture
def folder():
    path = f"ram://weightroll-{uuid.uuid4().hex}"
    yield path
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(3)])


def test_roll_load_rolled_and_unroll_work_on_ram_paths(folder):
    model = _model()
    path = f"{folder}/nested/m.wroll"  # a missing folder is created, as for a local path
    weightroll.roll(model, path, tolerance=0.0)
    x = np.ones((2, 8), "float32")
    np.testing.assert_array_equal(weightroll.load_rolled(path).predict(x, verbose=0), model.predict(x, verbose=0))
    assert set(weightroll.unroll(path)) == {v.path for v in model.weights}
    fresh = _model()
    weightroll.load_weights(fresh, path)


def test_a_sharded_archive_lives_on_ram_paths_too(folder):
    model = _model()
    weightroll.roll(model, f"{folder}/m.wroll", max_shard_size=1024 / 1024**3)
    assert len(tf.io.gfile.glob(f"{folder}/m-*-of-*.wroll")) >= 2
    assert len(weightroll.unroll(f"{folder}/m.wroll")) == 4


def test_a_missing_remote_archive_is_file_not_found(folder):
    with pytest.raises(FileNotFoundError, match="File not found"):
        weightroll.unroll(f"{folder}/absent.wroll")


def test_inspect_reads_ram_paths(folder, capsys):
    weightroll.roll(_model(), f"{folder}/m.wroll")
    assert inspection.main([f"{folder}/m.wroll", "--verify"]) == 0
    assert "m.wroll" in capsys.readouterr().out


def test_the_checkpoint_writes_and_prunes_archives_on_ram_paths(folder):
    model = _model()
    model.compile("adam", "mse")
    x, y = np.ones((16, 8), "float32"), np.zeros((16, 3), "float32")
    checkpoint = weightroll.WeightRollCheckpoint(f"{folder}/ckpt/{{epoch}}.wroll", max_to_keep=2)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[checkpoint])
    assert sorted(tf.io.gfile.listdir(f"{folder}/ckpt")) == ["2.wroll", "3.wroll"]
    weightroll.load_rolled(f"{folder}/ckpt/3.wroll")


def test_the_command_line_rolls_and_unrolls_ram_paths(folder, tmp_path):
    from weightroll import cli

    model = _model()
    model.save(tmp_path / "m.keras")
    assert cli.main(["roll", str(tmp_path / "m.keras"), f"{folder}/m.wroll", "-q"]) == 0
    assert cli.main(["unroll", f"{folder}/m.wroll", str(tmp_path / "back.keras"), "-q"]) == 0
    assert cli.main(["unroll", f"{folder}/absent.wroll", str(tmp_path / "x.keras"), "-q"]) == 1
