"""Where archives live: local paths, and every path TensorFlow's `tf.io.gfile` reads.

Keras's `model.save`, `load_model` and `ModelCheckpoint` accept `gs://...` and
any other scheme gfile knows (`ram://`, `hdfs://`, `s3://` with TensorFlow I/O);
so do weightroll's readers and writers. A path with a scheme (`"://"`) goes
through gfile, which needs TensorFlow installed (under another Keras backend
too: `pip install tensorflow-cpu` is enough); a local path uses the operating
system, and never imports TensorFlow.

What a remote write guarantees: an object store has no atomic rename, so the
archive is assembled in memory and written to its final name in one upload;
an object store makes an object visible only once its upload completes, so a
reader sees the previous archive or the whole new one, never part of it (on
`gs://`; a plain network file system without that guarantee may show a
partial file while the upload runs). A local write is atomic by rename
(`atomic.atomic_write`).
"""

import io
import os
import posixpath

from weightroll._format.atomic import atomic_write
from weightroll.errors import ArchiveNotFoundError, WrollError


def is_remote(path):
    """Whether `path` names a file through a scheme (`gs://bucket/m.wroll`)."""
    return isinstance(path, (str, os.PathLike)) and "://" in os.fspath(path)


def _gfile():
    try:
        import tensorflow as tf
    except ImportError:
        raise WrollError(
            "Paths with a scheme (gs://, ram://, ...) are read and written through TensorFlow's "
            "tf.io.gfile, as Keras does; install TensorFlow (`pip install tensorflow-cpu`) or use a local path."
        ) from None
    return tf.io.gfile


def open_read(path):
    """A binary, seekable file object for reading `path`."""
    path = os.fspath(path)
    if not is_remote(path):
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ArchiveNotFoundError(path) from None
    gfile = _gfile()
    if not gfile.exists(path):
        raise ArchiveNotFoundError(path)
    return gfile.GFile(path, "rb")


def write(path, write_to):
    """Create or replace `path` with what `write_to(fileobj)` writes, so that a
    reader never finds part of it under that name (see the module's note)."""
    path = os.fspath(path)
    if not is_remote(path):
        atomic_write(path, write_to)
        return
    buffer = io.BytesIO()
    write_to(buffer)
    with _gfile().GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def folder(path):
    """The folder of `path` (absolute for a local path)."""
    path = os.fspath(path)
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))


def join(folder_path, name):
    return posixpath.join(folder_path, name) if is_remote(folder_path) else os.path.join(folder_path, name)


def makedirs(folder_path):
    if not folder_path:
        return
    if is_remote(folder_path):
        _gfile().makedirs(folder_path)
    else:
        os.makedirs(folder_path, exist_ok=True)


def size(path):
    path = os.fspath(path)
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def exists(path):
    path = os.fspath(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path):
    path = os.fspath(path)
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def absolute(path):
    """`path` made absolute (a remote path already is)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def remove(path):
    """Delete `path`; `FileNotFoundError` if it is not there (remote paths too)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.remove(path)
        return
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    gfile.remove(path)
