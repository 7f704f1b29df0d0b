"""With calibration data, the stored output roll value is measured on samples the fit never saw."""

import io

import keras
import numpy as np
import pytest

import weightroll
from weightroll._keras.roll import calibration_split


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
