"""The manifest: what an archive holds and where, validated before use.

`validate()` checks types, ranges and internal consistency of a parsed
manifest, so that the decoding code after it can index arrays without
further checks: the version (`check_version`), the members, the image, the
decoder and the architecture here, each tensor in `tensor_rules`. Every
refusal is an `ArchiveError` (or `LimitError`, `VersionError`) whose `rule`
is the number of the rule it enforces in "What a reader MUST reject" of
`spec/wroll-v4.md` (`weightroll._format.rules`).

The names the format defines are in `schema`, JSON reading and writing in
`json_text`; both are re-exported here for the modules that build or read a
manifest.
"""

import re

from weightroll._format import limits, rules
from weightroll._format.fields import MAX_OFFSET, get, get_count, get_shape, is_digest
from weightroll._format.json_text import dumps, finite_or_none, json_depth, loads  # noqa: F401
from weightroll._format.schema import *  # noqa: F401,F403 - the format's names, as `manifest.X`
from weightroll._format.schema import (ARCHITECTURE_MEMBER, ASSETS_PREFIX, DECODER_CONFIG_MEMBER, DECODER_KINDS,
                                       DECODER_WEIGHTS_MEMBER, FORMAT_MAJOR, FORMAT_NAME, IMAGE_MEMBER,
                                       MLP_ACTIVATIONS, READABLE_MAJORS, SHARD_SUFFIX, TRELLIS_MAJOR,
                                       decoder_weights_member, required_members)
from weightroll._format.tensor_rules import check_tensors
from weightroll.errors import ArchiveError, LimitError, VersionError, short


def check_version(manifest):
    """R3/R4: the format name and a major version this reader understands."""
    if not isinstance(manifest, dict):
        raise ArchiveError("manifest.json must hold a JSON object.", rule=rules.MANIFEST_JSON)
    if manifest.get("format") != FORMAT_NAME:
        raise ArchiveError(
            f"manifest.json: 'format' must be '{FORMAT_NAME}'; received "
            f"{short(manifest.get('format'), 40)!r}. This is not a .wroll archive.",
            rule=rules.FORMAT_NAME,
        )
    version = manifest.get("format_version")
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ArchiveError(
            "manifest.json: 'format_version' must look like 'MAJOR.MINOR' (ASCII digits); "
            f"received {short(version, 40)!r}.",
            rule=rules.FORMAT_VERSION,
        )
    major, minor = int(match[1]), int(match[2])
    if major not in READABLE_MAJORS:
        if major > FORMAT_MAJOR:
            producer = manifest.get("producer")
            writer = producer.get("version") if isinstance(producer, dict) else None
            hint = "Upgrade weightroll (pip install -U weightroll) to a release that reads it"
            if isinstance(writer, str) and producer.get("name") == "weightroll":
                hint += f": it was written by weightroll {short(writer, 40)}, which does"
            hint += "."
        else:
            hint = "It predates the first published format."
        readable = [f"{m}.x" for m in READABLE_MAJORS]
        raise VersionError(
            f"This archive uses .wroll format {version}; this weightroll reads formats "
            f"{', '.join(readable[:-1])} and {readable[-1]} only. {hint}",
            rule=rules.FORMAT_VERSION,
        )
    return major, minor


# Two runs of 1 to 6 ASCII digits ("1.0"); `str.isdigit` would also accept "١" and "²".
_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})", re.ASCII)


