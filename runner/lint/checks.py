"""The rules, statement by statement, on PostgreSQL's JSON parse tree (absent fields mean false/empty).

Invariants:
- ``FileChecks`` sees every statement of one file in order: the top-level ones, then (in
  place) those of its ``DO`` blocks and function bodies, each with its scope. It knows what
  the file creates (tables however made: ``CREATE TABLE``, ``... AS``, ``SELECT INTO``,
  materialized views; indexes, views, functions, types, sequences, schemas, constraints),
  so nothing created in the file counts as existing, and a drop or rename followed by a
  create of the same name (a replace or a swap) breaks nothing.
- Column types known from earlier statements and earlier files of the same directory
  (``Columns``) decide whether ``ALTER COLUMN ... TYPE`` rewrites.
- A rule only looks in the scopes its catalogue entry names (``rules.Rule.scopes``); guarded
  statements in PL/pgSQL are exempt from the idempotency rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from runner.lint import source, types
from runner.lint.rules import RULES

NAMEDATALEN = 63
NOT_IN_PLPGSQL = (
    "CREATE INDEX CONCURRENTLY cannot run inside a DO block or function: move the index to the top level of a "
    "file of its own (CONCURRENTLY makes the whole file run outside a transaction)"
)
# A run of 64 identifier bytes (letters, digits, _, $, any byte of a multibyte character) or a
# quoted name of 64 bytes: the only texts that can hold a name PostgreSQL truncates.
IDENTIFIER_BYTES = bytes(  # bytes.translate table: identifier bytes become "a", the others " "
    0x61 if byte >= 0x80 or (chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "_$")) else 0x20
    for byte in range(256)
)
LONG_RUN = b"a" * 64
LONG_QUOTED = re.compile(rb'"[^"]{64,}"')
NAMING_NODES = {
    "CreateStmt",
    "CreateTableAsStmt",
    "IndexStmt",
    "AlterTableStmt",
    "RenameStmt",
    "CreateSeqStmt",
    "ViewStmt",
    "CreateFunctionStmt",
    "CreateSchemaStmt",
    "CreateEnumStmt",
    "CompositeTypeStmt",
    "CreateDomainStmt",
    "CreateTrigStmt",
    "SelectStmt",
}
DDL_NODES = {
    "CreateStmt",
    "CreateTableAsStmt",
    "IndexStmt",
    "AlterTableStmt",
    "DropStmt",
    "RenameStmt",
    "CreateSeqStmt",
    "CreateSchemaStmt",
    "CreateExtensionStmt",
    "CreateFunctionStmt",
    "ViewStmt",
    "CreateTrigStmt",
    "AlterEnumStmt",
    "CreateEnumStmt",
    "CompositeTypeStmt",
    "AlterSeqStmt",
    "CreateDomainStmt",
}
DML_NODES = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}
CREATE_NODES = {
    "CreateStmt": "TABLE",
    "IndexStmt": "INDEX",
    "CreateSeqStmt": "SEQUENCE",
    "CreateSchemaStmt": "SCHEMA",
    "CreateExtensionStmt": "EXTENSION",
}
REPLACE_NODES = {"CreateFunctionStmt": "FUNCTION/PROCEDURE", "ViewStmt": "VIEW", "CreateTrigStmt": "TRIGGER"}
IDEMPOTENCY = {
    "create-not-idempotent",
    "add-column-not-idempotent",
    "drop-not-idempotent",
    "replace-missing",
    "add-constraint-unguarded",
}
DROPPED_KINDS = {
    "OBJECT_TABLE": ("table", "drop-table", "TABLE"),
    "OBJECT_SCHEMA": ("schema", "drop-schema", "SCHEMA"),
    "OBJECT_VIEW": ("view", "drop-object", "VIEW"),
    "OBJECT_MATVIEW": ("view", "drop-object", "MATERIALIZED VIEW"),
    "OBJECT_FUNCTION": ("function", "drop-object", "FUNCTION"),
    "OBJECT_PROCEDURE": ("function", "drop-object", "PROCEDURE"),
    "OBJECT_AGGREGATE": ("aggregate", "drop-object", "AGGREGATE"),
    "OBJECT_OPERATOR": ("operator", "drop-object", "OPERATOR"),
    "OBJECT_TYPE": ("type", "drop-object", "TYPE"),
    "OBJECT_DOMAIN": ("type", "drop-object", "DOMAIN"),
    "OBJECT_SEQUENCE": ("sequence", "drop-object", "SEQUENCE"),
}
FUNCTION_DROPS = {kind for kind, (category, _, _) in DROPPED_KINDS.items() if category == "function"}
HOLDS_DATA = {"table", "sequence", "schema"}  # dropping and creating again loses rows or values
RENAMED_KINDS = {
    "OBJECT_INDEX": "index",
    "OBJECT_SEQUENCE": "sequence",
    "OBJECT_VIEW": "view",
    "OBJECT_MATVIEW": "view",
    "OBJECT_FUNCTION": "function",
    "OBJECT_PROCEDURE": "function",
    "OBJECT_TYPE": "type",
    "OBJECT_DOMAIN": "type",
    "OBJECT_SCHEMA": "schema",
    "OBJECT_TABCONSTRAINT": "constraint",
    "OBJECT_TRIGGER": "trigger",
}
# Functions whose result is fixed within a statement (STABLE or IMMUTABLE): a DEFAULT of them is
# evaluated once by ADD COLUMN (PostgreSQL 11+) and stored in the catalog, no rewrite.
NON_VOLATILE = {
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "current_date",
    "current_setting",
    "lower",
    "upper",
    "btrim",
    "trim",
    "concat",
    "to_json",
    "to_jsonb",
    "jsonb_build_object",
    "json_build_object",
    "jsonb_build_array",
    "array",
    "timezone",
    "make_interval",
    "make_date",
    "to_timestamp",
    "date_trunc",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "length",
    "md5",
    "inet",
}
VOLATILE = {
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
    "setseed",
}
ADVICE_TYPES = {
    "int4": ("prefer-bigint", "integer"),
    "int2": ("prefer-bigint", "smallint"),
    "serial4": ("prefer-bigint", "serial"),
    "serial2": ("prefer-bigint", "smallserial"),
    "timestamp": ("prefer-timestamptz", "timestamp without time zone"),
    "bpchar": ("ban-char", "char(n)"),
}
UTC_NAMES = {"utc", "etc/utc", "gmt", "etc/gmt", "zulu", "z", "uct", "universal"}


# Lint's values (Raw, Item, engine.Finding, rules.Rule, source.Unit, plpgsql.Embedded, types.Type,
# types.Change) are NamedTuples: immutable like a frozen dataclass, a quarter of the cost to create (a
# corpus run creates tens of thousands), and no methods compiled when the module loads (a dataclass
# compiles each of its own, a millisecond or more per class on every lint run).
class Raw(NamedTuple):
    """A finding before waivers and severities: rule, line, message, and a hint if not the rule's own."""

    rule: str
    line: int
    message: str
    hint: str = ""


