"""`weightroll.roll`: write a Keras model as a `.wroll` archive."""

import dataclasses
import os

import numpy as np

from weightroll import _encode
from weightroll._format import paths, writer
from weightroll._keras import model_io, network
from weightroll.errors import WrollError
from weightroll.report import RollReport, outputs_roll_value, weights_roll_value, worse_roll_value


def check_filepath(filepath):
    """Accept a path ending in `.wroll`, or a writable binary file object."""
    if hasattr(filepath, "write"):
        return filepath
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath).endswith(".wroll"):
        raise WrollError(
            "Invalid filepath extension for saving. Please add a `.wroll` extension (or pass a binary "
            f"file object). Received: filepath={filepath!r}"
        )
    return filepath


def make_folders(filepath):
    """Create a path's missing folders (as `WeightRollCheckpoint` does); once
    every argument has been checked, so a refused call leaves none behind."""
    if not hasattr(filepath, "write"):
        paths.makedirs(os.path.dirname(os.fspath(filepath)) if not paths.is_remote(filepath)
                       else paths.folder(filepath))


@dataclasses.dataclass
class Snapshot:
    """What rolling needs from a model, copied so the model may change after."""

    tensors: list  # (path, numpy array or `_encode.Lazy`)
    architecture: bytes  # the architecture JSON; None for weights only
    model_info: dict
    producer: dict
    keys: dict = dataclasses.field(default_factory=dict)  # path -> Keras saving key
    assets: dict = dataclasses.field(default_factory=dict)  # relative path -> bytes
    quantized: bool = False  # a Keras-quantized model: every tensor is stored losslessly

    def keyed(self, paths):
        """`{key: {"path": path}}` for `paths`: what `state.load` and
        `model_io.rebuild_with_state` take, with a `decode` that looks the
        path up."""
        return {self.keys.get(path, path): {"path": path} for path in paths}


def snapshot(model, copy=True, weights_only=False, include_optimizer=False, objects_to_skip=()):
    """A model's state as Keras would save it, and its architecture (cheap; no encoding).

    Args:
        copy: copy every variable now (the model may then change, as it does
            while a callback rolls it in the background). With `False` no
            variable is copied (see `model_io.variable_sources`): less memory
            and time, but the model must not change until the snapshot is
            written.
        weights_only: leave the architecture (and the asset files) out, as
            `model.save_weights` does.
        include_optimizer: also take the optimizer's state.
        objects_to_skip: saveables to leave out (with `weights_only`, as
            Keras's `save_weights(objects_to_skip=)`).
    """
    import keras

    from weightroll import __version__

    model_io.check_model(model)
    tensors, keys, assets = model_io.state_sources(model, copy, include_optimizer, assets=not weights_only,
                                                   objects_to_skip=objects_to_skip or ())
    quantized = any(getattr(layer, "quantization_mode", None) for layer in model._flatten_layers())
    return Snapshot(
        tensors=tensors,
        keys=keys,
        assets=assets,
        quantized=quantized,
        # Serialised here, not on a thread beside the coding: Keras's
        # get_config is Python, and its hold on the GIL slowed the coding
        # threads more than the overlap saved (ResNet50: 434 -> 411 ms).
        architecture=None if weights_only else model_io.architecture_json(model),
        model_info={
            "name": model.name,
            "class_name": type(model).__name__,
            "parameters": int(sum(_encode.tensor_size(t) for _, t in tensors)),
        },
        producer={
            "name": "weightroll",
            "version": __version__,
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        },
    )


