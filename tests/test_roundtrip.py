import keras
import numpy as np
import pytest

import weightroll
from tests import _models

BUILDERS = {
    "sequential_cnn": _models.sequential_cnn,
    "functional_text": _models.functional_text,
    "subclassed": _models.subclassed,
}


def _trained(name):
    model, x = BUILDERS[name]()
    y = np.asarray(model(x))
    model.compile("adam", "mse")
    model.fit(x, y + 0.1, epochs=2, batch_size=8, verbose=0)  # non-trivial BN statistics
    return model, x


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def rolled(request, tmp_path_factory):
    model, x = _trained(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.wroll"
    report = weightroll.roll(model, path, validation_data=x)
    return model, x, path, report


def _saved_variables(model):
    """The variables Keras's own saving walk stores (a dropout's seed state is not one)."""
    from weightroll._keras import state

    entries, _ = state.collect(model, assets=False)
    return [value for _, value in entries if state.is_variable(value)]


@pytest.mark.slow
def test_unroll_gives_every_variable_keras_saves_with_its_shape_and_dtype(rolled):
    model, _, path, _ = rolled
    weights = weightroll.unroll(path)
    saved = _saved_variables(model)
    assert list(weights) == [v.path for v in saved]
    for variable, (name, array) in zip(saved, weights.items()):
        assert array.shape == tuple(variable.shape), name
        assert array.dtype == np.dtype(variable.dtype), name


@pytest.mark.slow
def test_non_float_variables_are_bit_exact(rolled):
    model, _, path, _ = rolled
    weights = weightroll.unroll(path)
    non_float = [v for v in _saved_variables(model) if not np.issubdtype(np.dtype(v.dtype), np.floating)]
    for v in non_float:
        np.testing.assert_array_equal(weights[v.path], v.numpy())


@pytest.mark.slow
def test_load_rolled_restores_the_model_class_and_decoded_weights(rolled):
    model, _, path, _ = rolled
    loaded = weightroll.load_rolled(path)
    assert type(loaded) is type(model)
    saved = _saved_variables(loaded)
    assert len(saved) == len(_saved_variables(model))
    for variable, array in zip(saved, weightroll.unroll(path).values()):
        np.testing.assert_array_equal(variable.numpy(), array)


@pytest.mark.slow
def test_loaded_model_predicts_like_the_original(rolled):
    model, x, path, report = rolled
    loaded = weightroll.load_rolled(path)
    original = model.predict(x, verbose=0)
    restored = loaded.predict(x, verbose=0)
    from weightroll._keras.roll import calibration_split

    fit, held = calibration_split(len(x))
    # The stored roll value is exactly what a user will see after loading, on
    # the samples held out of the fit, and on the fit samples.
    diff = np.abs(original[held] - restored[held]).max()
    assert diff == pytest.approx(report.roll_value["outputs"]["held_out"]["max_abs_diff"], rel=1e-5, abs=1e-7)
    diff_fit = np.abs(original[fit] - restored[fit]).max()
    assert diff_fit == pytest.approx(report.roll_value["outputs"]["fit"]["max_abs_diff"], rel=1e-5, abs=1e-7)
    # The default preset, given calibration data, bounds the outputs' relative RMSE there.
    assert report.roll_value["outputs"]["relative_rmse"] <= 0.04


@pytest.mark.slow
def test_roll_value_is_stored_in_the_manifest(rolled):
    _, _, path, report = rolled
    from weightroll._format.reader import RolledArchive

    with RolledArchive(path) as archive:
        manifest = archive.manifest
    assert manifest["roll_value"]["weights"] == report.roll_value["weights"]
    assert manifest["roll_value"]["outputs"] == report.roll_value["outputs"]
    for entry in manifest["tensors"]:
        expected = report.roll_value["tensors"][entry["path"]]
        if "error" in entry:  # coded tensors that changed
            assert entry["storage"] == "coded" and entry["error"] == expected
            assert expected != {"relative_rmse": 0.0, "max_abs_error": 0.0}
        else:
            assert expected == {"relative_rmse": 0.0, "max_abs_error": 0.0}
    # With calibration data the default allocates tolerances; each stays <= 0.5.
    assert 0 < report.roll_value["weights"]["relative_rmse"] <= 0.5
    assert all(e["relative_rmse"] <= 0.5 for e in report.roll_value["tensors"].values())


@pytest.mark.slow
def test_compile_false_gives_an_uncompiled_model(rolled):
    _, _, path, _ = rolled
    assert not weightroll.load_rolled(path, compile=False).compiled


@pytest.mark.slow
def test_compile_true_restores_the_compile_config(rolled):
    _, _, path, _ = rolled
    loaded = weightroll.load_rolled(path)
    assert loaded.loss == "mse"
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)


