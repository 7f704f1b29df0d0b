"""A Keras model's variables and architecture, in and out of numpy."""

import contextlib
import json
import math

import numpy as np

from weightroll._format import manifest as mf
from weightroll._format import rules
from weightroll.errors import ArchitectureTypeError, ArchiveError, UnsafeArchiveError, WrollError, short


def check_model(model):
    import keras

    if not isinstance(model, keras.Model):
        raise WrollError(
            f"Expected a `keras.Model` to roll. Received: model={model!r} of type {type(model).__name__}"
        )


def _unique_paths(variables):
    """Each variable's path; a path that repeats gets a `:N` suffix so that
    paths are unique keys."""
    seen, paths = {}, []
    for variable in variables:
        n = seen.get(variable.path, 0)
        seen[variable.path] = n + 1
        paths.append(variable.path if n == 0 else f"{variable.path}:{n}")
    return paths


def named_variables(model):
    """`(path, numpy array)` for every variable of `model`, in `model.variables` order.

    Includes non-trainable state (batch-norm statistics, seed-generator state).
    The arrays are copies: the model may change afterwards.
    """
    import keras

    variables = model.variables
    backend = keras.backend.backend()
    return [(path, _source(v, backend, copy=True)) for path, v in zip(_unique_paths(variables), variables)]


def variable_sources(model):
    """Like `named_variables`, but without copies, for a model that does not
    change while it is rolled: a variable whose read is a view of its CPU
    buffer (TensorFlow, JAX) is read now, each other one only when the
    encoder gets to it (`_encode.Lazy`), so no copy of all the weights is
    ever held. Reads in a row are cheap; a TensorFlow read between coding
    steps costs 60-300 us (its dispatch code gone cold) against 16."""
    import keras

    variables = model.variables
    backend = keras.backend.backend()
    return [(path, _source(v, backend, copy=False)) for path, v in zip(_unique_paths(variables), variables)]


def state_sources(model, copy, include_optimizer=False, assets=True, objects_to_skip=()):
    """What Keras would save of `model` (see `state.collect`), ready to encode.

    Returns:
        `(tensors, keys, assets)`: `tensors` lists `(path, source)` in Keras's
        order (a variable's path is its `path`, made unique; another entry's
        is its key), each source a copy when `copy`, else as in
        `variable_sources`; `keys` maps each path to its Keras key; `assets`
        is `{relative path: bytes}`.
    """
    import keras

    from weightroll._keras import state

    entries, files = state.collect(model, include_optimizer=include_optimizer, assets=assets,
                                   objects_to_skip=objects_to_skip)
    variables = [value for _, value in entries if state.is_variable(value)]
    unique = iter(_unique_paths(variables))
    backend = keras.backend.backend()
    tensors, keys, seen = [], {}, set()
    for key, value in entries:
        if state.is_variable(value):
            path, source = next(unique), _source(value, backend, copy)
        else:
            path, source = key, state.as_array(value)
        while path in seen:  # a key that is also a variable's path
            path += "'"
        seen.add(path)
        tensors.append((path, source))
        keys[path] = key
    return tensors, keys, files


def _source(variable, backend, copy):
    """What the encoder reads of `variable`: with `copy`, a copy made now (one,
    from the backend's buffer: `numpy()` would copy, then this); else a view
    read now where `_reader` gives one of CPU memory, or an `_encode.Lazy`
    that reads it when the encoder gets to it."""
    from weightroll._encode import Lazy

    read = _reader(variable, backend)
    if copy:
        return np.array(read(), copy=True)
    if _on_cpu(variable, backend):
        return read()
    shape = tuple(int(d) for d in variable.shape)
    return Lazy(math.prod(shape), read, shape, variable.dtype)


def _on_cpu(variable, backend):
    """Whether `variable` lives in CPU memory, where `_reader` gives a view."""
    value = variable.value
    try:
        if backend == "tensorflow" and hasattr(value, "value"):
            return "CPU" in value.device.upper()
        if backend == "jax":  # one whole copy in CPU memory (a sharded array is gathered: a copy)
            return value.is_fully_replicated and all(device.platform == "cpu" for device in value.devices())
    except Exception:  # an unfamiliar value type: read it when its turn comes
        return False
    return False


