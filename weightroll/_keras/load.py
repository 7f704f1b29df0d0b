"""`weightroll.load_rolled`: a `.wroll` archive back into a Keras model."""

from weightroll import _progress
from weightroll._format import decode, reader
from weightroll._keras import model_io


def load_rolled(filepath, custom_objects=None, compile=True, safe_mode=True, base=None):
    """Load a model from a `.wroll` archive, like `keras.models.load_model`.

    Every member's checksum is verified before any member is used, and every
    tensor's digest after it is decoded; the weights are decoded with the
    archive's pix-to-weight network (numpy fast path, bit-identical to running
    the network in Keras), one tensor at a time, each becoming its variable's
    first value: Keras's random initialisers do not run. Nothing is written to
    disk, nothing is unpickled, and no graph is loaded. A rejected archive raises a `WrollError` that names
    the rule of the format spec it breaks.

    Args:
        filepath: path of the `.wroll` archive, or a binary file object.
        custom_objects: optional dict mapping names to custom classes or
            functions used by the model, as for `keras.models.load_model`.
        compile: whether to compile the model after loading, with the
            compile configuration it was saved with. Optimizer state is not
            stored in archives. Defaults to `True`.
        safe_mode: whether to refuse architectures that would run stored
            code (e.g. a `Lambda` layer's Python bytecode), exactly as Keras
            does. Only set `False` for archives from a trusted source.
            Defaults to `True`.
        base: for an archive rolled with `base=`, the same base model (a
            `keras.Model`, a `.keras` / `.weights.h5` file, or a dict of numpy
            arrays); referenced tensors are filled in from it, and a base
            whose tensors differ is refused. Defaults to `None`.

    Returns:
        A Keras model with the rolled weights.

    Example:

    ```python
    model = weightroll.load_rolled("model.wroll")
    predictions = model.predict(x)
    ```
    """
    index = None
    if base is not None:
        from weightroll._keras.base import base_index

        index = base_index(base)
    with reader.RolledArchive(filepath) as archive:
        # Every member's SHA-256 first; the code image is read again when it is
        # decoded, so that its bytes are not held while Keras builds the model.
        archive.verify_members(keep_image=False)
        architecture = archive.architecture_json()
        archive.decoder_config()  # checked like the architecture, though decoding uses decoder.bin
        # One tensor at a time, straight into its variable: no second copy of the model.
        paths = [t["path"] for t in archive.manifest["tensors"]]
        return model_io.rebuild_with_weights(architecture, decode.iter_decoded(archive, index, progress=_progress.advance), paths=paths,
                                             custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
