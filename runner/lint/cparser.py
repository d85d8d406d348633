"""Load PostgreSQL's parser (pglast's C extension) without pglast's Python AST classes.

Invariants:
- Lint uses only the JSON entry points of ``pglast.parser`` (``parse_sql_json``,
  ``parse_plpgsql_json``, ``scan``) and ``ParseError``. A plain ``import pglast`` first builds
  pglast's enums and AST classes (about a thousand enum members: 20-35 ms, a third of a
  one-file lint run), which only ``parse_sql`` (Python objects) needs.
- ``load`` is called by the ``lint`` command only, in its own process, before anything else
  imports pglast: the C extension is initialised under a bare ``pglast`` package with empty
  placeholder modules for ``pglast.ast`` and ``pglast.enums``. The bare package stays (every
  later ``from pglast.parser import ...`` finds the loaded extension); the two placeholders go,
  so ``import pglast.enums`` would load the real one. In such a process
  ``pglast.parser.parse_sql`` (Python objects) is unusable; lint never calls it. If the
  extension does not load so, everything is undone and pglast is imported the ordinary way.
"""

from __future__ import annotations

import importlib.util
import sys
import types

PLACEHOLDERS = ("pglast.ast", "pglast.enums")


def load() -> None:
    """Import ``pglast.parser`` the fast way, once, if pglast is not imported yet."""
    if "pglast" in sys.modules:
        return
    spec = importlib.util.find_spec("pglast")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("pglast")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["pglast"] = package
    sys.modules["pglast.ast"] = types.ModuleType("pglast.ast")
    sys.modules["pglast.enums"] = types.ModuleType("pglast.enums")
    try:
        import pglast.error  # noqa: PLC0415 - the extension's base exception lives here

        package.Error = pglast.error.Error  # type: ignore[attr-defined]
        import pglast.parser  # noqa: PLC0415 - initialises the extension
    except ImportError:
        for name in ("pglast", "pglast.error", "pglast.parser"):
            sys.modules.pop(name, None)
    finally:
        for name in PLACEHOLDERS:
            sys.modules.pop(name, None)
