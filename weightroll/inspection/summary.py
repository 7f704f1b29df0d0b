"""What an archive holds, from its manifest alone: as data (`--json`) and as text.

Instant whatever the archive's size: nothing here decodes a weight.
"""

import math
import os

import numpy as np

from weightroll._format import manifest as mf
from weightroll._format import paths
from weightroll.errors import short

# Names read from an archive pass through this before printing: no control
# characters (an escape sequence could rewrite the terminal), bounded length.
_clean = short

# The layout of the `--json` document; bumped only when a key changes meaning
# or disappears (new keys may be added without a bump).
JSON_SCHEMA = 1



def describe(archive, filepath):
    """The `--json` document of an open archive, from its manifest alone.

    Args:
        archive: an open `reader.RolledArchive`.
        filepath: the archive's path (for its name and size).

    Returns:
        A dict with the keys documented in the README ("Inspecting archives").
        `verify` and `picture` are `None`; `run()` fills them in when asked.
    """
    manifest = archive.manifest
    decoder = manifest["decoder"]
    producer = _dict(manifest.get("producer"))
    model = _dict(manifest.get("model"))
    roll_value = _dict(manifest.get("roll_value"))
    entries, shard_rows = manifest["tensors"], None
    archive_bytes = paths.size(filepath)
    if manifest.get("shards"):  # an index: the tensors are in the shards' manifests
        from weightroll._format.shards import ShardSet

        shard_set = ShardSet(archive)
        try:
            entries = shard_set.entries
            shard_rows = [{"file": s["file"], "tensors": s["tensors"], "size": paths.size(a.path)}
                          for s, a in zip(manifest["shards"], shard_set.archives)]
        finally:
            shard_set.close()
        archive_bytes += sum(row["size"] for row in shard_rows)
    tensors = [_tensor_row(t, decoder) for t in entries]
    parameters = sum(t["parameters"] for t in tensors)
    # The zip's own directory, in file order; the manifest lists every member but itself.
    expanded = _content_sizes(archive)
    members = [
        {"name": name, "size": size, "sha256": manifest["members"].get(name, {}).get("sha256"),
         "content_size": expanded.get(name)}
        for name, size in archive.member_sizes().items()
    ]
    return {
        "inspect_schema": JSON_SCHEMA,
        "file": os.fspath(filepath),
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "producer": {key: _str(producer.get(key)) for key in ("name", "version", "keras_version", "backend")},
        "model": {"name": _str(model.get("name")), "class_name": _str(model.get("class_name")),
                  "parameters": parameters},
        "archive_bytes": archive_bytes,
        "float32_bytes": 4 * parameters,
        "compression_ratio": round(4 * parameters / archive_bytes, 4) if archive_bytes else None,
        "members": members,
        "image": {key: manifest["image"][key] for key in ("width", "height", "codes")},
        "decoder": {
            "kind": decoder["kind"],
            "bits": decoder["bits"],
            "activation": _str(decoder.get("activation")),
            "table_entries": decoder["weights"][0]["shape"][0] if decoder["kind"] == "codebook" else None,
            "parameters": sum(math.prod(w["shape"]) for w in decoder["weights"]),
        },
        "settings": _dict(manifest.get("settings")) or None,
        "roll_value": {"weights": _dict(roll_value.get("weights")) or None,
                       "outputs": _dict(roll_value.get("outputs")) or None},
        "tensors": tensors,
        "shards": shard_rows,
        "verify": None,
        "picture": None,
    }


def _content_sizes(archive):
    """`{member: bytes it decompresses to}` of the zstd members whose size the
    manifest declares (or, for the manifest's own member, its frame header)."""
    manifest = archive.manifest
    sizes = {mf.DECODER_CONFIG_MEMBER: manifest["decoder"]["config_size"]}
    if archive.decoder_weights_member == mf.COMPRESSED_DECODER_WEIGHTS_MEMBER:
        sizes[mf.COMPRESSED_DECODER_WEIGHTS_MEMBER] = archive.decoder_weights_size()
    if archive.manifest_member == mf.MANIFEST_MEMBER:
        sizes[mf.MANIFEST_MEMBER] = archive.manifest_text_size
    if "architecture" in manifest:
        sizes[mf.ARCHITECTURE_MEMBER] = manifest["architecture"]["size"]
    for asset in manifest.get("assets", []):
        sizes[mf.ASSETS_PREFIX + asset["path"]] = asset["size"]
    return sizes


