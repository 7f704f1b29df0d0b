"""Rate-distortion allocation: spend bits where the outputs are sensitive.

With calibration inputs, the default (TensorFlow and JAX backends) measures
each weight's sensitivity by gradients (`sensitivity.estimate`: a diagonal
Fisher with random output directions) and codes every tensor on a uniform
grid whose step, per channel, is proportional to `1 / sqrt(sensitivity)`:
equal slopes, so every weight adds the same expected output error. Dense
and EinsumDense kernels, and token embeddings, are rounded by GPTQ against
their calibration Hessians (`coders.gptq`), which compensates each
rounding error on the weights not yet rounded. Then

1. each tensor alone is coded at the step the model predicts for the
   target and its real effect on the outputs measured: its step is scaled
   by `sqrt(predicted / measured)` (GPTQ and the Fisher's approximations
   differ by tensor);
2. one global factor on every step is searched, each trial coding the
   whole model and measuring its real output error, for the largest steps
   that meet `output_tolerance` (for a softmax classifier, top-1 agreement
   on the calibration samples must also stay at or above
   `1 - output_tolerance / 4`).

The tensors' codes are then passed to `_encode.encode` as they are, so the
archive holds exactly what was measured.

Elsewhere (other backends, or when no gradient reaches the weights) each
tensor's effect is probed instead: quantise that tensor alone at a probe
tolerance and see how far the outputs move. Modelling the output error as
`sum_i a_i * t_i**2` (t_i: the tensor's relative RMSE) and its size as
`sum_i n_i * (c_i - log2 t_i)` bits, the smallest archive at a given output
error has `t_i` proportional to `sqrt(n_i / a_i)`; the scale is then set,
and checked, the same way.
"""

import contextvars
import warnings

import numpy as np

from weightroll import _encode
from weightroll._keras import model_io, sensitivity
from weightroll.coders import gptq, select
from weightroll.errors import WrollError
from weightroll.report import flatten_outputs

PROBE_TOLERANCE = 0.05
MAX_TOLERANCE = 0.5
MIN_TOLERANCE = 0.001
CALIBRATION_SAMPLES = 256
_REFINEMENTS = 4
_SEARCH_TRIALS = 7
# The search stops once the output error is within this fraction of the target.
_CLOSE_ENOUGH = 0.95
_MULTIPLIER_RANGE = (0.25, 8.0)
_MIN_PROBED_SIZE = 64


def _output_error(reference, outputs):
    a, b = flatten_outputs(reference), flatten_outputs(outputs)
    ref = float(np.sum(a * a))
    return float(np.sqrt(np.sum((a - b) ** 2) / ref)) if ref > 0 else float(np.any(a != b))


def allocate_by_probes(snap, x, output_tolerance, batch_size=None, progress=None, base_keys=None):
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
    x = model_io.input_rows(x, 0, CALIBRATION_SAMPLES)
    model, originals = calibration_model(snap)
    reference = model_io.predict_outputs(model, x, batch_size)
    variables = model.variables
    sizes, sensitivity = {}, {}
    for i in _candidates(originals, base_keys):
        path, array = originals[i]
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
    classifier = _is_classifier(reference)
    min_agreement = 1.0 - output_tolerance / 4

    def trial(k):
        tolerances = {p: float(np.clip(k * w, MIN_TOLERANCE, MAX_TOLERANCE)) for p, w in weight.items()}
        encoded = _encode.encode(snap.tensors, tolerance=tolerances, base_keys=base_keys)
        model_io.assign(model, [(path, encoded.decoded.get(path, array)) for path, array in originals])
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


def _is_classifier(reference):
    """One output of class probabilities (softmax): top-1 agreement is checked too."""
    return (len(reference) == 1 and reference[0].ndim >= 2 and reference[0].shape[-1] > 1
            and bool(np.all(reference[0] >= 0))
            and bool(np.allclose(reference[0].sum(-1), 1.0, atol=1e-3)))


# The caller's own model, for a snapshot whose architecture cannot be
# rebuilt (set by `allocate` for its duration; see `calibration_model`).
_live = contextvars.ContextVar("weightroll_live_model", default=None)