def validate(manifest, member_sizes):
    """Validate a parsed manifest against itself and the zip's member sizes (R3 to R21).

    Args:
        manifest: the parsed `manifest.json`.
        member_sizes: dict of zip member name to size, excluding the manifest.

    Returns:
        The manifest, unchanged, once every rule holds.
    """
    major, _ = check_version(manifest)
    members = get(manifest, "members", "dict", "manifest")
    _check_members(members, member_sizes)

    image = get(manifest, "image", "dict", "manifest")
    if get(image, "member", "str", "image") != IMAGE_MEMBER:
        raise ArchiveError(f"manifest.json: image.member must be '{IMAGE_MEMBER}'.", rule=rules.IMAGE_FIELDS)
    width = get_count(image, "width", "image", limits.MAX_IMAGE_WIDTH, rules.IMAGE_FIELDS)
    height = get_count(image, "height", "image", limits.MAX_PIXELS, rules.IMAGE_FIELDS)
    n_codes = get_count(image, "codes", "image", limits.MAX_PIXELS, rules.IMAGE_FIELDS)
    if width < 1 or height < 1:
        raise ArchiveError(
            f"manifest.json: image is {width}x{height}; both must be >= 1 (an archive without "
            "codes has a 1x1 image).",
            rule=rules.IMAGE_FIELDS,
        )
    if width * height > limits.MAX_PIXELS:
        raise LimitError(
            f"manifest.json: image is {width}x{height}, more than {limits.MAX_PIXELS} pixels.",
            rule=rules.IMAGE_FIELDS,
        )
    if n_codes > width * height:
        raise ArchiveError(
            f"manifest.json: image.codes={n_codes} does not fit a {width}x{height} image.",
            rule=rules.IMAGE_FIELDS,
        )

    decoder = get(manifest, "decoder", "dict", "manifest")
    kind = get(decoder, "kind", "str", "decoder")
    if kind not in DECODER_KINDS:
        raise ArchiveError(
            f"manifest.json: decoder.kind must be one of {DECODER_KINDS}; received {short(kind, 40)!r}.",
            rule=rules.DECODER_FIELDS,
        )
    bits = get(decoder, "bits", "int", "decoder")
    if not 1 <= bits <= 8:
        raise ArchiveError(f"manifest.json: decoder.bits must be in 1..8; received {short(bits, 40)}.",
                           rule=rules.DECODER_FIELDS)
    weights_member = decoder_weights_member(major)
    if get(decoder, "weights_member", "str", "decoder") != weights_member:
        raise ArchiveError(f"manifest.json: decoder.weights_member must be '{weights_member}'.",
                           rule=rules.DECODER_FIELDS)
    table_size, scales_size = _check_decoder_weights(decoder, kind, members, major)
    if get(decoder, "config_member", "str", "decoder") != DECODER_CONFIG_MEMBER:
        raise ArchiveError(f"manifest.json: decoder.config_member must be '{DECODER_CONFIG_MEMBER}'.",
                           rule=rules.DECODER_FIELDS)
    get_count(decoder, "config_size", "decoder", limits.MAX_ARCHITECTURE_BYTES, rules.DECODER_FIELDS)

    # A 2.x archive without `architecture` holds weights only (spec §10).
    architecture = get(manifest, "architecture", "dict", "manifest", optional=major >= 2)
    if architecture is not None:
        if get(architecture, "member", "str", "architecture") != ARCHITECTURE_MEMBER:
            raise ArchiveError(f"manifest.json: architecture.member must be '{ARCHITECTURE_MEMBER}'.",
                               rule=rules.ARCHITECTURE_FIELDS)
        get_count(architecture, "size", "architecture", limits.MAX_ARCHITECTURE_BYTES, rules.ARCHITECTURE_FIELDS)
    elif ARCHITECTURE_MEMBER in members:
        raise ArchiveError(
            f"manifest.json: '{ARCHITECTURE_MEMBER}' is listed but there is no 'architecture' field; "
            "a weights-only archive has no architecture member.",
            rule=rules.ARCHITECTURE_FIELDS,
        )

    for required in required_members(major):
        if required not in members and (required != ARCHITECTURE_MEMBER or architecture is not None):
            raise ArchiveError(f"manifest.json: members must list the required member '{required}'.",
                               rule=rules.REQUIRED_MEMBERS)

    if major >= 2:
        _check_assets(manifest, members)
        _check_shards(manifest)
    check_tensors(manifest, major, kind, n_codes, table_size, scales_size, members)
    return manifest


