"""The `weightroll` command line, run as a user runs it (and in-process where that is enough)."""

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import weightroll
from weightroll import _progress, cli
from weightroll._format.reader import RolledArchive

FEATURES = 6
UNITS = 32
CLASSES = 3
SAMPLES = 24

_SCRIPT = shutil.which("weightroll", path=os.path.dirname(sys.executable))
WEIGHTROLL = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "weightroll.cli"]
TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "inspect_wroll")


def _run(*args, timeout=180, env=None):
    return subprocess.run([*WEIGHTROLL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def _small_model():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(UNITS, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ], name="cli_model")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small model saved as .keras and .h5, and inputs for it as .npy."""
    folder = tmp_path_factory.mktemp("saved")
    model = _small_model()
    x = np.random.default_rng(0).normal(size=(SAMPLES, FEATURES)).astype("float32")
    model.fit(x, np.arange(SAMPLES) % CLASSES, epochs=1, verbose=0)  # saved with its optimizer state, as usual
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    np.save(folder / "x.npy", x)
    return model, x, folder


@pytest.fixture(scope="module")
def rolled(saved):
    """`weightroll roll` run once as a user runs it (TensorFlow's log level left to the command)."""
    model, x, folder = saved
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _run("roll", folder / "model.keras", folder / "model.wroll", "--validation-data", folder / "x.npy",
                  env=env)
    return result, folder / "model.wroll"


@pytest.mark.slow
def test_roll_writes_the_archive_and_reports_the_roll_value(rolled):
    result, path = rolled
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert result.stdout.startswith(f"Wrote {path}\nRolled ")
    assert "top-1 agreement" in result.stdout
    assert result.stderr == ""  # no TensorFlow start-up noise, no progress when not a terminal


@pytest.mark.slow
def test_rolled_archive_predicts_as_its_stored_roll_value_says(saved, rolled):
    model, x, _ = saved
    loaded = weightroll.load_rolled(rolled[1])
    diff = np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0)).max()
    with RolledArchive(rolled[1]) as archive:
        stored = archive.manifest["roll_value"]["outputs"]
    assert stored["samples"] + stored["fit"]["samples"] == SAMPLES  # --validation-data reached the roll
    assert diff == pytest.approx(max(stored["max_abs_diff"], stored["fit"]["max_abs_diff"]), rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_unroll_output_loads_with_keras_and_predicts_like_the_rolled_model(saved, rolled, tmp_path, capsys):
    _, x, _ = saved
    out = tmp_path / "back.keras"
    # In-process: the installed command's own process is run by the `rolled` fixture,
    # test_export_... and test_python_dash_m_... (which runs `unroll` too).
    assert cli.main(["unroll", str(rolled[1]), str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"Wrote {out} (")
    restored = keras.models.load_model(out)
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  weightroll.load_rolled(rolled[1]).predict(x, verbose=0))


@pytest.mark.slow
def test_inspect_subcommand_prints_what_the_tool_prints(rolled):
    by_command = _run("inspect", rolled[1], "--json", "--verify")
    by_tool = subprocess.run([sys.executable, TOOL, str(rolled[1]), "--json", "--verify"],
                             capture_output=True, text=True, timeout=60)
    assert by_command.returncode == by_tool.returncode == 0
    assert by_command.stdout == by_tool.stdout
    doc = json.loads(by_command.stdout)
    assert doc["model"]["name"] == "cli_model" and doc["verify"]["ok"] is True


@pytest.mark.slow
def test_demo_trains_rolls_and_reports_agreement(tmp_path, capsys):
    out = tmp_path / "demo.wroll"
    # In-process (the command's own process is run by the rolled fixture, export, the JAX
    # and python -m tests): the same training, roll, load and report.
    assert cli.main(["demo", "--out", str(out)]) == 0
    assert out.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Rolled 167,178 values into ")
    assert lines[-3].startswith(".keras file: ") and "x smaller)." in lines[-3]
    assert lines[-2].startswith("Loaded model agrees with the original on ")
    assert lines[-1] == f"Wrote {out}"


@pytest.mark.slow
def test_roll_reads_a_legacy_h5_model(saved, tmp_path, capsys):
    _, _, folder = saved
    assert cli.main(["roll", str(folder / "model.h5"), str(tmp_path / "h5.wroll")]) == 0
    assert weightroll.unroll(tmp_path / "h5.wroll")


@pytest.mark.slow
def test_roll_options_reach_the_archive(saved, tmp_path):
    _, _, folder = saved
    out = tmp_path / "mlp.wroll"
    assert cli.main(["roll", str(folder / "model.keras"), str(out), "--decoder", "mlp", "--bits", "4", "-q"]) == 0
    with RolledArchive(out) as archive:
        decoder = archive.manifest["decoder"]
    assert (decoder["kind"], decoder["bits"]) == ("mlp", 4)


@pytest.mark.slow
def test_an_archive_rolled_against_a_base_unrolls_with_that_base(saved, tmp_path, capsys):
    _, x, folder = saved
    model_file, archive = str(folder / "model.keras"), str(tmp_path / "tuned.wroll")
    assert cli.main(["roll", model_file, archive, "--base", model_file, "-q"]) == 0
    assert cli.main(["unroll", archive, str(tmp_path / "no_base.keras")]) == 1
    assert "pass that model with --base" in capsys.readouterr().err
    assert cli.main(["unroll", archive, str(tmp_path / "tuned.keras"), "--base", model_file, "-q"]) == 0
    restored = keras.models.load_model(tmp_path / "tuned.keras")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), saved[0].predict(x, verbose=0))


