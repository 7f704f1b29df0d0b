"""The `weightroll` command: roll, unroll and inspect archives, run the demo.

    weightroll roll MODEL.keras OUT.wroll [--decoder {codebook,mlp}]
                    [--bits N | --quality PRESET | --tolerance T]
                    [--validation-data X.npy] [--batch-size N] [--base BASE.keras] [--unsafe]
    weightroll unroll IN.wroll OUT.keras [--base BASE.keras] [--unsafe]
    weightroll export IN.wroll OUT_DIR [--base BASE.keras] [--unsafe]
    weightroll inspect ARCHIVE [--json] [--verify] [--image OUT.png] [--tensors]
    weightroll demo [--out DEMO.wroll]

Every command takes `--quiet` (print nothing but errors) and `--debug` (show
tracebacks and TensorFlow's own logging). Exit status: 0 done, 1 a bad archive,
model or file, 2 a usage error. Keras is imported only by the commands that need
it, so `inspect` starts instantly and works without Keras installed.
"""

import argparse
import os
import re
import sys

from weightroll import _command, _demo, _progress
from weightroll.errors import UnsafeArchiveError, WrollError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")

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
        unknown = _unknown_class(e)
        if unknown is not None:
            raise WrollError(
                f"Keras cannot load '{path}': it uses the custom {unknown}, which is not registered in "
                "this process. Roll it from Python instead, after importing the code that defines it "
                "(decorated with @keras.saving.register_keras_serializable()): "
                "weightroll.roll(model, 'OUT.wroll')."
            ) from e
        raise WrollError(
            f"Keras cannot load '{path}': {type(e).__name__}: {e} If the model uses custom "
            "layers, roll it from Python with `weightroll.roll(model, ...)`, where they are importable."
        ) from e


# Keras's words for a class or function its registry does not know.
_UNKNOWN_CLASS = re.compile(r"Could not locate (class|function) '([^']{1,200})'")


