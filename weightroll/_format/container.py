"""The zip container: deterministic writing and defensive reading.

Every member is stored (zip method 0), never deflated: the payloads compress
themselves (PNG, zstd), stored members cannot be zip bombs, and a reader in
any language needs no inflate for the container itself.
"""

import io
import struct
import zipfile

from weightroll.errors import ArchiveError

# A fixed timestamp (the earliest zip can express) makes the bytes of an archive
# depend on its contents only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--
_UNIX = 3  # "version made by" host system: keeps external attributes portable


def write_members(fileobj, members):
    """Write `members`, a sequence of `(name, bytes)`, as a zip to `fileobj`.

    The output depends only on the names, their order and their bytes.
    """
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = _FILE_MODE
            info.create_system = _UNIX
            zf.writestr(info, data)


class MemberReader:
    """Random access to the members of a `.wroll` zip, with its checks.

    Opening validates the central directory only; `read()` returns one member's
    bytes after checking its size and the zip CRC.
    """

    def __init__(self, fileobj):
        try:
            self._zip = zipfile.ZipFile(fileobj, mode="r")
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error) as e:
            raise ArchiveError(
                f"Not a .wroll archive: the file is not a readable zip ({e}). "
                "It may be truncated or not an archive at all."
            ) from None
        self._infos = {}
        for info in infos:
            if info.filename in self._infos:
                raise ArchiveError(
                    f"Zip member '{_printable(info.filename)}' appears twice; an archive "
                    "must name each member once."
                )
            if info.flag_bits & 0x1:
                raise ArchiveError(
                    f"Zip member '{_printable(info.filename)}' is encrypted; .wroll "
                    "archives are never encrypted."
                )
            if info.compress_type != zipfile.ZIP_STORED:
                raise ArchiveError(
                    f"Zip member '{_printable(info.filename)}' uses compression method "
                    f"{info.compress_type}; .wroll members must be stored (method 0)."
                )
            if info.file_size != info.compress_size:
                raise ArchiveError(
                    f"Zip member '{_printable(info.filename)}' declares {info.file_size} "
                    f"bytes but occupies {info.compress_size}; a stored member's sizes "
                    "must agree."
                )
            self._infos[info.filename] = info

    @property
    def names(self):
        return list(self._infos)

    def size(self, name):
        return self._infos[name].file_size

    def read(self, name, max_size):
        """Return member `name`'s bytes, refusing more than `max_size` bytes."""
        info = self._infos.get(name)
        if info is None:
            raise ArchiveError(f"The archive has no '{name}' member; it is required.")
        if info.file_size > max_size:
            raise ArchiveError(
                f"Zip member '{name}' is {info.file_size} bytes, more than the "
                f"{max_size} bytes allowed for it."
            )
        try:
            with self._zip.open(info) as f:
                data = f.read(max_size + 1)
        except (zipfile.BadZipFile, EOFError, struct.error, OSError) as e:
            raise ArchiveError(
                f"Zip member '{name}' cannot be read ({e}); the archive is damaged "
                "or truncated."
            ) from None
        if len(data) != info.file_size:
            raise ArchiveError(
                f"Zip member '{name}' should be {info.file_size} bytes but "
                f"{len(data)} could be read; the archive is truncated."
            )
        return data

    def close(self):
        self._zip.close()


def _printable(name):
    """A member name made safe to print: no control characters, bounded length."""
    clean = "".join(c if c.isprintable() else "?" for c in name)
    return clean if len(clean) <= 80 else clean[:77] + "..."


def open_members(source):
    """A `MemberReader` over `source`, a binary file object or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    return MemberReader(source)