def _reader(variable, backend):
    """A function of no arguments returning `variable`'s value as numpy: a
    read-only view of the backend's own buffer where it gives one (a
    TensorFlow read on CPU, whose buffer a later assignment does not
    touch; JAX's immutable CPU arrays), a JAX array split across devices
    assembled from its parts, else `variable.numpy()`'s copy.
    No tensor is copied while it is coded, and a TensorFlow read costs
    17 us where `numpy()` costs 70."""
    value = variable.value
    if backend == "tensorflow" and hasattr(value, "value"):
        return lambda: np.asarray(value.value())
    if backend == "jax":
        if not _sharded(value):
            return lambda: np.asarray(variable.value)
        return lambda: _gather(variable.value)
    return variable.numpy


def _sharded(array):
    """Whether a JAX array is split across devices (under `keras.distribution`)."""
    try:
        return not array.is_fully_replicated and array.is_fully_addressable
    except AttributeError:  # not a jax.Array
        return False


def _gather(array):
    """A JAX array split across devices, as one numpy array assembled from
    its shards. `np.asarray` would gather it too, but keeps that copy on the
    array (the model's variable) for as long as the array lives."""
    out = np.empty(array.shape, dtype=array.dtype)
    for shard in array.addressable_shards:
        if shard.replica_id == 0:  # each part once, though devices hold copies of it
            out[shard.index] = np.asarray(shard.data)
    return out


def architecture_json(model):
    """The model's Keras config (what `.keras` files hold as config.json).

    Refuses a config holding NaN or an infinity, which JSON cannot hold and
    readers refuse (spec R36), rather than write an archive that cannot load.
    """
    import keras

    config = keras.saving.serialize_keras_object(model)
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        raise WrollError(
            f"Model '{model.name}' has a config value that is NaN or infinite ({e}); JSON cannot "
            "hold it, so the archive could not be read back. Set it to a finite number before rolling."
        ) from None
    return text.encode("utf-8")


def _sharing_scope():
    try:  # Keras's own loader shares objects within one config; not public API.
        from keras.src.saving.serialization_lib import ObjectSharingScope
    except ImportError:  # pragma: no cover - a future Keras without it
        return contextlib.nullcontext()
    return ObjectSharingScope()


# Configs that make Keras run or load code. Keras refuses each of them itself
# under safe mode; weightroll finds them first, so that its refusal does not
# depend on the wording of Keras's messages.
_UNSAFE_CLASSES = {
    "__lambda__": "a Python lambda serialised as bytecode",
    "TFSMLayer": "a TFSMLayer, which loads a TensorFlow SavedModel (a graph) from a path",
    "TorchModuleWrapper": "a TorchModuleWrapper, which unpickles a PyTorch module",
}


def _effective_safe_mode(safe_mode):
    """`safe_mode` as Keras applies it: `keras.config.enable_unsafe_deserialization()`
    turns it off for every load, as it does for `keras.models.load_model`."""
    try:  # not public API; without it, the argument alone decides
        from keras.src.saving.serialization_lib import in_safe_mode
    except ImportError:  # pragma: no cover - a future Keras without it
        return safe_mode
    ambient = in_safe_mode()
    return safe_mode if ambient is None else ambient