def test_paths_of_a_model_with_two_dropouts_stay_unique(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dropout(0.1, seed=1), keras.layers.Dropout(0.1, seed=2),
         keras.layers.Dense(2)]
    )
    weightroll.roll(model, tmp_path / "m.wroll")
    weights = weightroll.unroll(tmp_path / "m.wroll")
    assert len(weights) == len(_saved_variables(model)) == 2  # Keras saves no seed state
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    assert len(loaded.variables) == len(model.variables)


def test_lambda_layer_is_refused_in_safe_mode_like_keras(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)])
    weightroll.roll(model, tmp_path / "lambda.wroll")
    with pytest.raises(weightroll.WrollError, match="safe_mode=False"):
        weightroll.load_rolled(tmp_path / "lambda.wroll")
    loaded = weightroll.load_rolled(tmp_path / "lambda.wroll", safe_mode=False)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)


def test_unregistered_custom_layer_needs_custom_objects(tmp_path):
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    model = keras.Sequential([keras.Input((3,)), Doubler(), keras.layers.Dense(1)])
    weightroll.roll(model, tmp_path / "custom.wroll")
    with pytest.raises(weightroll.WrollError, match="custom_objects"):
        weightroll.load_rolled(tmp_path / "custom.wroll")
    loaded = weightroll.load_rolled(tmp_path / "custom.wroll", custom_objects={"Doubler": Doubler})
    assert isinstance(loaded.layers[0], Doubler)


def test_rolling_reads_variables_without_writing_through_them():
    from weightroll import _encode
    from weightroll._keras import model_io

    model, _ = _models.sequential_cnn()
    sources = model_io.variable_sources(model)
    again = model_io.variable_sources(model)
    for (_, source), (_, other), variable in zip(sources, again, model.variables):
        value = _encode.read_tensor(source)
        np.testing.assert_array_equal(value, variable.numpy())
        # A view of the backend's buffer (TensorFlow, JAX) must not be writable:
        # nothing in rolling may change the model's weights through it.
        assert not value.flags.writeable or not np.shares_memory(value, _encode.read_tensor(other))
    # A value read before the model changes keeps what was read.
    variable, (_, source) = model.variables[0], sources[0]
    value = _encode.read_tensor(source)
    before = value.copy()
    variable.assign(variable.numpy() + 1.0)
    np.testing.assert_array_equal(value, before)
    np.testing.assert_array_equal(_encode.read_tensor(model_io.variable_sources(model)[0][1]), before + 1.0)


def test_variables_on_the_cpu_are_read_at_once_others_when_coded(monkeypatch):
    from weightroll import _encode
    from weightroll._keras import model_io

    model, _ = _models.sequential_cnn()
    assert all(isinstance(s, np.ndarray) for _, s in model_io.variable_sources(model))
    monkeypatch.setattr(model_io, "_on_cpu", lambda variable, backend: False)  # as on a GPU
    lazy = model_io.variable_sources(model)
    assert all(isinstance(s, _encode.Lazy) for _, s in lazy)
    for (_, source), variable in zip(lazy, model.variables):
        np.testing.assert_array_equal(_encode.read_tensor(source), variable.numpy())


def test_a_copied_snapshot_does_not_follow_the_model():
    from weightroll._keras import model_io

    model, _ = _models.sequential_cnn()
    copies = model_io.named_variables(model)
    before = [a.copy() for _, a in copies]
    for variable in model.variables:
        variable.assign(np.zeros(variable.shape, variable.dtype) + 3)
    for (_, copied), original in zip(copies, before):
        np.testing.assert_array_equal(copied, original)


def test_a_refused_roll_creates_no_folder(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "new" / "folder" / "model.wroll"
    with pytest.raises(weightroll.WrollError, match="quality"):
        weightroll.roll(model, target, quality="tiny")
    assert not (tmp_path / "new").exists()
    weightroll.roll(model, target)
    assert target.exists()
