"""The zip member that holds the manifest (spec §2.1, §4.2): `manifest.json.zst`
in format 3.x, one zstd frame that declares its size, and plain `manifest.json`
in 1.x and 2.x. Either way its content is the manifest's JSON text (§3).

`read` finds the member and returns that text, refusing a frame without a
declared size, one above `MAX_MANIFEST_BYTES` or with bytes after it before
it inflates anything (R44); `check_version` refuses a manifest whose version
does not match the member it came from (R44). `pack` is the writer's side.
"""

import io
import re

import zstandard

from weightroll._format import limits, rules
from weightroll._format.schema import MANIFEST_MEMBER, RAW_MANIFEST_MEMBER
from weightroll.errors import ArchiveError, LimitError, short

# The first MAJOR version whose manifest is compressed.
FIRST_COMPRESSED_MAJOR = 3

# A fixed level for each size, so that an archive's bytes are a function of its
# content. Level 15 makes the 121 KB manifest of a transfer archive (frozen
# InceptionV3 by reference) 20.2 KB in 22 ms, against 23.3 KB at level 9 and
# 20.2 KB in 81 ms at 19. Above 1 MiB (thousands of tensors) level 3: as small
# on hex digests, 30 times as fast.
_LEVEL = 15
_LEVEL_LARGE = 3
_LARGE = 1 << 20


def member_for(version, default=MANIFEST_MEMBER):
    """The member a manifest of `format_version` `version` belongs in; `default`
    when `version` is not a `MAJOR.MINOR` string."""
    match = re.fullmatch(r"([0-9]{1,6})\.[0-9]{1,6}", version, re.ASCII) if isinstance(version, str) else None
    if match is None:
        return default
    return MANIFEST_MEMBER if int(match[1]) >= FIRST_COMPRESSED_MAJOR else RAW_MANIFEST_MEMBER


def pack(text, member=MANIFEST_MEMBER):
    """The bytes of manifest member `member` holding the JSON `text`: one zstd
    frame with its content size and checksum for `manifest.json.zst`, `text`
    itself for `manifest.json`."""
    if member == RAW_MANIFEST_MEMBER:
        return text
    level = _LEVEL if len(text) <= _LARGE else _LEVEL_LARGE
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True).compress(text)


def read(members):
    """`(text, member name)` of the manifest of an open `container.MemberReader`.

    Refuses an archive with neither member (R2) or both (R44); the text of
    `manifest.json.zst` is at most `MAX_MANIFEST_BYTES` (R44), that of
    `manifest.json` too (R2).
    """
    names = members.names
    if MANIFEST_MEMBER in names and RAW_MANIFEST_MEMBER in names:
        raise ArchiveError(
            f"The archive has both '{MANIFEST_MEMBER}' and '{RAW_MANIFEST_MEMBER}'; it has one manifest, "
            f"'{MANIFEST_MEMBER}' from format {FIRST_COMPRESSED_MAJOR}.0 on and '{RAW_MANIFEST_MEMBER}' before.",
            rule=rules.MANIFEST_MEMBER,
        )
    if RAW_MANIFEST_MEMBER in names:
        return members.read(RAW_MANIFEST_MEMBER, limits.MAX_MANIFEST_BYTES, rule=rules.MANIFEST_JSON), \
            RAW_MANIFEST_MEMBER
    if MANIFEST_MEMBER not in names:
        raise ArchiveError(
            f"The archive has no manifest ('{MANIFEST_MEMBER}', or '{RAW_MANIFEST_MEMBER}' before format "
            f"{FIRST_COMPRESSED_MAJOR}.0); it is not a .wroll archive.",
            rule=rules.MANIFEST_JSON,
        )
    # A frame is never much larger than what it holds: the same bound serves both.
    data = members.read(MANIFEST_MEMBER, limits.MAX_MANIFEST_BYTES, rule=rules.MANIFEST_MEMBER)
    return unpack(data), MANIFEST_MEMBER


def unpack(data):
    """The JSON text in the bytes of `manifest.json.zst` (R44): one zstd frame
    declaring a content size of at most `MAX_MANIFEST_BYTES`, which it gives
    exactly, and nothing after it. Never inflates more than the declared size
    plus one byte."""
    name = MANIFEST_MEMBER
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise ArchiveError(f"'{name}' is not a zstd frame ({short(str(e), 80)}).",
                           rule=rules.MANIFEST_MEMBER) from None
    if declared < 0:  # -1: the frame header does not say
        raise ArchiveError(f"'{name}' does not declare its content size in its zstd frame header; the "
                           "manifest's frame must.", rule=rules.MANIFEST_MEMBER)
    if declared > limits.MAX_MANIFEST_BYTES:
        raise LimitError(f"'{name}' declares {declared} bytes, more than the {limits.MAX_MANIFEST_BYTES} "
                         "bytes allowed for a manifest.", rule=rules.MANIFEST_MEMBER)
    decompressor = zstandard.ZstdDecompressor()
    try:
        # Bounded: whatever the frame holds, at most declared + 1 bytes come out.
        with decompressor.stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
            text = reader.read(declared + 1)
    except zstandard.ZstdError as e:
        raise ArchiveError(f"'{name}' cannot be decompressed ({short(str(e), 80)}).",
                           rule=rules.MANIFEST_MEMBER) from None
    if len(text) != declared:
        raise ArchiveError(f"'{name}' expands to {'more than ' if len(text) > declared else ''}"
                           f"{min(len(text), declared)} bytes but declares {declared}.", rule=rules.MANIFEST_MEMBER)
    # The frame is known to give `declared` bytes: decoding it again is bounded
    # too, and tells where the frame ends.
    frame = decompressor.decompressobj()
    try:
        frame.decompress(data)
    except zstandard.ZstdError as e:
        raise ArchiveError(f"'{name}' cannot be decompressed ({short(str(e), 80)}).",
                           rule=rules.MANIFEST_MEMBER) from None
    if not frame.eof:
        raise ArchiveError(f"'{name}' ends inside its zstd frame; it is truncated.", rule=rules.MANIFEST_MEMBER)
    if frame.unused_data:
        raise ArchiveError(f"'{name}' has {len(frame.unused_data)} bytes after its zstd frame; it is one "
                           "frame and nothing else.", rule=rules.MANIFEST_MEMBER)
    return text


def check_version(major, member):
    """R44: a 3.x manifest comes from `manifest.json.zst`, a 1.x or 2.x one
    from `manifest.json` (checked once the version is known to be readable)."""
    expected = MANIFEST_MEMBER if major >= FIRST_COMPRESSED_MAJOR else RAW_MANIFEST_MEMBER
    if member != expected:
        raise ArchiveError(
            f"The manifest in '{short(member)}' is of format {major}.x, whose manifest is '{expected}'; "
            "the member and the version disagree.",
            rule=rules.MANIFEST_MEMBER,
        )
