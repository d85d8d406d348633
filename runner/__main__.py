"""``python -m runner``: the same as the ``migration-runner`` console script."""

import sys

from runner.cli import main

sys.exit(main())
