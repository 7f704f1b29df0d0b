"""A picture of an archive: its code image and per-layer weight histograms (Pillow)."""

import math
import os

import numpy as np

from weightroll.errors import short
from weightroll.inspection.summary import _g, _plural, _ratio
from weightroll.inspection.verification import decoded_tensors

_clean = short


# Viridis (perceptually uniform, readable in grey and by most colour-blind
# readers), sampled at nine points and interpolated.
_VIRIDIS = ((68, 1, 84), (71, 44, 122), (59, 82, 139), (44, 113, 142), (33, 145, 140),
            (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37))
_PANEL = 900  # the code image fits in _PANEL x _PANEL pixels
_MAX_SCALE = 24  # pixels per cell side, at most
_LABELS_WIDTH = 240
_COLOURBAR_WIDTH = 90
_HISTOGRAM_SIZE = (280, 120)
_HISTOGRAM_COLUMNS = 4
_MAX_HISTOGRAMS = 24
# One bin per pixel column: a quantised layer (a few hundred distinct values)
# shows as clean spikes, one per value, with no bin holding two by accident.
_BINS = _HISTOGRAM_SIZE[0] - 2
# Per tensor, before re-binning per layer: fine enough that re-binning adds
# under 1% of ripple to a smooth distribution.
_FINE_BINS = 16384
_CHUNK = 1 << 20
_BACKGROUND = (255, 255, 255)
_PADDING = (215, 215, 215)  # cells that hold no code
_INK = (30, 30, 30)
_BOUNDARY = (255, 255, 255)
_BAR = (58, 110, 165)
_ZERO = (200, 60, 50)


