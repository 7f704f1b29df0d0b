"""Size against quality (issue 7): weightroll's settings against plain baselines.

Three models, each with every method in the same run:

- a small CNN trained on scikit-learn's digits (the recipe of
  `tests/test_digits_quality.py`); quality: top-1 agreement with the
  original on the 450 held-out test images, none of which is used for
  training or calibration (calibration takes 200 training images);
- the heavy-tailed transformer-like encoder of `tests/_models.py`; quality:
  mean cosine of the output embeddings on a fresh batch of token sequences
  (calibration takes the batch the model is built with);
- a transfer model: `ResNet50(weights=None)` frozen under a trained Dense
  head, rolled with `base=` (its frozen tensors travel as SHA-256
  references); quality: the head's top-1 agreement on held-out inputs;
- the paper's transfer shape (issue 17): `InceptionV3(weights=None)` at
  150x150, frozen, by reference, under a Dense(10) head: how small the fixed
  part of a transfer archive (manifest, architecture) gets.

Every method's output is decoded for real (the `.keras` file loaded, the
baselines' bytes decompressed and dequantised into the model, the archive
loaded with `weightroll.load_rolled`) and the model run on the held-out
inputs. pytest-benchmark times each encoding once; the sizes and qualities
are in `extra_info`, printed as one markdown table per model at the end and
written into `benchmarks/README.md`, with where each issue goal stands.

Run: `python -m pytest benchmarks/bench_size.py --benchmark-only`
(about 3.5 minutes on 2 cores; not part of `pytest tests`); one model:
`-k transfer_inception`.
"""

import dataclasses
import importlib.util
import pathlib
import re

import keras
import numpy as np
import pytest

import _baselines as bl
import weightroll
from weightroll._format.reader import RolledArchive

pytestmark = pytest.mark.filterwarnings(  # raised inside Keras's own `model.save`
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

_spec = importlib.util.spec_from_file_location(
    "weightroll_bench_test_models", pathlib.Path(__file__).parents[1] / "tests" / "_models.py")
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)

DIGITS_CALIBRATION = 200  # training images
HT_HELD_OUT = 512  # fresh token sequences
TRANSFER_IMAGE = (64, 64, 3)
TRANSFER_CLASSES = 10
TRANSFER_TRAIN = 256
TRANSFER_HELD_OUT = 256
TRANSFER_EPOCHS = 100  # on 256 feature vectors: a few seconds
TRANSFER_NOISE = 1.5  # per pixel, around each class's random prototype image
# Allocation probes every tensor with a prediction on all its calibration
# samples, frozen base tensors included (see the README): 32 keeps it to ~30 s.
TRANSFER_CALIBRATION = 32
# The paper's shape (issue 17): InceptionV3 at 150x150; fewer samples, as each
# costs four times ResNet50's 64x64.
INCEPTION_IMAGE = (150, 150, 3)
INCEPTION_TRAIN = 128
INCEPTION_HELD_OUT = 128


@dataclasses.dataclass
class Case:
    name: str
    title: str
    model: object
    calibration: object
    held_out: object
    classifier: bool
    base: object = None
    keep: object = None  # indices of the variables the weight RMSE covers (None: all)
    originals: list = None
    reference: np.ndarray = None  # the original model's outputs on held_out

    def __post_init__(self):
        self.originals = bl.variable_arrays(self.model)
        self.reference = predict(self.model, self.held_out)
        self.parameters = int(sum(a.size for a in self.originals))
        self.float32_bytes = 4 * self.parameters


def predict(model, x):
    return np.asarray(model.predict(x, verbose=0, batch_size=64))


# ---------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def digits_cnn():
    model, (x_train, _), (x_test, _), accuracy = _models.trained_digits_cnn()
    assert accuracy > 0.9, "the CNN itself did not train"
    return Case("digits_cnn", f"digits CNN (accuracy {accuracy:.1%} on the held-out images)", model,
                calibration=x_train[:DIGITS_CALIBRATION], held_out=x_test, classifier=True)


@pytest.fixture(scope="module")
def heavy_tailed():
    model, batch = _models.heavy_tailed_transformer()
    fresh = np.random.default_rng(2024).integers(0, _models.HT_VOCAB, size=(HT_HELD_OUT, _models.HT_SEQ))
    return Case("heavy_tailed", "heavy-tailed transformer-like encoder (tests/_models.py)", model,
                calibration=batch, held_out=fresh.astype("int32"), classifier=False)


