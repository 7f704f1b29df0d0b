"""The base model of a transfer-learning archive: its tensors, from wherever they live."""

import io
import os
import zipfile

import numpy as np

from weightroll._format import decode
from weightroll.errors import WrollError


def _h5_arrays(source):
    import h5py

    arrays = []
    with h5py.File(source, "r") as f:
        def visit(_, node):
            if isinstance(node, h5py.Dataset):
                arrays.append(np.asarray(node[()]))
        f.visititems(visit)
    return arrays


def base_arrays(base):
    """The tensors of `base`: a Keras model, a `.keras` / `.weights.h5` / `.h5`
    file, or a dict or list of numpy arrays."""
    import keras

    if isinstance(base, keras.Model):
        return [np.asarray(v.numpy()) for v in base.variables]
    if isinstance(base, dict):
        return [np.asarray(a) for a in base.values()]
    if isinstance(base, (list, tuple)):
        return [np.asarray(a) for a in base]
    if isinstance(base, (str, os.PathLike)):
        path = os.fspath(base)
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as zf:
                if "model.weights.h5" not in zf.namelist():
                    raise WrollError(f"`base` file {path!r} holds no model.weights.h5; is it a .keras file?")
                return _h5_arrays(io.BytesIO(zf.read("model.weights.h5")))
        if path.endswith(".h5"):
            return _h5_arrays(path)
    raise WrollError(
        "`base` must be a keras.Model, a path to a .keras, .weights.h5 or .h5 file, or a dict or "
        f"list of numpy arrays. Received: base={base!r}"
    )


def base_index(base):
    """`base` indexed for reference look-ups (see `decode.base_index`)."""
    return decode.base_index(base_arrays(base))
