"""Train a small model on generated data, roll it, load it back, print what it cost.

Run: python examples/demo.py   (about 10 seconds on 2 CPU cores, no downloads).
The same as `weightroll demo`; the recipe lives in `weightroll/_demo.py`.
"""

import sys

from weightroll import cli

if __name__ == "__main__":
    sys.exit(cli.main(["demo"] + sys.argv[1:]))
