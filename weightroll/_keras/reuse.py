"""Calibrated rolls of successive snapshots of one model, at a fraction of
a fresh roll's cost: what `WeightRollCheckpoint(validation_data=...)` does at
every save.

A calibrated roll spends its time in Keras, not in coding. On a 25k-value
classifier a fresh `write_snapshot` with `validation_data` takes 2.4 s alone:
two model rebuilds, 14 `model.predict` calls (each builds a `tf.data` pipeline
and, on a rebuilt model, traces its predict function: 0.1-0.3 s a call
where the computation takes milliseconds), and a gradient pass. Run in the
background of `fit`, that competes with training for the interpreter and
the cores. Between two saves of a training run the architecture does not
change and the weights move a little, so a `Calibration` keeps, from one
roll to the next:

- one measurement model, rebuilt once, which takes each snapshot's weights
  by assignment and predicts with `predict_on_batch` on chunks of a fixed
  size (its traced function reused: about a millisecond a chunk on that
  classifier); it gives the reference outputs too, off the training thread;
- the last full allocation (`allocate.allocate`): each tensor's grid (its
  channel axis and steps) is reused for the new weights, Dense and
  EinsumDense kernels rounded by GPTQ against their inputs' second moments
  measured again in one forward pass, and one factor on every step is
  adjusted by a few trials measured on the calibration samples, until the
  output tolerance (and, for a classifier, the top-1 agreement) is met, as a
  fresh allocation's search does. A full allocation runs again when the
  weights have moved far from the ones it was made for (and a few saves have
  passed since the last one), or when the trials cannot meet the target.

Archives are what `write_snapshot` makes of the plan; the roll value it
stores is measured as always, on the held-out calibration samples.
"""

import dataclasses

import numpy as np

from weightroll import _encode
from weightroll._keras import allocate as allocate_lib
from weightroll._keras import model_io
from weightroll.coders import gptq, select, uniform

# A full allocation again once the coded weights have moved by this relative
# RMSE since the last one, and at least `MIN_SAVES_BETWEEN` saves have passed
# (a full allocation costs about as much as ten reused ones: this bounds its
# share of the background work to about half). On the digits classifier of
# tests/test_callback.py, ten epochs' archives rolled with reuse are 5.6%
# larger on average than fresh allocations, all within the output tolerance.
REFRESH_DRIFT = 0.25
MIN_SAVES_BETWEEN = 10
# Trials of the step factor before giving up for a full allocation (each codes
# the model and predicts the calibration samples once: milliseconds to a tenth
# of a second, where a full allocation takes seconds).
TRIALS = 6
# A trial within this fraction of the target is accepted (a fresh search
# stops at 0.95: reuse trades a little size for fewer trials).
CLOSE_ENOUGH = 0.8
# Samples per `predict_on_batch` call when no `batch_size` is given: Keras's
# `predict`'s 32 for the first call; then as many as make about CHUNK_BYTES
# of inputs and outputs, up to MAX_CHUNK. Each call costs about a millisecond
# beyond its computation: on bench_callback's classifier (297 samples of 64
# values) chunks of 32 took 0.56 s of a 10-epoch fit's background rolls, one
# chunk of 256 0.23 s.
CHUNK = 32
MAX_CHUNK = 256
CHUNK_BYTES = 4 << 20


