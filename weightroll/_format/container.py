"""The zip container: deterministic writing and defensive reading.

Every member is stored (zip method 0), never deflated: the payloads compress
themselves (PNG, zstd), stored members cannot be zip bombs, and a reader in
any language needs no inflate for the container itself.
"""

import concurrent.futures
import hashlib
import io
import struct
import zipfile

from zlib_ng import zlib_ng

from weightroll._format import rules
from weightroll.errors import ArchiveError, LimitError

# A fixed timestamp (the earliest zip can express) makes the bytes of an archive
# depend on its contents only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--
_UNIX = 3  # "version made by" host system: keeps external attributes portable


def write_members(fileobj, members):
    """Write `members`, a sequence of `(name, data)`, as a zip to `fileobj`.

    `data` is bytes-like, or an object of `len(data)` bytes whose `parts`
    are byte strings that make them, in order (written one after the other:
    never joined). The output depends only on the names, their order and
    their bytes.
    """
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = _FILE_MODE
            info.create_system = _UNIX
            if not hasattr(data, "parts"):
                zf.writestr(info, data)
                continue
            info.file_size = len(data)  # as writestr sets it: the same headers, ZIP64 or not
            with zf.open(info, mode="w") as member:
                for part in data.parts:
                    member.write(part)


# General-purpose flag bits a reader cannot honour: 0 (encrypted), 5 (patched
# data) and 6 (strong encryption). Bit 3 (data descriptor) and bit 11 (UTF-8
# names) are harmless for stored members.
_REFUSED_FLAGS = 0x0001 | 0x0020 | 0x0040
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
# What Python's zipfile raises for bytes it cannot parse (UnicodeDecodeError, for
# a name flagged UTF-8 that is not, is a ValueError). OSError is not among them:
# an operating-system error passes through untouched.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, ValueError,
               NotImplementedError, RuntimeError, OverflowError)


