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
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(filepath) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, filepath)
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
