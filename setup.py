"""Build hook: with ``MIGRATION_RUNNER_MYPYC=1``, lint's modules are compiled to C with mypyc.

Everything else about the package lives in ``pyproject.toml``. Without the variable (every
install the README, the Dockerfile and CI's main jobs make) the build is pure Python and needs
only setuptools. With it, mypy (which carries mypyc), the runtime dependencies (mypyc
type-checks against them) and a C compiler must be in the build environment (``pip install
--no-build-isolation``, README); the compiled modules are the same source,
type-checked by mypy --strict, and behave the same (CI runs the lint tests against them:
``bash .ci/dev test``). Compiled, lint does 15 % fewer instructions over the bench corpus.
"""

import os

from setuptools import setup

# The modules lint spends its time in (parsing, the rules, the source splitter it shares with
# the runner); the command line, configuration and reports stay Python.
COMPILED = [
    "runner/discover.py",
    "runner/lint/checks.py",
    "runner/lint/engine.py",
    "runner/lint/plpgsql.py",
    "runner/lint/rules.py",
    "runner/lint/source.py",
    "runner/lint/types.py",
]

if os.environ.get("MIGRATION_RUNNER_MYPYC") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()