def _tensor_row(entry, decoder):
    parameters = math.prod(entry["shape"])
    row = {
        "path": entry["path"],
        "shape": entry["shape"],
        "dtype": entry["dtype"],
        "parameters": parameters,
        "storage": entry["storage"],
        "quantizer": _str(entry.get("quantizer")),
        "bits": None,
        "levels": None,
        "codes": None,
        "table": None,
        "scales": None,
        "outliers": None,
        "decoder_entry": None,
        "bytes": None,
        "error": None,
    }
    if entry["storage"] == "coded":
        row["codes"] = dict(entry["codes"])
        nbytes = parameters  # one byte (pixel) per code
        if decoder["kind"] == "codebook":
            table = entry["table"]
            row["table"] = dict(table)
            row["levels"] = table["size"]
            row["bits"] = max(1, (table["size"] - 1).bit_length())
            row["decoder_entry"] = f"table[{table['offset']}:{table['offset'] + table['size']}]"
            nbytes += 4 * table["size"]  # float32 table entries
        else:
            row["levels"] = 1 << decoder["bits"]
            row["bits"] = decoder["bits"]
            row["decoder_entry"] = "mlp"
        scales = entry.get("scales")
        if isinstance(scales, dict):  # validated by the manifest rules when present
            row["scales"] = dict(scales)
            row["decoder_entry"] += f" x scales[{scales['offset']}:{scales['offset'] + scales['count']}]"
            nbytes += 4 * scales["count"]
        outliers = entry.get("outliers")
        if isinstance(outliers, dict):
            row["outliers"] = dict(outliers)
            row["decoder_entry"] += f" + {outliers['count']} exact"
            nbytes += outliers["count"] * (8 + np.dtype(entry["dtype"]).itemsize)  # int64 index + value
        row["bytes"] = nbytes
    elif entry["storage"] == "exact":
        span = entry["bytes"]
        row["decoder_entry"] = f"{mf.EXACT_MEMBER}[{span['offset']}:{span['offset'] + span['size']}]"
        row["bytes"] = span["size"]
    else:  # "reference": a base model's tensor, named by its SHA-256 and not held here
        row["decoder_entry"] = f"base model, sha256 {entry['sha256'][:12]}"
        row["bytes"] = 0
    error = _dict(entry.get("error"))
    if error:
        row["error"] = {key: _number(error.get(key)) for key in ("relative_rmse", "max_abs_error")}
    return row


def _dict(value):
    """Fields the manifest rules leave free (producer, model, roll value) may be
    anything in a foreign archive; anything but an object counts as absent."""
    return value if isinstance(value, dict) else {}


def _str(value):
    return value if isinstance(value, str) else None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- the summary, as text ------------------------------------------------------


