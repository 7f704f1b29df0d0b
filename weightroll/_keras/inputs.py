"""Calibration data checked against the inputs a model takes, before any work.

Without this check, data of the wrong shape fails deep inside Keras's
`predict`, after the model has been snapshotted (or, in the checkpoint
callback, after an epoch of training), with a message about a layer's axis.
"""

import numpy as np

from weightroll.errors import WrollError, short


def declared_inputs(model):
    """`[(name, shape)]` of the inputs `model` declares, in the order Keras
    flattens them (a dict's by sorted key), or None for a model that does not
    declare them (a subclassed model)."""
    import keras

    try:
        structure = model.input
    except (AttributeError, ValueError):  # "has never been called and thus has no defined input"
        structure = None
    if structure is None:
        try:  # a Sequential built from an input shape declares `inputs` only
            flat = list(model.inputs or [])
        except (AttributeError, ValueError, TypeError):
            return None
        return [(_name(t), tuple(t.shape)) for t in flat] or None
    if isinstance(structure, dict):
        return [(str(k), tuple(structure[k].shape)) for k in sorted(structure)]
    return [(_name(t), tuple(t.shape)) for t in keras.tree.flatten(structure)]


def check_inputs(model, x, what="`validation_data`"):
    """Raise a `WrollError` naming the expected input shapes if `x` cannot be
    the inputs of `model`: a wrong number of inputs, dict keys that are not
    the inputs' names, a wrong rank or size on any axis but the batch axis,
    or inputs of different lengths. What Keras accepts passes (a list for a
    model of named inputs, a dict by input names for one of listed inputs).

    Models that do not declare their inputs (subclassed ones) are not checked.

    Args:
        model: a `keras.Model`.
        x: model inputs: an array, or a list, tuple or dict of arrays.
        what: how the data is named in the message (e.g. a command-line flag).
    """
    declared = declared_inputs(model)
    if declared is None:
        return

    def refuse(detail):
        raise WrollError(
            f"{what} does not fit model '{short(model.name)}': it takes {_describe(declared)}, but {detail}."
        )

    names = [name for name, _ in declared]
    if isinstance(x, dict):
        if sorted(map(str, x)) != sorted(names):
            refuse(f"received a dict of arrays named {', '.join(repr(short(str(k), 80)) for k in x)}")
        arrays = [x[next(k for k in x if str(k) == name)] for name in names]
    else:
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(arrays) != len(declared):
            shapes = ", ".join(str(np.shape(a)) for a in arrays)
            refuse(f"received {len(arrays)} array{'s' if len(arrays) != 1 else ''} of shape{'s' if len(arrays) != 1 else ''} {shapes}")
    lengths = set()
    for (name, want), array in zip(declared, arrays):
        have = tuple(np.shape(array))
        if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want[1:], have[1:])):
            which = f"input '{name}'" if len(declared) > 1 else "it"
            refuse(f"{which} received an array of shape {have}")
        lengths.add(have[0])
    if len(lengths) > 1:
        refuse(f"its inputs hold different numbers of samples ({', '.join(map(str, sorted(lengths)))})")


def _name(tensor):
    return short(str(getattr(tensor, "name", "?")), 80)


def _shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _describe(declared):
    if len(declared) == 1:
        return f"inputs of shape {_shape(declared[0][1])}"
    return f"{len(declared)} inputs: " + ", ".join(f"'{name}' of shape {_shape(shape)}" for name, shape in declared)
