"""What every command of the `weightroll` and `inspect_wroll` command lines shares:
`--quiet` / `--debug`, running a parser with failures turned into exit codes
and one-line messages, checked arguments, and a quiet import of Keras."""

import argparse
import errno
import importlib.util
import math
import os
import re
import sys
import tempfile
import traceback

from weightroll.errors import WrollError

# TensorFlow 2.21 writes these lines to fd 2 while it is imported, whatever
# TF_CPP_MIN_LOG_LEVEL says (its logger is not set up yet). Only they are
# dropped; anything else written during the import is passed on.
_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")



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


def path_ending(*suffixes):
    def check(text):
        if not text.endswith(suffixes):
            raise argparse.ArgumentTypeError(
                f"expected a path ending in {' or '.join(suffixes)}; received {text!r}"
            )
        return text
    return check


def int_from(low, high=None):
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


def require_file(path):
    """Fail fast, before Keras's slow import, on a path that is not a file."""
    from weightroll._format import paths

    if paths.is_remote(path):
        if not paths.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def require_writable(path, folder=False):
    """Fail fast, before any work, on an output path that cannot be written:
    a file's path taken by a folder (or a folder's by a file), a path under a
    file, or a folder this process may not write in. Missing folders are fine
    (they are created, as `roll` does); the nearest existing one must be
    writable. Errors name `path`, as given. A remote path (`gs://...`) is
    left to the write itself."""
    from weightroll._format.paths import is_remote

    if is_remote(path):
        return
    path = os.fspath(path)
    if os.path.isdir(path) and not folder:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if os.path.exists(path) and folder and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    existing = os.path.abspath(path) if folder else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} ({existing!r} is a file)", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (cannot write in {existing!r})", path)


def import_keras(debug):
    """`import keras`, without the lines TensorFlow prints while it loads.

    TensorFlow's native logging is also turned down to errors-only
    (`TF_CPP_MIN_LOG_LEVEL=3`) unless the user set it or passed `--debug`.
    Under another backend TensorFlow, when installed, is imported here too:
    Keras imports it anyway as soon as it serialises a model (to recognise
    TensorFlow's own types), and its lines would then reach the terminal.
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

            if keras.backend.backend() != "tensorflow" and importlib.util.find_spec("tensorflow") is not None:
                import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not _IMPORT_NOISE.match(line):
                    sys.stderr.write(line)
    return keras


def parameters(model):
    return sum(math.prod(v.shape) for v in model.variables)