def _check_assets(manifest, members):
    """R41: each asset file has a safe relative path and its own member."""
    assets = get(manifest, "assets", "list", "manifest", optional=True) or []
    if len(assets) > limits.MAX_ASSETS:
        raise LimitError(f"manifest.json: {len(assets)} assets; at most {limits.MAX_ASSETS} are allowed.",
                         rule=rules.ASSETS)
    seen = set()
    for i, entry in enumerate(assets):
        where = f"assets[{i}]"
        path = get(entry, "path", "str", where)
        if not _safe_relative_path(path) or path in seen:
            raise ArchiveError(
                f"manifest.json: {where}.path {short(path)!r} must be a unique relative path of "
                "1 to 32 parts of letters, digits, '.', '_' and '-' (no '.' or '..' part).",
                rule=rules.ASSETS,
            )
        seen.add(path)
        get_count(entry, "size", where, limits.MAX_ASSET_BYTES, rules.ASSETS)
        if ASSETS_PREFIX + path not in members:
            raise ArchiveError(f"manifest.json: {where} has no member '{ASSETS_PREFIX}{short(path)}'.",
                               rule=rules.ASSETS)


def _check_shards(manifest):
    """R43: an index lists shard files by plain name, each once, and holds no tensor of its own."""
    shards = get(manifest, "shards", "list", "manifest", optional=True)
    if shards is None:
        return
    if len(shards) > limits.MAX_SHARDS:
        raise LimitError(f"manifest.json: {len(shards)} shards; at most {limits.MAX_SHARDS} are allowed.",
                         rule=rules.SHARDS)
    if get(manifest, "tensors", "list", "manifest"):
        raise ArchiveError("manifest.json: a sharded archive's index holds no tensors of its own; its "
                           "shards hold them.", rule=rules.SHARDS)
    seen = set()
    for i, entry in enumerate(shards):
        where = f"shards[{i}]"
        name = get(entry, "file", "str", where)
        if not (_PART.fullmatch(name) and name.endswith(SHARD_SUFFIX)) or name in seen:
            raise ArchiveError(
                f"manifest.json: {where}.file {short(name)!r} must be a unique plain file name of letters, "
                f"digits, '.', '_' and '-' ending in '{SHARD_SUFFIX}' (a shard lies beside its index).",
                rule=rules.SHARDS,
            )
        seen.add(name)
        if not is_digest(get(entry, "manifest_sha256", "str", where)):
            raise ArchiveError(f"manifest.json: {where}.manifest_sha256 must be 64 lowercase hex digits.",
                               rule=rules.SHARDS)
        get_count(entry, "tensors", where, limits.MAX_TENSOR_ELEMENTS, rules.SHARDS)


_PART = re.compile(r"[A-Za-z0-9._-]{1,255}", re.ASCII)


def _safe_relative_path(path):
    parts = path.split("/")
    return (0 < len(path) <= 1024 and len(parts) <= 32
            and all(_PART.fullmatch(p) and p not in (".", "..") for p in parts))




def _check_members(members, member_sizes):
    """R5/R6: listed members and zip members are the same set, sizes agree."""
    for name in member_sizes:
        if name not in members:
            raise ArchiveError(
                f"The zip holds a member '{short(name)}' that manifest.json does not list; "
                "every member must be listed with its checksum.",
                rule=rules.UNLISTED_MEMBER,
            )
    for name, entry in members.items():
        where = f"members['{short(name)}']"
        size = get_count(entry, "size", where, MAX_OFFSET, rules.MEMBER_ENTRY)
        digest = get(entry, "sha256", "str", where)
        if not is_digest(digest):
            raise ArchiveError(f"manifest.json: {where}.sha256 must be 64 lowercase hex digits.",
                               rule=rules.MEMBER_ENTRY)
        if name not in member_sizes:
            raise ArchiveError(f"The archive lacks the member '{short(name)}' that manifest.json lists.",
                               rule=rules.MEMBER_ENTRY)
        if member_sizes[name] != size:
            raise ArchiveError(
                f"Member '{short(name)}' is {member_sizes[name]} bytes, but manifest.json "
                f"records {size}.",
                rule=rules.MEMBER_ENTRY,
            )


