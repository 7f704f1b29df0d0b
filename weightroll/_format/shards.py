"""Sharded archives (spec §4.13): an index beside the shard files that hold the tensors.

A model too large for one file, or one a user wants in pieces (as Keras's
`save_weights(max_shard_size=)` writes them), is written as shards: each a
self-checking, weights-only archive holding a run of the tensors, readable on
its own. The index is an archive with the architecture, the asset files and
the roll value, no tensors, and a `shards` list naming each shard file (beside
it) with the SHA-256 of its `manifest.json`, which in turn holds the SHA-256
of every member: the index vouches for every byte of every shard.

Splitting works on an encoded model (see `weightroll._encode.Encoded`): each
shard gets its tensors' codes, table entries, scales and exact bytes, laid out
afresh from 0; what a tensor's digests cover does not depend on where it
lies, so they stay as they are.
"""

import copy
import os
import types

import numpy as np

from weightroll._format import limits, paths, rules
from weightroll._format.pixels import Pixels
from weightroll._format.reader import RolledArchive
from weightroll._format.schema import SHARD_SUFFIX, itemsize
from weightroll.errors import ArchiveError, LimitError, short


def groups(entries, max_bytes):
    """Tensor indices in order, grouped so that each group's raw bytes stay
    within `max_bytes` (a larger tensor is a group of its own)."""
    out, current, total = [], [], 0
    for i, entry in enumerate(entries):
        size = int(np.prod(entry["shape"], dtype=np.int64)) * itemsize(entry["dtype"])
        if current and total + size > max_bytes:
            out.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current or not out:
        out.append(current)
    return out


def subset(encoded, indices):
    """The part of `encoded` that holds the tensors at `indices`, laid out from 0."""
    codebook = encoded.decoder["kind"] == "codebook"
    if codebook:
        table, scales = encoded.decoder_arrays[0][:, 0], encoded.decoder_arrays[1][:, 0]
    exact, codes = encoded.exact_bytes, encoded.codes
    entries, code_parts, exact_parts = [], [], []
    table_parts, scale_parts = [], [np.ones(1, np.float32)]  # scales[0]: the reserved "no scale"
    code_offset = byte_offset = table_offset = 0
    scale_offset = 1
    for i in indices:
        entry = copy.deepcopy(encoded.tensors[i])
        if entry["storage"] == "exact":
            span = entry["bytes"]
            exact_parts.append(exact[span["offset"]: span["offset"] + span["size"]])
            span["offset"], byte_offset = byte_offset, byte_offset + span["size"]
        elif entry["storage"] == "coded":
            span = entry["codes"]
            code_parts += codes.slice(span["offset"], span["offset"] + span["count"]).parts
            span["offset"], code_offset = code_offset, code_offset + span["count"]
            if "outliers" in entry:
                o = entry["outliers"]
                size = o["count"] * (8 + itemsize(entry["dtype"]))
                exact_parts.append(exact[o["offset"]: o["offset"] + size])
                o["offset"], byte_offset = byte_offset, byte_offset + size
            if codebook:
                t = entry["table"]
                table_parts.append(table[t["offset"]: t["offset"] + t["size"]])
                t["offset"], table_offset = table_offset, table_offset + t["size"]
                if "scales" in entry:
                    s = entry["scales"]
                    scale_parts.append(scales[s["offset"]: s["offset"] + s["count"]])
                    s["offset"], scale_offset = scale_offset, scale_offset + s["count"]
        entries.append(entry)
    if codebook:
        parts = table_parts or [np.zeros(0, np.float32)]
        arrays = [np.concatenate(parts).reshape(-1, 1), np.concatenate(scale_parts).reshape(-1, 1)]
    else:
        arrays = encoded.decoder_arrays  # the MLP is global: every shard carries it
    return types.SimpleNamespace(
        tensors=entries, codes=Pixels(code_parts),
        decoder=encoded.decoder, decoder_arrays=arrays, exact_bytes=b"".join(exact_parts))


def shard_names(filepath, count):
    """`model-00001-of-00003.wroll`, ...: the shard files of index `filepath`."""
    stem = os.path.basename(os.fspath(filepath))[: -len(SHARD_SUFFIX)]
    return [f"{stem}-{i + 1:05d}-of-{count:05d}{SHARD_SUFFIX}" for i in range(count)]


class ShardSet:
    """The shards of an open index, each opened, checked against the index
    and validated as an archive of its own (R43), in index order.

    Args:
        index: an open `RolledArchive` whose manifest lists `shards`; it must
            have been opened from a path (its shards lie beside it).
    """

    def __init__(self, index):
        if index.path is None:
            raise ArchiveError("A sharded archive is read from its path (its shards lie beside it), "
                               "not from a file object.", rule=rules.SHARDS)
        folder = paths.folder(index.path)
        self.archives, self.entries, self._owner = [], [], []
        keys, total = set(), 0
        try:
            for listed in index.manifest["shards"]:
                name = listed["file"]
                shard = RolledArchive(paths.join(folder, name))
                self.archives.append(shard)
                where = f"Shard '{short(name)}'"
                if shard.manifest_sha256 != listed["manifest_sha256"]:
                    raise ArchiveError(f"{where}'s manifest differs from the one its index records; it is "
                                       "not the shard that was written with this index.", rule=rules.SHARDS)
                tensors = shard.manifest["tensors"]
                if "architecture" in shard.manifest or "shards" in shard.manifest or len(tensors) != listed["tensors"]:
                    raise ArchiveError(f"{where} must be a weights-only archive of {listed['tensors']} tensors.",
                                       rule=rules.SHARDS)
                for entry in tensors:
                    if entry["key"] in keys:
                        raise ArchiveError(f"{where} repeats the key '{short(entry['key'])}' of another shard.",
                                           rule=rules.SHARDS)
                    keys.add(entry["key"])
                    total += int(np.prod(entry["shape"], dtype=np.int64))
                    if total > limits.MAX_TOTAL_ELEMENTS:
                        raise LimitError(f"The shards up to '{short(name)}' hold more than "
                                         f"{limits.MAX_TOTAL_ELEMENTS} values in all.", rule=rules.SHARDS)
                    self.entries.append(entry)
                    self._owner.append(len(self.archives) - 1)
        except BaseException:
            self.close()
            raise
        self.total_values = total

    def owner(self, position):
        """The shard archive holding `self.entries[position]`."""
        return self.archives[self._owner[position]]

    def close(self):
        for shard in self.archives:
            shard.close()