class MemberReader:
    """Random access to the members of a `.wroll` zip, with its checks.

    Opening validates the central directory and where each member lies (R1);
    `read()` returns one member's bytes after checking its size and the zip
    CRC (R22).
    """

    def __init__(self, fileobj):
        self._file, self._data_offsets = fileobj, {}
        try:
            self._zip = zipfile.ZipFile(fileobj, mode="r")
            infos = self._zip.infolist()
        except _ZIP_ERRORS as e:
            raise ArchiveError(
                f"Not a .wroll archive: the file is not a readable zip ({_printable(str(e))}). "
                "It may be truncated or not an archive at all.",
                rule=rules.ZIP_CONTAINER,
            ) from None
        self._infos = {}
        for info in infos:
            name = _printable(info.filename)
            if info.filename in self._infos:
                raise ArchiveError(
                    f"Zip member '{name}' appears twice; an archive must name each member once.",
                    rule=rules.ZIP_CONTAINER,
                )
            if info.flag_bits & _REFUSED_FLAGS:
                raise ArchiveError(
                    f"Zip member '{name}' is encrypted (general-purpose flags "
                    f"0x{info.flag_bits:04x}); .wroll archives are never encrypted.",
                    rule=rules.ZIP_CONTAINER,
                )
            if info.compress_type != zipfile.ZIP_STORED:
                raise ArchiveError(
                    f"Zip member '{name}' uses compression method {info.compress_type}; "
                    ".wroll members must be stored (method 0).",
                    rule=rules.ZIP_CONTAINER,
                )
            if info.file_size != info.compress_size:
                raise ArchiveError(
                    f"Zip member '{name}' declares {info.file_size} bytes but occupies "
                    f"{info.compress_size}; a stored member's sizes must agree.",
                    rule=rules.ZIP_CONTAINER,
                )
            self._infos[info.filename] = info
        self._check_layout(fileobj)

    def _check_layout(self, fileobj):
        """R1: the first member starts at byte 0, and no two members (local
        header and data) share a byte, nor run into the central directory.

        Overlapping entries would let a small file make a reader read the same
        bytes again and again (the "overlapping zip bomb"); bytes before the
        first member (a self-extracting stub, say) would be a second file
        hiding in front of the archive.
        """
        spans = []
        for info in self._infos.values():
            header = b""
            if 0 <= info.header_offset < 1 << 62:
                fileobj.seek(info.header_offset)
                header = fileobj.read(_LOCAL_HEADER.size)
            name = _printable(info.filename)
            if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
                raise ArchiveError(
                    f"Zip member '{name}' has no local header at offset {info.header_offset}; "
                    "the zip directory is damaged.",
                    rule=rules.ZIP_CONTAINER,
                )
            _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
            data_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            self._data_offsets[info.filename] = data_start
            spans.append((info.header_offset, data_start + info.compress_size, name))
        spans.sort()
        if spans and spans[0][0] != 0:
            raise ArchiveError(
                f"The zip's first member starts at byte {spans[0][0]}, not 0: the file has "
                "bytes before the archive (a .wroll file starts with its first member).",
                rule=rules.ZIP_CONTAINER,
            )
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                raise ArchiveError(
                    f"Zip members '{first}' and '{second}' overlap in the file; each byte of an "
                    "archive belongs to one member at most.",
                    rule=rules.ZIP_CONTAINER,
                )
        directory = getattr(self._zip, "start_dir", None)
        if spans and directory is not None and spans[-1][1] > directory:
            raise ArchiveError(
                f"Zip member '{spans[-1][2]}' runs into the central directory at byte {directory}.",
                rule=rules.ZIP_CONTAINER,
            )

    @property
    def names(self):
        return list(self._infos)

    def size(self, name):
        return self._infos[name].file_size

    def open(self, name):
        """A binary file object over member `name`'s bytes; reading it to the
        end checks the zip CRC (`zipfile` raises `BadZipFile` otherwise)."""
        try:
            return self._zip.open(self._infos[name])
        except _ZIP_ERRORS as e:
            raise _unreadable(name, e) from None

    def read(self, name, max_size, rule=rules.MEMBER_READ, sha256=False):
        """Return member `name`'s bytes, refusing more than `max_size` bytes.

        A member larger than `max_size` raises `LimitError` for `rule`; one
        that cannot be read whole, or fails its zip CRC, `ArchiveError` (R22).
        With `sha256`, returns `(data, digest)`, the bytes' SHA-256 (hex)
        taken on another thread while the CRC is checked (a 365 MB code
        image: 0.22 s and 0.04 s, where zipfile's read and CRC then the
        digest took 0.53 s in all).
        """
        info = self._infos.get(name)
        if info is None:
            raise ArchiveError(f"The archive has no '{_printable(name)}' member; it is required.",
                               rule=rule)
        if info.file_size > max_size:
            raise LimitError(
                f"Zip member '{_printable(name)}' is {info.file_size} bytes, more than the "
                f"{max_size} bytes allowed for it.",
                rule=rule,
            )
        self.open(name).close()  # zipfile's checks of the local header
        self._file.seek(self._data_offsets[name])
        data = self._file.read(info.file_size)
        if len(data) != info.file_size:
            raise ArchiveError(
                f"Zip member '{_printable(name)}' should be {info.file_size} bytes but {len(data)} could be "
                "read; the archive is damaged or truncated.",
                rule=rules.MEMBER_READ,
            )
        digest = None
        if sha256:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                hashed = pool.submit(lambda: hashlib.sha256(data).hexdigest())
                crc = zlib_ng.crc32(data)
                digest = hashed.result()
        else:
            crc = zlib_ng.crc32(data)
        if crc != info.CRC:
            raise _unreadable(name, zipfile.BadZipFile(f"Bad CRC-32 for file {name!r}"))
        return (data, digest) if sha256 else data

    def sha256(self, name):
        """The SHA-256 (hex) of member `name`, read in pieces: memory stays
        bounded whatever the member's size. Checks size and CRC like `read`."""
        info = self._infos[name]
        digest = hashlib.sha256()
        done = 0
        with self.open(name) as f:
            while done < info.file_size:
                piece = _read(f, name, min(info.file_size - done, _PIECE))
                if not piece:
                    break
                digest.update(piece)
                done += len(piece)
            _check_end(f, name, info.file_size, done)
        return digest.hexdigest()

    def close(self):
        self._zip.close()


_PIECE = 1 << 20


def _read(f, name, count):
    try:
        return f.read(count)
    except _ZIP_ERRORS as e:
        raise _unreadable(name, e) from None


def _check_end(f, name, size, got):
    """R22: exactly `size` bytes were read and the member ends there. Reading
    at the end makes `zipfile` compare the CRC-32 if it has not yet."""
    more = _read(f, name, 1) if got == size else b""
    if got != size or more:
        raise ArchiveError(
            f"Zip member '{_printable(name)}' should be {size} bytes but "
            f"{'more' if more else got} could be read; the archive is damaged or truncated.",
            rule=rules.MEMBER_READ,
        )


def _unreadable(name, error):
    return ArchiveError(
        f"Zip member '{_printable(name)}' cannot be read ({_printable(str(error))}); the "
        "archive is damaged or truncated.",
        rule=rules.MEMBER_READ,
    )


def _printable(name, limit=80):
    """A name made safe to print: no control characters, bounded length."""
    clean = "".join(c if c.isprintable() else "?" for c in name[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def open_members(source):
    """A `MemberReader` over `source`, a binary file object or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    return MemberReader(source)
