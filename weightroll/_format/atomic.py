"""Atomic file replacement: a reader sees the old file or the new one, never half."""

import os
import tempfile


def atomic_write(filepath, write):
    """Create or replace `filepath` with what `write(fileobj)` writes.

    The data goes to a temporary file in the same folder, is flushed and
    fsynced, then renamed over `filepath`. If `write` raises, or the process
    dies, `filepath` is untouched and the temporary file is removed (or, after
    a kill, left as a hidden `.*.tmp` file, never under the final name).
    """
    filepath = os.fspath(filepath)
    folder = os.path.dirname(os.path.abspath(filepath))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(filepath) + ".", suffix=".tmp", dir=folder)
    except OSError as e:  # named after the caller's path, not the hidden temporary one
        raise _named(e, filepath) from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, filepath)
        except OSError as e:
            if e.filename not in (None, tmp):
                raise
            raise _named(e, filepath) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _named(error, filepath):
    """The same error about `filepath`, as an `OSError` of the same type and errno
    (the temporary file's name means nothing to the caller)."""
    if error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, filepath)
