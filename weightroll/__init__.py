"""weightroll: roll trained Keras models into small `.wroll` archives and back.

Importing weightroll does not import Keras or TensorFlow: `unroll` needs numpy,
pillow and zstandard only, and `roll` / `load_rolled` import Keras when called.
"""

__version__ = "0.1.0"

from weightroll._unroll import unroll  # noqa: E402
from weightroll._keras.load import load_rolled, load_weights  # noqa: E402
from weightroll._keras.roll import roll  # noqa: E402
from weightroll.errors import WrollError  # noqa: E402
from weightroll.report import RollReport  # noqa: E402

__all__ = ["RollReport", "WeightRollCheckpoint", "WrollError", "load_rolled", "load_weights", "roll", "unroll"]


def __getattr__(name):
    # The callback subclasses `keras.callbacks.Callback`: import it (and Keras)
    # on first use only, so that `import weightroll` stays free of Keras.
    if name == "WeightRollCheckpoint":
        from weightroll.callbacks import WeightRollCheckpoint

        globals()[name] = WeightRollCheckpoint
        return WeightRollCheckpoint
    raise AttributeError(f"module 'weightroll' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"WeightRollCheckpoint"})
