"""A model's state as Keras saves it: every entry of `save_own_variables` and
every file of `save_assets`, under the keys Keras's own `.keras` format uses.

Keras saves a model by walking it (its layers, their sublayers, the
optimizer) and asking each object for its state: `save_own_variables(store)`
puts variables or arrays in a dict-like store (a lookup table's IDF weights, a
custom layer's extra arrays), `save_assets(dir)` writes files (a vocabulary).
Loading walks a rebuilt model the same way and hands each object what it
saved. weightroll uses that very walk (`keras.src.saving.saving_lib`, not
public API) with stores of its own, so an archive holds, and a loaded model
gets back, exactly what a `.keras` file would: each entry's key is the path
Keras gives it in `model.weights.h5` (e.g. `"layers/dense/vars/0"`).
"""

import contextlib
import os
import tempfile
import warnings

import numpy as np

from weightroll._format import rules
from weightroll.errors import WrollError, short

OPTIMIZER_PREFIX = "optimizer/"


def _saving_lib():
    from keras.src.saving import saving_lib

    return saving_lib


_SKIPSETS = {}  # obj_type -> Keras's get_attr_skipset(obj_type)


@contextlib.contextmanager
def _skipsets_remembered(saving_lib):
    """While Keras's saving walk runs for weightroll, its `get_attr_skipset`
    remembers its answers.

    That function builds a throw-away object of the type asked (a `Layer`, an
    `Optimizer`, ...) to list the attributes the walk skips, and means to keep
    the answer in Keras's global state, but stores it under another name than
    it looks it up by (Keras 3.15: `saving_attr_skipset_*` against
    `saving_attr_skiplist_*`), so every call builds again: 11 calls, 18 ms of
    a 1M-value CNN's 42 ms `roll`. The answer depends on the type alone. Keras
    itself is left as it was once the walk ends.
    """
    original = getattr(saving_lib, "get_attr_skipset", None)
    if original is None or getattr(original, "_weightroll", False):
        yield
        return

    def get_attr_skipset(obj_type):
        if obj_type not in _SKIPSETS:
            _SKIPSETS[obj_type] = original(obj_type)
        return _SKIPSETS[obj_type]

    get_attr_skipset._weightroll = True
    saving_lib.get_attr_skipset = get_attr_skipset
    try:
        yield
    finally:
        saving_lib.get_attr_skipset = original


def _entry_key(inner_path, name):
    return f"{inner_path}/vars/{name}" if inner_path else f"vars/{name}"


def collect(model, include_optimizer=False, assets=True, objects_to_skip=()):
    """What Keras would save of `model` (less `objects_to_skip`, as Keras's
    `save_weights(objects_to_skip=)` leaves them out).

    Returns:
        `(entries, assets)`: `entries` is a list of `(key, value)` in Keras's
        order, each value a `keras.Variable` or an array; `assets` is
        `{relative path: bytes}` (empty when `assets` is False).
    """
    saving_lib = _saving_lib()
    entries = []

    class _Collector(saving_lib.H5IOStore):
        def __init__(self):  # no file: entries are kept in memory
            pass

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            return _Entries(path)

        def close(self):
            pass

    class _Entries(dict):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def __setitem__(self, name, value):
            super().__setitem__(name, value)
            entries.append((_entry_key(self.path, name), value))

    files = {}
    with tempfile.TemporaryDirectory(prefix="weightroll-assets-") as folder:
        asset_store = None
        if assets:
            asset_store = saving_lib.DiskIOStore(folder, mode="r")  # "r": use the folder as given
        visited = {id(o) for o in objects_to_skip}
        if not include_optimizer and getattr(model, "optimizer", None) is not None:
            visited.add(id(model.optimizer))
        try:
            with _skipsets_remembered(saving_lib):
                saving_lib._save_state(model, _Collector(), asset_store, "", visited)
        except WrollError:
            raise
        except Exception as e:  # a layer's own save_own_variables / save_assets failed
            raise WrollError(f"Keras could not save the state of model '{model.name}': "
                             f"{type(e).__name__}: {short(e, 500)}") from e
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                full = os.path.join(root, name)
                relative = os.path.relpath(full, folder).replace(os.sep, "/")
                with open(full, "rb") as f:
                    files[relative] = f.read()
    return entries, dict(sorted(files.items()))


def is_variable(value):
    import keras

    return isinstance(value, keras.Variable)


def as_array(value):
    """An entry that is not a variable (an array, a tensor, a scalar) as numpy."""
    import keras

    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:  # noqa: BLE001 - a plain Python value Keras does not convert
        return np.asarray(value)


