"""Train a small model on generated data, roll it, load it back, print what it cost.

Run: python examples/demo.py   (about 10 seconds on 2 CPU cores, no downloads)
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import weightroll  # noqa: E402

SAMPLES, FEATURES, CLASSES = 4000, 64, 10


def main():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=SAMPLES)
    x = (centres[y] + rng.normal(scale=1.5, size=(SAMPLES, FEATURES))).astype("float32")

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:3000], y[:3000], epochs=5, batch_size=64, verbose=0)

    with tempfile.TemporaryDirectory() as folder:
        keras_path = os.path.join(folder, "model.keras")
        wroll_path = os.path.join(folder, "model.wroll")
        model.save(keras_path)
        report = weightroll.roll(model, wroll_path, validation_data=x[3000:])
        loaded = weightroll.load_rolled(wroll_path)
        agree = np.mean(
            np.argmax(loaded.predict(x[3000:], verbose=0), -1) == np.argmax(model.predict(x[3000:], verbose=0), -1)
        )
        keras_bytes = os.path.getsize(keras_path)
        print(report)
        print(f".keras file: {keras_bytes:,} bytes; .wroll archive: {report.archive_bytes:,} bytes "
              f"({keras_bytes / report.archive_bytes:.1f}x smaller).")
        print(f"Loaded model agrees with the original on {agree:.2%} of {SAMPLES - 3000} held-out samples.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