def calibration_model(snap):
    """A model rebuilt from a snapshot, and `(path, array)` for each of its
    `variables` in order: the snapshot's tensor, or (for a variable Keras
    does not save, such as a dropout's seed) its own value under a path that
    no tensor has. Where the architecture cannot be rebuilt (a subclassed
    model whose config Keras cannot deserialize), the model `allocate` was
    given is used instead; `allocate` puts its values back afterwards."""
    from weightroll._keras import state

    by_path = {path: _encode.read_tensor(source) for path, source in snap.tensors}
    tensors = snap.keyed(by_path)
    try:
        if snap.architecture is None:  # a weights-only snapshot: measured in the given model
            raise WrollError("A weights-only snapshot has no architecture to rebuild.")
        model = model_io.rebuild_with_state(snap.architecture, tensors, lambda e: by_path[e["path"]],
                                            snap.assets, compile=False, safe_mode=False)
    except WrollError:
        live = _live.get()
        if live is None:
            raise
        model = live["model"]
        live["used"] = True
    entries, _ = state.collect(model, assets=False)
    key_of = {id(v): k for k, v in entries if state.is_variable(v)}
    path_of = {snap.keys.get(path, path): path for path in by_path}
    aligned = []
    for variable in model.variables:
        path = path_of.get(key_of.get(id(variable)))
        aligned.append((path, by_path[path]) if path is not None
                       else (f"~{variable.path}", np.asarray(variable.numpy())))
    return model, aligned


def _candidates(originals, base_keys):
    """Positions of the tensors worth allocating: finite floats of some size, not from the base."""
    chosen = []
    for i, (_, array) in enumerate(originals):
        if (array.dtype.name not in ("float16", "float32", "float64") or array.size < _MIN_PROBED_SIZE
                or not np.all(np.isfinite(array))):
            continue
        if base_keys and _encode.reference_key(array) in base_keys:
            continue
        chosen.append(i)
    return chosen


class _Grid:
    """One tensor coded on its Fisher grid: `code(k)` scales every step by `k * multiplier`.

    Channels the calibration data does not exercise at all (an embedding row
    of a token no sample holds: zero Fisher) are never coded coarser than the
    data-free setting codes them: their steps stay within `free_steps`.
    """

    def __init__(self, path, array, axis, steps, hessian=None, shape=None, transpose=False, free_steps=None):
        self.path, self.array, self.axis, self.steps = path, array, axis, steps
        self.hessian, self.shape, self.transpose = hessian, shape, transpose
        self.free_steps = free_steps
        self.multiplier = 1.0
        self.cap = np.inf
        self.alternative = select.choose(array, 0.0, array.dtype.itemsize)  # exact or lossless

    def code(self, k):
        """`(plan, decoded)`: the tensor's code (or 0.0 when storing it losslessly is cheaper).

        However insensitive the outputs, the tensor's relative RMSE stays
        within `MAX_TOLERANCE` (steps shrink until it does).
        """
        factor = min(k * self.multiplier, self.cap)
        for _ in range(20):
            steps = self.steps * factor
            if self.free_steps is not None:
                steps = np.minimum(steps, self.free_steps)
            c = gptq.code(self.array, self.axis, steps, self.hessian, self.shape, self.transpose)
            t = select.relative_rmse(self.array, c.decoded)
            if t <= MAX_TOLERANCE:
                break
            factor *= 0.9 * MAX_TOLERANCE / t
            self.cap = factor
        if select.uniform_bytes(c) >= self.alternative.estimated_bytes:
            return 0.0, self.array
        return c, c.decoded.astype(self.array.dtype)


def data_free_tolerance(output_tolerance):
    """The weight tolerance of the preset that matches `output_tolerance`
    without data (output presets 0.01 / 0.04 / 0.12 against weight presets
    0.003 / 0.01 / 0.04): what calibration never codes an unexercised
    weight coarser than."""
    return output_tolerance / 4


def _free_steps(array, axis, fisher, tolerance):
    """Per-channel steps that code a channel at `tolerance` relative RMSE on
    its own (uniform rounding: RMSE = step / sqrt(12)), for the channels
    with zero Fisher; `inf` for the others. None when there are none."""
    if axis is None:
        return None
    other = tuple(a for a in range(array.ndim) if a != axis)
    unexercised = np.asarray(fisher, np.float64).mean(axis=other) <= 0
    if not unexercised.any():
        return None
    rms = np.sqrt(np.mean(np.square(np.asarray(array, np.float64)), axis=other))
    return np.where(unexercised, np.sqrt(12.0) * tolerance * np.maximum(rms, np.finfo(np.float32).tiny), np.inf)


