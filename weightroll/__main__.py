"""`python -m weightroll`: the `weightroll` command."""

import sys

from weightroll.cli import main

sys.exit(main())