def _unknown_class(error):
    """`"class 'Name'"` when `error` (or an exception it was raised from) says that
    Keras could not find a custom class or function, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        match = _UNKNOWN_CLASS.search(str(error))
        if match:
            return f"{match.group(1)} '{match.group(2)}'"
        error = error.__cause__ or error.__context__
    return None


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
            _command.require_file(path)
    _command.require_writable(args.out)
    validation = _load_npy(args.validation_data) if args.validation_data else None
    show = not args.quiet
    with _progress.task(f"Loading {os.path.basename(args.model)}", enabled=show):
        keras = _command.import_keras(args.debug)
        model = _load_model(keras, args.model, args.unsafe)
    if validation is not None:
        from weightroll._keras.inputs import check_inputs

        check_inputs(model, validation, what=f"--validation-data '{args.validation_data}'")
    # Only the options given: `roll`'s own defaults apply to the others.
    options = {k: getattr(args, k) for k in ("bits", "quality", "tolerance", "output_tolerance", "base")
               if getattr(args, k) is not None}
    with _progress.task("Rolling", total=_command.parameters(model), enabled=show):
        report = weightroll.roll(model, args.out, decoder=args.decoder, validation_data=validation,
                                 batch_size=args.batch_size, **options)
    if show:
        print(f"Wrote {args.out}")
        print(report)
    return 0


# --- unroll ----------------------------------------------------------------------------


def _load_archive(args, out_is_folder=False):
    """`load_rolled` for `unroll` and `export`: a bad archive, a missing
    `--base` or an output that cannot be written fails before Keras is imported."""
    import weightroll
    from weightroll._format.reader import RolledArchive

    for path in (args.archive, args.base):
        if path is not None:
            _command.require_file(path)
    with RolledArchive(args.archive) as archive:  # a bad archive fails now, not after Keras has loaded
        references = sum(t["storage"] == "reference" for t in archive.manifest["tensors"])
    if references and args.base is None:
        raise WrollError(
            f"'{args.archive}' stores {references} tensors as references to the base model it was "
            "rolled against; pass that model with --base BASE.keras."
        )
    _command.require_writable(args.out, folder=out_is_folder)
    options = {"base": args.base} if args.base is not None else {}
    with _progress.task(f"Loading {os.path.basename(args.archive)}", enabled=not args.quiet):
        _command.import_keras(args.debug)
        try:
            return weightroll.load_rolled(args.archive, safe_mode=not args.unsafe, **options)
        except UnsafeArchiveError as e:
            raise UnsafeArchiveError(
                f"{e} On the command line, pass --unsafe instead, and only for an archive "
                "from a source you trust."
            ) from e
        except WrollError as e:
            unknown = _unknown_class(e)
            if unknown is None:
                raise
            raise WrollError(
                f"'{args.archive}' uses the custom {unknown}, which is not registered in this process. "
                "Load it from Python instead, after importing the code that defines it: "
                "weightroll.load_rolled(path, custom_objects=...)."
            ) from e


def _unroll(args):
    model = _load_archive(args)
    with _progress.task(f"Writing {os.path.basename(args.out)}", enabled=not args.quiet):
        folder = os.path.dirname(args.out)
        if folder:
            os.makedirs(folder, exist_ok=True)
        model.save(args.out)
    if not args.quiet:
        print(f"Wrote {args.out} ({os.path.getsize(args.out):,} bytes): model '{model.name}' "
              f"({type(model).__name__}), {_command.parameters(model):,} parameters")
    return 0


# --- export ----------------------------------------------------------------------------


def _export(args):
    model = _load_archive(args, out_is_folder=True)
    with _progress.task(f"Exporting to {os.path.basename(os.path.normpath(args.out))}", enabled=not args.quiet):
        try:
            model.export(args.out, format="tf_saved_model", verbose=False)
        except ImportError as e:  # another backend, without TensorFlow
            raise WrollError(f"Exporting a TensorFlow SavedModel needs TensorFlow installed ({e}).") from e
    if not args.quiet:
        print(f"Wrote {args.out}: a TensorFlow SavedModel of model '{model.name}' ({type(model).__name__}, "
              f"{_command.parameters(model):,} parameters); its 'serve' endpoint and 'serving_default' "
              "signature run inference (TensorFlow Serving, tf.saved_model.load).")
    return 0


# --- the parser ------------------------------------------------------------------------


def build_parser():
    from weightroll import __version__
    from weightroll.inspection import command as inspect_command

    parser = argparse.ArgumentParser(
        prog="weightroll",
        description="Roll Keras models into small .wroll archives and back, and look inside them.",
    )
    parser.add_argument("--version", action="version", version=f"weightroll {__version__}")
    _command.add_common_arguments(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    roll = commands.add_parser("roll", help="roll a saved Keras model (.keras or legacy .h5) into an archive",
                               description="Roll a saved Keras model (.keras, or legacy .h5) into a .wroll archive.")
    roll.add_argument("model", metavar="MODEL.keras", type=_command.path_ending(*MODEL_SUFFIXES),
                      help="the saved model (.keras, .h5 or .hdf5)")
    roll.add_argument("out", metavar="OUT.wroll", type=_command.path_ending(".wroll"), help="the archive to write")
    roll.add_argument("--decoder", choices=("codebook", "mlp"), default="codebook",
                      help="codebook: table look-up, exact for its codes (default); mlp: the 2019 paper's "
                           "global grid and small network")
    rate = roll.add_mutually_exclusive_group()
    rate.add_argument("--bits", type=_command.int_from(1, 8), metavar="N",
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
    roll.add_argument("--batch-size", type=_command.int_from(1), metavar="N",
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
    unroll.add_argument("out", metavar="OUT.keras", type=_command.path_ending(".keras", ".h5"),
                        help="the model file to write (.keras, or legacy .h5)")
    _add_archive_loading_options(unroll)
    unroll.set_defaults(func=_unroll)

    export = commands.add_parser(
        "export", help="turn an archive into a TensorFlow SavedModel (for TensorFlow Serving)",
        description="Decode a .wroll archive and write the model as a TensorFlow SavedModel with Keras's "
                    "own model.export(OUT_DIR): ready for TensorFlow Serving, or tf.saved_model.load.")
    export.add_argument("archive", metavar="IN.wroll", help="the archive to read")
    export.add_argument("out", metavar="OUT_DIR", help="the SavedModel folder to write (created if missing)")
    _add_archive_loading_options(export)
    export.set_defaults(func=_export)

    look = commands.add_parser("inspect", help="see inside an archive (same as tools/inspect_wroll)",
                               description="See inside a .wroll archive without decoding its weights "
                                           "(unless --verify or --image asks for it).")
    inspect_command.add_arguments(look)
    look.set_defaults(func=inspect_command.run)

    demo = commands.add_parser("demo", help="train a small model, roll it, load it back, compare",
                               description="Train a small classifier on generated data, roll it, load it "
                                           "back and compare sizes and predictions (a few seconds).")
    demo.add_argument("--out", metavar="DEMO.wroll", type=_command.path_ending(".wroll"),
                      help="keep the archive at this path (default: a temporary folder)")
    demo.set_defaults(func=_demo.run)

    for command in (roll, unroll, export, look, demo):
        _command.add_common_arguments(command, inherited=True)
    return parser


def _add_archive_loading_options(parser):
    """`--base` and `--unsafe`, as every command that reads an archive into a model takes them."""
    parser.add_argument("--base", metavar="BASE.keras",
                        help="the base model the archive was rolled against with --base")
    parser.add_argument("--unsafe", action="store_true",
                        help="allow an architecture that carries code (e.g. a Lambda layer); "
                             "only for archives from a source you trust")


def main(argv=None):
    """Run the `weightroll` command line; returns the exit status."""
    return _command.run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
