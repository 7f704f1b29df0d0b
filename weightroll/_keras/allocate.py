"""Rate-distortion allocation: spend bits where the outputs are sensitive.

With calibration inputs, each tensor's effect on the outputs is measured:
quantise that tensor alone at a probe tolerance and see how far the outputs
move. Modelling the output error as `sum_i a_i * t_i**2` (t_i: the tensor's
relative RMSE) and its size as `sum_i n_i * (c_i - log2 t_i)` bits, the
smallest archive at a given output error has `t_i` proportional to
`sqrt(n_i / a_i)` (equal slopes). The scale is then set, and checked, by
rolling and measuring the real output error. For a softmax classifier,
top-1 agreement on the calibration samples must also stay at or above
`1 - output_tolerance / 4`.
"""

import numpy as np

from weightroll import _encode
from weightroll._keras import model_io
from weightroll.codecs import select
from weightroll.report import flatten_outputs

PROBE_TOLERANCE = 0.05
MAX_TOLERANCE = 0.5
MIN_TOLERANCE = 0.001
CALIBRATION_SAMPLES = 256
_REFINEMENTS = 4
_MIN_PROBED_SIZE = 64


def _take(x, n):
    """The first `n` samples of model inputs (array, list or dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(v[:n] for v in x)
    return x[:n]


def _output_error(reference, outputs):
    a, b = flatten_outputs(reference), flatten_outputs(outputs)
    ref = float(np.sum(a * a))
    return float(np.sqrt(np.sum((a - b) ** 2) / ref)) if ref > 0 else float(np.any(a != b))


def allocate(snap, x, output_tolerance, batch_size=None, progress=None, base_keys=None):
    """Per-tensor tolerances that meet `output_tolerance` on `x` with the fewest bytes.

    Args:
        snap: a `roll.Snapshot` of the model.
        x: calibration inputs (only the first 256 samples are used).
        output_tolerance: largest relative RMSE allowed on the outputs.
        base_keys: reference keys of a base model; tensors identical to the
            base's are stored exactly (as references), so they are neither
            probed nor quantised here.

    Returns:
        `(tolerances, measured)`: a dict path -> weight tolerance, and the
        output relative RMSE measured with them.
    """
    x = _take(x, CALIBRATION_SAMPLES)
    model = model_io.rebuild(snap.architecture, compile=False, safe_mode=False)
    originals = list(snap.tensors)
    model_io.assign(model, originals)
    reference = model_io.predict_outputs(model, x, batch_size)
    variables = model.variables
    sizes, sensitivity = {}, {}
    for i, (path, array) in enumerate(originals):
        if (array.dtype.name not in ("float16", "float32", "float64") or array.size < _MIN_PROBED_SIZE
                or not np.all(np.isfinite(array))):
            continue
        if base_keys and _encode.reference_key(array) in base_keys:
            continue
        choice = select.choose(array, PROBE_TOLERANCE, array.dtype.itemsize)
        if choice.kind != "uniform":
            continue
        decoded = choice.code.decoded.astype(array.dtype)
        t = select.relative_rmse(array, decoded)
        variables[i].assign(decoded)
        err = _output_error(reference, model_io.predict_outputs(model, x, batch_size))
        variables[i].assign(array)
        sizes[path] = array.size
        sensitivity[path] = max(err * err / (t * t), 1e-12) if t > 0 else 1e-12
        if progress:
            progress(path)
    if not sizes:
        return {}, 0.0
    weight = {p: np.sqrt(sizes[p] / sensitivity[p]) for p in sizes}
    # A classifier must also keep its decisions: top-1 agreement on the
    # calibration samples of at least 1 - output_tolerance / 4 (99% at 0.04).
    # Classifier here means one output of class probabilities (softmax).
    classifier = (len(reference) == 1 and reference[0].ndim >= 2 and reference[0].shape[-1] > 1
                  and bool(np.all(reference[0] >= 0))
                  and bool(np.allclose(reference[0].sum(-1), 1.0, atol=1e-3)))
    min_agreement = 1.0 - output_tolerance / 4

    def trial(k):
        tolerances = {p: float(np.clip(k * w, MIN_TOLERANCE, MAX_TOLERANCE)) for p, w in weight.items()}
        encoded = _encode.encode(snap.tensors, tolerance=tolerances, base_keys=base_keys)
        model_io.assign(model, list(encoded.decoded.items()))
        outputs = model_io.predict_outputs(model, x, batch_size)
        err = _output_error(reference, outputs)
        ok = err <= output_tolerance
        if classifier:
            agreement = np.mean(np.argmax(reference[0], -1) == np.argmax(outputs[0], -1))
            ok = ok and agreement >= min_agreement
        return tolerances, err, ok

    # Under the model, sum_i a_i t_i^2 = k^2 sum_i n_i, so this k meets the target.
    k = output_tolerance / np.sqrt(sum(sizes.values()))
    best = None
    for _ in range(_REFINEMENTS):
        tolerances, err, ok = trial(k)
        if ok and (best is None or k > best[0]):
            best = (k, tolerances, err)
        if best is not None and err >= 0.85 * output_tolerance:
            break
        factor = output_tolerance / max(err, 1e-12) if (ok or err > output_tolerance) else 0.7
        k *= float(np.clip(factor, 0.25, 4.0)) * 0.97
        if best is not None and k <= best[0]:
            break
    while best is None and k > 1e-6:  # keep tightening until the target is met
        k *= 0.5
        tolerances, err, ok = trial(k)
        if ok:
            best = (k, tolerances, err)
    if best is None:  # nothing met it: code every tensor as finely as allowed
        return {p: MIN_TOLERANCE for p in weight}, err
    return best[1], best[2]