def _transfer_case(name, title, base, image, train, held_out, normalize=False):
    """`base` frozen under a Dense(10) head trained on random data with
    something to learn: each class is a random image plus noise. (With random
    labels the head stays near uniform, its top-1 a coin toss, and agreement
    would measure rounding noise.) With `normalize`, the frozen base ends in a
    `Normalization` layer adapted to its features: an untrained InceptionV3's
    features are ~0.002 with class differences of ~2e-5, which a bare Dense
    head does not learn from (it predicts one class), and a head that
    standardised them itself would need its mean to 1e-3 or better."""
    base.trainable = False
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(TRANSFER_CLASSES,) + image)
    y = rng.integers(0, TRANSFER_CLASSES, train + held_out)
    x = (prototypes[y] + TRANSFER_NOISE * rng.normal(size=(len(y),) + image)).astype("float32")
    features = base.predict(x, verbose=0, batch_size=64)
    if normalize:
        standardize = keras.layers.Normalization(name="standardize")
        standardize.adapt(features[:train])
        base = keras.Sequential([keras.Input(image), base, standardize], name=f"{base.name}_standardized")
        base.trainable = False
        features = keras.ops.convert_to_numpy(standardize(features))
    head = keras.layers.Dense(TRANSFER_CLASSES, activation="softmax", name="head")
    # The base is frozen, so training the head on the base's features is
    # training the whole model, without running the base every epoch.
    trainer = keras.Sequential([keras.Input(features.shape[1:]), head])
    trainer.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    trainer.fit(features[:train], y[:train], epochs=TRANSFER_EPOCHS, batch_size=64, verbose=0)
    accuracy = trainer.evaluate(features[train:], y[train:], verbose=0)[1]
    model = keras.Sequential([keras.Input(image), base, head], name=name)
    frozen = {id(v) for v in base.variables}
    keep = {i for i, v in enumerate(model.variables) if id(v) not in frozen}
    case = Case(name, f"{title} (accuracy {accuracy:.1%} on the held-out inputs)",
                model, calibration=x[:TRANSFER_CALIBRATION], held_out=x[train:], classifier=True,
                base=base, keep=keep)
    case.head_parameters = int(sum(case.originals[i].size for i in keep))
    case.predicted_classes = int(np.unique(np.argmax(case.reference, -1)).size)
    return case


@pytest.fixture(scope="module")
def transfer():
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                       input_shape=TRANSFER_IMAGE)
    return _transfer_case("transfer", "transfer model: frozen ResNet50(weights=None, 64x64, avg pool) + Dense(10) "
                          "head", base, TRANSFER_IMAGE, TRANSFER_TRAIN, TRANSFER_HELD_OUT)


@pytest.fixture(scope="module")
def transfer_inception():
    keras.utils.set_random_seed(0)
    base = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                          input_shape=INCEPTION_IMAGE)
    return _transfer_case("transfer_inception", "the paper's transfer shape: frozen InceptionV3(weights=None, "
                          "150x150, avg pool, features standardised) + Dense(10) head", base, INCEPTION_IMAGE,
                          INCEPTION_TRAIN, INCEPTION_HELD_OUT, normalize=True)


# ---------------------------------------------------------------- the methods
# Each takes (case, folder, timed) and returns {"bytes", "decoded", "outputs"};
# `timed(f)` runs the encoding under pytest-benchmark and returns its result.


def _keras_file(case, folder, timed):
    path = folder / "model.keras"
    timed(lambda: case.model.save(path))
    loaded = keras.models.load_model(path)
    return {"bytes": path.stat().st_size, "decoded": bl.variable_arrays(loaded),
            "outputs": predict(loaded, case.held_out)}


def _keras_zstd(case, folder, timed):
    path = folder / "model.keras"

    def encode():
        case.model.save(path)
        return bl.zstd(path.read_bytes())

    blob = timed(encode)
    restored = folder / "restored.keras"
    restored.write_bytes(bl.unzstd(blob))
    loaded = keras.models.load_model(restored)
    return {"bytes": len(blob), "decoded": bl.variable_arrays(loaded), "outputs": predict(loaded, case.held_out)}


