"""With calibration data, the stored output roll value is measured on samples the fit never saw."""

import io

import keras
import numpy as np
import pytest

import weightroll
from weightroll._keras.roll import calibration_split
from weightroll.report import worse_roll_value


def test_every_fourth_sample_is_held_out_of_the_fit():
    fit, held = calibration_split(12)
    assert held.tolist() == [3, 7, 11]
    assert fit.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]


def test_two_or_three_samples_hold_out_the_last_and_one_holds_out_none():
    assert calibration_split(3)[1].tolist() == [2]
    assert calibration_split(1)[1] is None


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="tanh"),
                             keras.layers.Dense(8)])


@pytest.mark.slow
def test_the_roll_value_reports_held_out_and_fit_figures_with_their_counts():
    x = np.random.default_rng(0).normal(size=(40, 16)).astype("float32")
    report = weightroll.roll(_model(), io.BytesIO(), validation_data=x)
    outputs = report.roll_value["outputs"]
    assert outputs["samples"] == 10 and outputs["fit"]["samples"] == 30
    assert "held-out samples" in str(report)


@pytest.mark.slow
def test_the_output_tolerance_holds_on_the_held_out_samples():
    x = np.random.default_rng(1).normal(size=(48, 16)).astype("float32")
    report = weightroll.roll(_model(), io.BytesIO(), validation_data=x, output_tolerance=0.03)
    assert report.roll_value["outputs"]["relative_rmse"] <= 0.03


def test_embedding_rows_no_calibration_sample_looks_up_are_coded_as_finely_as_without_data():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(64, 32),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4)])
    x = np.random.default_rng(2).integers(0, 8, size=(40, 6)).astype("int32")  # tokens 0..7 only
    buf = io.BytesIO()
    report = weightroll.roll(model, buf, validation_data=x)
    table = model.layers[0].embeddings.numpy()
    decoded = weightroll.unroll(io.BytesIO(buf.getvalue()))[model.layers[0].embeddings.path]
    unseen = slice(8, None)
    error = np.linalg.norm(decoded[unseen] - table[unseen], axis=1) / np.linalg.norm(table[unseen], axis=1)
    data_free = 0.04 / 4  # the balanced preset's weight tolerance without data
    assert report.settings.get("quality") == "balanced"
    assert float(np.sqrt(np.mean(error ** 2))) <= 1.25 * data_free, error


def test_the_stored_figures_are_never_better_than_on_the_fit_samples():
    held = {"samples": 3, "max_abs_diff": 0.1, "mean_abs_diff": 0.01, "relative_rmse": 0.02, "cosine": 0.9995,
            "top1_agreement": 1.0}
    fit = {"samples": 9, "max_abs_diff": 0.05, "mean_abs_diff": 0.02, "relative_rmse": 0.03, "cosine": 0.999,
           "top1_agreement": 0.9}
    assert worse_roll_value(held, fit) == {"samples": 3, "max_abs_diff": 0.1, "mean_abs_diff": 0.02,
                                           "relative_rmse": 0.03, "cosine": 0.999, "top1_agreement": 0.9}
    assert worse_roll_value(dict(held, relative_rmse=None), fit)["relative_rmse"] is None


@pytest.mark.slow
def test_the_report_keeps_the_held_out_and_fit_figures_beside_the_worse_of_them():
    x = np.random.default_rng(0).normal(size=(40, 16)).astype("float32")
    outputs = weightroll.roll(_model(), io.BytesIO(), validation_data=x).roll_value["outputs"]
    assert outputs["held_out"]["samples"] == 10 and outputs["fit"]["samples"] == 30
    assert outputs["relative_rmse"] == max(outputs["held_out"]["relative_rmse"], outputs["fit"]["relative_rmse"])
    assert outputs["cosine"] == min(outputs["held_out"]["cosine"], outputs["fit"]["cosine"])
