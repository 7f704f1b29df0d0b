"""Keras's own `ModelCheckpoint` tests, ported to `WeightRollCheckpoint`.

The source is `keras/src/callbacks/model_checkpoint_test.py` of Keras 3.15
(`ModelCheckpointTest.test_model_checkpoint_options` and
`test_model_checkpoint_loading`): the same model, data, arguments and
assertions, case by case, with these adaptations:

- `.keras` becomes `.wroll`, `.weights.h5` becomes `.weights.wroll`;
  `keras.saving.load_model` becomes `weightroll.load_rolled`, and
  `model.load_weights` becomes `weightroll.load_weights(model, path)`.
- Each numbered case is its own test on the model as freshly built (Keras
  runs them in sequence on one model, each training it further). One model
  serves them all, set back to its initial weights and optimizer state before
  each case: its traced functions are kept, most of a case's time otherwise.
  Case 15, which compiles the model again, builds its own. The data comes
  from the same helper, `keras.src.testing.test_utils.get_test_data` (not
  public API), with the same seed.
- The loading test compares the loaded weights with `assertAllClose`'s
  tolerances: the checkpoint is written with `tolerance=0` (every tensor
  exact or in a lossless table), since rolling is lossy by default.

Cases that do not apply:

- "Case 7": Keras's file has none (its numbering jumps from 6 to 8a).
- The `h5py` skip conditions: `.wroll` archives do not need h5py.
- `@pytest.mark.requires_trainable_backend` and the JAX-on-GPU skip: the
  callback runs under every backend the suite runs (TensorFlow and JAX).
"""

import os
import warnings

import keras
import numpy as np
import pytest
from keras.src.testing import test_utils

import weightroll
from weightroll.callbacks import WeightRollCheckpoint

pytestmark = pytest.mark.slow  # every test trains a model with the callback

TRAIN_SAMPLES = 30
TEST_SAMPLES = 30
NUM_CLASSES = 3
INPUT_DIM = 3
NUM_HIDDEN = 5
BATCH_SIZE = 5


@pytest.fixture(scope="module")
def data():
    (x_train, y_train), (x_test, y_test) = test_utils.get_test_data(
        random_seed=42, train_samples=TRAIN_SAMPLES, test_samples=TEST_SAMPLES,
        input_shape=(INPUT_DIM,), num_classes=NUM_CLASSES,
    )
    y_test = keras.utils.to_categorical(y_test, num_classes=NUM_CLASSES)
    y_train = keras.utils.to_categorical(y_train, num_classes=NUM_CLASSES)
    return x_train, y_train, x_test, y_test


def _new_options_model():
    """`test_model_checkpoint_options`'s `get_model`."""
    model = keras.Sequential([
        keras.layers.Dense(NUM_HIDDEN, activation="relu"),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=[keras.metrics.Accuracy("acc")])
    return model


_OPTIONS_MODEL = {}


def _options_model():
    """`get_model`'s model as freshly built: the one model of the cases, set back
    to its initial weights and untrained optimizer state (built here, as its
    first `fit` builds them: input shape `(None, INPUT_DIM)`)."""
    if not _OPTIONS_MODEL:
        model = _new_options_model()
        model.build((None, INPUT_DIM))
        model.optimizer.build(model.trainable_variables)
        _OPTIONS_MODEL["model"] = model
        _OPTIONS_MODEL["initial"] = [v.numpy() for v in model.variables + model.optimizer.variables]
    model = _OPTIONS_MODEL["model"]
    for variable, value in zip(model.variables + model.optimizer.variables, _OPTIONS_MODEL["initial"]):
        variable.assign(value)
    return model


def _loading_model():
    """`test_model_checkpoint_loading`'s `get_model` (functional, fixed batch size)."""
    inputs = keras.layers.Input(shape=(INPUT_DIM,), batch_size=5)
    x = keras.layers.Dense(NUM_HIDDEN, activation="relu")(inputs)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=[keras.metrics.Accuracy("acc")])
    return model


def _fit(model, data, callbacks, epochs=1, batch_size=BATCH_SIZE, verbose=0):
    x_train, y_train, x_test, y_test = data
    model.fit(x_train, y_train, batch_size=batch_size, validation_data=(x_test, y_test),
              callbacks=callbacks, epochs=epochs, verbose=verbose)


# test_model_checkpoint_options


