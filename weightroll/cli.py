"""The `weightroll` command: roll, unroll and inspect archives, run the demo.

    weightroll roll MODEL.keras OUT.wroll [--decoder {codebook,mlp}]
                    [--bits N | --quality PRESET | --tolerance T]
                    [--validation-data X.npy] [--batch-size N] [--base BASE.keras] [--unsafe]
    weightroll unroll IN.wroll OUT.keras [--base BASE.keras] [--unsafe]
    weightroll inspect ARCHIVE [--json] [--verify] [--image OUT.png] [--tensors]
    weightroll demo [--out DEMO.wroll]

Every command takes `--quiet` (print nothing but errors) and `--debug` (show
tracebacks and TensorFlow's own logging). Exit status: 0 done, 1 a bad archive,
model or file, 2 a usage error. Keras is imported only by the commands that need
it, so `inspect` starts instantly and works without Keras installed.
"""

import argparse
import errno
import math
import os
import re
import sys
import tempfile
import traceback

from weightroll import _progress
from weightroll.errors import UnsafeArchiveError, WrollError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")

# The demo (the README's, as in examples/demo.py): a classifier of generated
# clusters, small enough to train in seconds on two cores.
DEMO_SAMPLES, DEMO_TRAIN, DEMO_FEATURES, DEMO_CLASSES = 4000, 3000, 64, 10
DEMO_UNITS = (512, 256)
DEMO_EPOCHS = 5
DEMO_CALIBRATION = 256  # training samples the roll is calibrated on

# TensorFlow 2.21 writes these lines to fd 2 while it is imported, whatever
# TF_CPP_MIN_LOG_LEVEL says (its logger is not set up yet). Only they are
# dropped; anything else written during the import is passed on.
_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# --- shared by every command (and by tools/inspect_wroll) ---------------------------


def add_common_arguments(parser, inherited=False):
    """`--quiet` and `--debug`. With `inherited=True` (a subcommand), a flag left
    out keeps the value given before the subcommand's name."""
    default = argparse.SUPPRESS if inherited else False
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print nothing but errors (no progress, no report)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on error, show the full traceback; keep TensorFlow's logging")


def run_parser(parser, argv=None):
    """Parse `argv` and run `args.func(args)`, turning failures into exit codes.

    An error prints one line, `PROG: error: MESSAGE`, on stderr (with the
    traceback before it under `--debug`). Returns 0, 1 (failure) or 2 (usage).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
        if debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {_message(e, debug)}", file=sys.stderr)
        return 1


def _message(error, debug):
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {os.fsdecode(error.filename)!r}"
    elif isinstance(error, (WrollError, OSError)):
        text = str(error)
    else:  # not ours: say what it was, and where to see more
        text = f"{type(error).__name__}: {error}"
        if not debug:
            text += " (run with --debug for the traceback)"
    # One line, nothing that could steer the terminal, bounded.
    text = _ANSI_ESCAPE.sub("", text)  # Keras colours some of its messages
    text = " ".join("".join(c if c.isprintable() or c.isspace() else "?" for c in text).split())
    return text if len(text) <= 2000 else text[:1997] + "..."


def _path_ending(*suffixes):
    def check(text):
        if not text.endswith(suffixes):
            raise argparse.ArgumentTypeError(
                f"expected a path ending in {' or '.join(suffixes)}; received {text!r}"
            )
        return text
    return check


def _int_from(low, high=None):
    def check(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {span}; received {text!r}")
        return value
    return check


def _require_file(path):
    """Fail fast, before Keras's slow import, on a path that is not a file."""
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _import_keras(debug):
    """`import keras`, without the lines TensorFlow prints while it loads.

    TensorFlow's native logging is also turned down to errors-only
    (`TF_CPP_MIN_LOG_LEVEL=3`) unless the user set it or passed `--debug`.
    """
    if debug or "keras" in sys.modules:
        import keras

        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to borrow
        import keras

        return keras
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not _IMPORT_NOISE.match(line):
                    sys.stderr.write(line)
    return keras


