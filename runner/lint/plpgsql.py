"""SQL statements inside ``DO`` blocks and PL/pgSQL function bodies, with PostgreSQL's own parser.

Invariants:
- A body is parsed with libpg_query's PL/pgSQL parser (``pglast.parser.parse_plpgsql_json``),
  the one PostgreSQL compiles functions with; each embedded SQL statement (and each
  ``EXECUTE`` of a constant string) is parsed again with the SQL parser. Dynamic SQL built at
  run time (``EXECUTE format(...)``) cannot be seen.
- A statement is ``guarded`` when it runs only after a catalog check: inside an ``IF`` (or
  ``ELSIF``/``ELSE``) whose condition reads the system catalog (``pg_*``,
  ``information_schema``, ``to_reg*()``), after an ``IF <catalog check> THEN RETURN/EXIT``
  in the same or an enclosing block, or in a block whose exception handler catches
  ``duplicate_*``, ``undefined_*``, ``invalid_table_definition`` or ``others``. The linter
  recognises that a guard is there; it cannot prove the guard checks the right thing.
- Lines are file lines: the body's line 1 is the line its opening quote stands on.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, NamedTuple

JSON = json.JSONDecoder()  # raw_decode: a value where it stands, without json.loads' copy and checks
CACHED_BODIES = 256  # distinct bodies remembered per process
CATALOG = re.compile(r"\b(?:pg_[a-z_]+|information_schema\s*\.|to_reg[a-z]+\s*\()", re.IGNORECASE)
LITERAL = re.compile(r"'(?:[^']|'')*'")
GUARDING_CONDITIONS = ("duplicate_", "undefined_")
GUARDING_NAMES = {"others", "invalid_table_definition"}
EXITS = {"PLpgSQL_stmt_return", "PLpgSQL_stmt_exit"}
# Statements some rule reads (a SELECT ... INTO in PL/pgSQL assigns variables, it creates nothing).
RELEVANT = (
    "alter",
    "create",
    "drop",
    "reindex",
    "vacuum",
    "cluster",
    "insert",
    "update",
    "delete",
    "merge",
    "with",
    "set",
)


# A NamedTuple, like checks.Item: immutable and cheap to create.
class Embedded(NamedTuple):
    """One SQL statement found in a PL/pgSQL body."""

    node: dict[str, Any]  # {"Kind": {...}}, as in ``discover.Statement.node``
    line: int
    guarded: bool
    text: str


class BodyError(Exception):
    """The PL/pgSQL parser rejects the body; ``args[0]`` is its message."""


def statements(text: str, first_line: int) -> list[Embedded]:
    """The SQL statements of the PL/pgSQL bodies in ``text`` (one ``DO`` or ``CREATE FUNCTION``).

    ``first_line`` is the file line of the body's first line. Raises ``BodyError``.
    """
    return [found._replace(line=found.line + first_line - 1) for found in _statements(text)]


@functools.lru_cache(maxsize=CACHED_BODIES)
def _statements(text: str) -> tuple[Embedded, ...]:
    """``statements`` with lines counted from the body's first line (1), remembered by text.

    Migrations repeat the same DO block and function (an upgrade script per version defines
    most functions again): a body seen before is not parsed again. The trees are only read.
    """
    from pglast.parser import ParseError, parse_plpgsql_json  # noqa: PLC0415 - loaded with the parser

    try:
        output = parse_plpgsql_json(text)
    except ParseError as exc:
        raise BodyError(str(exc.args[0])) from None
    queries: list[tuple[str, int, bool]] = []
    for action in actions(output):
        _walk([action], guarded=False, base=0, out=queries)
    return tuple(_parse([q for q in queries if q[0].lstrip()[:8].lower().startswith(RELEVANT)]))


def actions(output: str) -> list[dict[str, Any]]:
    """The statement trees of the parser's functions, without their variables.

    One function's output is ``[{"PLpgSQL_function":{"datums":[...],"action":{...}}}]``; the
    variables (``datums``) are most of it and no rule reads them, so only ``action`` is decoded.
    """
    start = output.find('"action":')
    if output.count('"PLpgSQL_function"') == 1 and start >= 0:
        return [JSON.raw_decode(output, start + len('"action":'))[0]]
    return [f["PLpgSQL_function"]["action"] for f in json.loads(output) if f.get("PLpgSQL_function", {}).get("action")]


def _walk(items: list[dict[str, Any]], *, guarded: bool, base: int, out: list[tuple[str, int, bool]]) -> None:
    early_exit = False
    for item in items:
        kind, body = next(iter(item.items()))
        here = guarded or early_exit
        line = base + int(body.get("lineno", 1))
        if kind == "PLpgSQL_stmt_execsql":
            out.append((body["sqlstmt"]["PLpgSQL_expr"]["query"], line, here))
        elif kind == "PLpgSQL_stmt_dynexecute":
            constant = _constant(body.get("query", {}).get("PLpgSQL_expr", {}).get("query", ""))
            if constant is not None:
                out.append((constant, line, here))
        elif kind == "PLpgSQL_stmt_if":
            checks = _reads_catalog(body.get("cond"))
            _walk(body.get("then_body", []), guarded=here or checks, base=base, out=out)
            for elsif in body.get("elsif_list", []):
                branch = elsif.get("PLpgSQL_if_elsif", {})
                _walk(
                    branch.get("stmts", []),
                    guarded=here or checks or _reads_catalog(branch.get("cond")),
                    base=base,
                    out=out,
                )
            _walk(body.get("else_body", []), guarded=here or checks, base=base, out=out)
            then = body.get("then_body", [])
            early_exit = early_exit or (checks and bool(then) and next(iter(then[-1])) in EXITS)
        elif kind == "PLpgSQL_stmt_block":
            handlers = body.get("exceptions", {}).get("PLpgSQL_exception_block", {}).get("exc_list", [])
            _walk(body.get("body", []), guarded=here or any(map(_guarding, handlers)), base=base, out=out)
            for handler in handlers:
                _walk(handler.get("PLpgSQL_exception", {}).get("action", []), guarded=here, base=base, out=out)
        else:
            for nested in _nested(body):
                _walk(nested, guarded=here, base=base, out=out)


def _nested(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Statement lists inside loops and CASE (``body``, ``stmts``, ``else_stmts``)."""
    lists = [body[key] for key in ("body", "else_stmts") if isinstance(body.get(key), list)]
    lists += [when["PLpgSQL_case_when"].get("stmts", []) for when in body.get("case_when_list", [])]
    return lists