def find_unsafe(config, custom_objects=None):
    """A description of the first thing in a Keras config that would run stored
    code when deserialised (a lambda's bytecode, a SavedModel, a pickle), or None.

    Walks the whole config iteratively (any depth, any place: a layer, its
    `function`, a nested model, a loss in `compile_config`). A class the
    caller passes in `custom_objects` is the caller's code, not the archive's.
    """
    own = set(custom_objects or ())
    stack = [(config, None)]
    while stack:
        node, layer = stack.pop()
        if isinstance(node, list):
            stack.extend((item, layer) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        class_name = node.get("class_name")
        name = node.get("name")
        if not isinstance(name, str) and isinstance(node.get("config"), dict):
            name = node["config"].get("name")
        if isinstance(class_name, str) and class_name in _UNSAFE_CLASSES and class_name not in own:
            if class_name == "__lambda__":
                return _UNSAFE_CLASSES[class_name] + (f" in layer '{short(layer)}'" if layer else "")
            return _UNSAFE_CLASSES[class_name] + (f" (layer '{short(name)}')" if isinstance(name, str) else "")
        if node.get("function_type") == "lambda":  # Keras 2's Lambda serialisation
            return f"Python bytecode (a Keras 2 Lambda function) in layer '{short(layer)}'"
        if isinstance(class_name, str) and isinstance(name, str):
            layer = name
        stack.extend((value, layer) for value in node.values())
    return None


def rebuild(architecture, custom_objects=None, compile=True, safe_mode=True):
    """Build a model from architecture JSON bytes, like `keras.models.load_model` does.

    Raises:
        ArchiveError: the JSON is malformed (spec R36).
        UnsafeArchiveError: building it would run stored code and safe mode
            is on (R37).
        WrollError: Keras cannot build a `keras.Model` from it (R37).
    """
    return _build(architecture, custom_objects, compile, safe_mode, compile_later=False)[0]


def _build(architecture, custom_objects, compile, safe_mode, compile_later):
    """`(model, compile_config)`: the model, compiled unless `compile_later`,
    when the compile config (None if none, or if not `compile`) is returned
    for `compile_from` instead."""
    import keras

    config = mf.loads(architecture, "architecture.json", rule=rules.JSON_MEMBER)
    if not isinstance(config, dict):
        raise ArchiveError("The architecture JSON must hold a JSON object (a Keras config).",
                           rule=rules.JSON_MEMBER)
    if not compile:
        config["compile_config"] = None
    if _effective_safe_mode(safe_mode):
        unsafe = find_unsafe(config, custom_objects)
        if unsafe is not None:
            raise UnsafeArchiveError(
                f"Loading this archive would run code stored in its architecture: it holds {unsafe}, "
                "which carries a risk of arbitrary code execution on this machine. It was refused "
                "because `safe_mode=True`, as "
                "`keras.models.load_model` refuses it. Only pass `safe_mode=False` to `load_rolled` "
                "for archives from a source you trust.",
                rule=rules.ARCHITECTURE_MODEL,
            )
    compile_config = None
    if compile_later:
        compile_config, config["compile_config"] = config.get("compile_config"), None
    with _keras_errors("The model's architecture cannot be rebuilt"), _sharing_scope():
        model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects, safe_mode=safe_mode)
    if not isinstance(model, keras.Model):
        raise WrollError(f"The architecture describes a {type(model).__name__}, not a keras.Model.",
                         rule=rules.ARCHITECTURE_MODEL)
    return model, compile_config


def compile_from(model, compile_config, custom_objects=None, safe_mode=True):
    """Compile `model` from its saved compile config, as Keras's loader does
    once it has built a model (the optimizer's variables are created)."""
    import keras

    with _keras_errors("The model cannot be compiled from its saved compile config"), \
            keras.saving.CustomObjectScope(custom_objects or {}), _safe_mode_scope(safe_mode):
        model.compile_from_config(compile_config)
        model.compiled = True


@contextlib.contextmanager
def _keras_errors(what):
    """Keras's many exception types, for a config it cannot build, as `WrollError`s (R37)."""
    try:
        yield
    except WrollError:
        raise
    except Exception as e:  # Keras raises many types for a config it cannot build
        message = _keras_message(e)
        if "safe_mode" in str(e):  # a refusal of Keras's own, for something not listed above
            raise UnsafeArchiveError(
                f"Loading this archive would run code stored in its architecture, a risk of arbitrary "
                f"code execution: {message} "
                "Only pass `safe_mode=False` to `load_rolled` for archives from a source you trust.",
                rule=rules.ARCHITECTURE_MODEL,
            ) from e
        kind = ArchitectureTypeError if isinstance(e, TypeError) else WrollError
        raise kind(
            f"{what}: {message}. "
            "If it uses custom layers or a subclassed model, pass them in `custom_objects=` "
            "or register them with `@keras.saving.register_keras_serializable()`.",
            rule=rules.ARCHITECTURE_MODEL,
        ) from e