def load(model, tensors, decode, assets=None, given=(), optimizer=True, skip_mismatch=False,
         objects_to_skip=()):
    """Load archive state into `model` through Keras's own loading walk.

    Args:
        tensors: `{key: manifest entry}` of the archive's keyed tensors.
        decode: `decode(entry) -> array`, each tensor digest-checked.
        assets: `{relative path: bytes}` of the asset files, or None.
        given: keys whose variables already hold the archive's values (a
            deferred build gave them as first values); their layers get the
            variable itself instead of a decoded copy.
        optimizer: load the optimizer's state when the archive has it.
        skip_mismatch: as Keras's `load_weights(skip_mismatch=True)`: an
            object whose loading fails keeps its values, with a warning, and
            tensors no object takes are ignored.
        objects_to_skip: objects (and what they hold) to leave as they are.

    Raises:
        WrollError: the archive's state and the model disagree (R38): a key
            the model does not take, or a layer's loading refused it.
    """
    saving_lib = _saving_lib()
    used = set()
    given = dict(given)

    class _Reader(saving_lib.H5IOStore):
        def __init__(self):
            pass

        def __bool__(self):
            return True

        def get(self, path):
            prefix = _entry_key(path, "")
            names = {k[len(prefix):]: k for k in tensors if k.startswith(prefix) and "/" not in k[len(prefix):]}
            return _Entries(names)

        def has_path(self, path):
            return any(k.startswith(f"{path}/") for k in tensors) if path else bool(tensors)

        def close(self):
            pass

    class _Entries:
        """One object's entries, as `load_own_variables` reads them."""

        def __init__(self, names):
            self._names = names

        def keys(self):
            return list(self._names)

        def __len__(self):
            return len(self._names)

        def __contains__(self, name):
            return name in self._names

        def __iter__(self):
            return iter(self._names)

        def __getitem__(self, name):
            key = self._names[name]
            used.add(key)
            if key in given:
                return given[key]
            return decode(tensors[key])

    visited = {id(o) for o in objects_to_skip}
    has_optimizer_state = any(k.startswith(OPTIMIZER_PREFIX) for k in tensors)
    if getattr(model, "optimizer", None) is not None and not (optimizer and has_optimizer_state):
        visited.add(id(model.optimizer))
    failed, messages = set(), {}
    with tempfile.TemporaryDirectory(prefix="weightroll-assets-") as folder:
        asset_store = None
        if assets:
            for relative, data in assets.items():  # paths were checked (R41): no '..', no absolute path
                full = os.path.join(folder, *relative.split("/"))
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(data)
            asset_store = saving_lib.DiskIOStore(folder, mode="r")
        try:
            with _skipsets_remembered(saving_lib):
                saving_lib._load_state(model, _Reader(), asset_store, "", skip_mismatch=skip_mismatch,
                                       visited_saveables=visited, failed_saveables=failed, error_msgs=messages)
        except WrollError:
            raise
        except Exception as e:  # noqa: BLE001 - raised outside a layer's own loading
            raise WrollError(f"Keras could not load the archive's state into model '{model.name}': "
                             f"{type(e).__name__}: {short(e, 500)}", rule=rules.VARIABLES) from e
    if failed and skip_mismatch:
        names = ", ".join(short(getattr(o, "name", o)) for o, _ in messages.values())
        warnings.warn(f"weightroll: {len(messages)} objects of model '{model.name}' kept their values: "
                      f"their state in the archive did not fit ({names}).", stacklevel=3)
        return
    if failed:
        first, error = next(iter(messages.values()))
        if isinstance(error, WrollError):
            raise error
        raise WrollError(
            f"{len(messages)} objects of model '{model.name}' could not take the archive's state; "
            f"the first, {short(getattr(first, 'name', first))!r}: {type(error).__name__}: {short(error, 800)}",
            rule=rules.VARIABLES,
        ) from error
    # An optimizer whose state does not fit (saved before it was built, say) is
    # skipped by Keras's own loading with a warning, as `load_model` does: its
    # entries are not refused here either.
    unused = [k for k in tensors if k not in used and k not in given and not k.startswith(OPTIMIZER_PREFIX)]
    if unused and not (skip_mismatch or objects_to_skip):
        raise WrollError(
            f"The archive holds {len(unused)} tensors that model '{model.name}' does not take "
            f"(e.g. '{short(unused[0])}'); the architecture and the weights disagree.",
            rule=rules.VARIABLES,
        )
