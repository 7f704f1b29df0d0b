"""`WeightRollCheckpoint`: roll the model into `.wroll` archives during `fit`.

This module imports Keras; `weightroll/__init__.py` exposes the callback
lazily so that `import weightroll` stays free of Keras.
"""

import concurrent.futures
import errno
import io
import logging
import math
import operator
import os
import warnings

import keras
import numpy as np

from weightroll._format import paths
from weightroll._keras import inputs, model_io, reuse
from weightroll._keras import roll as roll_lib
from weightroll.errors import WrollError

class WeightRollCheckpoint(keras.callbacks.Callback):
    """Callback to roll the model into `.wroll` archives at some frequency.

    A drop-in for `keras.callbacks.ModelCheckpoint`: the same parameters, in
    the same order, with the same meaning, defaults and checks, then
    weightroll's own options (keyword-only). It writes `weightroll.roll`
    archives instead of `.keras` files, and with `save_weights_only=True`
    weights-only archives (no architecture) that
    `weightroll.load_weights(model, filepath)` loads into a model built in
    code, as `model.load_weights` loads a `.weights.h5` file.

    Rolling does not stall training: the callback copies the weights on the
    training thread (cheap), then quantises, encodes and writes the archive
    on a background thread. At most one roll is in flight: a save waits for
    the previous roll to finish. `on_train_end` waits for the last one, and
    an error raised while rolling is raised again on the training thread,
    by the next save, epoch end or the end of `fit`.

    Each archive is written atomically: a temporary file in the same folder,
    renamed when complete. A crash or kill during a save leaves the previous
    archive intact and never a partial file under a `.wroll` name.

    The roll value goes into the epoch `logs`, so `History`, `CSVLogger` and
    `TensorBoard` show it (list this callback before those you pass
    yourself). Since an archive is rolled in the background, its roll value
    is known only after the epoch that saved it: the logs of epoch `N` report
    the newest archive saved *before* epoch `N` began (waiting for that roll
    if it is still running), and `nan` while there is none. With
    `save_freq="epoch"` that is the previous epoch's archive. The keys are:

    - `roll_value`: the archive's overall weight relative RMSE.
    - With `validation_data`: `roll_output_max_abs_diff` (largest absolute
      difference between the outputs of the model and of the rolled model)
      and `roll_top1_agreement` (the share of samples whose arg-max agrees;
      `nan` unless the model has one output with a class axis).

    Every archive's full `RollReport` is appended to `reports`, oldest first.

    Under a multi-worker `tf.distribute` strategy only the chief writes
    archives; the other workers roll into memory (so that every worker's
    logs agree) and write nothing. Under `MirroredStrategy` there is one
    process, and it writes. With other backends every process writes.

    Args:
        filepath: string or `PathLike`, path of the archives; it must end in
            `".wroll"`, or in `".weights.wroll"` with `save_weights_only=True`
            (as `ModelCheckpoint` wants `".keras"` and `".weights.h5"`). It
            may hold named formatting options, filled with the 1-based
            `epoch`, `batch` (when `save_freq` is an integer) and the keys of
            the `logs`: `"ckpt/{epoch:02d}-{val_loss:.3f}.wroll"`. Missing
            folders are created.
        monitor: the metric name to monitor, as in `ModelCheckpoint`
            (`"val_"` prefix for validation metrics). Defaults to `"val_loss"`.
        verbose: 0 (silent) or 1: print each decision, and each archive
            written with its size and roll value. Defaults to `0`.
        save_best_only: if `True`, roll only when the model is the best so
            far according to `monitor`. If `filepath` has no formatting
            option, each better model overwrites the archive. Defaults to
            `False`.
        save_weights_only: if `True`, the archives hold the weights only,
            without the architecture (as `model.save_weights`); load them
            with `weightroll.load_weights(model, filepath)`. Defaults to
            `False`.
        mode: one of `"auto"`, `"min"`, `"max"`: whether a better `monitor`
            value is smaller or larger. `"auto"` infers it as Keras does:
            smaller for `"loss"`, otherwise from the direction of the
            compiled metric of that name; as in `ModelCheckpoint`, a monitor
            whose direction cannot be inferred raises a `ValueError` at the
            end of the first epoch. An unknown mode warns and falls back to
            `"auto"`. Defaults to `"auto"`.
        save_freq: `"epoch"`, or an integer: roll after this many batches.
            Defaults to `"epoch"`. Other values raise a `ValueError`, as in
            `ModelCheckpoint`; unlike it, integers below 1 (and booleans)
            are refused too, since they would roll after every batch.
        initial_value_threshold: initial "best" value of `monitor` when
            `save_best_only=True`: only a better model is rolled. Defaults
            to `None`.
        max_to_keep: keep only the newest `max_to_keep` archives this
            callback wrote, deleting older ones once a newer one is complete.
            Files it did not write are never deleted. Defaults to `None`
            (keep all).
        decoder, bits, tolerance, quality, validation_data, output_tolerance,
            batch_size, base: `weightroll.roll`'s options, with its defaults;
            they are checked here, before training. With `validation_data`,
            the reference outputs and the rolled model's are both predicted
            in the background; the reference in one model of the same
            architecture, built at the first save, which takes each
            snapshot's weights (nothing is predicted on the training thread).
        include_optimizer: also store the optimizer's state, as `.keras`
            files and `.weights.h5` files do (to resume training). Defaults
            to `False` (smaller archives).

    Raises:
        ValueError: (a `WrollError`) for an argument `ModelCheckpoint` would
            refuse, or a roll option `weightroll.roll` would refuse.

    Example:

    ```python
    checkpoint = weightroll.WeightRollCheckpoint(
        "ckpt/{epoch:02d}-{val_loss:.3f}.wroll",
        save_best_only=True,
        max_to_keep=3,
        validation_data=x_val,
    )
    history = model.fit(x, y, validation_data=(x_val, y_val), epochs=10,
                        callbacks=[checkpoint, keras.callbacks.CSVLogger("log.csv")])
    print(history.history["roll_value"])
    print(checkpoint.reports[-1])
    model = weightroll.load_rolled(checkpoint.reports[-1].filepath)
    ```
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
        *,
        max_to_keep=None,
        decoder="codebook",
        bits=None,
        tolerance=None,
        quality=None,
        validation_data=None,
        output_tolerance=None,
        batch_size=None,
        base=None,
        include_optimizer=False,
    ):
        super().__init__()
        self.save_weights_only = bool(save_weights_only)
        self.filepath = _check_filepath(filepath, self.save_weights_only)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        if mode not in ("auto", "min", "max"):
            warnings.warn(
                f"{self.__class__.__name__} mode '{mode}' is unknown, fallback to auto mode.",
                stacklevel=2,
            )
            mode = "auto"
        self.mode = mode
        self.save_freq = _check_save_freq(save_freq)
        self.best = initial_value_threshold
        self.max_to_keep = _check_max_to_keep(max_to_keep)
        self.include_optimizer = bool(include_optimizer)
        self.roll_options = {
            "decoder": decoder, "bits": bits, "tolerance": tolerance, "quality": quality,
            "validation_data": validation_data, "output_tolerance": output_tolerance,
            "batch_size": batch_size, "base": base,
        }
        # Checked (and a base model hashed) once, the way `weightroll.roll` does it.
        self._write_options = roll_lib.resolve_options(**self.roll_options)
        self.monitor_op = None
        self.reports = []
        # With per-epoch saving, batch ends do nothing, so backends that can
        # dispatch callbacks asynchronously may do so.
        self.async_safe = self.save_freq == "epoch"
        self._validation_x = self._write_options["validation_data"]
        self._calibration = None  # a `reuse.Calibration`, with `validation_data`
        self._is_chief = True
        self._executor = None
        self._pending = None  # the roll in flight (a _Roll), if any
        self._last = None  # the newest roll started
        self._reported = None  # the newest roll started before the current epoch
        self._written = []  # absolute paths of the archives kept, oldest first
        self._current_epoch = 0
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None

    def on_train_begin(self, logs=None):
        self._wait()  # a roll left running by a `fit` that raised
        if self._validation_x is not None:  # wrong data fails now, not after an epoch of training
            inputs.check_inputs(self.model, self._validation_x)
        self._is_chief = _is_chief(self.model)
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        self._reported = self._last

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save(epoch=self._current_epoch, batch=batch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            # As ModelCheckpoint: once the metrics are built, and whether or not
            # `save_best_only` (an unknown monitor in "auto" mode raises here).
            self._set_monitor_op()
        if self.save_freq == "epoch":
            self._save(epoch=epoch, batch=None, logs=logs)
        if logs is not None:
            logs.update(self._roll_logs())

    def on_train_end(self, logs=None):
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _should_save_on_batch(self, batch):
        """Whether `save_freq` batches have passed (counts `steps_per_execution` jumps)."""
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            add_batches = batch + 1  # a new epoch; batches are zero-indexed
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _set_monitor_op(self):
        """`ModelCheckpoint`'s rule for which way is better."""
        if self.mode == "min":
            self.monitor_op = operator.lt
            return
        if self.mode == "max":
            self.monitor_op = operator.gt
            return
        metric_name = self.monitor.removeprefix("val_")
        op = operator.lt if metric_name == "loss" else None
        for metric in _compiled_metrics(self.model):
            if metric.name == metric_name and hasattr(metric, "_direction"):
                op = operator.gt if metric._direction == "up" else operator.lt
        if op is None:
            raise WrollError(
                f"{self.__class__.__name__} callback received monitor={self.monitor}, but Keras "
                "isn't able to automatically determine whether that metric should be maximized "
                "or minimized. Pass `mode='max'` in order to monitor based on the highest metric "
                "value, or pass `mode='min'` in order to use the lowest value."
            )
        self.monitor_op = op

    def _is_improvement(self, current, reference):
        if reference is None:
            return True
        if self.monitor_op is None:
            self._set_monitor_op()
        return bool(self.monitor_op(current, reference))

    def _should_save_model(self, epoch, logs, filepath):
        """`ModelCheckpoint`'s decision, with its messages and warnings."""
        if not self.save_best_only:
            self._print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            return True
        if (isinstance(current, np.ndarray) or keras.ops.is_tensor(current)) and len(current.shape) > 0:
            warnings.warn(
                "Can save best model only when `monitor` is a scalar value. "
                f"Received: {current}. Falling back to `save_best_only=False`.",
                stacklevel=3,
            )
            return True
        best_str = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            self._print(
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {best_str} to {current:.5f}, "
                f"saving model to {filepath}"
            )
            self.best = current
            return True
        self._print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best_str}")
        return False

    def _get_file_path(self, epoch, batch, logs):
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            keys = ["epoch"] + ([] if batch is None else ["batch"]) + sorted(logs)
            raise WrollError(
                f'Failed to format this callback filepath: "{self.filepath}". Reason: '
                f"{type(e).__name__}: {e}. Expected named placeholders among: {', '.join(keys)}."
            ) from None

    def _save(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, logs, filepath):
            return
        if paths.isdir(filepath):
            raise IsADirectoryError(
                errno.EISDIR,
                f"Please specify a non-directory filepath for {self.__class__.__name__}. Filepath used "
                "is an existing directory",
                filepath,
            )
        self._wait()  # at most one roll in flight
        snap = roll_lib.snapshot(self.model, **self._snapshot_options())
        if self._validation_x is not None and self._calibration is None:
            # One measurement model for every roll of this callback, built in the background.
            architecture = model_io.architecture_json(self.model) if self.save_weights_only else None
            self._calibration = reuse.Calibration(architecture)
        job = _Roll(epoch=epoch, batch=batch, filepath=filepath if self._is_chief else None)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="WeightRollCheckpoint"
            )
        job.future = self._executor.submit(self._roll, snap, job.filepath)
        self._pending = self._last = job

    def _snapshot_options(self):
        """Only the options that differ from `snapshot`'s defaults, so that a
        snapshot function without them still serves the defaults."""
        options = {}
        if self.save_weights_only:
            options["weights_only"] = True
        if self.include_optimizer:
            options["include_optimizer"] = True
        return options

    def _roll(self, snap, filepath):
        """Runs in the background: measure the reference outputs (with
        `validation_data`), encode, write, then apply `max_to_keep`."""
        target = io.BytesIO() if filepath is None else filepath
        if filepath is not None:  # a local path, or gs://, ram://, ... (see weightroll/_format/paths.py)
            paths.makedirs(paths.folder(filepath))
        reference = measured_in = None
        if self._validation_x is not None:
            # Here, not on the training thread: the snapshot's weights in the
            # measurement model (its traced predict function reused). That model
            # changes only here, so rolls may measure in it where they cannot
            # rebuild one (a weights-only snapshot, a config Keras cannot rebuild).
            reference = self._calibration.reference(snap, self._validation_x, self.roll_options["batch_size"])
            measured_in = self._calibration.model
        report = roll_lib.write_snapshot(snap, target, reference_outputs=reference, model=measured_in,
                                         calibration=self._calibration, **self._write_options)
        if filepath is not None:
            self._keep(paths.absolute(filepath))
        return report

    def _keep(self, path):
        """Record a complete archive; delete the oldest beyond `max_to_keep`."""
        if path in self._written:  # overwritten in place: it is now the newest
            self._written.remove(path)
        self._written.append(path)
        while self.max_to_keep is not None and len(self._written) > self.max_to_keep:
            try:
                paths.remove(self._written.pop(0))
            except FileNotFoundError:
                pass

    def _wait(self):
        """Collect the roll in flight, raising its error here if it failed."""
        job, self._pending = self._pending, None
        if job is None:
            return
        try:
            job.report = job.future.result()
        except BaseException as e:
            if self._executor is not None:  # fit stops here: free the idle thread
                self._executor.shutdown(wait=False)
                self._executor = None
            if hasattr(e, "add_note"):  # Python 3.11+
                e.add_note(
                    f"{self.__class__.__name__}: raised in the background while rolling the model "
                    f"of epoch {job.epoch + 1} to {job.filepath or 'memory'}."
                )
            raise
        self.reports.append(job.report)
        if job.filepath is not None:
            report = job.report
            message = (
                f"\nEpoch {job.epoch + 1}: finished rolling model to {job.filepath}: "
                f"{report.archive_bytes:,} bytes (compression {report.compression_ratio:.1f}x against "
                f"float32), roll value {_fmt(report.roll_value['weights']['relative_rmse'])} "
                "(weight relative RMSE)"
            )
            outputs = report.roll_value.get("outputs")
            if outputs:
                message += f", outputs max abs diff {_fmt(outputs['max_abs_diff'])}"
                if "top1_agreement" in outputs:
                    message += f", top-1 agreement {outputs['top1_agreement']:.2%}"
            self._print(message)

    def _roll_logs(self):
        """The log entries for this epoch: the newest archive started before it."""
        job = self._reported
        if job is not None and job is self._pending:
            self._wait()
        report = None if job is None else job.report
        values = {"roll_value": math.nan}
        if self._validation_x is not None:
            values["roll_output_max_abs_diff"] = math.nan
            values["roll_top1_agreement"] = math.nan
        if report is None:
            return values
        values["roll_value"] = _float(report.roll_value["weights"]["relative_rmse"])
        outputs = report.roll_value.get("outputs")
        if outputs:
            values["roll_output_max_abs_diff"] = _float(outputs["max_abs_diff"])
            values["roll_top1_agreement"] = _float(outputs.get("top1_agreement"))
        return values

    def _print(self, message):
        if self.verbose > 0 and self._is_chief:
            if keras.config.is_interactive_logging_enabled():
                print(message, flush=True)
            else:
                logging.getLogger("weightroll").info(message)


