"""Read and rewrite an archive's manifest whatever its format version: the
`manifest.json.zst` of 3.x and 4.x, or the plain `manifest.json` of 1.x and
2.x (spec/wroll-v4.md §2.1). For tests that edit archives."""

import hashlib
import io
import json
import os
import zipfile

import zstandard

from weightroll._format import container, manifest_member
from weightroll._format.json_text import dumps
from weightroll._format.schema import (COMPRESSED_DECODER_WEIGHTS_MEMBER, DECODER_WEIGHTS_MEMBER, MANIFEST_MEMBER,
                                      RAW_MANIFEST_MEMBER)

NAMES = (MANIFEST_MEMBER, RAW_MANIFEST_MEMBER)


def members(source):
    """The `(name, bytes)` members of an archive (bytes, a file object or a path), in file order."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, io.BytesIO):
        source = io.BytesIO(source.getvalue())
    elif isinstance(source, (str, os.PathLike)):
        source = open(source, "rb")
    with source, zipfile.ZipFile(source) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def text(source):
    """The manifest's JSON text (decompressed from `manifest.json.zst` in 3.x);
    `source` is an archive or its members."""
    found = dict(source if isinstance(source, list) else members(source))
    if MANIFEST_MEMBER in found:
        return manifest_member.unpack(found[MANIFEST_MEMBER])
    return found[RAW_MANIFEST_MEMBER]


def read(source):
    """The parsed manifest of an archive or of its members."""
    return json.loads(text(source))


def write(source, manifest, replace=None, add=(), drop=(), fix=False):
    """Zip bytes of `source` (an archive or its members) with `manifest` (a
    dict, written canonically, or JSON bytes written as they are) in the
    member its `format_version` names (the source's member when it names
    none); other members edited by `replace` (`{name: bytes}`), `add` and
    `drop`. With `fix`, `members[...]` sizes and SHA-256s are recomputed."""
    source = source if isinstance(source, list) else members(source)
    replace = replace or {}
    old = next((name for name, _ in source if name in NAMES), MANIFEST_MEMBER)
    payload = [(n, replace.get(n, d)) for n, d in source if n not in NAMES and n not in drop] + list(add)
    if isinstance(manifest, dict):
        if fix:
            for name, data in payload:
                if name in manifest.get("members", {}):
                    manifest["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        name = manifest_member.member_for(manifest.get("format_version"), default=old)
        manifest = dumps(manifest)
    else:
        name = old
    buffer = io.BytesIO()
    container.write_members(buffer, [(name, manifest_member.pack(manifest, name))] + payload)
    return buffer.getvalue()


def edit(source, change):
    """Zip bytes of `source` after `change(manifest)` edits its parsed manifest in place."""
    source = members(source) if not isinstance(source, list) else source
    manifest = read(source)
    change(manifest)
    return write(source, manifest)


def as_3_0(source):
    """Zip bytes of a 4.0 archive without trellis codes, as a 3.0 writer wrote
    it: the decoder's arrays raw in `decoder.bin` (spec §12)."""
    source = members(source) if not isinstance(source, list) else source
    manifest = read(source)
    assert not any("trellis" in t for t in manifest["tensors"]), "trellis codes have no 3.0 form"
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(dict(source)[COMPRESSED_DECODER_WEIGHTS_MEMBER])
    manifest["format_version"] = "3.0"
    manifest["decoder"]["weights_member"] = DECODER_WEIGHTS_MEMBER
    del manifest["members"][COMPRESSED_DECODER_WEIGHTS_MEMBER]
    manifest["members"][DECODER_WEIGHTS_MEMBER] = {}
    renamed = [(DECODER_WEIGHTS_MEMBER, raw) if name == COMPRESSED_DECODER_WEIGHTS_MEMBER else (name, data)
               for name, data in source]
    return write(renamed, manifest, fix=True)