def write_snapshot(snap, filepath, decoder="codebook", bits=None, tolerance=None, quality=None,
                   reference_outputs=None, validation_data=None, batch_size=None, base_keys=None,
                   output_tolerance=None, model=None, max_shard_size=None, calibration=None):
    """Encode a snapshot, measure its roll value and write the archive.

    Args:
        reference_outputs: the original model's outputs on `validation_data`
            (a list of arrays); required when `validation_data` is given.
        output_tolerance: when not None (needs `validation_data`), tensors get
            tolerances allocated by measured output sensitivity to meet it.
        model: the model the snapshot was taken of, if it does not change
            meanwhile: where the architecture cannot be rebuilt (a subclassed
            model whose config Keras cannot deserialize), the rolled weights
            are measured in it, and its own weights put back after.
        max_shard_size: write a sharded archive (see `roll`), shards of at
            most this many bytes of raw weights each.
        calibration: a `reuse.Calibration` (the checkpoint's): it allocates
            and measures in its one model, reusing earlier allocations.
    """
    if snap.quantized:  # already quantized by Keras: store it as it is, bit for bit
        decoder, bits, tolerance, quality, output_tolerance = "codebook", None, {}, None, None
    settings = _encode.describe_settings(decoder, bits, tolerance, quality, output_tolerance)
    from weightroll._keras.state import OPTIMIZER_PREFIX

    lossless = {path for path, key in snap.keys.items() if key.startswith(OPTIMIZER_PREFIX)}

    def encode(tolerance, bits, quality):
        return _encode.encode(snap.tensors, decoder=decoder, bits=bits, tolerance=tolerance, quality=quality,
                              lossless=lossless, base_keys=base_keys, keep_decoded=validation_data is not None)

    outputs = outputs_fit = None
    if validation_data is None:
        encoded = encode(tolerance, bits, quality)
    else:
        fit, held = calibration_split(model_io.input_count(validation_data))
        fit_x = model_io.input_take(validation_data, fit)
        target = output_tolerance
        for attempt in range(_HELD_OUT_ROUNDS):
            if output_tolerance is not None:
                from weightroll._keras.allocate import allocate

                if calibration is None:
                    tolerance, _ = allocate(snap, fit_x, target, batch_size, base_keys=base_keys, model=model)
                else:  # it reuses the reference outputs measured already
                    tolerance, _ = calibration.allocate(snap, fit_x, target, batch_size, base_keys=base_keys,
                                                        reference=_rows(reference_outputs, fit))
                bits = quality = None
            encoded = encode(tolerance, bits, quality)
            measure = _rolled_outputs if calibration is None else calibration.outputs
            rolled = measure(snap, encoded.decoded, validation_data, batch_size, model)
            outputs_fit = outputs_roll_value(_rows(reference_outputs, fit), _rows(rolled, fit))
            if held is None:
                outputs = outputs_fit
                break
            outputs_held = outputs_roll_value(_rows(reference_outputs, held), _rows(rolled, held))
            outputs = dict(worse_roll_value(outputs_held, outputs_fit), held_out=outputs_held, fit=outputs_fit)
            err = outputs_held["relative_rmse"]
            # An output tolerance is a promise about inputs the allocation did not see:
            # while the held-out samples miss it, allocate again for a tighter target.
            # (The fit samples' error is the allocation's own target, met by its search.)
            if output_tolerance is None or err is None or err <= output_tolerance:
                break
            target *= 0.97 * output_tolerance / err
    storage = {t["path"]: t["storage"] for t in encoded.tensors}
    sizes = {path: _encode.tensor_size(t) for path, t in snap.tensors}
    per_tensor, overall = weights_roll_value(encoded.stats, storage, sizes)
    for entry in encoded.tensors:
        entry["key"] = snap.keys.get(entry["path"], entry["path"])
    for entry in encoded.tensors:
        # Only coded tensors that changed record their error (spec §4.9): exact,
        # referenced and losslessly coded tensors have none, and an entry costs
        # manifest bytes (25 LayerNorm vectors of a small transformer: 1.4 KB).
        error = per_tensor[entry["path"]]
        if entry["storage"] == "coded" and error != {"relative_rmse": 0.0, "max_abs_error": 0.0}:
            entry["error"] = error
    roll_value = {"weights": overall, "outputs": outputs}
    if max_shard_size is None:
        members = _members(encoded, snap, roll_value, settings)
        writer.write(filepath, members)
        archive_bytes, sizes = _zip_size(members), {name: len(data) for name, data in members}
    else:
        archive_bytes, sizes = _write_shards(filepath, encoded, snap, roll_value, settings, max_shard_size)
    return RollReport(
        filepath=None if hasattr(filepath, "write") else os.fspath(filepath),
        archive_bytes=archive_bytes,
        float32_bytes=4 * snap.model_info["parameters"],
        member_bytes=sizes,
        parameters=snap.model_info["parameters"],
        decoder=encoded.decoder["kind"],
        settings=settings,
        roll_value={"weights": overall, "tensors": per_tensor, "outputs": outputs},
    )


def _members(encoded, snap, roll_value, settings, architecture=True, shards=None):
    return writer.build_members(
        encoded,
        decoder_config_json=network.decoder_config_json(encoded.decoder, encoded.decoder_arrays),
        architecture_json=snap.architecture if architecture else None,
        producer=snap.producer,
        model_info=snap.model_info,
        roll_value=roll_value,
        settings=settings,
        assets=snap.assets if architecture else None,
        keyed=True,
        shards=shards,
    )[0]


