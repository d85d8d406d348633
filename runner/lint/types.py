"""Column types from the parse tree, and PostgreSQL's rules for which type changes rewrite.

Invariants:
- ``Type`` is the type as written, normalised to PostgreSQL's internal names (``int4``,
  ``varchar``, ``bpchar``, ``timestamptz``) with its modifiers and array dimensions.
- ``change`` follows ``ATColumnChangeRequiresRewrite`` as observed on PostgreSQL 18 (the
  relfilenode changes or it does not: ``python -m bench.lint.rewrite_probe``): same type
  with wider or removed length/precision, binary-coercible casts (varchar/text/bpchar
  without length, cidr -> inet, xml -> text, int4 <-> oid) keep the table; timestamp <->
  timestamptz keeps it only when the session TimeZone is UTC (PostgreSQL 12+); everything
  else, arrays and any ``USING`` expression other than the column itself included, rewrites.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Type names as the parser writes them, to PostgreSQL's internal ones.
SYNONYMS = {
    "int": "int4",
    "integer": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "serial": "serial4",
    "bigserial": "serial8",
    "smallserial": "serial2",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "decimal": "numeric",
    "real": "float4",
    "float": "float8",
    "double precision": "float8",
    "boolean": "bool",
}
LENGTH_TYPES = {"varchar", "varbit"}  # a wider or removed length keeps the table
PRECISION_TYPES = {"timestamp", "timestamptz", "time", "timetz", "interval"}
BINARY = {
    ("varchar", "text"),
    ("text", "varchar"),
    ("varchar", "bpchar"),
    ("text", "bpchar"),
    ("cidr", "inet"),
    ("xml", "text"),
    ("xml", "varchar"),
    ("int4", "oid"),
    ("oid", "int4"),
}
UNLIMITED_TARGETS = {"varchar", "bpchar"}  # binary-coercible only without a length
SERIALS = {"serial2", "serial4", "serial8"}


# A NamedTuple, like checks.Item: immutable, hashable and cheap to create.
class Type(NamedTuple):
    """A column type as written: internal name, modifiers (integers) and array dimensions."""

    name: str
    mods: tuple[int, ...] = ()
    array: int = 0

    def __str__(self) -> str:
        shown = self.name + (f"({','.join(map(str, self.mods))})" if self.mods else "")
        return shown + "[]" * self.array


def of(type_name: dict[str, Any]) -> Type:
    """The ``Type`` of a ``TypeName`` node."""
    name = next((n["String"]["sval"].lower() for n in reversed(type_name.get("names", ())) if "String" in n), "?")
    typmods = type_name.get("typmods")  # most types have none: no generator then
    mods = (
        tuple(int(m["A_Const"]["ival"].get("ival", 0)) for m in typmods if "A_Const" in m and "ival" in m["A_Const"])
        if typmods
        else ()
    )
    return Type(SYNONYMS.get(name, name), mods, len(type_name.get("arrayBounds", ())))


class Change(NamedTuple):
    """What ``ALTER COLUMN ... TYPE`` does to the table: ``rewrites`` is None when unknowable."""

    rewrites: bool | None
    why: str


def change(old: Type | None, new: Type, *, using: dict[str, Any] | None, column: str, utc: bool) -> Change:
    """Whether changing ``column`` from ``old`` (None: not in the linted files) to ``new`` rewrites."""
    if using is not None and not _is_column(using, column):
        return Change(rewrites=True, why="USING computes every value anew: the table is rewritten")
    if old is None:
        if new.array == 0 and (new.name == "text" or (new.name in UNLIMITED_TARGETS and not new.mods)):
            return Change(
                rewrites=None,
                why=f"no rewrite if {column} is varchar or text now (binary-coercible); its current type "
                "is not in the linted files, and any other type rewrites the table",
            )
        return Change(
            rewrites=None,
            why=f"rewrites the table unless {column}'s current type (not in the linted files) is binary-coercible "
            f"to {new}",
        )
    if old == new:
        return Change(rewrites=False, why="same type")
    if old.array or new.array:
        return Change(rewrites=True, why=f"{old} -> {new}: array element conversions rewrite the table")
    if old.name == new.name:
        return _same_type(old, new)
    pair = (old.name, new.name)
    if pair in {("timestamp", "timestamptz"), ("timestamptz", "timestamp")} and not old.mods and not new.mods:
        if utc:
            return Change(rewrites=False, why=f"{old} -> {new} with TimeZone UTC (PostgreSQL 12+)")
        return Change(
            rewrites=True,
            why=f"{old} -> {new} rewrites unless the session TimeZone is UTC (PostgreSQL 12+): "
            "SET LOCAL TimeZone = 'UTC' before it in this file",
        )
    if pair in BINARY and (new.name not in UNLIMITED_TARGETS or not new.mods):
        return Change(rewrites=False, why=f"{old} -> {new} is binary-coercible")
    return Change(rewrites=True, why=f"{old} -> {new} converts every value: the table and its indexes are rewritten")


def _same_type(old: Type, new: Type) -> Change:
    name = old.name
    if name in LENGTH_TYPES and (not new.mods or (old.mods and new.mods[0] >= old.mods[0])):
        return Change(rewrites=False, why=f"{old} -> {new} widens the length limit (PostgreSQL 9.2+)")
    if name == "numeric" and (not new.mods or (len(old.mods) >= 1 and _same_scale(old, new))):
        return Change(rewrites=False, why=f"{old} -> {new} widens the precision, same scale (PostgreSQL 9.2+)")
    if name in PRECISION_TYPES and (not new.mods or (old.mods and new.mods[0] >= old.mods[0])):
        return Change(rewrites=False, why=f"{old} -> {new} widens the fractional precision")
    return Change(rewrites=True, why=f"{old} -> {new} checks or converts every value: the table is rewritten")


def _same_scale(old: Type, new: Type) -> bool:
    old_scale = old.mods[1] if len(old.mods) > 1 else 0
    new_scale = new.mods[1] if len(new.mods) > 1 else 0
    return new_scale == old_scale and new.mods[0] >= old.mods[0]


def _is_column(expression: dict[str, Any], column: str) -> bool:
    """True for ``col`` or ``col::type`` (PostgreSQL sees through the cast when it is the change itself)."""
    if "TypeCast" in expression:
        expression = expression["TypeCast"].get("arg", {})
    fields = expression.get("ColumnRef", {}).get("fields", ())
    return bool(fields) and fields[-1].get("String", {}).get("sval") == column