def _grids(originals, indices, found, data_free):
    """`_Grid`s of the tensors with some sensitivity, and the paths of those without."""
    grids, insensitive = {}, []
    for i in indices:
        path, array = originals[i]
        choice = gptq.channel_steps(found.fisher[i])
        if choice is None:
            insensitive.append(path)
            continue
        axis, steps = choice
        free = _free_steps(array, axis, found.fisher[i], data_free)
        if i in found.embedding:
            grids[i] = _Grid(path, array, axis, steps, found.embedding[i], array.shape, transpose=True,
                             free_steps=free)
        elif i in found.inputs:
            hessian, shape = found.inputs[i]
            grids[i] = _Grid(path, array, axis, steps, hessian, shape, free_steps=free)
        else:
            grids[i] = _Grid(path, array, axis, steps, free_steps=free)
    return grids, insensitive


def allocate(snap, x, output_tolerance, batch_size=None, progress=None, base_keys=None, model=None):
    """`_allocate`, measuring in `model` itself where the snapshot's
    architecture cannot be rebuilt; `model`'s own values are put back after."""
    from weightroll._keras import state

    live = {"model": model, "used": False}
    token = _live.set(live if model is not None else None)
    try:
        return _allocate(snap, x, output_tolerance, batch_size, progress, base_keys)
    finally:
        _live.reset(token)
        if live["used"]:
            tensors = snap.keyed(path for path, _ in snap.tensors)
            originals = {path: _encode.read_tensor(source) for path, source in snap.tensors}
            state.load(model, tensors, lambda e: originals[e["path"]], optimizer=False)


def _allocate(snap, x, output_tolerance, batch_size=None, progress=None, base_keys=None):
    """Per-tensor codes (or tolerances) that meet `output_tolerance` on `x` with the fewest bytes.

    Args:
        snap: a `roll.Snapshot` of the model.
        x: calibration inputs (only the first 256 samples are used).
        output_tolerance: largest relative RMSE allowed on the outputs.
        batch_size: batch size of the predictions.
        progress: optional function called with each tensor's path as it is probed.
        base_keys: reference keys of a base model; tensors identical to the
            base's are stored exactly (as references), so they are neither
            probed nor quantised here.

    Returns:
        `(plan, measured)`: a dict path -> `uniform.UniformCode` (the
        tensor's code, used as is by `_encode.encode`) or weight tolerance
        (a float), and the output relative RMSE measured with it.
    """
    xs = model_io.input_rows(x, 0, CALIBRATION_SAMPLES)
    model, originals = calibration_model(snap)
    indices = _candidates(originals, base_keys)
    if not indices:
        return {}, 0.0
    try:
        found = sensitivity.estimate(model, xs, indices, batch_size=batch_size)
    except sensitivity.Unsupported:  # this backend or model: probe instead
        found = None
    except Exception as e:  # noqa: BLE001 - a model the gradients fail on still rolls, by probing
        warnings.warn(f"weightroll: measuring sensitivities by gradients failed ({type(e).__name__}: "
                      f"{str(e)[:200]}); allocating bits by probing each tensor instead.", RuntimeWarning,
                      stacklevel=2)
        found = None
    if found is None:
        return allocate_by_probes(snap, x, output_tolerance, batch_size, progress, base_keys)
    model_io.assign(model, originals)  # the estimate may not leave the variables untouched
    reference = model_io.predict_outputs(model, xs, batch_size)
    plan, err, capped = _search(model, xs, reference, originals, indices, found, output_tolerance, batch_size,
                                progress)
    if capped > 0.1 * sum(originals[i][1].size for i in indices):
        # The outputs barely feel most weights (a saturated classifier, say):
        # the weight-error cap, not the sensitivities, set those steps, and
        # probing may well do better. Keep the smaller of the two.
        probed = allocate_by_probes(snap, x, output_tolerance, batch_size, progress, base_keys)
        if _estimated_bytes(snap, probed[0], base_keys) < _estimated_bytes(snap, plan, base_keys):
            return probed
    return plan, err