def _write_shards(filepath, encoded, snap, roll_value, settings, max_shard_size):
    """Write the shards beside `filepath`, then the index at `filepath` (spec
    §4.13): a reader never finds an index whose shards are not all written.

    Returns:
        `(bytes of all the files, {file name: bytes})`.
    """
    from weightroll._format import shards

    parts = shards.groups(encoded.tensors, max_shard_size)
    names = shards.shard_names(filepath, len(parts))
    folder = paths.folder(filepath)
    listed, sizes = [], {}
    for name, indices in zip(names, parts):
        members = _members(shards.subset(encoded, indices), snap, roll_value, settings, architecture=False)
        writer.write(paths.join(folder, name), members)
        listed.append({"file": name, "manifest_sha256": writer.manifest_sha256(members),
                       "tensors": len(indices)})
        sizes[name] = _zip_size(members)
    index = shards.subset(encoded, [])
    members = _members(index, snap, roll_value, settings, shards=listed)
    writer.write(filepath, members)
    sizes[os.path.basename(os.fspath(filepath))] = _zip_size(members)
    return sum(sizes.values()), sizes


# Of calibration samples, every HELD_OUT_EVERY-th is held out of the fit (the
# allocation never sees it) and the stored output roll value is measured on it.
HELD_OUT_EVERY = 4
# Allocations at most, each for a tighter target while the held-out samples miss it.
_HELD_OUT_ROUNDS = 3


def calibration_split(count):
    """`(fit, held_out)` sample indices of `count` calibration samples:
    every `HELD_OUT_EVERY`-th sample (the last one of 2 or 3) is held out;
    with fewer than 2 samples none is (`held_out` is None)."""
    index = np.arange(count)
    if count < 2:
        return index, None
    held = index[index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1] if count >= HELD_OUT_EVERY else index[-1:]
    return np.setdiff1d(index, held), held


def _rows(outputs, index):
    return [np.asarray(o)[index] for o in outputs]


def _rolled_outputs(snap, decoded, validation_data, batch_size, model):
    """The rolled model's outputs on `validation_data`: a model rebuilt from
    the architecture with the decoded state, or else `model` itself with the
    decoded state put in for the prediction and its own put back after."""
    from weightroll._keras import state

    tensors = snap.keyed(decoded)
    rebuilt = None
    if snap.architecture is not None:
        try:
            rebuilt = model_io.rebuild_with_state(snap.architecture, tensors, lambda e: decoded[e["path"]],
                                                  snap.assets, compile=False, safe_mode=False)
        except WrollError:
            if model is None:
                raise
    if rebuilt is not None:
        return model_io.predict_outputs(rebuilt, validation_data, batch_size)
    if model is None:
        raise WrollError("A weights-only snapshot cannot be measured on `validation_data` without its model.")
    originals = dict(snap.tensors)  # copies: snapshots taken for calibration copy every tensor
    state.load(model, tensors, lambda e: decoded[e["path"]], optimizer=False)
    try:
        return model_io.predict_outputs(model, validation_data, batch_size)
    finally:
        state.load(model, tensors, lambda e: originals[e["path"]], optimizer=False)


def _zip_size(members):
    # Stored zip: 30-byte local header + name, 46-byte central entry + name, 22-byte end record.
    return sum(76 + 2 * len(name.encode()) + len(data) for name, data in members) + 22


def _split_x(validation_data):
    if isinstance(validation_data, tuple) and len(validation_data) in (2, 3):
        return validation_data[0]
    return validation_data


def resolve_options(*, decoder="codebook", bits=None, tolerance=None, quality=None, validation_data=None,
                    output_tolerance=None, batch_size=None, base=None):
    """Check `roll`'s options and turn them into `write_snapshot`'s keyword arguments.

    Everything that can fail does so here, before any work; the base model's
    tensors are hashed once.
    """
    _encode.resolve_quality(decoder, bits, tolerance, quality)
    output_tolerance = _encode.resolve_output_tolerance(
        decoder, bits, tolerance, quality, output_tolerance, validation_data is not None)
    base_keys = None
    if base is not None:
        from weightroll._keras.base import base_index

        base_keys = set(base_index(base))
    return {
        "decoder": decoder, "bits": bits, "tolerance": tolerance, "quality": quality,
        "validation_data": None if validation_data is None else _split_x(validation_data),
        "output_tolerance": output_tolerance, "batch_size": batch_size, "base_keys": base_keys,
    }


