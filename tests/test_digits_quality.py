"""Issue-level quality bar on a small CNN trained on real data (scikit-learn's digits)."""

import keras
import numpy as np
import pytest

import weightroll

sklearn_datasets = pytest.importorskip("sklearn.datasets")

EPOCHS = 12
TEST_FRACTION = 0.25


@pytest.fixture(scope="module")
def digits_cnn():
    digits = sklearn_datasets.load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    split = int(len(x) * (1 - TEST_FRACTION))
    train, test = order[:split], order[split:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.3, seed=0),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=EPOCHS, batch_size=64, verbose=0)
    accuracy = model.evaluate(x[test], y[test], verbose=0)[1]
    assert accuracy > 0.9, "the CNN itself did not train"
    return model, x[test]


def test_defaults_keep_99_percent_top1_agreement_and_are_3_5x_smaller(digits_cnn, tmp_path):
    model, x_test = digits_cnn
    model.save(tmp_path / "model.keras")
    report = weightroll.roll(model, tmp_path / "model.wroll", validation_data=x_test)
    loaded = weightroll.load_rolled(tmp_path / "model.wroll")
    agreement = np.mean(
        np.argmax(loaded.predict(x_test, verbose=0), -1) == np.argmax(model.predict(x_test, verbose=0), -1)
    )
    keras_bytes = (tmp_path / "model.keras").stat().st_size
    wroll_bytes = (tmp_path / "model.wroll").stat().st_size
    assert report.archive_bytes == wroll_bytes
    assert agreement >= 0.99
    assert report.roll_value["outputs"]["top1_agreement"] == agreement
    assert keras_bytes / wroll_bytes >= 3.5, (keras_bytes, wroll_bytes)


def test_paper_mlp_decoder_works_end_to_end_on_the_cnn(digits_cnn, tmp_path):
    model, x_test = digits_cnn
    report = weightroll.roll(model, tmp_path / "paper.wroll", decoder="mlp", validation_data=x_test)
    loaded = weightroll.load_rolled(tmp_path / "paper.wroll")
    agreement = np.mean(
        np.argmax(loaded.predict(x_test, verbose=0), -1) == np.argmax(model.predict(x_test, verbose=0), -1)
    )
    # Whatever it is, the stored value is the measured one.
    assert report.roll_value["outputs"]["top1_agreement"] == agreement