def format_summary(doc):
    """The human summary of a `describe()` document (names sanitised)."""
    producer, model, decoder = doc["producer"], doc["model"], doc["decoder"]
    tensors = doc["tensors"]
    coded = sum(t["storage"] == "coded" for t in tensors)
    referenced = sum(t["storage"] == "reference" for t in tensors)
    made_by = " ".join(_clean(v) for v in (producer["name"], producer["version"]) if v) or "an unknown writer"
    if producer["keras_version"]:
        made_by += f", Keras {_clean(producer['keras_version'])}"
    if producer["backend"]:
        made_by += f" ({_clean(producer['backend'])} backend)"
    ratio_text = f"{_ratio(doc['compression_ratio'])} its float32 weights ({doc['float32_bytes']:,} bytes)"
    decoder_text = f"{decoder['kind']}, {decoder['bits']}-bit codes"
    if decoder["kind"] == "codebook":
        decoder_text += f", {decoder['table_entries']:,} table entries"
    else:
        decoder_text += f", {_clean(decoder['activation'])} MLP of {decoder['parameters']:,} parameters"
    rows = [
        ("format", f"wroll {_clean(doc['format_version'])}, written by {made_by}"),
        ("model", f"{_clean(model['name'] or '?')} ({_clean(model['class_name'] or '?')})"),
        ("parameters", f"{model['parameters']:,} in {len(tensors)} tensors ({coded} coded, "
                       f"{len(tensors) - coded - referenced} stored exactly"
                       + (f", {referenced} referencing a base model)" if referenced else ")")),
        ("size", f"{doc['archive_bytes']:,} bytes{' (index and shards)' if doc.get('shards') else ''}, {ratio_text}"),
        ("image", f"{doc['image']['width']} x {doc['image']['height']} pixels, {doc['image']['codes']:,} codes"),
        ("decoder", decoder_text),
    ]
    if doc.get("shards"):
        rows[4] = ("image", "in the shards")
        rows.append(("shards", f"{len(doc['shards'])} files beside this index, "
                               f"{sum(row['size'] for row in doc['shards']):,} bytes: "
                               + ", ".join(_clean(row["file"]) for row in doc["shards"][:3])
                               + (", ..." if len(doc["shards"]) > 3 else "")))
    if doc["settings"]:
        rows.append(("settings", ", ".join(f"{_clean(k)}={_clean(v)}" for k, v in doc["settings"].items())))
    rows += [("roll value" if i == 0 else "", text) for i, text in enumerate(_roll_value_lines(doc["roll_value"]))]
    names = [_clean(m["name"]) for m in doc["members"]]
    width = max(map(len, names))
    for i, (name, member) in enumerate(zip(names, doc["members"])):
        text = f"{name:<{width}}  {member['size']:>12,} bytes"
        if member.get("content_size") is not None:
            text += f" ({member['content_size']:,} decompressed)"
        rows.append(("members" if i == 0 else "", text))
    verify = doc["verify"]
    if verify is None:
        rows.append(("checksums", "not checked (use --verify)"))
    elif verify["ok"]:
        text = (f"OK: {verify['members_checked']} members match their SHA-256, "
                f"{verify['tensors_checked']} tensors decode to their recorded digests")
        if verify["base_references"]:
            n = verify["base_references"]
            text += f"; {n} {'references' if n == 1 else 'reference'} a base model (not checked without it)"
        rows.append(("verify", text))
    else:
        rows.append(("verify", "FAILED (the reason follows on stderr)"))
    if doc["picture"]:
        rows.append(("picture", _clean(doc["picture"])))
    lines = [f"{_clean(doc['file'])}: .wroll archive"]
    lines += [f"  {label:<12}{text}" for label, text in rows]
    return "\n".join(lines)


def _ratio(ratio):
    if not ratio:
        return "no smaller than"
    return f"{ratio:.2f}x smaller than" if ratio >= 1 else f"{1 / ratio:.2f}x larger than"


def _plural(n, word):
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _roll_value_lines(roll_value):
    weights, outputs = roll_value["weights"], roll_value["outputs"]
    lines = []
    if weights:
        lines.append(f"weights: relative RMSE {_g(weights.get('relative_rmse'))}, "
                     f"max abs error {_g(weights.get('max_abs_error'))}")
    if outputs:
        text = (f"outputs on {_g(outputs.get('samples'), ',')} samples: max abs diff {_g(outputs.get('max_abs_diff'))}, "
                f"cosine {_g(outputs.get('cosine'), '.6f')}")
        if _number(outputs.get("top1_agreement")) is not None:
            text += f", top-1 agreement {outputs['top1_agreement']:.2%}"
        lines.append(text)
    else:
        lines.append("outputs: not measured (roll with validation data to measure them)")
    return lines


def format_tensors(doc):
    """One row per tensor: path, shape, dtype, storage, quantizer, bits, levels,
    decoder entry, bytes, error."""
    header = ("path", "shape", "dtype", "storage", "quantizer", "bits", "levels", "decoder entry", "bytes",
              "rel RMSE", "max abs err")
    rows = [header]
    for t in doc["tensors"]:
        error = t["error"] or {}
        rows.append((
            _clean(t["path"]),
            "x".join(str(d) for d in t["shape"]) or "scalar",
            _clean(t["dtype"]),
            t["storage"],
            _clean(t["quantizer"] or "-"),
            "-" if t["bits"] is None else str(t["bits"]),
            "-" if t["levels"] is None else str(t["levels"]),
            t["decoder_entry"],
            f"{t['bytes']:,}",
            _g(error.get("relative_rmse"), ".2e"),
            _g(error.get("max_abs_error"), ".2e"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {5, 6, 8, 9, 10}
    return "\n".join(
        "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    )


def _g(value, spec=".3g"):
    value = _number(value)
    return "-" if value is None else format(value, spec)
