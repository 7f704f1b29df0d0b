"""A Keras model's variables and architecture, in and out of numpy."""

import contextlib
import json

import numpy as np

from weightroll._format import manifest as mf
from weightroll.errors import UnsafeArchiveError, WrollError


def check_model(model):
    import keras

    if not isinstance(model, keras.Model):
        raise WrollError(
            f"Expected a `keras.Model` to roll. Received: model={model!r} of type {type(model).__name__}"
        )
    if not model.built or not model.variables:
        raise WrollError(
            f"Model '{model.name}' has no variables yet: build it (call it on data, or "
            "`model.build(input_shape)`) before rolling it."
        )


def named_variables(model):
    """`(path, numpy array)` for every variable of `model`, in `model.variables` order.

    Includes non-trainable state (batch-norm statistics, seed-generator state).
    A path that repeats gets a `:N` suffix so that paths are unique keys.
    """
    seen = {}
    out = []
    for variable in model.variables:
        path = variable.path
        n = seen.get(path, 0)
        seen[path] = n + 1
        out.append((path if n == 0 else f"{path}:{n}", np.array(variable.numpy(), copy=True)))
    return out


def architecture_json(model):
    """The model's Keras config (what `.keras` files hold as config.json)."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sharing_scope():
    try:  # Keras's own loader shares objects within one config; not public API.
        from keras.src.saving.serialization_lib import ObjectSharingScope
    except ImportError:  # pragma: no cover - a future Keras without it
        return contextlib.nullcontext()
    return ObjectSharingScope()


def rebuild(architecture, custom_objects=None, compile=True, safe_mode=True):
    """Build a model from architecture JSON bytes, like `keras.models.load_model` does."""
    import keras

    config = mf.loads(architecture, "architecture.json")
    if not isinstance(config, dict):
        raise WrollError("The architecture JSON must hold a JSON object (a Keras config).")
    if not compile:
        config["compile_config"] = None
    try:
        with _sharing_scope():
            model = keras.saving.deserialize_keras_object(
                config, custom_objects=custom_objects, safe_mode=safe_mode
            )
    except Exception as e:  # Keras raises many types for a config it cannot build
        if "safe_mode" in str(e):
            raise UnsafeArchiveError(
                f"Loading this archive would run code stored in its architecture: {e} "
                "Only pass `safe_mode=False` to `load_rolled` for archives from a source you trust."
            ) from e
        raise WrollError(
            f"The model's architecture cannot be rebuilt: {type(e).__name__}: {e}. "
            "If it uses custom layers or a subclassed model, pass them in `custom_objects=` "
            "or register them with `@keras.saving.register_keras_serializable()`."
        ) from e
    if not isinstance(model, keras.Model):
        raise WrollError(f"The architecture describes a {type(model).__name__}, not a keras.Model.")
    return model


def assign(model, named_arrays):
    """Load `(path, array)` pairs into `model.variables`, by position.

    Paths may differ (auto-generated names such as seed generators are
    renumbered on rebuild); count and shapes must match.
    """
    variables = model.variables
    if len(variables) != len(named_arrays):
        raise WrollError(
            f"The archive holds {len(named_arrays)} variables but the rebuilt model "
            f"'{model.name}' has {len(variables)}; the architecture and weights disagree."
        )
    for variable, (path, array) in zip(variables, named_arrays):
        if tuple(variable.shape) != tuple(array.shape):
            raise WrollError(
                f"Variable '{variable.path}' has shape {tuple(variable.shape)}, but the archive's "
                f"tensor '{path}' has shape {tuple(array.shape)}."
            )
        variable.assign(array.astype(variable.dtype) if array.dtype != variable.dtype else array)


def predict_outputs(model, x, batch_size=None):
    """`model.predict(x)` as a flat list of numpy arrays."""
    import keras

    out = model.predict(x, verbose=0, batch_size=batch_size)
    return [np.asarray(o) for o in keras.tree.flatten(out)]
