"""KerasHub models round-trip through `.wroll` archives: Gemma-, Llama- and
BERT-style backbones and their task models (causal LMs with a SentencePiece
tokenizer, a text classifier with a WordPiece one), in float32 and bfloat16.

No preset can be downloaded here, so every model is built from a tiny config
and every vocabulary is made offline: SentencePiece protos are trained on
docstrings of the standard library, the WordPiece vocabulary is their most
common words and characters.

The bounds were set before any archive was measured:
- a lossless archive (`tolerance=0.0`) gives back every variable, and so every
  output and every generated token, bit for bit;
- the default archive (`quality="balanced"`: a budget of weight error of 0.01,
  each tensor's share set by `_encode.spread_tolerance`, at most 0.02) decodes
  each tensor to exactly the error its manifest records, within its share;
  the loaded model holds exactly the decoded tensors; its outputs are within
  `OUTPUT_BOUND` (relative RMSE, 5x the preset) of the original's, and a
  trained classifier's predictions are all the same.
"""

import collections
import io
import json
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import _manifests
import weightroll
from weightroll import _encode
from weightroll._format import reader

keras_hub = pytest.importorskip("keras_hub")

WEIGHT_TOLERANCE = 0.01  # quality="balanced" without validation data
OUTPUT_BOUND = 0.05  # relative RMSE of the outputs under the default quality
VOCABULARY_SIZE = 256
DTYPES = ["float32", "bfloat16"]
# Tests over about two seconds are slow (CONTRIBUTING.md); the fast tier keeps
# the lossless bfloat16 backbones (about 1.3 s each).
BFLOAT16_FAST = [pytest.param("float32", marks=pytest.mark.slow), "bfloat16"]


# --- vocabularies, made offline ---------------------------------------------


def _corpus():
    """Lines of standard-library docstrings: real English text, no download."""
    lines = []
    for module in (collections, json, textwrap, zipfile, io):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name, None), "__doc__", None)
            if isinstance(doc, str):
                lines.extend(line.strip() for line in doc.splitlines() if line.strip())
    return lines


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


_PIECES = {  # the special pieces each tokenizer looks up by name
    "gemma": dict(pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                  pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>"),
    "llama": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                  unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>"),
}


@pytest.fixture(scope="module")
def protos(corpus):
    """A SentencePiece proto per causal-LM family, trained on the corpus."""
    spm = pytest.importorskip("sentencepiece")
    out = {}
    for family, pieces in _PIECES.items():
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=VOCABULARY_SIZE,
            model_type="unigram", normalization_rule_name="identity", num_threads=1,
            minloglevel=2, **pieces)
        out[family] = buffer.getvalue()
    return out


def _word_piece_vocabulary(corpus):
    words = collections.Counter(w for line in corpus for w in line.lower().split() if w.isalpha())
    chars = sorted({c for line in corpus for c in line.lower() if not c.isspace()})
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(300)]
    vocabulary += [c for c in chars if c not in vocabulary] + [f"##{c}" for c in chars]
    return vocabulary


# --- models ------------------------------------------------------------------


def _backbone(family, dtype, vocabulary_size=VOCABULARY_SIZE):
    keras.utils.set_random_seed(0)
    if family == "gemma":
        return keras_hub.models.GemmaBackbone(
            vocabulary_size=vocabulary_size, num_layers=2, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=64, intermediate_dim=128, head_dim=32, dtype=dtype)
    if family == "llama":
        return keras_hub.models.LlamaBackbone(
            vocabulary_size=vocabulary_size, num_layers=2, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=64, intermediate_dim=128, dtype=dtype)
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=32, dtype=dtype)


