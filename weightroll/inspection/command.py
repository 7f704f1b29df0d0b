"""`inspect_wroll ARCHIVE [--json] [--verify] [--image OUT.png] [--tensors]`,
also `weightroll inspect`."""

import argparse
import json
import os
import sys

from weightroll import _command, _progress
from weightroll._format import reader
from weightroll.errors import ArchiveError
from weightroll.inspection.picture import draw
from weightroll.inspection.summary import describe, format_summary, format_tensors
from weightroll.inspection.verification import verify




def add_arguments(parser):
    """Add inspect's arguments to an `argparse` parser (shared with `weightroll inspect`)."""
    parser.add_argument("archive", metavar="ARCHIVE", help="the .wroll archive to look at")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (keys documented in the README) instead of text")
    parser.add_argument("--verify", action="store_true",
                        help="check every checksum and decode every tensor; exit 1 if anything is unsound")
    parser.add_argument("--image", metavar="OUT.png",
                        help="draw the code image and per-layer weight histograms into a PNG file")
    parser.add_argument("--tensors", action="store_true",
                        help="add a table with one row per tensor to the text summary")


def run(args, out=None):
    """Run `inspect` for parsed `args`; returns 0, or raises `ArchiveError`
    (after printing the report) when `--verify` finds the archive unsound."""
    out = sys.stdout if out is None else out
    show = not getattr(args, "quiet", False)
    failure = None
    with reader.RolledArchive(args.archive) as archive:
        doc = describe(archive, args.archive)
        if args.verify:
            with _progress.task("Verifying", total=doc["model"]["parameters"], enabled=show):
                try:
                    doc["verify"] = verify(archive)
                except ArchiveError as e:
                    failure = str(e)
                    doc["verify"] = {"ok": False, "members_checked": None, "tensors_checked": None,
                                     "base_references": None, "error": failure}
        if args.image and failure is None:
            with _progress.task("Drawing", enabled=show):
                draw(archive, doc, args.image)
            doc["picture"] = os.fspath(args.image)
    if show:
        if args.json:
            out.write(json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False) + "\n")
        else:
            text = format_summary(doc)
            if args.tensors:
                text += "\n\n" + format_tensors(doc)
            out.write(text + "\n")
        out.flush()
    if failure is not None:
        raise ArchiveError(f"verification failed: {failure}")
    return 0


def main(argv=None):
    """`inspect_wroll ARCHIVE [--json] [--verify] [--image OUT.png] [--tensors]`."""
    parser = argparse.ArgumentParser(
        prog="inspect_wroll",
        description="See inside a .wroll archive without decoding its weights (unless asked).",
    )
    add_arguments(parser)
    _command.add_common_arguments(parser)
    parser.set_defaults(func=run)
    return _command.run_parser(parser, argv)
