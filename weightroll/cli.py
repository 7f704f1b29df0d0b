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
import os
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
            _command.require_file(path)
    validation = _load_npy(args.validation_data) if args.validation_data else None
    show = not args.quiet
    with _progress.task(f"Loading {os.path.basename(args.model)}", enabled=show):
        keras = _command.import_keras(args.debug)
        model = _load_model(keras, args.model, args.unsafe)
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


def _unroll(args):
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
    options = {"base": args.base} if args.base is not None else {}
    show = not args.quiet
    with _progress.task(f"Loading {os.path.basename(args.archive)}", enabled=show):
        _command.import_keras(args.debug)
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
              f"({type(model).__name__}), {_command.parameters(model):,} parameters")
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
    unroll.add_argument("--base", metavar="BASE.keras",
                        help="the base model the archive was rolled against with --base")
    unroll.add_argument("--unsafe", action="store_true",
                        help="allow an architecture that carries code (e.g. a Lambda layer); "
                             "only for archives from a source you trust")
    unroll.set_defaults(func=_unroll)

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

    for command in (roll, unroll, look, demo):
        _command.add_common_arguments(command, inherited=True)
    return parser


def main(argv=None):
    """Run the `weightroll` command line; returns the exit status."""
    return _command.run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
