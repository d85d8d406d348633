"""Static checks of migration files on PostgreSQL's own parse tree (pglast). No database.

Invariants:
- Every finding has a rule id from ``RULES``, a severity, the file, the line of the statement
  and a fix hint. ``error`` findings make ``lint`` exit 3; ``warning`` findings do not.
- A file may waive a rule with ``-- runner: allow=RULE reason="why"``; a waiver without a
  reason, or naming an unknown rule, is itself an error.
- Rules read the JSON parse tree (absent fields mean false or empty).
- Statements inside ``DO`` blocks and function bodies are not inspected (``verify`` runs them
  twice instead); a ``DO`` block is how a guarded ``ADD CONSTRAINT`` is written.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config import Settings
from runner.discover import MIGRATION_NAME, Migration, Statement, analyse, discover, read_migration
from runner.errors import Problem, ValidationError

RULES: dict[str, tuple[str, str]] = {
    # id: (severity, fix hint)
    "structure": ("error", "the runner owns transactions; remove BEGIN/COMMIT and psql meta-commands"),
    "header": (
        "error",
        (
            "start the file with the template: -- Migration: / -- Author: / -- Date: YYYY-MM-DD / "
            "-- Description: (migration-runner new NAME writes it)"
        ),
    ),
    "create-not-idempotent": ("error", "add IF NOT EXISTS"),
    "add-column-not-idempotent": ("error", "use ADD COLUMN IF NOT EXISTS"),
    "drop-not-idempotent": ("error", "add IF EXISTS"),
    "replace-missing": ("error", "use CREATE OR REPLACE"),
    "add-constraint-unguarded": (
        "error",
        (
            "wrap it: DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint"
            " WHERE conname = '...' AND conrelid = 'tbl'::regclass) THEN"
            " ALTER TABLE ... END IF; END $$"
        ),
    ),
    "index-not-concurrent": (
        "error",
        ("on an existing table use CREATE INDEX CONCURRENTLY IF NOT EXISTS (the file then runs outside a transaction)"),
    ),
    "drop-column": (
        "error",
        (
            "breaks the running release: stop using the column in one release, drop it in a later "
            'one (allow=drop-column reason="phase 2 of ...")'
        ),
    ),
    "rename-column": ("error", "breaks the running release: add the new column, backfill, switch readers, drop later"),
    "rename-table": ("error", "breaks the running release: create the new table or a view, migrate, drop later"),
    "mixed-schema-data": ("error", "move INSERT/UPDATE/DELETE into a data migration of its own"),
    "constraint-validates": ("error", "add it NOT VALID, then VALIDATE CONSTRAINT in a later migration"),
    "column-type-rewrite": (
        "warning",
        ("ALTER COLUMN TYPE rewrites the table under ACCESS EXCLUSIVE: add a new column and backfill instead"),
    ),
    "set-not-null-scan": (
        "warning",
        (
            "SET NOT NULL scans the table under ACCESS EXCLUSIVE: add a CHECK (col IS NOT "
            "NULL) NOT VALID constraint, validate it, then SET NOT NULL"
        ),
    ),
}
HEADER_FIELDS = ("Migration", "Author", "Date", "Description")
HEADER_LINE = re.compile(r"^--\s*(Migration|Author|Date|Description):\s*(.*)$", re.MULTILINE)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DDL_NODES = {
    "CreateStmt",
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
}
DML_NODES = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
CREATE_NODES = {
    "CreateStmt": "TABLE",
    "IndexStmt": "INDEX",
    "CreateSeqStmt": "SEQUENCE",
    "CreateSchemaStmt": "SCHEMA",
    "CreateExtensionStmt": "EXTENSION",
}
REPLACE_NODES = {"CreateFunctionStmt": "FUNCTION/PROCEDURE", "ViewStmt": "VIEW", "CreateTrigStmt": "TRIGGER"}


@dataclass(frozen=True)
class Finding:
    """One rule broken at one place."""

    rule: str
    severity: str
    file: str
    line: int
    message: str
    hint: str

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity} {self.rule}: {self.message} (hint: {self.hint})"


def kind(node: dict[str, Any]) -> str:
    return next(iter(node))


def body(node: dict[str, Any]) -> dict[str, Any]:
    return dict(node[kind(node)])


def relation(node: dict[str, Any]) -> str | None:
    """The relation a statement names, if any (absent fields in the JSON tree mean false/empty)."""
    name = body(node).get("relation", {}).get("relname")
    return str(name) if name else None


def statement_findings(statement: Statement, created: set[str]) -> list[tuple[str, str]]:
    """(rule, message) for one top-level statement; ``created`` holds tables this file creates."""
    node, name = statement.node, kind(statement.node)
    fields = body(node)
    found: list[tuple[str, str]] = []
    table = relation(node)
    existing = table is not None and table not in created
    if name in CREATE_NODES and not fields.get("if_not_exists"):
        found.append(("create-not-idempotent", f"CREATE {CREATE_NODES[name]} without IF NOT EXISTS"))
    if name in REPLACE_NODES and not fields.get("replace"):
        found.append(("replace-missing", f"CREATE {REPLACE_NODES[name]} without OR REPLACE"))
    if name == "DropStmt" and not fields.get("missing_ok"):
        found.append(("drop-not-idempotent", "DROP without IF EXISTS"))
    if name == "IndexStmt" and existing and not fields.get("concurrent"):
        found.append(("index-not-concurrent", f"CREATE INDEX on existing table {table} without CONCURRENTLY"))
    if name == "RenameStmt":
        if fields.get("renameType") == "OBJECT_COLUMN":
            found.append(("rename-column", f"RENAME COLUMN on {table}"))
        elif fields.get("renameType") == "OBJECT_TABLE":
            found.append(("rename-table", f"RENAME TABLE {table}"))
    if name == "AlterTableStmt":
        for cmd in fields.get("cmds", ()):
            found += alter_findings(cmd.get("AlterTableCmd", {}), table, existing=existing)
    return found


def alter_findings(cmd: dict[str, Any], table: str | None, *, existing: bool) -> list[tuple[str, str]]:
    subtype = cmd.get("subtype", "")
    missing_ok = bool(cmd.get("missing_ok"))
    found: list[tuple[str, str]] = []
    if subtype == "AT_AddColumn" and not missing_ok:
        found.append(("add-column-not-idempotent", f"ADD COLUMN on {table} without IF NOT EXISTS"))
    elif subtype == "AT_DropColumn":
        found.append(("drop-column", f"DROP COLUMN {cmd.get('name', '')} on {table}"))
        if not missing_ok:
            found.append(("drop-not-idempotent", "DROP COLUMN without IF EXISTS"))
    elif subtype == "AT_AddConstraint":
        constraint = cmd.get("def", {}).get("Constraint", {})
        found.append(
            ("add-constraint-unguarded", (f"ADD CONSTRAINT {constraint.get('conname', '')} on {table} outside a guard"))
        )
        contype = constraint.get("contype", "")
        validates = not constraint.get("skip_validation")
        if existing and validates and contype in {"CONSTR_CHECK", "CONSTR_FOREIGN"}:
            found.append(
                (
                    "constraint-validates",
                    (
                        f"{contype.removeprefix('CONSTR_')} constraint on existing table"
                        f" {table} validates every row under lock"
                    ),
                )
            )
    elif subtype == "AT_AlterColumnType" and existing:
        found.append(("column-type-rewrite", f"ALTER COLUMN {cmd.get('name', '')} TYPE on {table}"))
    elif subtype == "AT_SetNotNull" and existing:
        found.append(("set-not-null-scan", f"SET NOT NULL on {table}.{cmd.get('name', '')}"))
    return found


def header_findings(migration: Migration) -> list[tuple[str, str, int]]:
    fields = {key: value.strip() for key, value in HEADER_LINE.findall(migration.sql)}
    problems = [f"missing '-- {key}:'" for key in HEADER_FIELDS if not fields.get(key)]
    if fields.get("Migration") and fields["Migration"] not in {migration.name, migration.name.removesuffix(".sql")}:
        problems.append(f"'-- Migration: {fields['Migration']}' does not name this file")
    if fields.get("Date") and not DATE.match(fields["Date"]):
        problems.append(f"'-- Date: {fields['Date']}' is not YYYY-MM-DD")
    return [("header", problem, 1) for problem in problems]


def lint_migration(migration: Migration) -> list[Finding]:
    """Every finding for one migration, waivers applied."""
    raw: list[tuple[str, str, int]] = header_findings(migration)
    try:
        statements = analyse(migration).statements
    except ValidationError as exc:
        statements = ()
        raw += [("structure", problem.message, problem.line or 1) for problem in exc.problems]
    created = {table for s in statements if kind(s.node) == "CreateStmt" and (table := relation(s.node))}
    for statement in statements:
        raw += [(rule, message, statement.line) for rule, message in statement_findings(statement, created)]
    has_ddl = next((s for s in statements if kind(s.node) in DDL_NODES), None)
    has_dml = next((s for s in statements if kind(s.node) in DML_NODES), None)
    if has_ddl and has_dml:
        raw.append(
            (
                "mixed-schema-data",
                f"{kind(has_dml.node).removesuffix('Stmt').upper()} beside DDL in one file",
                has_dml.line,
            )
        )
    waived = dict(migration.directives.allow)
    findings = [
        Finding(rule, RULES[rule][0], migration.name, line, message, RULES[rule][1])
        for rule, message, line in raw
        if rule not in waived
    ]
    findings += [
        Finding(
            "structure",
            "error",
            migration.name,
            1,
            f"allow={rule} names no lint rule",
            "known rules: " + ", ".join(RULES),
        )
        for rule in waived
        if rule not in RULES
    ]
    return sorted(findings, key=lambda f: (f.file, f.line, f.rule))


def lint_paths(paths: list[Path]) -> list[Finding]:
    """Lint the given files (any name; the header check still applies)."""
    findings: list[Finding] = []
    for path in paths:
        match = MIGRATION_NAME.match(path.name)
        migration, problems = read_migration(path.parent, path, int(match.group(1)) if match else 0)
        findings += [
            Finding("structure", "error", path.name, problem.line or 1, problem.message, RULES["structure"][1])
            for problem in problems
        ]
        if migration is not None:
            findings += lint_migration(migration)
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lint`` command's own arguments (besides ``--migrations-dir`` and logging)."""
    parser.add_argument("files", nargs="*", metavar="FILE", help="files to lint (default: the directory)")
    parser.add_argument("--format", choices=("human", "json"), default="human", help="report format")


def command(settings: Settings, args: argparse.Namespace) -> None:
    """``lint``: print the findings to stdout; ``ValidationError`` (exit 3) on an error finding."""
    files = [Path(name) for name in args.files] or [m.path for m in discover(settings.migrations_dir)]
    findings = lint_paths(files)
    if args.format == "json":
        import json  # noqa: PLC0415

        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding)
        errors = sum(f.severity == "error" for f in findings)
        print(f"{len(files)} files, {errors} errors, {len(findings) - errors} warnings")
    errors_found = [Problem(f.rule, f.message, f.file, f.line) for f in findings if f.severity == "error"]
    if errors_found:
        raise ValidationError(errors_found)