class Item(NamedTuple):
    """One statement to check: where it is and in which scope it runs."""

    node: dict[str, Any]
    line: int
    scope: str  # top, do, function
    guarded: bool = False
    owner: str = ""  # "DO block at line 12", "function f"
    text: str = ""  # the statement as written (identifiers before PostgreSQL truncates them)


Columns = dict[str, dict[str, types.Type]]  # table -> column -> type, across the files of one directory


def kind(node: dict[str, Any]) -> str:
    return next(iter(node))


def body(node: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = node[next(iter(node))]  # read, never changed: no copy
    return fields


def last_name(names: Iterable[dict[str, Any]]) -> str:
    """The unqualified name of a qualified-name list (``[schema, name]``)."""
    strings = [n["String"]["sval"] for n in names if "String" in n]
    return strings[-1] if strings else ""


def relname(fields: dict[str, Any], key: str = "relation") -> str | None:
    name = fields.get(key, {}).get("relname")
    return str(name) if name else None


def function_key(name: list[dict[str, Any]], args: list[dict[str, Any]] | None) -> tuple[str, tuple[str, ...] | None]:
    """A function's identity for replace detection: its name and argument types (None: any)."""
    if args is None:
        return last_name(name), None
    return last_name(name), tuple(str(types.of(a)) for a in args)


def created_tables(node: dict[str, Any]) -> str | None:
    """The table a statement creates, however: CREATE TABLE, CREATE TABLE AS, SELECT INTO, matview."""
    name, fields = kind(node), body(node)
    if name == "CreateStmt":
        return relname(fields)
    if name == "CreateTableAsStmt":
        return relname(fields.get("into", {}), "rel")
    if name == "SelectStmt" and "intoClause" in fields:
        return relname(fields["intoClause"], "rel")
    return None


class FileChecks:
    """The rules over one file's statements, in order; ``raw`` collects what they find."""

    def __init__(self, transactional: bool, columns: Columns, items: list[Item]) -> None:
        self.transactional = transactional
        self.columns = columns
        self.items = items
        self.raw: list[Raw] = []
        self.defined: set[tuple[Any, ...]] = set()  # what the file creates
        self.not_valid: dict[str, set[str]] = {}  # transaction owner -> constraint names
        self.earlier: set[tuple[Any, ...]] = set()  # what the statements so far created
        self.utc = False  # the session time zone is UTC
        # A function's argument types matter only to a DROP FUNCTION (ROUTINE, ...) of its name in this file.
        signatures = {
            object_name(target)
            for item in self.items
            if kind(item.node) == "DropStmt" and body(item.node).get("removeType") in FUNCTION_DROPS
            for target in body(item.node).get("objects", ())
        }
        self.made: list[list[tuple[Any, ...]]] = [  # what each item creates
            list(definitions(item.node, signatures=signatures)) if item.scope != "function" else []
            for item in self.items
        ]
        for made in self.made:
            self.defined.update(made)

    def new_index(self, index: str, item: Item) -> bool:
        """An index this file builds on a table it creates (dropping it locks no live table)."""
        return any(d[:2] == ("index", index) and self.new_table(d[2], item) for d in self.defined if len(d) == 3)

    def new_table(self, table: str | None, item: Item) -> bool:
        if table is None:
            return False
        return ("table", table) in self.defined or ("table", table, item.owner) in self.defined

    def run(self) -> list[Raw]:
        function_tables: set[tuple[Any, ...]] = set()
        for item in self.items:
            if item.scope == "function":
                table = created_tables(item.node)
                if table:
                    function_tables.add(("table", table, item.owner))
        self.defined |= function_tables
        for item, made in zip(self.items, self.made, strict=True):
            self.earlier.update(made)
            for raw in self.statement(item):
                rule = RULES[raw.rule]
                if item.scope not in rule.scopes or (item.guarded and raw.rule in IDEMPOTENCY):
                    continue
                where = "" if item.scope == "top" else f" (in {item.owner})"
                self.raw.append(Raw(raw.rule, raw.line, raw.message + where, raw.hint))
        self.raw += self.mixed()
        return self.raw

    def report(self, item: Item, rule: str, message: str, hint: str = "") -> Raw:
        return Raw(rule, item.line, message, hint)

    def statement(self, item: Item) -> Iterator[Raw]:
        node, name = item.node, kind(item.node)
        fields = body(node)
        yield from self.names(item)
        if name in CREATE_NODES and not fields.get("if_not_exists"):
            yield self.report(item, "create-not-idempotent", f"CREATE {CREATE_NODES[name]} without IF NOT EXISTS")
        if name == "CreateTableAsStmt" and not fields.get("if_not_exists"):
            what = "MATERIALIZED VIEW" if fields.get("objtype") == "OBJECT_MATVIEW" else "TABLE ... AS"
            yield self.report(item, "create-not-idempotent", f"CREATE {what} without IF NOT EXISTS")
        if name == "SelectStmt" and "intoClause" in fields:
            yield self.report(
                item,
                "create-not-idempotent",
                "SELECT INTO creates a table and has no IF NOT EXISTS",
                "use CREATE TABLE IF NOT EXISTS ... AS SELECT",
            )
        if name in REPLACE_NODES and not fields.get("replace"):
            yield self.report(item, "replace-missing", f"CREATE {REPLACE_NODES[name]} without OR REPLACE")
        if name == "CreateStmt":
            for element in fields.get("tableElts", ()):
                yield from self.advice(item, element.get("ColumnDef"))
            self.remember_columns(fields)
        elif name == "IndexStmt":
            yield from self.index(item, fields)
        elif name == "AlterTableStmt":
            yield from self.alter_table(item, fields)
        elif name == "RenameStmt":
            yield from self.rename(item, fields)
        elif name == "DropStmt":
            yield from self.drop(item, fields)
        elif name == "ReindexStmt":
            yield from self.reindex(item, fields)
        elif name == "VacuumStmt" and fields.get("is_vacuumcmd") and item.scope != "top":
            yield self.report(item, "non-transactional-in-plpgsql", "VACUUM cannot run inside a transaction block")
        elif name == "VariableSetStmt" and fields.get("name") == "timezone":
            value = fields.get("args", [{}])[0].get("A_Const", {}).get("sval", {}).get("sval", "")
            self.utc = value.lower() in UTC_NAMES

    # -- statement kinds

    def index(self, item: Item, fields: dict[str, Any]) -> Iterator[Raw]:
        table = relname(fields)
        if fields.get("concurrent") and item.scope != "top":
            yield self.report(
                item,
                "non-transactional-in-plpgsql",
                "CREATE INDEX CONCURRENTLY cannot run inside a DO block or function (it runs in a transaction)",
            )
        elif not fields.get("concurrent") and not self.new_table(table, item):
            hint = "" if item.scope == "top" else NOT_IN_PLPGSQL
            yield self.report(
                item,
                "index-not-concurrent",
                f"CREATE INDEX on existing table {table} without CONCURRENTLY blocks writes (SHARE lock) for the "
                "whole build",
                hint,
            )

    def reindex(self, item: Item, fields: dict[str, Any]) -> Iterator[Raw]:
        concurrently = any(p.get("DefElem", {}).get("defname") == "concurrently" for p in fields.get("params", ()))
        target = relname(fields) or fields.get("name", "")
        if concurrently and item.scope != "top":
            yield self.report(item, "non-transactional-in-plpgsql", "REINDEX CONCURRENTLY cannot run in a transaction")
        elif not concurrently:
            yield self.report(
                item,
                "reindex-not-concurrent",
                f"REINDEX {target} without CONCURRENTLY blocks writes, and reads through the index, for the rebuild",
            )

    def alter_table(self, item: Item, fields: dict[str, Any]) -> Iterator[Raw]:
        table = relname(fields)
        existing = not self.new_table(table, item)
        if fields.get("objtype", "OBJECT_TABLE") != "OBJECT_TABLE":
            return
        for entry in fields.get("cmds", ()):
            cmd = entry.get("AlterTableCmd", {})
            subtype, column = cmd.get("subtype", ""), cmd.get("name", "")
            if subtype == "AT_AddColumn":
                yield from self.add_column(item, table, cmd, existing=existing)
            elif subtype == "AT_DropColumn":
                if existing:
                    yield self.report(item, "drop-column", f"DROP COLUMN {column} on {table}")
                if not cmd.get("missing_ok"):
                    yield self.report(item, "drop-not-idempotent", "DROP COLUMN without IF EXISTS")
                self.columns.get(table or "", {}).pop(column, None)
            elif subtype == "AT_AddConstraint":
                yield from self.add_constraint(item, table, cmd.get("def", {}).get("Constraint", {}), existing=existing)
            elif subtype == "AT_ValidateConstraint":
                if existing and column in self.not_valid.get(self.transaction(item), set()):
                    yield self.report(
                        item,
                        "validate-same-transaction",
                        f"VALIDATE CONSTRAINT {column} on {table} in the transaction that added it NOT VALID: "
                        "every row is checked under the ADD's lock",
                    )
            elif subtype == "AT_DropConstraint":
                if existing and ("constraint", table or "", column) not in self.defined:
                    yield self.report(item, "drop-constraint", f"DROP CONSTRAINT {column} on {table}")
                if not cmd.get("missing_ok"):
                    yield self.report(item, "drop-not-idempotent", "DROP CONSTRAINT without IF EXISTS")
            elif subtype == "AT_AlterColumnType":
                yield from self.column_type(item, table, cmd, existing=existing)
            elif existing:
                yield from self.column_change(item, table, subtype, column, cmd)

    def column_change(
        self, item: Item, table: str | None, subtype: str, column: str, cmd: dict[str, Any]
    ) -> Iterator[Raw]:
        if subtype == "AT_SetNotNull":
            yield self.report(
                item, "set-not-null-scan", f"SET NOT NULL on {table}.{column} scans every row under ACCESS EXCLUSIVE"
            )
        elif subtype == "AT_DropNotNull":
            yield self.report(item, "drop-not-null", f"DROP NOT NULL on {table}.{column}")
        elif subtype == "AT_ColumnDefault" and "def" not in cmd:
            yield self.report(item, "drop-default", f"DROP DEFAULT on {table}.{column}")
        elif subtype in {"AT_AddIdentity", "AT_SetIdentity", "AT_DropIdentity"}:
            action = subtype.removeprefix("AT_").removesuffix("Identity").upper()
            yield self.report(item, "alter-identity", f"{action} IDENTITY on {table}.{column}")

    def add_column(self, item: Item, table: str | None, cmd: dict[str, Any], *, existing: bool) -> Iterator[Raw]:
        column = cmd.get("def", {}).get("ColumnDef", {})
        name = column.get("colname", "")
        if not cmd.get("missing_ok"):
            yield self.report(item, "add-column-not-idempotent", f"ADD COLUMN {name} on {table} without IF NOT EXISTS")
        yield from self.advice(item, column)
        column_type = types.of(column.get("typeName", {}))
        if table:
            self.columns.setdefault(table, {})[name] = column_type
        if not existing:
            return
        constraints = [c.get("Constraint", {}) for c in column.get("constraints", ())]
        contypes = {c.get("contype") for c in constraints}
        default = next((c.get("raw_expr") for c in constraints if c.get("contype") == "CONSTR_DEFAULT"), None)
        filled = (
            default is not None
            or column_type.name in types.SERIALS
            or "CONSTR_IDENTITY" in contypes
            or "CONSTR_GENERATED" in contypes
        )
        if contypes & {"CONSTR_NOTNULL", "CONSTR_PRIMARY"} and not filled:
            yield self.report(
                item,
                "add-column-required",
                f"ADD COLUMN {name} NOT NULL without a default on existing table {table}: fails if the table has a row",
            )
        why = self.rewrite_reason(column_type, default, constraints)
        if why:
            yield self.report(
                item,
                "add-column-rewrite",
                f"ADD COLUMN {name} on {table} {why}: the table is rewritten under ACCESS EXCLUSIVE",
            )
        for constraint in constraints:
            contype = constraint.get("contype", "")
            if contype in {"CONSTR_FOREIGN", "CONSTR_CHECK"}:
                yield self.report(
                    item,
                    "constraint-validates",
                    f"ADD COLUMN {name} ... {'REFERENCES' if contype == 'CONSTR_FOREIGN' else 'CHECK'} on existing "
                    f"table {table} checks every row under ACCESS EXCLUSIVE",
                    "add the column, then the constraint NOT VALID, then VALIDATE CONSTRAINT in a later migration",
                )
            elif contype in {"CONSTR_UNIQUE", "CONSTR_PRIMARY"}:
                yield self.report(
                    item,
                    "constraint-builds-index",
                    f"ADD COLUMN {name} ... {'UNIQUE' if contype == 'CONSTR_UNIQUE' else 'PRIMARY KEY'} on existing "
                    f"table {table} builds its index under ACCESS EXCLUSIVE",
                )

    @staticmethod
    def rewrite_reason(
        column_type: types.Type, default: dict[str, Any] | None, constraints: list[dict[str, Any]]
    ) -> str:
        """Why ADD COLUMN rewrites the table ("" if it does not)."""
        if column_type.name in types.SERIALS:
            return f"as {column_type.name} (its DEFAULT nextval() is volatile)"
        for constraint in constraints:
            if constraint.get("contype") == "CONSTR_IDENTITY":
                return "as an identity column (every row gets a value)"
            if constraint.get("contype") == "CONSTR_GENERATED" and constraint.get("generated_kind", "s") == "s":
                return "as a STORED generated column (every row is computed)"
        if default is None:
            return ""
        volatile = sorted(volatile_calls(default))
        if volatile:
            return f"with a volatile DEFAULT ({', '.join(f'{f}()' for f in volatile)}: evaluated for every row)"
        return ""

    def add_constraint(
        self, item: Item, table: str | None, constraint: dict[str, Any], *, existing: bool
    ) -> Iterator[Raw]:
        name, contype = constraint.get("conname", ""), constraint.get("contype", "")
        yield self.report(item, "add-constraint-unguarded", f"ADD CONSTRAINT {name} on {table} outside a guard")
        if constraint.get("skip_validation"):
            self.not_valid.setdefault(self.transaction(item), set()).add(name)
        if not existing:
            return
        if contype in {"CONSTR_CHECK", "CONSTR_FOREIGN"} and not constraint.get("skip_validation"):
            lock = "SHARE ROW EXCLUSIVE on both tables" if contype == "CONSTR_FOREIGN" else "ACCESS EXCLUSIVE"
            yield self.report(
                item,
                "constraint-validates",
                f"{'FOREIGN KEY' if contype == 'CONSTR_FOREIGN' else 'CHECK'} constraint {name} on existing table "
                f"{table} validates every row under {lock}",
            )
        elif contype in {"CONSTR_UNIQUE", "CONSTR_PRIMARY", "CONSTR_EXCLUSION"} and not constraint.get("indexname"):
            shown = {"CONSTR_UNIQUE": "UNIQUE", "CONSTR_PRIMARY": "PRIMARY KEY", "CONSTR_EXCLUSION": "EXCLUDE"}[contype]
            yield self.report(
                item,
                "constraint-builds-index",
                f"ADD {shown} {name} on existing table {table} builds its index under ACCESS EXCLUSIVE",
            )

    def column_type(self, item: Item, table: str | None, cmd: dict[str, Any], *, existing: bool) -> Iterator[Raw]:
        column = cmd.get("name", "")
        definition = cmd.get("def", {}).get("ColumnDef", {})
        new = types.of(definition.get("typeName", {}))
        yield from self.advice(item, definition)
        known = self.columns.get(table or "", {})
        old = known.get(column)
        known[column] = new
        if not existing:
            return
        change = types.change(old, new, using=definition.get("raw_default"), column=column, utc=self.utc)
        if change.rewrites is not False:
            yield self.report(item, "column-type-rewrite", f"ALTER COLUMN {column} TYPE {new} on {table}: {change.why}")

    def rename(self, item: Item, fields: dict[str, Any]) -> Iterator[Raw]:
        rename_type, table = fields.get("renameType", ""), relname(fields)
        if rename_type == "OBJECT_COLUMN":
            if not self.new_table(table, item):
                yield self.report(item, "rename-column", f"RENAME COLUMN {fields.get('subname')} on {table}")
            moved = self.columns.get(table or "", {}).pop(fields.get("subname", ""), None)
            if moved:
                self.columns[table or ""][fields.get("newname", "")] = moved
        elif rename_type == "OBJECT_TABLE":
            if not self.new_table(table, item):
                yield self.report(item, "rename-table", f"RENAME TABLE {table} to {fields.get('newname')}")
            self.columns[fields.get("newname", "")] = self.columns.pop(table or "", {})
        elif rename_type in RENAMED_KINDS:
            old = self.old_name(fields, rename_type)
            category = RENAMED_KINDS[rename_type]
            key = ("constraint", table or "", old) if category == "constraint" else (category, old)
            made = key in self.defined or (category == "index" and any(d[:2] == key for d in self.defined))
            if not made and not (category in {"constraint", "trigger"} and self.new_table(table, item)):
                shown = rename_type.removeprefix("OBJECT_").replace("TABCONSTRAINT", "CONSTRAINT")
                yield self.report(item, "rename-object", f"RENAME {shown} {old} to {fields.get('newname')}")

    @staticmethod
    def old_name(fields: dict[str, Any], rename_type: str) -> str:
        if rename_type in {"OBJECT_TABCONSTRAINT", "OBJECT_TRIGGER"}:
            return str(fields.get("subname", ""))
        if "relation" in fields:
            return str(fields["relation"].get("relname", ""))
        target = fields.get("object", {})
        if "ObjectWithArgs" in target:
            return last_name(target["ObjectWithArgs"].get("objname", ()))
        if "List" in target:
            return last_name(target["List"].get("items", ()))
        return str(target.get("String", {}).get("sval", ""))

    def drop(self, item: Item, fields: dict[str, Any]) -> Iterator[Raw]:
        remove = fields.get("removeType", "")
        if not fields.get("missing_ok"):
            yield self.report(item, "drop-not-idempotent", "DROP without IF EXISTS")
        if remove == "OBJECT_INDEX":
            if fields.get("concurrent") and item.scope != "top":
                yield self.report(
                    item, "non-transactional-in-plpgsql", "DROP INDEX CONCURRENTLY cannot run in a transaction"
                )
            elif not fields.get("concurrent"):
                names = [n for n in map(object_name, fields.get("objects", ())) if not self.new_index(n, item)]
                if names:
                    yield self.report(
                        item,
                        "drop-index-not-concurrent",
                        f"DROP INDEX {', '.join(names)} without CONCURRENTLY takes ACCESS EXCLUSIVE on its table",
                    )
            return
        if remove not in DROPPED_KINDS:
            return
        category, rule, shown = DROPPED_KINDS[remove]
        for target in fields.get("objects", ()):
            key = drop_key(category, target)
            if key in (self.earlier if category in HOLDS_DATA else self.defined):
                continue  # a helper this file made, or a definition it creates again (a replace)
            if category == "table":
                self.columns.pop(key[1], None)
            yield self.report(item, rule, f"DROP {shown} {key[1]}")

    # -- helpers

    def transaction(self, item: Item) -> str:
        """What one transaction spans: the file if it runs as one, else the DO block or statement."""
        if item.scope == "do":
            return item.owner
        return "file" if self.transactional else f"line {item.line}"

    def names(self, item: Item) -> Iterator[Raw]:
        """identifier-too-long, from the text: the parse tree already holds the truncated name."""
        if kind(item.node) not in NAMING_NODES:
            return
        encoded = item.text.encode()
        if LONG_RUN not in encoded.translate(IDENTIFIER_BYTES) and not (
            b'"' in encoded and LONG_QUOTED.search(encoded)
        ):
            return
        from pglast.parser import scan  # noqa: PLC0415 - only for the rare statement with a long run

        for token in scan(item.text):
            if token.name != "IDENT":
                continue
            written = item.text[token.start : token.end + 1]
            name = written[1:-1].replace('""', '"') if written.startswith('"') else written.lower()
            if len(name.encode()) > NAMEDATALEN:
                yield self.report(
                    item,
                    "identifier-too-long",
                    f"{name[:24]}... is {len(name.encode())} bytes: PostgreSQL truncates it to {NAMEDATALEN}",
                )

    def advice(self, item: Item, column: dict[str, Any] | None) -> Iterator[Raw]:
        if not column or "typeName" not in column:
            return
        written = types.of(column["typeName"])
        name = column.get("colname", "")
        if written.name in ADVICE_TYPES:
            rule, shown = ADVICE_TYPES[written.name]
            yield self.report(item, rule, f"column {name} is {shown}")
        if written.name == "varchar" and written.mods:
            yield self.report(item, "prefer-text", f"column {name} is varchar({written.mods[0]})")
        if written.name in types.SERIALS:
            yield self.report(item, "prefer-identity", f"column {name} is {written.name}")

    def remember_columns(self, fields: dict[str, Any]) -> None:
        table = relname(fields)
        if table:
            self.columns[table] = {
                element["ColumnDef"].get("colname", ""): types.of(element["ColumnDef"].get("typeName", {}))
                for element in fields.get("tableElts", ())
                if "ColumnDef" in element
            }

    def mixed(self) -> list[Raw]:
        """mixed-schema-data: the first DML on a table the file did not create, if the file has DDL."""
        if not any(kind(item.node) in DDL_NODES for item in self.items if item.scope != "function"):
            return []
        for item in self.items:
            name = kind(item.node)
            if item.scope != "function" and name in DML_NODES:
                table = relname(body(item.node))
                if not self.new_table(table, item):
                    where = "" if item.scope == "top" else f" (in {item.owner})"
                    return [
                        Raw("mixed-schema-data", item.line, f"{DML_NODES[name]} {table} beside DDL in one file{where}")
                    ]
        return []


def object_name(target: dict[str, Any]) -> str:
    if "List" in target:
        return last_name(target["List"].get("items", ()))
    if "String" in target:
        return str(target["String"].get("sval", ""))
    if "ObjectWithArgs" in target:
        return last_name(target["ObjectWithArgs"].get("objname", ()))
    if "TypeName" in target:
        return last_name(target["TypeName"].get("names", ()))
    return ""


def drop_key(category: str, target: dict[str, Any]) -> tuple[Any, ...]:
    if category == "function" and "ObjectWithArgs" in target:
        function = target["ObjectWithArgs"]
        args = (
            None if function.get("args_unspecified") else [a.get("TypeName", {}) for a in function.get("objargs", ())]
        )
        return ("function", *function_key(function.get("objname", []), args))
    return (category, object_name(target))


def definitions(node: dict[str, Any], *, signatures: set[str]) -> Iterator[tuple[Any, ...]]:
    """What a statement creates, as keys compared with drops and renames.

    A function is known by its name, and if its name is in ``signatures`` (the file drops a
    function of that name) also by its argument types.
    """
    name, fields = kind(node), body(node)
    table = created_tables(node)
    if table:
        yield ("table", table)
        if name == "CreateTableAsStmt" and fields.get("objtype") == "OBJECT_MATVIEW":
            yield ("view", table)
        for element in fields.get("tableElts", ()):
            conname = element.get("Constraint", {}).get("conname")
            if conname:
                yield ("constraint", table, conname)
    elif name == "IndexStmt" and fields.get("idxname"):
        yield ("index", fields["idxname"], relname(fields) or "")
    elif name == "ViewStmt":
        yield ("view", relname(fields, "view") or "")
    elif name == "CreateSeqStmt":
        yield ("sequence", relname(fields, "sequence") or "")
    elif name == "CreateSchemaStmt":
        yield ("schema", fields.get("schemaname", ""))
    elif name == "CreateFunctionStmt":
        if last_name(fields.get("funcname", [])) in signatures:
            arguments = [
                p["FunctionParameter"]["argType"]
                for p in source.parameters(fields)
                if p["FunctionParameter"].get("mode", "FUNC_PARAM_DEFAULT")
                in {"FUNC_PARAM_DEFAULT", "FUNC_PARAM_IN", "FUNC_PARAM_INOUT", "FUNC_PARAM_VARIADIC"}
            ]
            yield ("function", *function_key(fields.get("funcname", []), arguments))
        yield ("function", last_name(fields.get("funcname", [])), None)
    elif name in {"CreateEnumStmt", "CreateRangeStmt"}:
        yield ("type", last_name(fields.get("typeName", ())))
    elif name == "CompositeTypeStmt":
        yield ("type", relname(fields, "typevar") or "")
    elif name == "DefineStmt" and fields.get("kind") in {"OBJECT_OPERATOR", "OBJECT_AGGREGATE"}:
        yield (
            "operator" if fields["kind"] == "OBJECT_OPERATOR" else "aggregate",
            last_name(fields.get("defnames", ())),
        )
    elif name == "CreateDomainStmt":
        yield ("type", last_name(fields.get("domainname", ())))
    elif name == "AlterTableStmt":
        for entry in fields.get("cmds", ()):
            constraint = entry.get("AlterTableCmd", {}).get("def", {}).get("Constraint", {})
            if entry.get("AlterTableCmd", {}).get("subtype") == "AT_AddConstraint" and constraint.get("conname"):
                yield ("constraint", relname(fields) or "", constraint["conname"])
    elif name == "RenameStmt" and fields.get("renameType") in RENAMED_KINDS:
        category = RENAMED_KINDS[fields["renameType"]]
        if category == "constraint":
            yield ("constraint", relname(fields) or "", fields.get("newname", ""))
        else:
            yield (category, fields.get("newname", ""))
    elif name == "RenameStmt" and fields.get("renameType") == "OBJECT_TABLE":
        yield ("renamed-table", fields.get("newname", ""))


def volatile_calls(expression: Any) -> Iterator[str]:
    """Functions in an expression that are volatile, or not known to be stable or immutable."""
    if isinstance(expression, dict):
        call = expression.get("FuncCall")
        if call is not None:
            function = last_name(call.get("funcname", [])).lower()
            if function in VOLATILE or function not in NON_VOLATILE:
                yield function
        for value in expression.values():
            yield from volatile_calls(value)
    elif isinstance(expression, list):
        for value in expression:
            yield from volatile_calls(value)