def _reads_catalog(cond: dict[str, Any] | None) -> bool:
    query = (cond or {}).get("PLpgSQL_expr", {}).get("query", "")
    return bool(CATALOG.search(LITERAL.sub("''", query)))


def _guarding(handler: dict[str, Any]) -> bool:
    conditions = handler.get("PLpgSQL_exception", {}).get("conditions", [])
    names = [c.get("PLpgSQL_condition", {}).get("condname", "") for c in conditions]
    return any(name in GUARDING_NAMES or name.startswith(GUARDING_CONDITIONS) for name in names)


def _constant(expression: str) -> str | None:
    """The text of a constant string literal (``'...'`` or ``$$...$$``), else None."""
    stripped = expression.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == "'" and LITERAL.fullmatch(stripped):
        return stripped[1:-1].replace("''", "'")
    dollar = re.fullmatch(r"(\$[A-Za-z_]*\$)(.*)\1", stripped, re.DOTALL)
    return dollar.group(2) if dollar else None


def _parse(queries: list[tuple[str, int, bool]]) -> list[Embedded]:
    """The queries' parse trees: one parser call for all, one by one if that fails."""
    from pglast.parser import ParseError, parse_sql_json  # noqa: PLC0415

    if not queries:
        return []
    try:
        tree = JSON.raw_decode(parse_sql_json(";\n".join(query for query, _, _ in queries)))[0]
        nodes = [raw["stmt"] for raw in tree.get("stmts", ())]
    except ParseError:
        nodes = []
    if len(nodes) == len(queries):
        return [
            Embedded(node, line, guarded, query) for node, (query, line, guarded) in zip(nodes, queries, strict=True)
        ]
    found: list[Embedded] = []
    for query, line, guarded in queries:
        try:
            tree = JSON.raw_decode(parse_sql_json(query))[0]
        except ParseError:
            continue  # PL/pgSQL-only syntax the SQL parser does not take; PostgreSQL reports it at run time
        found += [Embedded(raw["stmt"], line, guarded, query) for raw in tree.get("stmts", ())]
    return found
