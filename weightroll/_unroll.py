"""`weightroll.unroll`: an archive's weights as numpy arrays (no Keras)."""

from weightroll import _progress
from weightroll._format.decode import base_index, decode
from weightroll._format.reader import RolledArchive


def unroll(filepath, base=None):
    """Decode a `.wroll` archive's weights without Keras or TensorFlow.

    Only numpy, pillow, zstandard and zlib-ng are used, so light tools and other
    runtimes can read archives.

    Args:
        filepath: path of the archive (or a binary file object).
        base: for an archive rolled with `base=`, the base model's weights
            as a dict or list of numpy arrays (e.g. `{v.path: v.numpy() for v
            in base_model.variables}`). Defaults to `None`.

    Returns:
        A dict mapping each variable's path (e.g. `"dense/kernel"`) to a numpy
        array with the variable's shape and dtype.

    Example:

    ```python
    weights = weightroll.unroll("model.wroll")
    print({path: w.shape for path, w in weights.items()})
    ```
    """
    index = None if base is None else base_index(base)
    with RolledArchive(filepath) as archive:
        return decode(archive, index, progress=_progress.advance)
