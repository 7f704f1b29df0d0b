"""Small Keras models shared by the tests (built with fixed seeds)."""

import keras
import numpy as np

SEQ_LEN = 12
VOCAB = 50
FEATURES = 16


@keras.saving.register_keras_serializable(package="weightroll_tests")
class TinySubclassed(keras.Model):
    def __init__(self, units=48, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.norm = keras.layers.LayerNormalization()
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.norm(self.hidden(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def sequential_cnn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.2, seed=7),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="seq_cnn",
    )
    return model, np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")


def functional_text():
    keras.utils.set_random_seed(2)
    tokens = keras.Input((SEQ_LEN,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, FEATURES)(tokens)
    attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(x + attn)
    x = keras.layers.LSTM(12)(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model(tokens, out, name="func_text")
    return model, np.random.default_rng(0).integers(0, VOCAB, size=(32, SEQ_LEN)).astype("int32")


def subclassed():
    keras.utils.set_random_seed(3)
    model = TinySubclassed()
    x = np.random.default_rng(0).normal(size=(16, 10)).astype("float32")
    model(x)
    return model, x


HT_VOCAB, HT_WIDTH, HT_FFN, HT_BLOCKS, HT_SEQ = 1000, 128, 512, 2, 16


def heavy_tailed_transformer(seed=0):
    """A transformer-like encoder whose kernels are heavy-tailed, as trained ones are.

    Every kernel and the token embedding is Student-t (3 degrees of freedom)
    at Glorot scale, and each feed-forward matrix has a few planted values of
    100 standard deviations. The output is a mean-pooled embedding, compared
    by cosine. Returns `(model, token_batch)`.
    """
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((HT_SEQ,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(HT_VOCAB, HT_WIDTH, name="tok_embed")(tokens)
    for b in range(HT_BLOCKS):
        h = keras.layers.LayerNormalization(name=f"ln_a{b}")(x)
        h = keras.layers.MultiHeadAttention(4, HT_WIDTH // 4, name=f"attn{b}")(h, h)
        x = keras.layers.Add(name=f"res_a{b}")([x, h])
        h = keras.layers.LayerNormalization(name=f"ln_f{b}")(x)
        h = keras.layers.Dense(HT_FFN, activation="gelu", name=f"ffn_in{b}")(h)
        h = keras.layers.Dense(HT_WIDTH, name=f"ffn_out{b}")(h)
        x = keras.layers.Add(name=f"res_f{b}")([x, h])
    out = keras.layers.GlobalAveragePooling1D(name="pool")(keras.layers.LayerNormalization(name="ln_out")(x))
    model = keras.Model(tokens, out, name="heavy_tailed_transformer")
    rng = np.random.default_rng(seed)
    for v in model.variables:
        shape = tuple(v.shape)
        if len(shape) < 2 or not v.path.endswith(("kernel", "embeddings")):
            continue
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        std = np.sqrt(2.0 / (fan_in + fan_out))
        w = rng.standard_t(3, size=shape) * std / np.sqrt(3.0)
        if "ffn" in v.path:
            w.reshape(-1)[rng.choice(w.size, 8, replace=False)] = 100 * std * rng.choice([-1, 1], 8)
        v.assign(w.astype("float32"))
    batch = rng.integers(0, HT_VOCAB, size=(256, HT_SEQ)).astype("int32")
    return model, batch


DIGITS_EPOCHS = 12
DIGITS_TEST_FRACTION = 0.25


def trained_digits_cnn(name="digits_cnn"):
    """A small CNN trained on scikit-learn's bundled digits (no download).

    Returns:
        `(model, (x_train, y_train), (x_test, y_test), test_accuracy)`.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    split = int(len(x) * (1 - DIGITS_TEST_FRACTION))
    train, test = order[:split], order[split:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.3, seed=0),
        keras.layers.Dense(10, activation="softmax"),
    ], name=name)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=DIGITS_EPOCHS, batch_size=64, verbose=0)
    accuracy = model.evaluate(x[test], y[test], verbose=0)[1]
    return model, (x[train], y[train]), (x[test], y[test]), accuracy
