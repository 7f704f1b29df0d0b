"""Write `.wroll` archives from numpy data: the members, then the zip.

`build_members` serialises an `Encoded` (see `weightroll._encode`) with the
architecture and decoder config into the archive's members, manifest first;
`write` puts them in a zip, atomically when given a path.
"""

import hashlib
import os

import zstandard

from weightroll._format import container, image, manifest_member, paths
from weightroll._format import manifest as mf
from weightroll._format.digest import binding_sha256, little_endian_bytes


# zstd level 9 for the small JSON members of most models: level 19 makes a
# 7 KB architecture 2 bytes (0.3%) smaller in 20 times the time (1.6 ms,
# 6% of rolling a 1M-value CNN). A large architecture (ResNet50's is
# 150 KB) at 19 takes 60 ms for 5% fewer bytes than level 12.
_ZSTD_LEVEL = 9
_ZSTD_LEVEL_LARGE = 12
_ZSTD_LARGE = 1 << 15


def _zstd(data):
    level = _ZSTD_LEVEL if len(data) <= _ZSTD_LARGE else _ZSTD_LEVEL_LARGE
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def _pack_arrays(arrays, names):
    entries, parts, offset = [], [], 0
    for name, array in zip(names, arrays):
        raw = little_endian_bytes(array)
        entries.append({"name": name, "shape": list(array.shape), "dtype": array.dtype.name, "offset": offset})
        parts.append(raw)
        offset += len(raw)
    return entries, b"".join(parts)


def decoder_array_names(kind, count):
    if kind == "codebook":
        return ["table", "scales"]
    return [f"dense_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}" for i in range(count)]


def build_members(encoded, decoder_config_json, architecture_json, producer, model_info, roll_value,
                  settings=None, compress_level=9, assets=None, keyed=False, shards=None):
    """The archive's members, in order, as `(name, bytes)`, manifest first.

    The codes are handed over: `encoded.codes` is None afterwards, so that
    they are freed as soon as the PNG no longer needs them.

    With `keyed`, every tensor entry carries its Keras `key` and the archive
    is 4.0 (its manifest and decoder arrays compressed, `manifest.json.zst`
    and `decoder.bin.zst`; trellis codes allowed): each entry gets
    its `binding_sha256`, the architecture may be None (a weights-only
    archive) and `assets` (`{relative path: bytes}`) become members. Without
    it the archive is 1.x (tensors assigned by position, the manifest raw in
    `manifest.json`), as numpy-only writers of older archives made it.
    `shards` (with no tensors) makes the archive a sharded archive's index:
    a list of `{"file", "manifest_sha256", "tensors"}`, one per shard.

    Returns:
        `(members, manifest)`.
    """
    kind = encoded.decoder["kind"]
    n_codes = int(encoded.codes.size)
    held, encoded.codes = [encoded.codes], None
    png, width, height = image.encode_png_parts(held.pop(), compress_level=compress_level)  # its only holder
    weight_entries, decoder_bin = _pack_arrays(
        encoded.decoder_arrays, decoder_array_names(kind, len(encoded.decoder_arrays))
    )
    if not keyed and (architecture_json is None or assets):
        raise ValueError("weights-only archives and assets need keyed tensors (format 2.0 and later)")
    # Keyed archives are 4.0: their decoder arrays compressed (tables of cell
    # means and scales hold 11 significant bits, see `uniform.short_floats`).
    weights_member = mf.decoder_weights_member(mf.FORMAT_MAJOR if keyed else 1)
    payload = [
        (mf.IMAGE_MEMBER, png),
        (mf.DECODER_CONFIG_MEMBER, _zstd(decoder_config_json)),
        (weights_member, _zstd(decoder_bin) if keyed else decoder_bin),
    ]
    if architecture_json is not None:
        payload.append((mf.ARCHITECTURE_MEMBER, _zstd(architecture_json)))
    if encoded.exact_bytes:
        payload.append((mf.EXACT_MEMBER, encoded.exact_bytes))
    assets = dict(sorted((assets or {}).items()))
    payload += [(mf.ASSETS_PREFIX + path, _zstd(data)) for path, data in assets.items()]
    if keyed:
        for t in encoded.tensors:
            t["binding_sha256"] = binding_sha256(t)
        version = mf.FORMAT_VERSION
    else:
        # The lowest version whose features the archive uses (spec §12).
        version = "1.1" if any("coding_sha256" in t for t in encoded.tensors) else "1.0"
    manifest = {
        "format": mf.FORMAT_NAME,
        "format_version": version,
        "producer": producer,
        "model": model_info,
        "image": {"member": mf.IMAGE_MEMBER, "width": width, "height": height, "codes": n_codes},
        "decoder": dict(encoded.decoder, config_member=mf.DECODER_CONFIG_MEMBER,
                        config_size=len(decoder_config_json),
                        weights_member=weights_member, weights=weight_entries),
        "tensors": encoded.tensors,
        "members": {
            name: {"size": len(data), "sha256": data.sha256 if isinstance(data, image.Png) else
                   hashlib.sha256(data).hexdigest()} for name, data in payload
        },
        "roll_value": roll_value,
        "settings": settings or {},
    }
    if architecture_json is not None:
        manifest["architecture"] = {"member": mf.ARCHITECTURE_MEMBER, "size": len(architecture_json)}
    if assets:
        manifest["assets"] = [{"path": path, "size": len(data)} for path, data in assets.items()]
    if shards is not None:
        manifest["shards"] = shards
    member = manifest_member.member_for(version)
    return [(member, manifest_member.pack(mf.dumps(manifest), member))] + payload, manifest


def manifest_sha256(members):
    """The SHA-256 (hex) of the manifest text of `members` as `build_members`
    returns them: what a sharded archive's index records of a shard (§4.13)."""
    name, data = members[0]
    text = manifest_member.unpack(data) if name == mf.MANIFEST_MEMBER else data
    return hashlib.sha256(text).hexdigest()


def write(target, members):
    """Write members to `target`: a path (never seen half-written, see
    `paths.write`) or a binary file object."""
    if isinstance(target, (str, os.PathLike)):
        paths.write(target, lambda f: container.write_members(f, members))
    else:
        container.write_members(target, members)
