"""Check an archive through and through: every checksum, every tensor's digests."""

from weightroll import _progress
from weightroll._format import decode
from weightroll._format import manifest as mf


def verify(archive):
    """Check every member's SHA-256, the JSON members, and every tensor's digest.

    Tensors that reference a base model are not in the archive; they are
    counted, not checked (that needs the base).

    Returns:
        `{"ok": True, "members_checked": n, "tensors_checked": m,
        "base_references": r, "error": None}`.

    Raises:
        ArchiveError: naming the first member or tensor that is not sound.
    """
    names = list(archive.manifest["members"])
    for name in names:
        archive.member(name)  # zip CRC and SHA-256
    architecture = archive.architecture_json()  # None for weights only
    if architecture is not None:
        mf.loads(architecture, f"'{mf.ARCHITECTURE_MEMBER}'")
    mf.loads(archive.decoder_config_json(), f"'{mf.DECODER_CONFIG_MEMBER}'")
    checked = references = 0
    for path, array in decode.iter_decoded(archive, skip_references=True, check_values=True,
                                           progress=_progress.advance):
        checked += 1
    references = _references(archive)
    return {"ok": True, "members_checked": len(names), "tensors_checked": checked,
            "base_references": references, "error": None}


def _references(archive):
    """How many tensors of the archive (or of its shards) reference a base model."""
    if archive.manifest.get("shards"):
        from weightroll._format.shards import ShardSet

        shard_set = ShardSet(archive)
        try:
            return sum(t["storage"] == "reference" for t in shard_set.entries)
        finally:
            shard_set.close()
    return sum(t["storage"] == "reference" for t in archive.manifest["tensors"])


def decoded_tensors(archive, check_values=False):
    """`(path, array)` for every tensor the archive holds, one at a time, each
    checked against its digests; tensors that reference a base model are left out."""
    return decode.iter_decoded(archive, skip_references=True, check_values=check_values,
                               progress=_progress.advance)
