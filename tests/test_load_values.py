"""`load_rolled` gives variables the archive's values as their first values
(no random initialisation to overwrite), and falls back to assigning them
where Keras cannot build a model that way."""

import keras
import numpy as np
import pytest

import weightroll
from tests import _models
from weightroll.errors import WrollError

CALLS = {"n": 0}


@keras.saving.register_keras_serializable(package="weightroll_tests")
class CountingInitializer(keras.initializers.Initializer):
    """Glorot-uniform values, counting how often it is asked for them."""

    def __call__(self, shape, dtype=None):
        CALLS["n"] += 1
        return keras.initializers.GlorotUniform(seed=3)(shape, dtype=dtype)


@keras.saving.register_keras_serializable(package="weightroll_tests")
class ConstantFromValue(keras.layers.Layer):
    """A layer whose variable is created from a concrete value, which Keras
    refuses inside a stateless scope."""

    def build(self, input_shape):
        self.offset = keras.Variable(np.linspace(-1.0, 1.0, input_shape[-1]).astype("float32"), name="offset")

    def call(self, x):
        return x + self.offset


def _registry():
    from keras.src.backend.common import global_state

    return list(global_state.get_global_attribute("uninitialized_variables") or [])


def _same_weights(a, b):
    assert len(a.variables) == len(b.variables)
    for x, y in zip(a.variables, b.variables):
        np.testing.assert_array_equal(np.asarray(x.numpy()), np.asarray(y.numpy()))


@pytest.mark.parametrize("compiled", [False, True])
def test_initialisers_do_not_run_when_loading(tmp_path, compiled):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, kernel_initializer=CountingInitializer())(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer=CountingInitializer())(hidden))
    if compiled:  # compiling creates the optimizer's variables from values: done after the weights
        model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path, tolerance=0.0)
    CALLS["n"] = 0
    loaded = weightroll.load_rolled(path)
    assert CALLS["n"] == 0
    _same_weights(model, loaded)
    assert _registry() == []
    assert loaded.compiled == compiled
    if compiled:
        assert type(loaded.optimizer).__name__ == "Adam"


def test_a_variable_made_from_a_value_falls_back_to_assignment(tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3)(ConstantFromValue()(inputs)))
    model.variables[0].assign(np.full(5, 7.0, "float32"))  # not the value the layer starts from
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path, tolerance=0.0)
    loaded = weightroll.load_rolled(path)
    _same_weights(model, loaded)
    assert _registry() == []


@pytest.mark.slow
def test_a_compiled_model_loads_ready_to_train(tmp_path):
    model, x = _models.sequential_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path)
    loaded = weightroll.load_rolled(path, compile=True)
    assert _registry() == []
    y = np.arange(len(x)) % 10
    history = loaded.fit(x, y, epochs=1, verbose=0)  # the optimizer's own variables start from their initialisers
    assert np.isfinite(history.history["loss"][0])
    assert int(np.asarray(loaded.optimizer.iterations.numpy())) == 1


def test_a_failed_load_leaves_no_variables_waiting(tmp_path):
    model, _ = _models.sequential_cnn()
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path)
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    with weightroll._format.reader.RolledArchive(path) as archive:
        tensors = list(weightroll._format.decode.iter_decoded(archive))
    from weightroll._keras import model_io

    with pytest.raises(WrollError, match="tensors but the rebuilt model"):
        model_io.rebuild_with_weights(model_io.architecture_json(other), iter(tensors),
                                      paths=[p for p, _ in tensors])
    assert _registry() == []



@pytest.mark.slow
def test_an_adapted_normalization_layer_normalises_as_before(tmp_path):
    x = (np.random.default_rng(0).normal(size=(64, 4)) * 10 + 5).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(norm(inputs)))
    path = tmp_path / "m.wroll"
    weightroll.roll(model, path, tolerance=0.0)
    for compile in (False, True):
        loaded = weightroll.load_rolled(path, compile=compile)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_big_decoded_array_becomes_the_variables_storage_without_a_copy(dtype):
    """Under TensorFlow, `load_rolled` hands a decoded array to its variable
    through DLPack: the variable's storage is the array, not a copy."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the DLPack hand-over is TensorFlow's; other backends take the array as it is")
    from weightroll._format import decode
    from weightroll._format.schema import numpy_dtype
    from weightroll._keras import deferred

    array = decode._aligned_empty((1024, 1024), numpy_dtype(dtype))
    array[...] = 1.5
    variable = keras.Variable(initializer=lambda shape, dtype=None: deferred._shared_tensor(array),
                              shape=array.shape, dtype=dtype)
    array[0, 0] = 7.0
    assert float(variable.numpy()[0, 0]) == 7.0 and float(variable.numpy()[0, 1]) == 1.5
    unaligned = array.reshape(-1)[1:]
    assert deferred._shared_tensor(unaligned) is unaligned  # TensorFlow aborts on less than 64-byte alignment