class _Roll:
    """One archive being rolled: where it goes and, once done, its report."""

    def __init__(self, epoch, batch, filepath):
        self.epoch = epoch
        self.batch = batch
        self.filepath = filepath  # None on a worker that does not write
        self.future = None
        self.report = None


def _check_filepath(filepath, save_weights_only):
    """ModelCheckpoint's suffix rule, for archives: `.wroll` for a model (as
    `.keras`), `.weights.wroll` for weights only (as `.weights.h5`)."""
    if not isinstance(filepath, (str, os.PathLike)):
        raise WrollError(
            "Invalid `filepath` argument: expected a string or `PathLike` ending in `.wroll`. "
            f"Received: filepath={filepath!r} of type {type(filepath).__name__}"
        )
    filepath = os.fspath(filepath)
    if save_weights_only:
        if not filepath.endswith(".weights.wroll"):
            raise WrollError(
                "When using `save_weights_only=True` in `WeightRollCheckpoint`, the filepath provided "
                "must end in `.weights.wroll` (weightroll weights-only archive). "
                f"Received: filepath={filepath}"
            )
    elif not filepath.endswith(".wroll"):
        raise WrollError(
            "The filepath provided must end in `.wroll` (weightroll archive format). "
            f"Received: filepath={filepath}"
        )
    return filepath