def _backbone_inputs(family, batch=4, length=12):
    rng = np.random.default_rng(7)
    lengths = np.array([length, length - 3, length - 5, 4])[:batch]
    x = {"token_ids": rng.integers(1, VOCABULARY_SIZE, (batch, length)).astype("int32"),
         "padding_mask": (np.arange(length) < lengths[:, None]).astype("int32")}
    if family == "bert":
        x["segment_ids"] = (np.arange(length) >= lengths[:, None] // 2).astype("int32")
    return x


def _causal_lm(family, dtype, proto):
    models = keras_hub.models
    tokenizer = (models.GemmaTokenizer if family == "gemma" else models.LlamaTokenizer)(proto=proto)
    preprocessor = (models.GemmaCausalLMPreprocessor if family == "gemma" else models.LlamaCausalLMPreprocessor)(
        tokenizer=tokenizer, sequence_length=16)
    backbone = _backbone(family, dtype, tokenizer.vocabulary_size())
    task = (models.GemmaCausalLM if family == "gemma" else models.LlamaCausalLM)(
        backbone=backbone, preprocessor=preprocessor)
    task.compile(sampler="greedy")
    return task


# --- measuring ---------------------------------------------------------------


def _numpy(x):
    """A variable, tensor or array as a numpy array."""
    return np.asarray(x.numpy() if isinstance(x, keras.Variable) else keras.ops.convert_to_numpy(x))


def _f64(x):
    return _numpy(x).astype(np.float64)


def _relative_rmse(reference, other):
    reference, other = _f64(reference), _f64(other)
    error, size = np.sum((other - reference) ** 2), np.sum(reference ** 2)
    if size == 0:  # a tensor of zeros (a Gemma norm's scale, a bias)
        return 0.0 if error == 0 else np.inf
    return float(np.sqrt(error / size))


def _outputs(model, x):
    """A model's outputs on `x` as a list of numpy arrays (a BERT backbone has two)."""
    return [_numpy(o) for o in keras.tree.flatten(model(x, training=False))]


def _unpadded(outputs, mask):
    """Outputs at unpadded positions only (a padded position's output means nothing)."""
    mask = np.asarray(mask).astype(bool)
    return np.concatenate([(o[mask] if o.shape[:2] == mask.shape else o).reshape(-1) for o in outputs])


def _bits(x):
    """The bytes of an array or a list of them, for bit-exact comparison (bfloat16 included)."""
    if isinstance(x, list):
        return [_bits(a) for a in x]
    a = _numpy(x)
    return a.dtype.name, a.shape, a.tobytes()


def _manifest(path):
    return _manifests.read(path)


def _assert_same_variables(original, loaded):
    assert len(loaded.weights) == len(original.weights)
    for a, b in zip(original.weights, loaded.weights):
        assert a.path == b.path and a.dtype == b.dtype
        assert _bits(a) == _bits(b), a.path


def _assert_stored_tolerance(model, path, tolerance):
    """Each decoded tensor keeps its dtype and is exactly as far from the
    model's as the manifest says, within its share of the preset `tolerance`
    (`_encode.spread_tolerance`). Returns them by path."""
    shares = _encode.spread_tolerance([(v.path, keras.ops.convert_to_numpy(v.value)) for v in model.weights],
                                      tolerance)
    manifest = _manifest(path)
    decoded = weightroll.unroll(path)
    originals = {v.path: v for v in model.weights}
    coded = 0
    for entry in manifest["tensors"]:
        original, array = originals[entry["path"]], decoded[entry["path"]]
        assert array.dtype.name == original.dtype  # bfloat16 stays bfloat16
        error = entry.get("error", {"relative_rmse": 0.0, "max_abs_error": 0.0})
        measured = _relative_rmse(original, array)
        assert measured <= shares[entry["path"]] * (1 + 1e-6), entry["path"]
        np.testing.assert_allclose(measured, error["relative_rmse"], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(np.max(np.abs(_f64(array) - _f64(original))), error["max_abs_error"],
                                   rtol=1e-5, atol=1e-12)
        coded += measured > 0
    assert coded, "no tensor was coded lossily: the test would prove nothing"
    return decoded


# --- backbones ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", BFLOAT16_FAST)
@pytest.mark.parametrize("family", ["gemma", "llama", "bert"])
def test_a_backbone_rolled_losslessly_loads_bit_exact(tmp_path, family, dtype):
    model = _backbone(family, dtype)
    x = _backbone_inputs(family)
    expected = _outputs(model, x)
    report = weightroll.roll(model, tmp_path / "b.wroll", tolerance=0.0)
    assert report.roll_value["weights"]["relative_rmse"] == 0.0
    loaded = weightroll.load_rolled(tmp_path / "b.wroll")
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    _assert_same_variables(model, loaded)
    assert _bits(_outputs(loaded, x)) == _bits(expected)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["gemma", "llama", "bert"])
def test_a_backbone_rolled_at_the_default_quality_meets_its_stored_tolerance(tmp_path, family, dtype):
    model = _backbone(family, dtype)
    x = _backbone_inputs(family)
    expected = _outputs(model, x)
    report = weightroll.roll(model, tmp_path / "b.wroll")
    assert report.settings == {"tolerance": WEIGHT_TOLERANCE, "quality": "balanced", "spread": _encode.SPREAD_CAP}
    decoded = _assert_stored_tolerance(model, tmp_path / "b.wroll", WEIGHT_TOLERANCE)
    loaded = weightroll.load_rolled(tmp_path / "b.wroll")
    for v in loaded.weights:
        assert _bits(v) == _bits(decoded[v.path]), v.path
    got = _outputs(loaded, x)
    assert [o.dtype for o in got] == [o.dtype for o in expected]
    mask = x["padding_mask"]
    assert _relative_rmse(_unpadded(expected, mask), _unpadded(got, mask)) <= OUTPUT_BOUND


# --- causal LMs: SentencePiece tokenizers ------------------------------------

PROMPTS = ["Return a new", "The default"]


def _logits(task, x):
    """A causal LM's logits on preprocessed inputs (`predict` would preprocess them again)."""
    return _numpy(task(x, training=False))


def _generated_tokens(task, prompts, max_length=16):
    """The token ids `generate` produces (greedy), preprocessing as it does."""
    x = task.preprocessor.generate_preprocess(prompts, sequence_length=max_length)
    out = task.make_generate_function()(x, stop_token_ids=[task.preprocessor.tokenizer.end_token_id])
    return _numpy(out["token_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_a_causal_lm_rolled_losslessly_generates_the_same_tokens(tmp_path, protos, family, dtype):
    task = _causal_lm(family, dtype, protos[family])
    text, tokens = task.generate(PROMPTS, max_length=16), _generated_tokens(task, PROMPTS)
    weightroll.roll(task, tmp_path / "lm.wroll", tolerance=0.0)

    # The tokenizer's proto travels as the asset Keras saves for it, byte for byte.
    asset = "preprocessor/tokenizer/vocabulary.spm"
    assert _manifest(tmp_path / "lm.wroll")["assets"] == [{"path": asset, "size": len(protos[family])}]
    with reader.RolledArchive(tmp_path / "lm.wroll") as archive:
        assert archive.assets() == {asset: protos[family]}

    loaded = weightroll.load_rolled(tmp_path / "lm.wroll")
    assert type(loaded) is type(task)
    assert loaded.preprocessor.tokenizer.proto == protos[family]
    assert loaded.backbone.dtype_policy.name == task.backbone.dtype_policy.name
    _assert_same_variables(task, loaded)
    loaded.compile(sampler="greedy")  # a CausalLM's compile() is custom: Keras does not restore it
    np.testing.assert_array_equal(_generated_tokens(loaded, PROMPTS), tokens)
    assert loaded.generate(PROMPTS, max_length=16) == text


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_a_causal_lm_rolled_at_the_default_quality_gives_close_logits(tmp_path, corpus, protos, family, dtype):
    task = _causal_lm(family, dtype, protos[family])
    x, _, _ = task.preprocessor(corpus[:8])
    expected = _logits(task, x)
    weightroll.roll(task, tmp_path / "lm.wroll")
    _assert_stored_tolerance(task, tmp_path / "lm.wroll", WEIGHT_TOLERANCE)
    loaded = weightroll.load_rolled(tmp_path / "lm.wroll")
    assert loaded.preprocessor.tokenizer.proto == protos[family]
    mask = x["padding_mask"]
    assert _relative_rmse(_unpadded([expected], mask), _unpadded([_logits(loaded, x)], mask)) <= OUTPUT_BOUND


# --- a text classifier: a WordPiece tokenizer --------------------------------


def _classifier(dtype, vocabulary, preprocessor=None):
    backbone = _backbone("bert", dtype, len(vocabulary))
    return keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=preprocessor, dropout=0.0)


def _labels(sentences):
    """A rule a tiny BERT learns: mentions of returning, else of "the", else neither."""
    return np.array([0 if "return" in s.lower() else 1 if "the" in s.lower().split() else 2 for s in sentences])


@pytest.fixture(scope="module")
def trained_classifier(corpus):
    """`(vocabulary, sentences, trained float32 weights)`: trained on
    preprocessed tensors (fast), so that predictions have margins and
    "the same predictions" means something."""
    vocabulary = _word_piece_vocabulary(corpus)
    sentences = corpus[:: max(1, len(corpus) // 96)][:96]
    preprocessor = _preprocessor(vocabulary)
    x = {k: np.asarray(v) for k, v in preprocessor(sentences).items()}
    model = _classifier("float32", vocabulary)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, _labels(sentences), epochs=30, batch_size=32, verbose=0)
    return vocabulary, sentences, model.get_weights()


def _preprocessor(vocabulary):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer=tokenizer, sequence_length=24)


def _trained(dtype, trained_classifier):
    vocabulary, _, weights = trained_classifier
    model = _classifier(dtype, vocabulary, _preprocessor(vocabulary))
    model.set_weights(weights)
    return model


def _classify(model, sentences):
    """Logits for raw sentences, through the model's own preprocessor (a direct
    call: `predict` runs the tokenizer in a tf.data pipeline, 8 s each here)."""
    return _numpy(model(model.preprocessor(sentences), training=False))


def _assert_vocabulary_asset(path, vocabulary):
    asset = "preprocessor/tokenizer/vocabulary.txt"
    text = "".join(f"{token}\n" for token in vocabulary).encode()
    assert _manifest(path)["assets"] == [{"path": asset, "size": len(text)}]
    with reader.RolledArchive(path) as archive:
        assert archive.assets() == {asset: text}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_text_classifier_rolled_losslessly_predicts_bit_exact(tmp_path, trained_classifier, dtype):
    model = _trained(dtype, trained_classifier)
    vocabulary, sentences, _ = trained_classifier
    expected = model.predict(sentences, verbose=0)
    weightroll.roll(model, tmp_path / "c.wroll", tolerance=0.0)
    _assert_vocabulary_asset(tmp_path / "c.wroll", vocabulary)
    loaded = weightroll.load_rolled(tmp_path / "c.wroll")
    assert loaded.preprocessor.tokenizer.get_vocabulary() == vocabulary
    _assert_same_variables(model, loaded)
    assert _bits(loaded.predict(sentences, verbose=0)) == _bits(expected)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_text_classifier_rolled_at_the_default_quality_predicts_the_same(tmp_path, trained_classifier, dtype):
    model = _trained(dtype, trained_classifier)
    vocabulary, sentences, _ = trained_classifier
    expected = _classify(model, sentences)
    assert (expected.argmax(-1) == _labels(sentences)).mean() >= 0.9  # it learnt: predictions have margins
    weightroll.roll(model, tmp_path / "c.wroll")
    _assert_stored_tolerance(model, tmp_path / "c.wroll", WEIGHT_TOLERANCE)
    _assert_vocabulary_asset(tmp_path / "c.wroll", vocabulary)
    got = _classify(weightroll.load_rolled(tmp_path / "c.wroll"), sentences)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert _relative_rmse(expected, got) <= OUTPUT_BOUND


@pytest.mark.slow
def test_a_lossless_archive_loads_as_keras_load_model_loads_the_keras_file(tmp_path, trained_classifier):
    model = _trained("bfloat16", trained_classifier)
    _, sentences, _ = trained_classifier
    model.save(tmp_path / "c.keras")
    weightroll.roll(model, tmp_path / "c.wroll", tolerance=0.0)
    from_keras = keras.models.load_model(tmp_path / "c.keras")
    from_wroll = weightroll.load_rolled(tmp_path / "c.wroll")
    _assert_same_variables(from_keras, from_wroll)
    assert from_wroll.get_config() == from_keras.get_config()
    assert _bits(_classify(from_wroll, sentences)) == _bits(_classify(from_keras, sentences))