class Calibration:
    """What successive calibrated rolls of one model share (not thread-safe:
    one roll at a time, as the checkpoint callback runs them).

    Args:
        architecture: the model's architecture JSON, for snapshots taken
            without it (weights only). Defaults to `None`.
    """

    def __init__(self, architecture=None):
        self._architecture = architecture
        self._model = None
        self._chunk = None  # samples per predict call, once the first call has measured one
        self._paths = None  # the snapshot path of each of the model's variables (None: not saved)
        self._plan = None  # the allocation reused: path -> `UniformCode` or tolerance
        self._planned_for = None  # path -> the array each coded tensor of the plan was made for
        self._factor = 1.0
        self._saves_since_refresh = 0
        self._key = None  # (architecture, tensor paths) of the model bound to
        self.full_allocations = 0
        self.reused_allocations = 0

    @property
    def model(self):
        """The measurement model (None until a snapshot was loaded), holding
        the values of the last snapshot or trial measured."""
        return self._model

    # --- the measurement model --------------------------------------------------------

    def _bind(self, snap):
        """Start afresh for a snapshot of another model (another architecture or other tensors)."""
        paths = frozenset(path for path, _ in snap.tensors)
        key = (snap.architecture, paths)
        if snap.architecture is None:  # weights only: the tensors tell
            key = (self._key[0] if self._key else None, paths)
        if key != self._key:
            self._key = key
            self._model = self._paths = self._plan = self._planned_for = self._chunk = None
            self._factor = 1.0

    def _load(self, snap):
        """The measurement model, holding `snap`'s values."""
        self._bind(snap)
        if self._model is None:
            if snap.architecture is None:
                snap = dataclasses.replace(snap, architecture=self._architecture)
            self._model, aligned = allocate_lib.calibration_model(snap)
            known = {path for path, _ in snap.tensors}
            self._paths = [path if path in known else None for path, _ in aligned]
            return self._model
        by_path = {path: _encode.read_tensor(source) for path, source in snap.tensors}
        arrays = []
        for variable, path in zip(self._model.variables, self._paths):
            arrays.append((variable.path, by_path[path]) if path in by_path
                          else (variable.path, np.asarray(variable.numpy())))
        model_io.assign(self._model, arrays)
        return self._model

    def _predict(self, x, batch_size=None):
        """The measurement model's outputs on `x`, a flat list of numpy arrays."""
        import keras

        size = batch_size or self._chunk or CHUNK
        parts = []
        for start in range(0, model_io.input_count(x), size):
            rows = model_io.input_rows(x, start, start + size)
            parts.append([np.asarray(o) for o in keras.tree.flatten(self._model.predict_on_batch(rows))])
            if self._chunk is None and batch_size is None:  # bytes a sample takes, in and out
                count = model_io.input_count(rows)
                sample = sum(np.asarray(a).nbytes for a in keras.tree.flatten(rows) + parts[-1]) / count
                self._chunk = int(np.clip(CHUNK_BYTES // max(sample, 1), CHUNK, MAX_CHUNK))
        return [np.concatenate(chunks) for chunks in zip(*parts)]

    def _assign_decoded(self, decoded):
        arrays = []
        for variable, path in zip(self._model.variables, self._paths):
            arrays.append((variable.path, decoded[path]) if path in decoded
                          else (variable.path, np.asarray(variable.numpy())))
        model_io.assign(self._model, arrays)

    # --- what `write_snapshot` asks for -------------------------------------------------

    def reference(self, snap, x, batch_size=None):
        """The snapshot's own outputs on `x` (a roll's `reference_outputs`)."""
        self._load(snap)
        return self._predict(x, batch_size)

    def outputs(self, snap, decoded, x, batch_size=None, model=None):
        """The rolled model's outputs on `x`: `decoded` (path -> array, the
        archive's values) in the measurement model. `model` is not needed."""
        self._load(snap)
        self._assign_decoded(decoded)
        return self._predict(x, batch_size)

    def allocate(self, snap, x, output_tolerance, batch_size=None, progress=None, base_keys=None, model=None,
                 reference=None):
        """`allocate.allocate`'s result for `snap`: the last allocation's
        grids for these weights, or a full allocation when they do not serve.
        `reference`, when given, is the snapshot's own outputs on `x` (as
        `reference` gives them), which the reuse then need not predict again."""
        self._bind(snap)
        self._saves_since_refresh += 1
        if self._plan is not None and (self._drift(snap) <= REFRESH_DRIFT
                                       or self._saves_since_refresh < MIN_SAVES_BETWEEN):
            found = self._reuse(snap, x, output_tolerance, batch_size, reference)
            if found is not None:
                self.reused_allocations += 1
                return found
        if snap.architecture is None:  # weights only: the allocation's model needs the architecture
            snap = dataclasses.replace(snap, architecture=self._architecture)
        plan, measured = allocate_lib.allocate(snap, x, output_tolerance, batch_size, progress=progress,
                                               base_keys=base_keys, model=model)
        self.full_allocations += 1
        by_path = dict(snap.tensors)
        self._plan = plan
        self._planned_for = {path: _encode.read_tensor(by_path[path]) for path, entry in plan.items()
                             if isinstance(entry, uniform.UniformCode)}
        self._factor = 1.0
        self._saves_since_refresh = 0
        return plan, measured

    # --- reuse --------------------------------------------------------------------------

    def _drift(self, snap):
        """How far the coded tensors moved since the plan was made: relative RMSE over all of them."""
        by_path = dict(snap.tensors)
        moved = total = 0.0
        for path, before in self._planned_for.items():
            now = np.asarray(_encode.read_tensor(by_path[path]), np.float64)
            moved += float(np.sum((now - before) ** 2))
            total += float(np.sum(np.asarray(before, np.float64) ** 2))
        return np.sqrt(moved / total) if total > 0 else 0.0

    def _reuse(self, snap, x, output_tolerance, batch_size, reference=None):
        """`(plan, measured)` from the plan's grids scaled by a searched factor,
        or None when no trial meets the target."""
        count = allocate_lib.CALIBRATION_SAMPLES
        xs = model_io.input_rows(x, 0, count)
        by_path = {path: _encode.read_tensor(source) for path, source in snap.tensors}
        self._load(snap)
        reference = self._predict(xs, batch_size) if reference is None else [r[:count] for r in reference]
        hessians = self._hessians(xs, batch_size)
        fixed = self._fixed(by_path)
        classifier = allocate_lib._is_classifier(reference)
        min_agreement = 1.0 - output_tolerance / 4

        def trial(factor):
            plan, decoded = dict(fixed[0]), dict(fixed[1])
            for path, entry in self._plan.items():
                if isinstance(entry, uniform.UniformCode):
                    array = by_path[path]
                    steps = (entry.scales if entry.axis is not None else entry.step) * factor
                    hessian, shape = hessians.get(path, (None, None))
                    code = gptq.code(array, entry.axis, steps, hessian, shape)
                    plan[path], decoded[path] = code, code.decoded.astype(array.dtype).reshape(array.shape)
            self._assign_decoded(decoded)
            outputs = self._predict(xs, batch_size)
            err = allocate_lib._output_error(reference, outputs)
            agree = (not classifier or
                     np.mean(np.argmax(reference[0], -1) == np.argmax(outputs[0], -1)) >= min_agreement)
            return plan, err, err <= output_tolerance and agree, agree

        factor, best = self._factor, None
        for _ in range(TRIALS):
            plan, err, ok, agree = trial(factor)
            if ok and (best is None or factor > best[0]):
                best = (factor, plan, err)
            if ok and err >= CLOSE_ENOUGH * output_tolerance:
                break
            if best is not None and not ok:
                break  # the best so far is close to the limit: keep it
            guess = float(np.clip(output_tolerance / max(err, 1e-12), 0.5, 2.0)) * 0.97 if agree else 0.6
            factor *= guess
        if best is None:
            return None
        self._factor = best[0]
        return best[1], best[2]

    def _fixed(self, by_path):
        """The plan's tolerance entries, and what they decode to (as the search does)."""
        plan, decoded = {}, {}
        for path, entry in self._plan.items():
            if isinstance(entry, uniform.UniformCode):
                continue
            plan[path] = entry
            array = by_path[path]
            choice = select.choose(array, entry, array.dtype.itemsize)
            decoded[path] = (choice.code.decoded.astype(array.dtype).reshape(array.shape)
                             if choice.kind == "uniform" else array)
        return plan, decoded

    def _hessians(self, xs, batch_size):
        """path -> `(H, shape)` of the coded Dense / EinsumDense kernels' inputs, for GPTQ."""
        from weightroll._keras import sensitivity

        variables = self._model.variables
        index = {path: i for i, path in enumerate(self._paths) if path is not None}
        wanted = [index[path] for path, entry in self._plan.items()
                  if isinstance(entry, uniform.UniformCode) and path in index]
        moments = sensitivity._input_moments(self._model, xs, variables, wanted, batch_size or sensitivity._BATCH)
        return {self._paths[i]: found for i, found in moments.items()}