def _estimated_bytes(snap, plan, base_keys):
    """An archive's weight bytes under `plan`: codes' entropy, decoder arrays and exact bytes."""
    encoded = _encode.encode(snap.tensors, tolerance=plan, base_keys=base_keys, keep_decoded=False)
    total = len(encoded.exact_bytes) + sum(a.nbytes for a in encoded.decoder_arrays)
    for entry in encoded.tensors:
        if entry["storage"] == "coded":
            start = entry["codes"]["offset"]
            total += select.entropy_bytes(encoded.codes.read(start, start + entry["codes"]["count"]))
    return total


def _search(model, x, reference, originals, indices, found, output_tolerance, batch_size, progress):
    """Steps 1 and 2 of the module docstring: `(plan, measured, capped)`, `capped`
    counting the values of tensors whose steps the weight-error cap shrank."""
    data_free = data_free_tolerance(output_tolerance)
    grids, insensitive = _grids(originals, indices, found, data_free)
    # Tensors the calibration data does not exercise at all are coded as without data.
    fixed = {path: data_free for path in insensitive}
    fixed_decoded = {}
    for path in insensitive:
        array = dict(originals)[path]
        choice = select.choose(array, data_free, array.dtype.itemsize)
        fixed_decoded[path] = (choice.code.decoded.astype(array.dtype) if choice.kind == "uniform" else array)
    variables = model.variables
    ref_flat = flatten_outputs(reference)
    sq_ref = float(np.sum(ref_flat.astype(np.float64) ** 2))
    coded = sum(g.array.size for g in grids.values())
    if not grids or sq_ref <= 0:
        return {path: MIN_TOLERANCE for path in (originals[i][0] for i in indices)}, 0.0, 0
    # Each weight's expected share of the squared output error is k**2 / 12 at
    # steps k / sqrt(F): this k spends the whole target.
    k0 = output_tolerance * np.sqrt(12.0 * sq_ref / coded)
    for i, grid in grids.items():  # step 1: measure each tensor alone at k0
        _, decoded = grid.code(k0)
        variables[i].assign(decoded)
        out = flatten_outputs(model_io.predict_outputs(model, x, batch_size))
        variables[i].assign(grid.array)
        measured = float(np.sum((out.astype(np.float64) - ref_flat) ** 2))
        predicted = grid.array.size * k0 * k0 / 12.0
        grid.multiplier = float(np.clip(np.sqrt(predicted / measured), *_MULTIPLIER_RANGE)) if measured > 0 \
            else _MULTIPLIER_RANGE[1]
        if progress:
            progress(grid.path)
    classifier = _is_classifier(reference)
    min_agreement = 1.0 - output_tolerance / 4

    def trial(k):
        plan, arrays = dict(fixed), []
        for i, (path, array) in enumerate(originals):
            if i in grids:
                plan[path], array = grids[i].code(k)
            elif path in fixed_decoded:
                array = fixed_decoded[path]
            arrays.append((path, array))
        model_io.assign(model, arrays)
        outputs = model_io.predict_outputs(model, x, batch_size)
        err = _output_error(reference, outputs)
        ok = err <= output_tolerance
        agree = True
        if classifier:
            agree = np.mean(np.argmax(reference[0], -1) == np.argmax(outputs[0], -1)) >= min_agreement
        return plan, err, ok and agree, agree

    k, best, failed = k0, None, None  # step 2: the global factor
    for _ in range(_SEARCH_TRIALS):
        plan, err, ok, agree = trial(k)
        if ok:
            if best is None or k > best[0]:
                best = (k, plan, err)
            if err >= _CLOSE_ENOUGH * output_tolerance:
                break
        elif failed is None or k < failed:
            failed = k
        guess = k * float(np.clip(output_tolerance / max(err, 1e-12), 0.5, 2.0)) * 0.99 if agree else k * 0.7
        if best is not None and failed is not None:
            if failed / best[0] < 1.02:
                break
            if not best[0] < guess < failed:
                guess = float(np.sqrt(best[0] * failed))
        k = guess
    while best is None and k > k0 * 1e-4:  # keep tightening until the target is met
        k *= 0.5
        plan, err, ok, _ = trial(k)
        if ok:
            best = (k, plan, err)
    if best is None:  # nothing met it: code every tensor as finely as allowed
        return {originals[i][0]: MIN_TOLERANCE for i in indices}, err, 0
    capped = sum(g.array.size for g in grids.values() if g.cap < best[0] * g.multiplier)
    return best[1], best[2], capped