def _parameters(model):
    return sum(math.prod(v.shape) for v in model.variables)


# --- roll ------------------------------------------------------------------------------


def _load_model(keras, path, unsafe):
    try:
        return keras.models.load_model(path, safe_mode=not unsafe)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a file it cannot load
        if "safe_mode" in str(e):
            raise UnsafeArchiveError(
                f"Loading '{path}' would run code stored in it: {e} On the command line, "
                "pass --unsafe instead, and only for a file from a source you trust."
            ) from e
        raise WrollError(
            f"Keras cannot load '{path}': {type(e).__name__}: {e} If the model uses custom "
            "layers, roll it from Python with `weightroll.roll(model, ...)`, where they are importable."
        ) from e


def _load_npy(path):
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise WrollError(
            f"--validation-data: '{path}' is not a plain .npy array ({e}). Save the model's "
            "inputs with `numpy.save`; arrays of Python objects are refused because loading "
            "them would unpickle code."
        ) from None
    if not isinstance(data, np.ndarray):  # an .npz archive
        data.close()
        raise WrollError(f"--validation-data: '{path}' holds several arrays (.npz); give one .npy array.")
    return data


def _roll(args):
    import weightroll

    for path in (args.model, args.base):
        if path is not None:
            _require_file(path)
    validation = _load_npy(args.validation_data) if args.validation_data else None
    show = not args.quiet
    with _progress.task(f"Loading {os.path.basename(args.model)}", enabled=show):
        keras = _import_keras(args.debug)
        model = _load_model(keras, args.model, args.unsafe)
    # Only the options given: `roll`'s own defaults apply to the others.
    options = {k: getattr(args, k) for k in ("bits", "quality", "tolerance", "output_tolerance", "base")
               if getattr(args, k) is not None}
    with _progress.task("Rolling", total=_parameters(model), enabled=show):
        report = weightroll.roll(model, args.out, decoder=args.decoder, validation_data=validation,
                                 batch_size=args.batch_size, **options)
    if show:
        print(f"Wrote {args.out}")
        print(report)
    return 0


# --- unroll ----------------------------------------------------------------------------


def _unroll(args):
    import weightroll
    from weightroll._archive import RolledArchive

    for path in (args.archive, args.base):
        if path is not None:
            _require_file(path)
    with RolledArchive(args.archive) as archive:  # a bad archive fails now, not after Keras has loaded
        references = sum(t["storage"] == "reference" for t in archive.manifest["tensors"])
    if references and args.base is None:
        raise WrollError(
            f"'{args.archive}' stores {references} tensors as references to the base model it was "
            "rolled against; pass that model with --base BASE.keras."
        )
    options = {"base": args.base} if args.base is not None else {}
    show = not args.quiet
    with _progress.task(f"Loading {os.path.basename(args.archive)}", enabled=show):
        _import_keras(args.debug)
        try:
            model = weightroll.load_rolled(args.archive, safe_mode=not args.unsafe, **options)
        except UnsafeArchiveError as e:
            raise UnsafeArchiveError(
                f"{e} On the command line, pass --unsafe instead, and only for an archive "
                "from a source you trust."
            ) from e
    with _progress.task(f"Writing {os.path.basename(args.out)}", enabled=show):
        model.save(args.out)
    if show:
        print(f"Wrote {args.out} ({os.path.getsize(args.out):,} bytes): model '{model.name}' "
              f"({type(model).__name__}), {_parameters(model):,} parameters")
    return 0


# --- demo ------------------------------------------------------------------------------


def _demo(args):
    import numpy as np

    import weightroll

    show = not args.quiet
    keras = _import_keras(args.debug)
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
        with _progress.task("Rolling", total=_parameters(model), enabled=show):
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


# --- the parser ------------------------------------------------------------------------


