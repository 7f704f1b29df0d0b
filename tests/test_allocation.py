"""Rate-distortion allocation with calibration data, on the heavy-tailed transformer-like model."""

import io

import numpy as np
import pytest

import weightroll
from tests import _models

pytestmark = pytest.mark.slow  # calibration runs the transformer through TensorFlow: minutes


@pytest.fixture(scope="module")
def transformer():
    return _models.heavy_tailed_transformer()


def _cosine(a, b):
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _held_out():
    return np.random.default_rng(99).integers(0, _models.HT_VOCAB, size=(128, _models.HT_SEQ)).astype("int32")


@pytest.mark.xfail(strict=True, reason=(
    "Trellis codes (format 4.0) took this synthetic model from 6.355 to 6.277 bits per value at a "
    "slightly lower weight error, but its outputs' 1 - cosine rose from 0.00094 to 0.00105 (0.99895): "
    "on these heavy-tailed random weights, trellis errors of equal RMSE cost the outputs ~6-11% more. "
    "On the real models of benchmarks/ (the docstring LM, MTCNN O-Net) they cost less."))
def test_default_setting_keeps_heavy_tailed_outputs_within_cosine_0_999(transformer):
    model, _ = transformer
    buf = io.BytesIO()
    weightroll.roll(model, buf)
    buf.seek(0)
    x = _held_out()
    assert _cosine(model.predict(x, verbose=0), weightroll.load_rolled(buf).predict(x, verbose=0)) >= 0.999


@pytest.fixture(scope="module")
def allocated(transformer):
    """The roll allocated for an output tolerance of 0.045 on the calibration data
    (two tests read its report: one allocation instead of two)."""
    model, x = transformer
    return weightroll.roll(model, io.BytesIO(), validation_data=x, output_tolerance=0.045)


def test_allocation_meets_the_output_tolerance_on_the_calibration_data(allocated):
    report = allocated
    assert report.settings == {"output_tolerance": 0.045}
    assert report.roll_value["outputs"]["relative_rmse"] <= 0.045
    assert report.roll_value["outputs"]["cosine"] >= 0.999


def test_allocation_spends_fewer_bits_than_one_tolerance_for_all(transformer, allocated):
    model, x = transformer
    # The weights-only tolerance that reaches at least the same output quality:
    uniform = weightroll.roll(model, io.BytesIO(), validation_data=x, tolerance=0.0125)
    assert uniform.roll_value["outputs"]["relative_rmse"] <= 0.045
    assert allocated.archive_bytes < 0.95 * uniform.archive_bytes


def test_sensitive_tensors_get_finer_codes(calibrated):
    report, _ = calibrated  # roll(model, validation_data=x): the calibrated default
    errors = {path: e["relative_rmse"] for path, e in report.roll_value["tensors"].items()}
    value = [e for p, e in errors.items() if "value/kernel" in p]
    query = [e for p, e in errors.items() if "query/kernel" in p]
    assert max(value) < min(query)  # attention logits tolerate far more noise than values


def test_output_tolerance_needs_validation_data(transformer):
    model, _ = transformer
    with pytest.raises(weightroll.WrollError, match="needs `validation_data`"):
        weightroll.roll(model, io.BytesIO(), output_tolerance=0.04)


def test_output_tolerance_excludes_bits(transformer):
    model, x = transformer
    with pytest.raises(weightroll.WrollError, match="cannot be combined"):
        weightroll.roll(model, io.BytesIO(), validation_data=x, output_tolerance=0.04, bits=8)


def test_bits_with_validation_data_only_measures(transformer):
    model, x = transformer
    report = weightroll.roll(model, io.BytesIO(), validation_data=x, bits=8)
    assert report.settings == {"bits": 8}
    assert report.roll_value["outputs"] is not None


@pytest.fixture(scope="module")
def calibrated(transformer):
    """The calibrated default roll (`quality="balanced"`, calibration data given):
    `(report, archive buffer)`, rolled once for the tests that read it."""
    model, x = transformer
    buf = io.BytesIO()
    report = weightroll.roll(model, buf, validation_data=x)
    return report, buf


@pytest.fixture(scope="module")
def calibrated_on_held_out_data(transformer, calibrated):
    """The calibrated default roll measured on other inputs than its calibration:
    `(report, cosine, bits per weight)`."""
    model, _ = transformer
    report, buf = calibrated
    x_new = np.random.default_rng(2024).integers(0, _models.HT_VOCAB, size=(256, _models.HT_SEQ)).astype("int32")
    buf = io.BytesIO(buf.getvalue())
    cosine = _cosine(model.predict(x_new, verbose=0), weightroll.load_rolled(buf).predict(x_new, verbose=0))
    bits = 8 * report.archive_bytes / sum(int(np.prod(v.shape)) for v in model.variables)
    return report, cosine, bits


# Issue 7's goals: cosine >= 0.999 on held-out data at <= 5 bits per weight
# (the whole archive counted), with gradient sensitivity, GPTQ and per-tensor
# multipliers (see weightroll/_keras/allocate.py).
def test_calibrated_balanced_preset_keeps_cosine_0_999_on_held_out_data(calibrated_on_held_out_data):
    report, cosine, _ = calibrated_on_held_out_data
    assert report.roll_value["outputs"]["relative_rmse"] <= 0.04
    assert cosine >= 0.999, cosine


# Met since format 3.0 compressed the manifest (4.99 bits at held-out cosine 0.99923; 5.22 before).
def test_calibrated_balanced_preset_takes_at_most_5_bits_per_weight(calibrated_on_held_out_data):
    _, _, bits = calibrated_on_held_out_data
    assert bits <= 5.0, bits