def roll(model, filepath, *, decoder="codebook", bits=None, tolerance=None, quality=None,
         validation_data=None, output_tolerance=None, batch_size=None, base=None, include_optimizer=False,
         max_shard_size=None, **kwargs):
    """Roll a Keras model into a small `.wroll` archive.

    The weights become integer codes in one 8-bit grayscale PNG, a
    pix-to-weight network maps codes back to floats, and the architecture
    JSON travels beside them. The roll value (what quantisation cost) is
    always measured and stored in the archive.

    How small, at what cost, is set by at most one of `bits`, `tolerance`
    and `quality`; with none of them the `"balanced"` preset applies.

    Args:
        model: a built `keras.Model` (Sequential, Functional or subclassed).
        filepath: path ending in `.wroll`, or a writable binary file object.
            A path is written atomically: a failure leaves any previous file intact.
        decoder: `"codebook"` (default): codes are decoded by table look-up
            (an embedding layer), exactly. `"mlp"`: the 2019 paper's method,
            one global min-max grid and a small MLP fitted by regression
            (a baseline; takes `bits` only).
        bits: a fixed code width, 1 to 8: each tensor gets a k-means codebook
            of at most `2**bits` values. Defaults to `None` (8 for `"mlp"`).
        tolerance: the largest relative RMSE allowed per tensor (e.g. `0.02`).
            Each tensor gets the cheapest code that meets it: exact storage,
            a lossless table, or entropy-coded uniform codes with per-tensor,
            per-channel or per-row scales and outliers stored exactly.
        quality: a preset: `"lossless-ish"`, `"balanced"` (the default) or
            `"small"`. Without `validation_data` it sets a budget of weight
            error (0.003, 0.01, 0.04): the root mean square of the weight
            matrices' relative RMSEs, shared out by size at the fewest bits
            (at most 2x the value per tensor; vectors get the value itself);
            with it, an output tolerance (0.01, 0.04, 0.12).
        validation_data: optional inputs for the model (what `model.predict`
            takes; for a tuple `(x, y)` the `x` is used). When given, the
            outputs of the original and the rolled model are compared and
            stored in the roll value, and, unless `bits` or `tolerance` is
            set, bits are spent where the outputs are sensitive: each
            tensor's effect on the outputs is measured on (up to 256 of)
            these samples and tolerances are allocated to reach the output
            tolerance with the smallest archive (for a softmax classifier,
            also keeping top-1 agreement at or above `1 - output_tolerance / 4`).
        output_tolerance: the largest relative RMSE of the outputs on
            `validation_data` (e.g. `0.04`, about cosine 0.999); overrides
            the preset's.
        batch_size: batch size for those predictions. Defaults to `None` (Keras's 32).
        base: for transfer learning, the pre-trained model the weights came
            from (a `keras.Model`, a `.keras` / `.weights.h5` file, or a dict
            of numpy arrays). Every variable bit-identical to a base tensor is
            stored as a reference (its SHA-256) instead of its values, so a
            frozen base costs almost nothing; `load_rolled` then needs the same
            `base=`. Defaults to `None`.

    Returns:
        A `RollReport` with the archive's size and the roll value.

    Example:

    ```python
    report = weightroll.roll(model, "model.wroll", validation_data=x_test)
    print(report)
    ```
    """
    if kwargs:  # as keras.saving.save_model refuses them
        raise WrollError(f"The following argument(s) are not supported: {list(kwargs.keys())}")
    check_filepath(filepath)
    shard_bytes = _shard_bytes(filepath, max_shard_size)
    options = resolve_options(decoder=decoder, bits=bits, tolerance=tolerance, quality=quality,
                              validation_data=validation_data, output_tolerance=output_tolerance,
                              batch_size=batch_size, base=base)
    # Without calibration data nothing needs every tensor at once: stream them.
    if options["validation_data"] is not None:
        from weightroll._keras.inputs import check_inputs

        check_inputs(model, options["validation_data"])  # a WrollError naming the expected shapes
    make_folders(filepath)
    snap = snapshot(model, copy=options["validation_data"] is not None, include_optimizer=include_optimizer)
    reference = None
    if options["validation_data"] is not None:
        reference = model_io.predict_outputs(model, options["validation_data"], batch_size)
    return write_snapshot(snap, filepath, reference_outputs=reference, model=model, max_shard_size=shard_bytes,
                          **options)


def _shard_bytes(filepath, max_shard_size):
    """`max_shard_size` (GB, as Keras takes it) in bytes, checked; None for one file."""
    if max_shard_size is None:
        return None
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, float)) or not max_shard_size > 0:
        raise WrollError(f"`max_shard_size` must be a positive number of GB. Received: max_shard_size={max_shard_size!r}")
    if hasattr(filepath, "write"):
        raise WrollError("A sharded archive is written to a path (its shards lie beside it), not to a file object.")
    return max(1, int(float(max_shard_size) * 1024**3))