@pytest.mark.slow
def test_quiet_roll_prints_nothing(saved, tmp_path, capsys):
    _, _, folder = saved
    assert cli.main(["roll", str(folder / "model.keras"), str(tmp_path / "q.wroll"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
def test_roll_refuses_a_validation_file_of_python_objects(saved, tmp_path, capsys):
    _, _, folder = saved
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    argv = ["roll", str(folder / "model.keras"), str(tmp_path / "v.wroll"), "--validation-data",
            str(tmp_path / "objects.npy")]
    assert cli.main(argv) == 1
    assert "is not a plain .npy array" in capsys.readouterr().err
    assert not (tmp_path / "v.wroll").exists()


def test_roll_of_a_lambda_model_needs_unsafe(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)])
    model.save(tmp_path / "lambda.keras")
    argv = ["roll", str(tmp_path / "lambda.keras"), str(tmp_path / "lambda.wroll")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("weightroll: error: Loading ") and "--unsafe" in err and len(err.splitlines()) == 1
    assert cli.main(argv + ["--unsafe", "-q"]) == 0


def test_unroll_of_a_lambda_archive_needs_unsafe(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)])
    weightroll.roll(model, tmp_path / "lambda.wroll")
    argv = ["unroll", str(tmp_path / "lambda.wroll"), str(tmp_path / "lambda.keras")]
    assert cli.main(argv) == 1
    assert "--unsafe" in capsys.readouterr().err
    assert cli.main(argv + ["--unsafe", "-q"]) == 0
    assert (tmp_path / "lambda.keras").exists()


