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