def _codec(encode, decode, only_kept=False):
    """A numpy baseline: encode the arrays (plus the zstd architecture), decode
    them back, and run the model with them."""

    def run(case, folder, timed):
        chosen = [i for i in range(len(case.originals)) if not only_kept or i in case.keep]
        arrays = [case.originals[i] for i in chosen]
        blob, arch = timed(lambda: (encode(arrays), bl.architecture_zst(case.model)))
        decoded = list(case.originals)
        for i, a in zip(chosen, decode(blob, arrays), strict=True):
            decoded[i] = a
        with bl.weights_swapped(case.model, decoded):
            outputs = predict(case.model, case.held_out)
        return {"bytes": len(blob) + len(arch), "decoded": decoded, "outputs": outputs}

    return run


def _wroll(calibrate=False, **options):
    def run(case, folder, timed):
        path = folder / "model.wroll"
        kwargs = dict(options)
        if calibrate:
            kwargs["validation_data"] = case.calibration
        if case.base is not None:
            kwargs["base"] = case.base
        report = timed(lambda: weightroll.roll(case.model, path, **kwargs))
        assert report.archive_bytes == path.stat().st_size
        with RolledArchive(path) as archive:  # the manifest's member, and the text it holds
            manifest = (archive.member_sizes()[archive.manifest_member], archive.manifest_text_size)
        loaded = weightroll.load_rolled(path, base=case.base)
        return {"bytes": report.archive_bytes, "decoded": bl.variable_arrays(loaded),
                "outputs": predict(loaded, case.held_out), "settings": report.settings, "manifest": manifest}

    return run


KERAS = ".keras"
KERAS_ZSTD = ".keras + zstd -19"
FLOAT16 = "float16 + zstd -19"
INT8 = "int8 per-channel + zstd -19"
HEAD_FLOAT32 = "head only, float32 + zstd -19"
PAPER = 'paper: decoder="mlp" (8 bits)'
PRESETS = ["lossless-ish", "balanced", "small"]


def _preset(quality, calibrate=False):
    return f'quality="{quality}"' + (" + calibration" if calibrate else "")


BASELINES = {
    KERAS: _keras_file,
    KERAS_ZSTD: _keras_zstd,
    FLOAT16: _codec(bl.float16_zstd, bl.float16_unzstd),
    INT8: _codec(bl.int8_zstd, bl.int8_unzstd),
    HEAD_FLOAT32: _codec(bl.float32_zstd, bl.float32_unzstd, only_kept=True),
}
WROLL = {PAPER: _wroll(decoder="mlp")}
for _q in PRESETS:
    WROLL[_preset(_q)] = _wroll(quality=_q)
for _q in PRESETS:
    WROLL[_preset(_q, True)] = _wroll(quality=_q, calibrate=True)
# Not a preset: the output tolerance at which the heavy-tailed model's cosine
# is about int8's (cosine ~ 1 - t**2 / 2), for the goal's "at equal cosine".
INT8_MATCHED = "output_tolerance=0.08 + calibration"
WROLL[INT8_MATCHED] = _wroll(output_tolerance=0.08, calibrate=True)
# The held-out cosine runs a little below the calibration data's (GPTQ fits
# the calibration inputs): 0.075 is the tolerance that lands at or above
# int8's cosine on the held-out sequences.
INT8_MATCHED_HELD_OUT = "output_tolerance=0.075 + calibration"
WROLL[INT8_MATCHED_HELD_OUT] = _wroll(output_tolerance=0.075, calibrate=True)
METHODS = {**BASELINES, **WROLL}

PLAN = {
    "digits_cnn": [KERAS, KERAS_ZSTD, FLOAT16, INT8, PAPER] + [_preset(q) for q in PRESETS]
    + [_preset(q, True) for q in PRESETS],
    "heavy_tailed": [KERAS, KERAS_ZSTD, FLOAT16, INT8, PAPER] + [_preset(q) for q in PRESETS]
    + [_preset(q, True) for q in PRESETS] + [INT8_MATCHED, INT8_MATCHED_HELD_OUT],
    # The whole-model float16 / int8 baselines would only restate ResNet50's
    # size; a transfer model's honest baseline ships the head alone.
    "transfer": [KERAS, KERAS_ZSTD, HEAD_FLOAT32, PAPER] + [_preset(q) for q in PRESETS]
    + [_preset("balanced", True)],
    # Issue 17's goal is about size: the default and the smallest preset, no calibration
    # (on 150x150 inputs it would probe every frozen tensor through InceptionV3).
    "transfer_inception": [KERAS, HEAD_FLOAT32, _preset("balanced"), _preset("small")],
}
RESULTS = {name: {} for name in PLAN}
CASES = {}


