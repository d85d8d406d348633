"""``python -m runner``: the same as the ``migration-runner`` console script."""

from runner.cli import entry

entry()
