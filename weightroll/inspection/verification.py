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
    mf.loads(archive.architecture_json(), f"'{mf.ARCHITECTURE_MEMBER}'")
    mf.loads(archive.decoder_config_json(), f"'{mf.DECODER_CONFIG_MEMBER}'")
    checked = sum(1 for _ in decoded_tensors(archive, check_values=True))
    return {"ok": True, "members_checked": len(names), "tensors_checked": checked,
            "base_references": len(archive.manifest["tensors"]) - checked, "error": None}


def decoded_tensors(archive, check_values=False):
    """`(path, array)` for every tensor the archive holds, one at a time, each
    checked against its digests; tensors that reference a base model are left out."""
    return decode.iter_decoded(archive, skip_references=True, check_values=check_values,
                               progress=_progress.advance)
