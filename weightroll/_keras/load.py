"""`weightroll.load_rolled` and `weightroll.load_weights`: an archive back into a Keras model."""

import os

from weightroll import _progress
from weightroll._format import decode, reader
from weightroll._keras import model_io, state
from weightroll.errors import WrollError


def load_rolled(filepath, custom_objects=None, compile=True, safe_mode=True, base=None):
    """Load a model from a `.wroll` archive, like `keras.models.load_model`.

    Every member's checksum is verified before any member is used, and every
    tensor's digests when it is decoded. The model is built from the
    archive's architecture, then Keras's own loading walk gives every layer
    (and, for an archive rolled with `include_optimizer=True`, the optimizer)
    the state it saved: variables, the extra entries of a custom
    `save_own_variables`, and asset files such as a lookup layer's
    vocabulary, each tensor matched by its Keras key, never by position.
    Where Keras allows it, variables take the archive's values as their first
    ones: Keras's random initialisers do not run. Nothing is unpickled and no
    graph is loaded. A rejected archive raises a `WrollError` that names the
    rule of the format spec it breaks.

    Args:
        filepath: path of the `.wroll` archive, or a binary file object.
        custom_objects: optional dict mapping names to custom classes or
            functions used by the model, as for `keras.models.load_model`.
        compile: whether to compile the model after loading, with the
            compile configuration it was saved with (and to restore the
            optimizer's state, if the archive holds it). Defaults to `True`.
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
    _check_extension(filepath)
    index = _base_index(base)
    with reader.RolledArchive(filepath) as archive:
        # Every member's SHA-256 first. The code image's bytes are kept until
        # its codes are decoded (0.19x the float32 weights on the LM stack of
        # benchmarks/): reading and hashing it twice cost 0.6 s of its 3.5.
        archive.verify_members()
        architecture = archive.architecture_json()
        if architecture is None:
            raise WrollError(
                "This archive holds weights only (it was written with `save_weights_only=True`), not "
                "a model: build the model in code and load them with "
                "`weightroll.load_weights(model, filepath)`."
            )
        archive.decoder_config()  # checked like the architecture, though decoding uses decoder.bin
        if _major(archive) == 1:  # 1.x: no keys; tensors are assigned by position, as they were written
            paths = [t["path"] for t in archive.manifest["tensors"]]
            return model_io.rebuild_with_weights(
                architecture, decode.iter_decoded(archive, index, progress=_progress.advance), paths=paths,
                custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
        decoder = _LazyDecoder(archive, index)
        try:
            return model_io.rebuild_with_state(architecture, decoder.tensors, decoder.decode, archive.assets(),
                                               custom_objects=custom_objects, compile=compile,
                                               safe_mode=safe_mode)
        finally:
            decoder.close()


def load_weights(model, filepath, skip_mismatch=False, objects_to_skip=None, base=None, **kwargs):
    """Load the weights of a `.wroll` archive into `model`, like `model.load_weights`.

    For models that are built in code rather than from a saved config (many
    published models restore their trained weights this way), and for the
    weights-only archives that `WeightRollCheckpoint(save_weights_only=True)`
    writes. Any archive works: a full one's architecture is not used. Each
    tensor goes to the variable (or custom state entry) with its Keras key,
    through the layers' own `load_own_variables`; a model that does not take
    every tensor is refused.

    Args:
        model: a built `keras.Model` with the archive's architecture.
        filepath: path of the `.wroll` archive, or a binary file object.
        skip_mismatch: as for `model.load_weights`: layers whose state does
            not fit keep their values (with a warning) instead of an error.
            Defaults to `False`.
        objects_to_skip: layers (or other saveables) to leave as they are,
            for a weights-only archive, as `model.load_weights` takes them for
            a `.weights.h5` file. Defaults to `None`.
        base: for an archive rolled with `base=`, the same base model.
            Defaults to `None`.

    Example:

    ```python
    model = build_model()  # the same architecture, in code
    weightroll.load_weights(model, "weights.wroll")
    ```
    """
    import keras

    if kwargs:
        if "by_name" in kwargs:
            raise WrollError(f"`by_name` only supports loading legacy '.h5' or '.hdf5' files. Received: {filepath}")
        raise WrollError(f"Invalid keyword arguments: {kwargs}")
    if not isinstance(model, keras.Model):
        raise WrollError(f"Expected a `keras.Model` to load weights into. Received: model={model!r}")
    if not model.built:
        raise WrollError(
            "You are loading weights into a model that has not yet been built. Try building the model "
            f"first by calling it on some data or by using `build()`. (Model '{model.name}' has not been "
            "built, so it has no variables to load weights into.)"
        )
    _check_extension(filepath)
    index = _base_index(base)
    with reader.RolledArchive(filepath) as archive:
        if objects_to_skip is not None and "architecture" in archive.manifest:
            raise WrollError("`objects_to_skip` only supports loading weights-only archives (written with "
                             f"`save_weights_only=True`). Received: {filepath}")
        if _major(archive) == 1:
            paths = [t["path"] for t in archive.manifest["tensors"]]
            model_io.assign(model, decode.iter_decoded(archive, index, progress=_progress.advance), paths=paths)
            return
        decoder = _LazyDecoder(archive, index)
        try:
            state.load(model, decoder.tensors, decoder.decode, optimizer=False, skip_mismatch=skip_mismatch,
                       objects_to_skip=objects_to_skip or ())
        finally:
            decoder.close()


def _check_extension(filepath):
    """A path must name a `.wroll` archive, as `load_model` wants a `.keras` file."""
    if isinstance(filepath, (str, os.PathLike)) and not os.fspath(filepath).endswith(".wroll"):
        raise WrollError(f"File format not supported: filepath={os.fspath(filepath)}. weightroll loads "
                         "`.wroll` archives (a path ending in `.wroll`).")


def _base_index(base):
    if base is None:
        return None
    from weightroll._keras.base import base_index

    return base_index(base)


def _major(archive):
    return int(archive.manifest["format_version"].split(".")[0])


class _LazyDecoder:
    """The archive's tensors by key; the codes are read on the first decode,
    after Keras has built the model."""

    def __init__(self, archive, base):
        self._archive, self._base, self._decoder = archive, base, None
        if archive.manifest.get("shards"):  # opened now: their manifests say which tensors there are
            self._decoder = decode.decoder_for(archive, base)
        entries = archive.manifest["tensors"] if self._decoder is None else self._decoder.entries
        self.tensors = {t["key"]: t for t in entries}

    def decode(self, entry):
        if self._decoder is None:
            self._decoder = decode.decoder_for(self._archive, self._base)
        array = self._decoder.decode(entry)
        _progress.advance(array.size, entry["path"])
        return array

    def close(self):
        if self._decoder is not None:
            self._decoder.close()
