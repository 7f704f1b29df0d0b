"""`weightroll demo` (and `examples/demo.py`): train a small classifier on
generated clusters, roll it with calibration data, load it back, and print
what rolling cost and how the loaded model agrees on held-out samples."""

import os
import tempfile

from weightroll import _progress
from weightroll._command import import_keras, parameters, require_writable

# The demo (the README's, as in examples/demo.py): a classifier of generated
# clusters, small enough to train in seconds on two cores.
DEMO_SAMPLES, DEMO_TRAIN, DEMO_FEATURES, DEMO_CLASSES = 4000, 3000, 64, 10
DEMO_UNITS = (512, 256)
DEMO_EPOCHS = 5
DEMO_CALIBRATION = 256  # training samples the roll is calibrated on


def run(args):
    import numpy as np

    import weightroll

    if args.out:
        require_writable(args.out)
    show = not args.quiet
    keras = import_keras(args.debug)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(DEMO_CLASSES, DEMO_FEATURES))
    y = rng.integers(0, DEMO_CLASSES, size=DEMO_SAMPLES)
    x = (centres[y] + rng.normal(scale=1.5, size=(DEMO_SAMPLES, DEMO_FEATURES))).astype("float32")
    x_test = x[DEMO_TRAIN:]

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((DEMO_FEATURES,))]
        + [keras.layers.Dense(units, activation="relu") for units in DEMO_UNITS]
        + [keras.layers.Dense(DEMO_CLASSES, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    on_epoch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: _progress.advance(1, f"loss {logs['loss']:.3f}"))
    with _progress.task("Training", total=DEMO_EPOCHS, unit="epochs", enabled=show):
        model.fit(x[:DEMO_TRAIN], y[:DEMO_TRAIN], epochs=DEMO_EPOCHS, batch_size=64, verbose=0,
                  callbacks=[on_epoch])

    with tempfile.TemporaryDirectory(prefix="weightroll-demo-") as folder:
        keras_path = os.path.join(folder, "model.keras")
        wroll_path = args.out or os.path.join(folder, "model.wroll")
        model.save(keras_path)
        keras_bytes = os.path.getsize(keras_path)
        # Calibrate on training samples; agreement is then measured on samples
        # that neither training nor rolling saw.
        with _progress.task("Rolling", total=parameters(model), enabled=show):
            report = weightroll.roll(model, wroll_path, validation_data=x[:DEMO_CALIBRATION])
        loaded = weightroll.load_rolled(wroll_path)
    agree = np.mean(np.argmax(loaded.predict(x_test, verbose=0), -1) == np.argmax(model.predict(x_test, verbose=0), -1))
    if show:
        print(report)
        print(f".keras file: {keras_bytes:,} bytes; .wroll archive: {report.archive_bytes:,} bytes "
              f"({keras_bytes / report.archive_bytes:.1f}x smaller).")
        print(f"Loaded model agrees with the original on {agree:.2%} of {len(x_test)} held-out samples "
              f"(calibrated on {DEMO_CALIBRATION} training samples).")
        if args.out:
            print(f"Wrote {args.out}")
    return 0