@pytest.mark.slow
def test_unroll_of_a_truncated_archive_is_one_error_line(rolled, tmp_path, capsys):
    data = rolled[1].read_bytes()
    (tmp_path / "cut.wroll").write_bytes(data[: len(data) // 2])
    assert cli.main(["unroll", str(tmp_path / "cut.wroll"), str(tmp_path / "cut.keras")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("weightroll: error: Not a .wroll archive") and len(err.splitlines()) == 1


def test_missing_model_is_one_error_line_without_traceback(tmp_path):
    result = _run("roll", tmp_path / "absent.keras", tmp_path / "out.wroll", timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"weightroll: error: No such file or directory: '{tmp_path / 'absent.keras'}'"
    ]


def test_debug_shows_the_traceback(tmp_path):
    result = _run("roll", tmp_path / "absent.keras", tmp_path / "out.wroll", "--debug", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1].startswith("weightroll: error: No such file or directory")


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["roll"],
    ["roll", "model.keras", "out.zip"],
    ["roll", "model.onnx", "out.wroll"],
    ["roll", "model.keras", "out.wroll", "--bits", "9"],
    ["roll", "model.keras", "out.wroll", "--bits", "4", "--quality", "small"],
    ["roll", "model.keras", "out.wroll", "--decoder", "huffman"],
    ["unroll", "in.wroll", "out.txt"],
    ["demo", "--out", "demo.zip"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["roll", "--help"]) == 0
    assert cli.main(["--version"]) == 0
    assert f"weightroll {weightroll.__version__}" in capsys.readouterr().out


def _read_all(fd, seconds=1.0):
    chunks, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunks.append(os.read(fd, 4096))
            except OSError:
                break
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_progress_draws_a_bar_on_a_terminal():
    main_fd, terminal_fd = pty.openpty()
    with os.fdopen(terminal_fd, "w", encoding="utf-8") as terminal:
        with _progress.task("Rolling", total=10, stream=terminal, delay=0):
            _progress.advance(5, "dense/kernel")
            time.sleep(4 * _progress.INTERVAL)
        output = _read_all(main_fd)
    os.close(main_fd)
    assert "Rolling" in output and "50%" in output and "dense/kernel" in output
    assert output.endswith("\r\x1b[K")  # the line is cleared when the task ends


def test_progress_stays_quiet_off_a_terminal_or_when_disabled():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe:
        with _progress.task("Rolling", total=10, stream=pipe, delay=0):
            _progress.advance(5)
            time.sleep(2 * _progress.INTERVAL)
    assert os.read(read_fd, 4096) == b""
    os.close(read_fd)
    main_fd, terminal_fd = pty.openpty()
    with os.fdopen(terminal_fd, "w") as terminal:
        with _progress.task("Rolling", total=10, stream=terminal, delay=0, enabled=False):
            time.sleep(2 * _progress.INTERVAL)
        assert _read_all(main_fd, 0.3) == ""
    os.close(main_fd)


# export


@pytest.mark.slow
def test_export_writes_a_saved_model_whose_serve_signature_predicts_as_the_archive(saved, rolled, tmp_path):
    tf = pytest.importorskip("tensorflow")
    model, x, _ = saved
    out = tmp_path / "serving" / "cli_model" / "1"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    result = _run("export", rolled[1], out, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Wrote {out}: a TensorFlow SavedModel of model 'cli_model'")
    assert result.stderr == ""
    served = tf.saved_model.load(str(out))
    by_serve = served.serve(tf.constant(x)).numpy()
    by_signature = list(served.signatures["serving_default"](tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(by_serve, weightroll.load_rolled(rolled[1]).predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_signature, by_serve)
    with RolledArchive(rolled[1]) as archive:  # the original, as far as the roll value says
        stored = archive.manifest["roll_value"]["outputs"]
    diff = np.abs(by_serve - model.predict(x, verbose=0)).max()
    assert diff == pytest.approx(max(stored["max_abs_diff"], stored["fit"]["max_abs_diff"]), rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_export_refuses_a_file_in_place_of_the_folder_before_loading_anything(rolled, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setattr(cli._command, "import_keras", _must_not_run)
    (tmp_path / "taken").write_text("")
    assert cli.main(["export", str(rolled[1]), str(tmp_path / "taken")]) == 1
    assert capsys.readouterr().err == f"weightroll: error: Not a directory: '{tmp_path / 'taken'}'\n"


# python -m weightroll


@pytest.mark.slow
def test_python_dash_m_weightroll_is_the_weightroll_command(rolled, tmp_path):
    module = [sys.executable, "-m", "weightroll"]
    for args in (["--version"], ["inspect", str(rolled[1]), "--json"], ["roll", "model.keras", "out.zip"],
                 ["unroll", str(tmp_path / "absent.wroll"), str(tmp_path / "out.keras")]):
        by_module = subprocess.run([*module, *args], capture_output=True, text=True, timeout=120)
        by_command = _run(*args)
        assert (by_module.returncode, by_module.stdout, by_module.stderr) == \
            (by_command.returncode, by_command.stdout, by_command.stderr), args
    assert by_command.returncode == 1  # the last one: a missing archive


# Rough edges


def _must_not_run(*args, **kwargs):
    raise AssertionError("the command went on to load Keras")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["roll", "unroll"])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(saved, rolled, tmp_path, capsys,
                                                                          monkeypatch, command):
    monkeypatch.setattr(cli._command, "import_keras", _must_not_run)
    source = saved[2] / "model.keras" if command == "roll" else rolled[1]
    (tmp_path / "a_file").write_text("")
    under_a_file = tmp_path / "a_file" / ("out.wroll" if command == "roll" else "out.keras")
    assert cli.main([command, str(source), str(under_a_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"weightroll: error: Not a directory ({str(tmp_path / 'a_file')!r} is a file): "
                          f"{str(under_a_file)!r}")
    taken = tmp_path / ("taken.wroll" if command == "roll" else "taken.keras")
    taken.mkdir()
    assert cli.main([command, str(source), str(taken)]) == 1
    assert capsys.readouterr().err == f"weightroll: error: Is a directory: {str(taken)!r}\n"


@pytest.mark.slow
def test_roll_and_unroll_create_missing_folders(saved, tmp_path):
    _, _, folder = saved
    out = tmp_path / "new" / "deeper" / "model.wroll"
    assert cli.main(["roll", str(folder / "model.keras"), str(out), "-q"]) == 0
    back = tmp_path / "other" / "model.keras"
    assert cli.main(["unroll", str(out), str(back), "-q"]) == 0
    assert out.exists() and back.exists()


@pytest.mark.slow
def test_write_errors_name_the_users_path_not_the_temporary_file(saved, tmp_path):
    (tmp_path / "taken.wroll").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        weightroll.roll(saved[0], tmp_path / "taken.wroll")
    assert info.value.filename == str(tmp_path / "taken.wroll")
    assert ".tmp" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.wroll"]  # the temporary file is gone


def test_a_model_with_an_unregistered_custom_layer_is_one_short_line_saying_what_to_register(tmp_path, capsys,
                                                                                            monkeypatch):
    # A model saved by code this process has not imported: its class is registered
    # while the model is saved, then taken out of Keras's registry (what `load_model`
    # looks a custom class up in) for the roll, as in a process that never defined it.
    @keras.saving.register_keras_serializable(package="elsewhere")
    class TimesTwoOnlyHere(keras.layers.Layer):
        def call(self, x):
            return x * 2

    keras.Sequential([keras.Input((6,)), TimesTwoOnlyHere(), keras.layers.Dense(3)]).save(tmp_path / "custom.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "elsewhere>TimesTwoOnlyHere")
    assert cli.main(["roll", str(tmp_path / "custom.keras"), str(tmp_path / "custom.wroll")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    assert "custom class 'TimesTwoOnlyHere'" in err and "register_keras_serializable" in err
    assert "config" not in err


@pytest.mark.slow
def test_the_command_under_jax_prints_no_tensorflow_logging(saved, tmp_path):
    _, _, folder = saved
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_BACKEND"] = "jax"
    out = tmp_path / "jax.wroll"
    result = _run("roll", folder / "model.keras", out, "--validation-data", folder / "x.npy", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with RolledArchive(out) as archive:
        assert archive.manifest["producer"]["backend"] == "jax"


@pytest.mark.slow
def test_validation_data_of_the_wrong_shape_names_the_expected_input_shapes(saved, tmp_path, capsys):
    _, x, folder = saved
    np.save(tmp_path / "wide.npy", np.concatenate([x, x], axis=1))
    argv = ["roll", str(folder / "model.keras"), str(tmp_path / "v.wroll"), "--validation-data",
            str(tmp_path / "wide.npy")]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"weightroll: error: --validation-data '{tmp_path / 'wide.npy'}' does not fit model 'cli_model': it "
        f"takes inputs of shape (None, {FEATURES}), but it received an array of shape ({SAMPLES}, {2 * FEATURES}).\n"
    )
    assert not (tmp_path / "v.wroll").exists()


@pytest.mark.slow
def test_progress_counts_each_pass_over_the_tensors_and_never_passes_its_total(saved):
    from weightroll import _encode
    from weightroll._keras import roll as roll_lib

    model = saved[0]
    snap = roll_lib.snapshot(model)
    total = sum(a.size for _, a in snap.tensors)
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe:
        with _progress.task("Rolling", total=total, stream=pipe) as task:
            for trial in range(3):  # as rate allocation does: trial encodings, then the archive's
                _encode.encode(snap.tensors, tolerance=0.01 * (trial + 1))
                assert task.done == total
                assert task.passes == trial + 1
            _progress.advance(10**6, "more than the total said")
            beyond = task.line(200)
            _progress.advance(1, snap.tensors[0][0])  # an item of this pass again: a new one
            again = task.line(200)
    os.close(read_fd)
    amount = _progress._amount(total)
    assert f"100%  {amount}/{amount} values, pass 3" in beyond
    assert f"  1/{amount} values, pass 4" in again