# ---------------------------------------------------------------- the benchmark


def _slug(method):
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")


@pytest.mark.parametrize(("case_name", "method"), [
    pytest.param(c, m, id=f"{c}-{_slug(m)}") for c, methods in PLAN.items() for m in methods])
def test_size_and_quality(benchmark, request, tmp_path, case_name, method):
    case = request.getfixturevalue(case_name)
    CASES[case_name] = case
    benchmark.group = f"encode: {case.title}"
    benchmark.name = method

    def timed(function):
        return benchmark.pedantic(function, rounds=1, iterations=1)

    out = METHODS[method](case, tmp_path, timed)
    quality = bl.output_quality(case.reference, out["outputs"], case.classifier)
    row = {
        "bytes": out["bytes"],
        "bits_per_weight": 8 * out["bytes"] / case.parameters,
        "of_float32": out["bytes"] / case.float32_bytes,
        "weight_relative_rmse": bl.weight_relative_rmse(case.originals, out["decoded"], case.keep),
        **quality,
        "encode_s": benchmark.stats.stats.median if benchmark.stats else None,
        "settings": out.get("settings"),
        "manifest_bytes": out["manifest"][0] if "manifest" in out else None,
        "manifest_text_bytes": out["manifest"][1] if "manifest" in out else None,
    }
    benchmark.extra_info.update(row)
    RESULTS[case_name][method] = row


@pytest.fixture(scope="module", autouse=True)
def _tables(request):
    yield
    text = report()
    complete = all(len(RESULTS[c]) == len(PLAN[c]) for c in PLAN)
    bl.publish(request.config, "bench_size", text, complete)


def report():
    parts = [bl.machine_description()]
    for name in PLAN:
        if name not in CASES or not RESULTS[name]:
            continue
        case = CASES[name]
        parts.append(_table(case, RESULTS[name]))
    parts.append(_goals())
    return "\n\n".join(parts)


def _table(case, rows):
    keras_bytes = rows.get(KERAS, {}).get("bytes")
    lines = [f"#### {case.title}", ""]
    facts = [f"{case.parameters:,} values ({bl.fmt_bytes(case.float32_bytes)} bytes as float32)"]
    if keras_bytes:
        facts.append(f"`.keras` file {bl.fmt_bytes(keras_bytes)} bytes")
    held = len(case.held_out)
    facts.append(f"quality on {held} held-out inputs")
    if case.name.startswith("transfer"):
        facts.append(f"head {case.head_parameters:,} values; the weight RMSE covers the head; "
                     f"the original predicts {case.predicted_classes} distinct classes on them; "
                     f"calibration: {TRANSFER_CALIBRATION} training inputs")
    else:
        facts.append(f"calibration: {len(case.calibration)} {'training images' if case.classifier else 'sequences'}")
    lines.append("; ".join(facts) + ".")
    lines.append("")
    header = ["method", "bytes", "manifest (raw)", "bits per weight", "of float32", "vs `.keras`",
              "weight rel. RMSE", "output cosine"]
    if case.classifier:
        header.append("top-1 agreement")
    header.append("encode s")
    table = []
    for method, r in rows.items():
        manifest = (f"{bl.fmt_bytes(r['manifest_bytes'])} ({bl.fmt_bytes(r['manifest_text_bytes'])})"
                    if r.get("manifest_bytes") is not None else "")
        row = [method, bl.fmt_bytes(r["bytes"]), manifest, f"{r['bits_per_weight']:.3f}", f"{r['of_float32']:.2%}",
               f"{keras_bytes / r['bytes']:.1f}x smaller" if keras_bytes else "",
               f"{r['weight_relative_rmse']:.4g}", f"{r['cosine']:.6f}"]
        if case.classifier:
            row.append(f"{r['top1_agreement']:.2%}")
        row.append(f"{r['encode_s']:.2f}" if r["encode_s"] is not None else "")
        table.append(row)
    lines.append(bl.markdown_table(header, table))
    return "\n".join(lines)