def _keras_message(error, head=1000, tail=1500):
    """Keras's message, safe to print: its start and its end (where the root
    cause is, after a long config), line breaks kept."""
    text = "".join(c if c.isprintable() or c == "\n" else "?" for c in f"{type(error).__name__}: {error}")
    return text if len(text) <= head + tail else f"{text[:head]} [...] {text[-tail:]}"


def _safe_mode_scope(safe_mode):
    try:  # Keras's own loader deserialises the compile config under it; not public API.
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - a future Keras without it
        return contextlib.nullcontext()
    return SafeModeScope(safe_mode)


def _kind(dtype_name):
    """The kind of a dtype, by name: a float tensor never silently becomes an
    integer or a bool on assignment, nor the other way round."""
    if dtype_name == "bool":
        return "bool"
    if dtype_name.startswith(("float", "bfloat")):
        return "floating-point"
    if dtype_name.startswith(("int", "uint")):
        return "integer"
    return dtype_name


def rebuild_with_weights(architecture, named_arrays, paths=None, custom_objects=None, compile=True,
                         safe_mode=True):
    """`rebuild`, then `assign`: a model with the given weights. Where Keras
    allows it the variables are created without values and get these as
    their first ones (see `deferred`): no random initialisation to overwrite.
    """
    from weightroll._keras import deferred

    def build():  # compiled afterwards: compiling creates variables from values, which the scope refuses
        return _build(architecture, custom_objects, compile, safe_mode, compile_later=True)

    with deferred.deferral() as handle:
        model, compile_config = build() if handle is None else handle.build(build)
        assign(model, named_arrays, paths=paths, deferral=handle)
    if compile_config:
        compile_from(model, compile_config, custom_objects=custom_objects, safe_mode=safe_mode)
    return model


def assign(model, named_arrays, paths=None, deferral=None):
    """Load `(path, array)` pairs into `model.variables`, by position (spec R38).

    Paths may differ (auto-generated names such as seed generators are
    renumbered on rebuild); count, shapes and dtype kinds must match. Within
    a kind, the array is converted to the variable's dtype.

    Args:
        named_arrays: a list of `(path, array)`, or an iterable of them (then
            `paths` lists their paths, so the count is checked first and the
            arrays can be decoded one at a time).
        deferral: a `deferred.Deferral` the model was built under: variables
            still awaiting a value are initialised from the arrays.
    """
    variables = model.variables
    if paths is None:
        named_arrays = list(named_arrays)
        paths = [path for path, _ in named_arrays]
    if len(variables) != len(paths):
        first = min(len(variables), len(paths))
        extra = (f"its variable '{variables[first].path}' has no tensor" if len(variables) > first
                 else f"the archive's tensor '{short(paths[first])}' has no variable")
        raise WrollError(
            f"The archive holds {len(paths)} tensors but the rebuilt model "
            f"'{model.name}' has {len(variables)} variables ({extra}); the architecture and "
            "weights disagree.",
            rule=rules.VARIABLES,
        )
    for variable, (path, array) in zip(variables, named_arrays):
        array = fit(variable, path, array)
        try:
            if deferral is None or not deferral.give(variable, array):
                variable.assign(array)
        except Exception as e:  # noqa: BLE001 - a backend's refusal
            raise WrollError(
                f"Variable '{variable.path}' cannot take the archive's tensor '{short(path)}': "
                f"{type(e).__name__}: {short(str(e), 300)}",
                rule=rules.VARIABLES,
            ) from e
    _finalize_state(model)