def _check_save_freq(save_freq):
    if save_freq == "epoch":
        return save_freq
    if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
        raise WrollError(
            f"Unrecognized save_freq: {save_freq!r}. Expected save_freq are 'epoch' or "
            "a positive integer number of batches."
        )
    return save_freq


def _check_max_to_keep(max_to_keep):
    if max_to_keep is None:
        return None
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
        raise WrollError(
            "`max_to_keep` must be a positive integer (or None to keep every archive). "
            f"Received: max_to_keep={max_to_keep!r}"
        )
    return max_to_keep


def _compiled_metrics(model):
    """The metrics Keras's "auto" mode looks at: those inside the compiled containers."""
    found = []
    for metric in getattr(model, "metrics", None) or []:
        inner = getattr(metric, "metrics", None)  # CompileMetrics, MetricsList
        if isinstance(inner, (list, tuple)):
            found.extend(inner)
    return found


def _is_chief(model):
    """Whether this process writes: false only on non-chief workers of a multi-worker
    `tf.distribute` strategy (the chief is task "chief", or worker 0 without one)."""
    if keras.backend.backend() != "tensorflow":
        return True
    resolver = getattr(getattr(model, "distribute_strategy", None), "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return False
    return resolver.task_type == "worker" and resolver.task_id == 0


def _float(value):
    return math.nan if value is None else float(value)


def _fmt(value):
    return "nan" if value is None else f"{value:.3g}"