def build_parser():
    from weightroll import __version__, inspect

    parser = argparse.ArgumentParser(
        prog="weightroll",
        description="Roll Keras models into small .wroll archives and back, and look inside them.",
    )
    parser.add_argument("--version", action="version", version=f"weightroll {__version__}")
    add_common_arguments(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    roll = commands.add_parser("roll", help="roll a saved Keras model (.keras or legacy .h5) into an archive",
                               description="Roll a saved Keras model (.keras, or legacy .h5) into a .wroll archive.")
    roll.add_argument("model", metavar="MODEL.keras", type=_path_ending(*MODEL_SUFFIXES),
                      help="the saved model (.keras, .h5 or .hdf5)")
    roll.add_argument("out", metavar="OUT.wroll", type=_path_ending(".wroll"), help="the archive to write")
    roll.add_argument("--decoder", choices=("codebook", "mlp"), default="codebook",
                      help="codebook: table look-up, exact for its codes (default); mlp: the 2019 paper's "
                           "global grid and small network")
    rate = roll.add_mutually_exclusive_group()
    rate.add_argument("--bits", type=_int_from(1, 8), metavar="N",
                      help="a fixed code width, 1 to 8: a k-means table of at most 2**N values per tensor")
    rate.add_argument("--quality", choices=("lossless-ish", "balanced", "small"),
                      help="a preset tolerance (default: balanced); with --validation-data, an output tolerance")
    rate.add_argument("--tolerance", type=float, metavar="T",
                      help="the largest relative RMSE allowed per tensor, e.g. 0.02")
    rate.add_argument("--output-tolerance", type=float, metavar="T",
                      help="with --validation-data: the largest relative RMSE of the outputs (e.g. 0.04); "
                           "bits go where the outputs are sensitive")
    roll.add_argument("--validation-data", metavar="X.npy",
                      help="model inputs in a .npy file; the rolled model's outputs on them are "
                           "compared with the original's and stored in the roll value")
    roll.add_argument("--batch-size", type=_int_from(1), metavar="N",
                      help="batch size for those predictions (default: Keras's 32)")
    roll.add_argument("--base", metavar="BASE.keras",
                      help="a base model (.keras, .weights.h5 or .h5); tensors identical to its own are "
                           "stored as references (fine-tuned models); unroll then needs the same --base")
    roll.add_argument("--unsafe", action="store_true",
                      help="allow loading a model that carries code (e.g. a Lambda layer); "
                           "only for files from a source you trust")
    roll.set_defaults(func=_roll)

    unroll = commands.add_parser("unroll", help="turn an archive back into a Keras model file",
                                 description="Decode a .wroll archive into a normal Keras model file.")
    unroll.add_argument("archive", metavar="IN.wroll", help="the archive to read")
    unroll.add_argument("out", metavar="OUT.keras", type=_path_ending(".keras", ".h5"),
                        help="the model file to write (.keras, or legacy .h5)")
    unroll.add_argument("--base", metavar="BASE.keras",
                        help="the base model the archive was rolled against with --base")
    unroll.add_argument("--unsafe", action="store_true",
                        help="allow an architecture that carries code (e.g. a Lambda layer); "
                             "only for archives from a source you trust")
    unroll.set_defaults(func=_unroll)

    look = commands.add_parser("inspect", help="see inside an archive (same as tools/inspect_wroll)",
                               description="See inside a .wroll archive without decoding its weights "
                                           "(unless --verify or --image asks for it).")
    inspect.add_arguments(look)
    look.set_defaults(func=inspect.run)

    demo = commands.add_parser("demo", help="train a small model, roll it, load it back, compare",
                               description="Train a small classifier on generated data, roll it, load it "
                                           "back and compare sizes and predictions (a few seconds).")
    demo.add_argument("--out", metavar="DEMO.wroll", type=_path_ending(".wroll"),
                      help="keep the archive at this path (default: a temporary folder)")
    demo.set_defaults(func=_demo)

    for command in (roll, unroll, look, demo):
        add_common_arguments(command, inherited=True)
    return parser


def main(argv=None):
    """Run the `weightroll` command line; returns the exit status."""
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