def draw(archive, doc, out_path):
    """Write a PNG picture of the archive to `out_path` (at most ~2000 px a side).

    On top, the code image: every coded tensor's codes in archive order, each
    tensor starting on a new row (when there are not too many), coloured by
    code (low to high value within the tensor), scaled up for small models and
    thinned to every n-th code for big ones; lines and brackets mark the
    boundaries and the left margin names the tensors. Below, a histogram per
    layer of the decoded weights.
    """
    from PIL import Image, ImageDraw

    font = _font()
    manifest = archive.manifest
    coded = [t for t in manifest["tensors"] if t["storage"] == "coded"]
    codes = archive.codes() if coded else np.zeros(0, np.uint8)
    code_picture = _code_picture(coded, codes)
    del codes
    histograms = _layer_histograms(archive)

    line = _text_height(font) + 4
    title = _title_lines(doc, coded, code_picture)
    hist_w, hist_h = _HISTOGRAM_SIZE
    hist_rows = -(-len(histograms["panels"]) // _HISTOGRAM_COLUMNS)
    top_w = _LABELS_WIDTH + code_picture["image"].width + _COLOURBAR_WIDTH
    width = max(top_w, _HISTOGRAM_COLUMNS * (hist_w + 10)) + 20
    top_y = 10 + line * len(title) + 10
    hist_y = top_y + max(code_picture["image"].height, 120) + 20
    height = hist_y + line + 6 + hist_rows * (hist_h + 14) + 10
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    pen = ImageDraw.Draw(canvas)

    for i, text in enumerate(title):
        pen.text((10, 10 + i * line), text, fill=_INK, font=font)
    x0 = 10 + _LABELS_WIDTH
    canvas.paste(code_picture["image"], (x0, top_y))
    _label_bands(pen, code_picture["bands"], x0, top_y, code_picture["image"].height, font)
    if not coded:
        pen.text((x0, top_y), "no coded tensors: every tensor is stored exactly", fill=_INK, font=font)
    else:
        _colourbar(pen, canvas, x0 + code_picture["image"].width + 12, top_y,
                   max(code_picture["image"].height, 120), font)

    pen.text((10, hist_y), histograms["title"], fill=_INK, font=font)
    for i, panel in enumerate(histograms["panels"]):
        col, row = i % _HISTOGRAM_COLUMNS, i // _HISTOGRAM_COLUMNS
        _histogram(pen, 10 + col * (hist_w + 10), hist_y + line + 6 + row * (hist_h + 14), panel, font)

    with open(out_path, "wb") as f:
        canvas.save(f, format="PNG", optimize=False)


def _font(size=12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font where FreeType is available
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def _text_height(font):
    box = font.getbbox("Hg")
    return box[3] - box[1] + 2


def _fit(pen, text, font, width):
    """`text`, cut from the left with '...' until it fits `width` pixels (the end
    of a variable path, e.g. '.../dense_3/kernel', says the most)."""
    if pen.textlength(text, font=font) <= width:
        return text
    while text and pen.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _label_bands(pen, bands, x0, y0, height, font):
    """Mark each tensor's rows with a bracket left of the image and name it
    beside the bracket's middle; where names would overlap, larger tensors
    keep theirs."""
    text_h = _text_height(font)
    taken = []
    for top, bottom, _ in bands:
        if bottom - top >= 4:
            x = x0 - 5
            pen.line([(x, y0 + top + 1), (x, y0 + bottom - 2)], fill=_INK)
            pen.line([(x, y0 + top + 1), (x0 - 2, y0 + top + 1)], fill=_INK)
            pen.line([(x, y0 + bottom - 2), (x0 - 2, y0 + bottom - 2)], fill=_INK)
    for top, bottom, text in sorted(bands, key=lambda b: b[0] - b[1]):
        y = min(max((top + bottom) // 2 - text_h // 2, 0), max(height - text_h, 0))
        if any(y < other + text_h + 1 and other < y + text_h + 1 for other in taken):
            continue
        taken.append(y)
        text = _fit(pen, text, font, _LABELS_WIDTH - 20)
        pen.text((x0 - 10 - pen.textlength(text, font=font), y0 + y), text, fill=_INK, font=font)


def _colour_table():
    points = np.asarray(_VIRIDIS, np.float64)
    x = np.linspace(0, len(points) - 1, 256)
    return np.stack([np.interp(x, np.arange(len(points)), points[:, c]) for c in range(3)], 1).astype(np.uint8)


def _layout(counts):
    """Cells per code run, cells per row, pixels per cell and row alignment for
    tensors of `counts` codes, so that the picture fits `_PANEL` pixels."""
    aligned = len(counts) <= _PANEL // 2  # each tensor starts a row; too many and it flows on
    per_cell = 1
    while True:
        cells = [-(-c // per_cell) for c in counts]
        total = sum(cells)
        row_cells = max(1, min(_PANEL, math.isqrt(max(total - 1, 0)) + 1))
        rows = sum(-(-c // row_cells) for c in cells) if aligned else -(-total // row_cells)
        if rows <= _PANEL:
            break
        per_cell *= 2
    scale = max(1, min(_MAX_SCALE, _PANEL // row_cells, _PANEL // max(rows, 1)))
    return per_cell, row_cells, rows, scale, aligned


def _code_picture(coded, codes):
    """The code image: an RGB image, label positions and how it was scaled."""
    from PIL import Image, ImageDraw

    if not coded:
        return {"image": Image.new("RGB", (1, 1), _BACKGROUND), "bands": [], "per_cell": 1, "scale": 1}
    counts = [t["codes"]["count"] for t in coded]
    per_cell, row_cells, rows, scale, aligned = _layout(counts)
    grid = np.full(rows * row_cells, -1, np.int16)  # colour index per cell; -1: no code
    starts, position = [], 0
    for t in coded:
        offset, count = t["codes"]["offset"], t["codes"]["count"]
        span = codes[offset: offset + count]
        # Every `per_cell`-th code, so that each cell shows a real code, coloured
        # from the tensor's lowest code (dark) to its highest (bright): a
        # codebook's table is sorted, so low codes are low values.
        cells = span[::per_cell].astype(np.int32)
        low, high = (int(span.min()), int(span.max())) if span.size else (0, 0)
        if aligned and position % row_cells:
            position += row_cells - position % row_cells
        starts.append(position)
        grid[position: position + cells.size] = (cells - low) * 255 // max(high - low, 1)
        position += cells.size
    lut = _colour_table()
    rgb = np.empty(grid.shape + (3,), np.uint8)
    empty = grid < 0
    rgb[empty] = _PADDING
    rgb[~empty] = lut[grid[~empty]]
    image = Image.fromarray(rgb.reshape(rows, row_cells, 3), "RGB")
    if scale > 1:
        image = image.resize((row_cells * scale, rows * scale), Image.NEAREST)
    pen = ImageDraw.Draw(image)
    thick = 2 if scale >= 6 else 1
    right = row_cells * scale
    # A step line between one tensor's last code and the next one's first; rows
    # of a pixel or two are left alone when each tensor starts a row of its own
    # (the padding and the brackets beside the image show the boundary there).
    for start in starts[1:] if scale >= 3 or not aligned else ():
        r, c = divmod(start, row_cells)
        y, x = r * scale, c * scale
        if c == 0:
            pen.line([(0, y), (right, y)], fill=_BOUNDARY, width=thick)
        else:
            pen.line([(x, y), (right, y)], fill=_BOUNDARY, width=thick)
            pen.line([(x, y), (x, y + scale)], fill=_BOUNDARY, width=thick)
            pen.line([(0, y + scale), (x, y + scale)], fill=_BOUNDARY, width=thick)
    bands = []  # (top, bottom) pixel rows of each tensor, and its label
    for t, start in zip(coded, starts):
        end = start + -(-t["codes"]["count"] // per_cell)
        shape = "x".join(str(d) for d in t["shape"]) or "scalar"
        bands.append(((start // row_cells) * scale, -(-end // row_cells) * scale,
                      f"{_clean(t['path'])}  {shape}"))
    return {"image": image, "bands": bands, "per_cell": per_cell, "scale": scale}


def _colourbar(pen, canvas, x, y, height, font):
    from PIL import Image

    lut = _colour_table()
    ramp = np.repeat(lut[::-1][:, None, :], 14, axis=1)
    bar = Image.fromarray(ramp, "RGB").resize((14, height), Image.NEAREST)
    canvas.paste(bar, (x, y))
    pen.rectangle([x - 1, y - 1, x + 14, y + height], outline=_INK)
    pen.text((x + 20, y), "high", fill=_INK, font=font)
    pen.text((x + 20, y + height - _text_height(font)), "low", fill=_INK, font=font)
    pen.text((x + 20, y + height // 2 - _text_height(font)), "code", fill=_INK, font=font)
    pen.text((x + 20, y + height // 2), "(value)", fill=_INK, font=font)


def _title_lines(doc, coded, picture):
    model = doc["model"]
    weights = doc["roll_value"]["weights"] or {}
    first = (f"{_clean(os.path.basename(doc['file']))}: {_clean(model['name'] or '?')} "
             f"({_clean(model['class_name'] or '?')}), {model['parameters']:,} parameters, "
             f"{doc['archive_bytes']:,} bytes ({_ratio(doc['compression_ratio'])} float32)")
    second = (f"decoder {doc['decoder']['kind']}, {doc['decoder']['bits']}-bit codes; "
              f"weight relative RMSE {_g(weights.get('relative_rmse'))}")
    exact = sum(t["storage"] != "coded" for t in doc["tensors"])
    third = f"Code image: {_plural(len(coded), 'coded tensor')} in archive order"
    if picture["per_cell"] > 1:
        third += f", one code in {picture['per_cell']} shown"
    elif picture["scale"] > 1:
        third += f", each code {picture['scale']}x{picture['scale']} pixels"
    if exact:
        third += f"; {_plural(exact, 'tensor')} stored otherwise {'is' if exact == 1 else 'are'} not in it."
    else:
        third += "; every tensor is in it."
    return [first, second, third]


def _layer_histograms(archive):
    """Per-layer histograms of the decoded float weights.

    Tensors are decoded by the library's own decoder (digests checked), one
    at a time where it can stream them; each is reduced at once to a fine
    histogram over its own range, re-binned per layer at the end, so memory
    holds one tensor, not the model.
    """
    layers = {}  # layer -> [(min, max, fine bin centres, counts)]
    for path, array in decoded_tensors(archive):
        if array.dtype.kind != "f" or array.size == 0:
            continue  # counters, seeds, masks: not weights
        flat = array.reshape(-1)
        finite = np.isfinite(flat)
        if not finite.all():
            flat = flat[finite]
            if flat.size == 0:
                continue
        lo, hi = float(flat.min()), float(flat.max())
        if hi - lo > 1e-9 * max(abs(lo), abs(hi)):
            bins, span = _FINE_BINS, (lo, hi)
        else:  # constant, or too narrow to split in float precision: one bin
            bins, span = 1, (lo - 0.5, lo + 0.5)
        counts = np.zeros(bins, np.int64)
        for start in range(0, flat.size, _CHUNK):  # in float64, a chunk at a time
            counts += np.histogram(flat[start: start + _CHUNK].astype(np.float64), bins, span)[0]
        edges = np.linspace(span[0], span[1], bins + 1)
        centres = np.clip((edges[:-1] + edges[1:]) / 2, lo, hi)
        layers.setdefault(path.rsplit("/", 1)[0], []).append((lo, hi, centres, counts))

    sizes = {name: int(sum(part[3].sum() for part in parts)) for name, parts in layers.items()}
    names = list(layers)
    shown = names
    if len(names) > _MAX_HISTOGRAMS:
        largest = set(sorted(names, key=lambda n: -sizes[n])[:_MAX_HISTOGRAMS])
        shown = [n for n in names if n in largest]
    panels = []
    for name in shown:
        parts = layers[name]
        lo, hi = min(p[0] for p in parts), max(p[1] for p in parts)
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
        counts, _ = np.histogram(np.concatenate([p[2] for p in parts]), bins=_BINS, range=(lo, hi),
                                 weights=np.concatenate([p[3] for p in parts]))
        panels.append({"name": name, "counts": counts, "range": (lo, hi), "n": sizes[name]})
    title = "Decoded weights per layer"
    if len(shown) < len(names):
        title += f" ({len(shown)} largest of {len(names)} layers)"
    title += ": value histograms, x from min to max, red line at 0"
    return {"title": title, "panels": panels}


def _histogram(pen, x, y, panel, font):
    w, h = _HISTOGRAM_SIZE
    line = _text_height(font)
    top, bottom = y + line + 2, y + h - line - 2
    pen.text((x, y), _fit(pen, f"{_clean(panel['name'])}  n={panel['n']:,}", font, w), fill=_INK, font=font)
    pen.rectangle([x, top, x + w, bottom], outline=(180, 180, 180))
    counts = panel["counts"]
    peak = counts.max() or 1.0
    for i, c in enumerate(counts):
        if c > 0:
            bar_h = max(1, int(round((bottom - top - 2) * c / peak)))
            pen.line([(x + 1 + i, bottom - bar_h), (x + 1 + i, bottom - 1)], fill=_BAR)
    lo, hi = panel["range"]
    if lo < 0 < hi:
        zero_x = x + int(round((0 - lo) / (hi - lo) * w))
        pen.line([(zero_x, top), (zero_x, bottom)], fill=_ZERO)
    pen.text((x, bottom + 1), f"{lo:.3g}", fill=_INK, font=font)
    right = f"{hi:.3g}"
    pen.text((x + w - pen.textlength(right, font=font), bottom + 1), right, fill=_INK, font=font)