@pytest.mark.parametrize("case, monitor, save_best_only, mode", [
    ("1", "val_loss", False, "auto"),
    ("2", "val_loss", False, "min"),
    ("3", "val_acc", False, "max"),
    ("4", "val_acc", True, "max"),
])
def test_case_1_to_4_saves_each_epoch_or_the_best(data, tmp_path, case, monitor, save_best_only, mode):
    # Saved to a subdir so that the automatic creation of folders is tested too.
    filepath = os.path.join(tmp_path, "subdir", "checkpoint.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor=monitor, save_best_only=save_best_only, mode=mode)]
    _fit(_options_model(), data, cbks)
    assert os.path.exists(filepath)


def test_case_5_metric_not_available_warns_and_saves(data, tmp_path):
    filepath = os.path.join(tmp_path, "subdir", "checkpoint.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor="unknown", save_best_only=True, mode="min")]
    with pytest.warns(UserWarning):
        _fit(_options_model(), data, cbks)
    assert os.path.exists(filepath)


def test_case_6_unknown_mode_warns(tmp_path):
    filepath = os.path.join(tmp_path, "subdir", "checkpoint.wroll")
    with warnings.catch_warnings(record=True) as warning_logs:
        warnings.simplefilter("always")
        WeightRollCheckpoint(filepath, monitor="val_acc", save_best_only=True, mode="unknown")
        assert "WeightRollCheckpoint mode 'unknown' is unknown" in str(warning_logs[-1].message)


def _epoch_files_every_15_batches(data, filepath, **kwargs):
    cbks = [WeightRollCheckpoint(filepath, monitor="val_acc", save_freq=15, **kwargs)]
    assert not os.path.exists(filepath.format(epoch=3))
    # batch_size 6: 5 batches an epoch, so a save every 3 epochs.
    _fit(_options_model(), data, cbks, epochs=10, batch_size=6)
    saved = [epoch for epoch in range(1, 11) if os.path.exists(filepath.format(epoch=epoch))]
    assert saved == [3, 6, 9]


def test_case_8a_integer_save_freq(data, tmp_path):
    _epoch_files_every_15_batches(data, os.path.join(tmp_path, "checkpoint.epoch{epoch:02d}.wroll"),
                                  mode="max", save_best_only=False)


def test_case_8b_integer_save_freq_and_save_weights_only(data, tmp_path):
    _epoch_files_every_15_batches(data, os.path.join(tmp_path, "checkpoint.epoch{epoch:02d}.weights.wroll"),
                                  save_weights_only=True)


def test_case_9_valid_and_invalid_save_freq(tmp_path):
    filepath = os.path.join(tmp_path, "checkpoint.epoch{epoch:02d}.weights.wroll")
    common = {"monitor": "val_acc", "save_best_only": False, "save_weights_only": True, "mode": "max"}
    with pytest.raises(ValueError, match="Unrecognized save_freq"):
        WeightRollCheckpoint(filepath, save_freq="invalid_save_freq", **common)
    # The following should not raise ValueError.
    WeightRollCheckpoint(filepath, save_freq="epoch", **common)
    WeightRollCheckpoint(filepath, save_freq=3, **common)


def _batch_files_every_batch(data, filepath, **kwargs):
    cbks = [WeightRollCheckpoint(filepath, monitor="val_acc", save_freq=1, **kwargs)]
    _fit(_options_model(), data, cbks, epochs=5, batch_size=15, verbose=1)  # 2 batches an epoch
    for epoch in range(1, 6):
        for batch in (1, 2):
            assert os.path.exists(filepath.format(epoch=epoch, batch=batch))


def test_case_10a_batch_in_filename(data, tmp_path):
    _batch_files_every_batch(data, os.path.join(tmp_path, "checkpoint.epoch{epoch:02d}batch{batch:02d}.wroll"))


def test_case_10b_batch_in_filename_with_save_weights_only(data, tmp_path):
    _batch_files_every_batch(
        data, os.path.join(tmp_path, "checkpoint.epoch{epoch:02d}batch{batch:02d}.weights.wroll"),
        save_weights_only=True,
    )


@pytest.mark.parametrize("case, mode, monitor, initial_value_threshold, saved", [
    ("11", "max", "val_acc", -0.01, True),
    ("12", "auto", "val_loss", None, True),
    ("13", "min", "val_loss", 0, False),  # the loss was lower before: nothing is saved
    ("14", "auto", "val_loss", 0, False),
])
def test_case_11_to_14_initial_value_threshold(data, tmp_path, case, mode, monitor, initial_value_threshold,
                                               saved):
    filepath = os.path.join(tmp_path, "checkpoint.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor=monitor, save_best_only=True,
                                 initial_value_threshold=initial_value_threshold, mode=mode)]
    _fit(_options_model(), data, cbks)
    assert os.path.exists(filepath) is saved


def test_case_15_no_save_if_auc_was_higher_before_in_auto_mode(data, tmp_path):
    filepath = os.path.join(tmp_path, "checkpoint.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor="val_auc", save_best_only=True, initial_value_threshold=1,
                                 mode="auto")]
    model = _new_options_model()
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=[keras.metrics.AUC()])
    _fit(model, data, cbks)
    assert not os.path.exists(filepath)


# test_model_checkpoint_loading


def _assert_same_weights(ref_weights, new_weights):
    assert len(ref_weights) == len(new_weights)
    for ref_w, w in zip(ref_weights, new_weights):
        np.testing.assert_allclose(w, ref_w, rtol=1e-6, atol=1e-6)  # `TestCase.assertAllClose`'s defaults


def test_loading_the_model(data, tmp_path):
    model = _loading_model()
    filepath = os.path.join(tmp_path, "checkpoint.model.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor="val_loss", save_best_only=True, mode="auto", tolerance=0)]
    _fit(model, data, cbks)
    ref_weights = model.get_weights()
    assert os.path.exists(filepath)
    new_model = weightroll.load_rolled(filepath)
    _assert_same_weights(ref_weights, new_model.get_weights())


def test_loading_the_weights(data, tmp_path):
    model = _loading_model()
    filepath = os.path.join(tmp_path, "checkpoint.weights.wroll")
    cbks = [WeightRollCheckpoint(filepath, monitor="val_loss", save_best_only=True, save_weights_only=True,
                                 mode="auto", tolerance=0)]
    _fit(model, data, cbks)
    ref_weights = model.get_weights()
    assert os.path.exists(filepath)
    new_model = _loading_model()
    weightroll.load_weights(new_model, filepath)
    _assert_same_weights(ref_weights, new_model.get_weights())