def _check_decoder_weights(decoder, kind, members, major):
    """R9: the decoder's weight arrays tile decoder.bin (in 4.x, what
    decoder.bin.zst inflates to, at most `MAX_DECODER_BYTES`); returns
    `(N, M)`, the sizes of a codebook's table and scales (`(0, 0)` for an MLP)."""
    arrays = get(decoder, "weights", "list", "decoder")
    compressed = major >= TRELLIS_MAJOR
    if compressed:
        total = limits.MAX_DECODER_BYTES
    else:
        total = members[DECODER_WEIGHTS_MEMBER]["size"] if DECODER_WEIGHTS_MEMBER in members else 0
    end = 0
    shapes = []
    for i, entry in enumerate(arrays):
        where = f"decoder.weights[{i}]"
        get(entry, "name", "str", where, optional=True)  # informative (spec §4.7)
        shape, size = get_shape(entry, where)
        dtype = get(entry, "dtype", "str", where)
        if dtype not in ("float32", "float64"):
            raise ArchiveError(
                f"manifest.json: {where}.dtype must be float32 or float64; received {short(dtype, 20)!r}.",
                rule=rules.DECODER_FIELDS,
            )
        offset = get_count(entry, "offset", where, MAX_OFFSET, rules.DECODER_FIELDS)
        if offset != end:
            raise ArchiveError(f"manifest.json: {where}.offset must be {end} (arrays are packed in order).",
                               rule=rules.DECODER_FIELDS)
        end = offset + size * (4 if dtype == "float32" else 8)
        shapes.append((shape, dtype))
        if end > total:
            break  # reported below, before any shape is trusted
    if compressed and end > total:
        raise LimitError(f"manifest.json: the decoder weights take more than {total} bytes.",
                         rule=rules.DECODER_FIELDS)
    if end != total and not compressed:
        at_least = "at least " if len(shapes) < len(arrays) else ""
        raise ArchiveError(
            f"manifest.json: the decoder weights take {at_least}{end} bytes but '{DECODER_WEIGHTS_MEMBER}' "
            f"is {total}.",
            rule=rules.DECODER_FIELDS,
        )
    if kind == "codebook":
        if len(shapes) != 2 or any(len(sh) != 2 or sh[1] != 1 or dt != "float32" for sh, dt in shapes) \
                or shapes[1][0][0] < 1:
            raise ArchiveError(
                "manifest.json: a codebook decoder has two float32 arrays, the table [N, 1] "
                "and the scales [M, 1] with M >= 1.",
                rule=rules.DECODER_FIELDS,
            )
        return shapes[0][0][0], shapes[1][0][0]
    # mlp: (kernel, bias) pairs chaining 1 -> hidden... -> 1, float64.
    activation = get(decoder, "activation", "str", "decoder")
    if activation not in MLP_ACTIVATIONS:
        raise ArchiveError(f"manifest.json: decoder.activation must be one of {MLP_ACTIVATIONS}.",
                           rule=rules.DECODER_FIELDS)
    if len(shapes) % 2 or not 2 <= len(shapes) <= 2 * limits.MAX_MLP_LAYERS:
        raise ArchiveError(
            f"manifest.json: an mlp decoder holds 1 to {limits.MAX_MLP_LAYERS} (kernel, bias) pairs; "
            f"received {len(shapes)} arrays.",
            rule=rules.DECODER_FIELDS,
        )
    fan_in = 1
    for k in range(0, len(shapes), 2):
        (kshape, kdtype), (bshape, bdtype) = shapes[k], shapes[k + 1]
        if kdtype != "float64" or bdtype != "float64":
            raise ArchiveError("manifest.json: mlp decoder weights must be float64.", rule=rules.DECODER_FIELDS)
        last = k == len(shapes) - 2
        if len(kshape) != 2 or kshape[0] != fan_in or bshape != [kshape[1]] or (last and kshape[1] != 1):
            raise ArchiveError(
                f"manifest.json: mlp layer {k // 2} has kernel {short(kshape)} and bias {short(bshape)}; "
                f"expected kernel [{fan_in}, units] and bias [units], ending in 1 unit.",
                rule=rules.DECODER_FIELDS,
            )
        if kshape[1] > limits.MAX_MLP_UNITS:
            raise LimitError(f"manifest.json: mlp layer {k // 2} has more than {limits.MAX_MLP_UNITS} units.",
                             rule=rules.DECODER_FIELDS)
        fan_in = kshape[1]
    return 0, 0
