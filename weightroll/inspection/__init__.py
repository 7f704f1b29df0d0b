"""Look inside a `.wroll` archive: a summary, JSON, verification, a picture.

`inspect_wroll ARCHIVE` (also `weightroll inspect`) prints a summary read from
the zip directory and `manifest.json` alone (`summary`), so it is instant
whatever the archive's size. Weights are read only when a flag asks:
`--verify` checks every member's checksum and decodes every tensor against its
digest (`verification`); `--image` decodes the codes to draw them (`picture`).
The command line is `command`.

Needs numpy, pillow and zstandard only: this package never imports Keras or
TensorFlow.
"""

from weightroll.inspection.command import main, run  # noqa: F401
from weightroll.inspection.summary import JSON_SCHEMA, describe  # noqa: F401
from weightroll.inspection.verification import verify  # noqa: F401

__all__ = ["JSON_SCHEMA", "describe", "main", "run", "verify"]