def _goals():
    rows = []
    cnn = RESULTS["digits_cnn"]
    if cnn:
        ok = {m: r for m, r in cnn.items() if r["top1_agreement"] >= 0.995 and r["of_float32"] <= 0.10}
        best = min(ok, key=lambda m: ok[m]["bytes"]) if ok else min(
            cnn, key=lambda m: (cnn[m]["of_float32"] > 0.10, -cnn[m]["top1_agreement"], cnn[m]["bytes"]))
        r = cnn[best]
        rows.append(["digits CNN: top-1 agreement >= 99.5% at <= 10% of float32 bytes",
                     f"{best}: {r['top1_agreement']:.2%} at {r['of_float32']:.2%}",
                     _status(ok),
                     ", ".join(ok) if ok else "none"])
    ht = RESULTS["heavy_tailed"]
    if ht and INT8 in ht:
        int8 = ht[INT8]
        ours = {m: r for m, r in ht.items() if m not in BASELINES}
        ratio = {m: int8["bytes"] / r["bytes"] for m, r in ours.items()}
        fine = {m for m, r in ours.items() if r["cosine"] >= 0.999 and r["bits_per_weight"] <= 5}
        at_least_int8 = {m for m, r in ours.items() if r["cosine"] >= int8["cosine"]}
        smaller = {m for m in at_least_int8 if ratio[m] >= 1.5}
        good = {m for m, r in ours.items() if r["cosine"] >= 0.999}
        best = min(good or ours, key=lambda m: ours[m]["bytes"])
        r = ours[best]
        rows.append(["heavy-tailed: output cosine >= 0.999 at <= 5 bits per weight",
                     f"{best}: cosine {r['cosine']:.6f} at {r['bits_per_weight']:.2f} bits "
                     "(the smallest with cosine >= 0.999)",
                     _status(fine), ", ".join(sorted(fine)) or "none"])
        best = max(at_least_int8 or ours, key=lambda m: ratio[m])
        r = ours[best]
        rows.append([f"heavy-tailed: >= 1.5x smaller than {INT8} (cosine {int8['cosine']:.6f}, "
                     f"{int8['bits_per_weight']:.2f} bits) at equal or better cosine",
                     f"{best}: {ratio[best]:.2f}x smaller, cosine {r['cosine']:.6f}",
                     _status(smaller), ", ".join(sorted(smaller)) or "none"])
        both = fine & smaller
        # The issue states two goals; one archive meeting both would need
        # cosine >= 0.999 at <= 6.29 / 1.5 = 4.19 bits. Shown for reference.
        rows.append(["heavy-tailed, stricter than the issue: one archive meeting both (cosine >= 0.999 "
                     "at <= 1/1.5 of int8's bits)", "", "met" if both else "not met",
                     ", ".join(sorted(both)) or "none"])
    tl = RESULTS["transfer"]
    if tl and KERAS in tl:
        kb = tl[KERAS]["bytes"]
        ok = {m: r for m, r in tl.items() if kb / r["bytes"] > 1000 and r["top1_agreement"] >= 0.995}
        pool = ok or {m: r for m, r in tl.items() if r["top1_agreement"] >= 0.995} or tl
        best = min(pool, key=lambda m: tl[m]["bytes"])
        r = tl[best]
        rows.append(["transfer: > 1000x smaller than its `.keras` with head agreement >= 99.5%",
                     f"{best}: {kb / r['bytes']:.0f}x smaller, {r['top1_agreement']:.2%}",
                     _status(ok), ", ".join(ok) if ok else "none"])
    ti = RESULTS["transfer_inception"]
    if ti and KERAS in ti:
        kb = ti[KERAS]["bytes"]
        ours = {m: r for m, r in ti.items() if m not in BASELINES}
        ok = {m: r for m, r in ours.items() if kb / r["bytes"] > 1200}
        if ours:
            best = min(ours, key=lambda m: ours[m]["bytes"])
            r = ours[best]
            rows.append(["transfer, the paper's shape (issue 17): > 1200x smaller than its `.keras`",
                         f"{best}: {kb / r['bytes']:.0f}x smaller, {r['top1_agreement']:.2%} (manifest "
                         f"{bl.fmt_bytes(r['manifest_bytes'])} bytes, {bl.fmt_bytes(r['manifest_text_bytes'])} raw)",
                         _status(ok), ", ".join(ok) if ok else "none"])
    return "#### Issue 7 and 17 goals\n\n" + bl.markdown_table(["goal", "best row", "status", "rows that meet it"],
                                                              rows)


def _status(rows_that_meet):
    return "met" if rows_that_meet else "**not met**"