def fit(variable, path, array):
    """`array` checked against `variable` (shape, kind of dtype) and cast to its dtype (R38)."""
    if tuple(variable.shape) != tuple(array.shape):
        raise WrollError(
            f"Variable '{variable.path}' has shape {tuple(variable.shape)}, but the archive's "
            f"tensor '{short(path)}' has shape {tuple(array.shape)}.",
            rule=rules.VARIABLES,
        )
    want = str(getattr(variable.dtype, "name", variable.dtype))
    if _kind(want) != _kind(array.dtype.name):
        raise WrollError(
            f"Variable '{variable.path}' is {want}, but the archive's tensor '{short(path)}' "
            f"is {array.dtype.name}: a {_kind(array.dtype.name)} tensor is not loaded into a "
            f"{_kind(want)} variable.",
            rule=rules.VARIABLES,
        )
    if array.dtype.name != want:
        from weightroll._format.schema import numpy_dtype

        array = array.astype(numpy_dtype(want))
    return array


def rebuild_with_state(architecture, tensors, decode, assets=None, custom_objects=None, compile=True,
                       safe_mode=True):
    """Build a model from its architecture and load a 2.x archive's state into
    it as `keras.models.load_model` loads a `.keras` file's (see `state`).

    Where Keras allows it the model's variables are created without values and
    get the archive's as their first ones (see `deferred`): no random
    initialisation to overwrite. Then the model is compiled (its optimizer
    built) and Keras's own loading walk hands every layer its saved state.

    Args:
        tensors: `{key: manifest entry}`.
        decode: `decode(entry) -> array`, digest-checked.
        assets: `{relative path: bytes}`.
    """
    from weightroll._keras import deferred, state

    def build():  # compiled afterwards: compiling creates variables from values, which the scope refuses
        return _build(architecture, custom_objects, compile, safe_mode, compile_later=True)

    given = {}
    with deferred.deferral() as handle:
        model, compile_config = build() if handle is None else handle.build(build)
        if handle is not None:
            try:
                entries, _ = state.collect(model, include_optimizer=False, assets=False)
            except WrollError:  # a layer that reads its values to save them: load them the Keras way
                entries = []
            for key, value in entries:
                entry = tensors.get(key)
                if entry is not None and state.is_variable(value) and deferred.pending(value):
                    if handle.give(value, fit(value, entry["path"], decode(entry))):
                        given[key] = value
    if compile_config:
        compile_from(model, compile_config, custom_objects=custom_objects, safe_mode=safe_mode)
    state.load(model, tensors, decode, assets, given=given, optimizer=bool(compile_config))
    return model


def _finalize_state(model):
    """Let layers that derive state from their variables recompute it, as
    Keras's loaders do once a layer's variables are loaded (an adapted
    `Normalization` keeps its mean and variance as tensors beside its
    variables: without this it would normalise with its initial ones)."""
    layers = (model._flatten_layers(include_self=False) if hasattr(model, "_flatten_layers")
              else model.layers)  # the private walk also finds layers nested inside layers
    for layer in layers:
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize) and layer.weights:  # as Keras's h5 loader: layers with variables only
            finalize()


def input_take(x, index):
    """The samples at `index` (an integer array) of model inputs (an array, or
    a list, tuple or dict of arrays)."""
    if isinstance(x, dict):
        return {k: np.asarray(v)[index] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(np.asarray(v)[index] for v in x)
    return np.asarray(x)[index]


def input_rows(x, start, stop):
    """Samples `[start, stop)` of model inputs (an array, or a list, tuple or
    dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(v[start:stop] for v in x)
    return x[start:stop]


def input_count(x):
    """How many samples model inputs hold."""
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, (list, tuple)) else x
    return len(first)


def predict_outputs(model, x, batch_size=None):
    """`model.predict(x)` as a flat list of numpy arrays, batch by batch with
    `predict_on_batch`: calibration predicts a model many times, and
    `predict` builds a data pipeline (tens of ms) and, for a model built
    anew, traces its function, each time."""
    import keras

    size = batch_size or 32
    parts = [keras.tree.flatten(model.predict_on_batch(input_rows(x, start, start + size)))
             for start in range(0, input_count(x), size)]
    return [np.concatenate([np.asarray(part[i]) for part in parts]) for i in range(len(parts[0]))]
