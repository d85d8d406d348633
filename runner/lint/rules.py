"""The rule catalogue: id, default severity, family, squawk aliases, fix hint, example.

Invariants:
- Rule ids are stable (configuration, waivers and CI annotations name them); a squawk rule
  name is accepted wherever a rule id is (``ALIASES``), so a team can keep its squawk
  configuration while it switches.
- Hints are true for this runner: a file runs as one transaction with its history row,
  unless a statement PostgreSQL refuses in a transaction block (``CONCURRENTLY``, ...) or
  ``-- runner: no-transaction`` makes every statement run on its own in autocommit; every
  transaction runs with ``lock_timeout`` and is retried whole on a lock timeout.
- ``off`` rules (schema-design advice) run only when selected (``--select``, configuration).
- ``scopes`` says where a rule looks: ``top`` (a statement of the file), ``do`` (inside a
  ``DO`` block: runs now, with the file) and ``function`` (inside a function or procedure
  body: runs when called, maybe on a live table).
"""

from __future__ import annotations

from typing import NamedTuple

TOP_DO = frozenset({"top", "do"})
EVERYWHERE = frozenset({"top", "do", "function"})
SEVERITIES = ("error", "warning", "off")
OWN_FILE = "CONCURRENTLY makes the whole file run outside a transaction: give it a file of its own"


class Rule(NamedTuple):
    """One rule: what it finds, how bad by default, how to fix it, and its squawk names."""

    id: str
    severity: str
    family: str
    summary: str
    hint: str
    example: str
    aliases: tuple[str, ...] = ()
    scopes: frozenset[str] = TOP_DO


CATALOGUE = (
    # -- structure and project layout
    Rule(
        "structure",
        "error",
        "structure",
        "what the runner cannot run as written: syntax errors, transaction control, psql meta-commands, "
        "COPY to the client, bad directives and waivers, PL/pgSQL that does not parse",
        "see the message: each kind of problem has its own fix",
        "BEGIN;",
        ("transaction-nesting", "ban-uncommitted-transaction"),
        frozenset({"top"}),
    ),
    Rule(
        "header",
        "error",
        "project",
        "missing or malformed `-- Migration: / Author: / Date: YYYY-MM-DD / Description:` header "
        "(only for files named NNN_name.sql)",
        "start the file with the template: -- Migration: / -- Author: / -- Date: YYYY-MM-DD / "
        "-- Description: (migration-runner new NAME writes it)",
        "-- (no header)",
        (),
        frozenset({"top"}),
    ),
    # -- idempotency: the runner's contract is that a second run changes nothing
    Rule(
        "create-not-idempotent",
        "error",
        "idempotency",
        "`CREATE TABLE/INDEX/SEQUENCE/SCHEMA/EXTENSION/MATERIALIZED VIEW`, `CREATE TABLE AS` or "
        "`SELECT INTO` without `IF NOT EXISTS` (outside a guard in a `DO` block)",
        "add IF NOT EXISTS",
        "CREATE TABLE t (id bigint);",
        ("prefer-robust-stmts",),
    ),
    Rule(
        "add-column-not-idempotent",
        "error",
        "idempotency",
        "`ADD COLUMN` without `IF NOT EXISTS`",
        "use ADD COLUMN IF NOT EXISTS",
        "ALTER TABLE users ADD COLUMN nick text;",
        ("prefer-robust-stmts",),
    ),
    Rule(
        "drop-not-idempotent",
        "error",
        "idempotency",
        "`DROP ...`, `DROP COLUMN` or `DROP CONSTRAINT` without `IF EXISTS`",
        "add IF EXISTS",
        "DROP TABLE old_stuff;",
        ("prefer-robust-stmts",),
    ),
    Rule(
        "replace-missing",
        "error",
        "idempotency",
        "`CREATE FUNCTION/PROCEDURE/VIEW/TRIGGER` without `OR REPLACE`",
        "use CREATE OR REPLACE",
        "CREATE VIEW v AS SELECT 1;",
    ),
    Rule(
        "add-constraint-unguarded",
        "error",
        "idempotency",
        "`ADD CONSTRAINT` outside a guard: a `DO` block that checks the catalog first (the seed's "
        "`IF NOT EXISTS (SELECT 1 FROM pg_constraint ...)`), returns early after such a check, or "
        "catches `duplicate_object`",
        "wrap it: DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '...' AND "
        "conrelid = 'tbl'::regclass) THEN ALTER TABLE ... END IF; END $$",
        "ALTER TABLE users ADD CONSTRAINT users_id_positive CHECK (id > 0) NOT VALID;",
    ),
    Rule(
        "mixed-schema-data",
        "error",
        "idempotency",
        "`INSERT/UPDATE/DELETE/MERGE` on a table this file did not create, beside DDL in one file "
        "(filling a table the file creates is part of creating it)",
        "move the data change into a data migration of its own",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS active boolean;\nUPDATE users SET active = true;",
    ),
    # -- live-database risks: locks, scans and rewrites on tables that exist and are in use
    Rule(
        "index-not-concurrent",
        "error",
        "live-risk",
        "`CREATE INDEX` without `CONCURRENTLY` on a table this file did not create: blocks writes "
        "(SHARE lock) for the whole build",
        f"use CREATE INDEX CONCURRENTLY IF NOT EXISTS; {OWN_FILE}",
        "CREATE INDEX IF NOT EXISTS users_email ON users (email);",
        ("require-concurrent-index-creation",),
        EVERYWHERE,
    ),
    Rule(
        "constraint-builds-index",
        "error",
        "live-risk",
        "`ADD PRIMARY KEY`, `ADD UNIQUE` or `ADD EXCLUDE` (also inline on `ADD COLUMN`) on an existing "
        "table: the index is built under ACCESS EXCLUSIVE, blocking reads and writes",
        f"build the unique index with CREATE UNIQUE INDEX CONCURRENTLY first ({OWN_FILE}), then "
        "ADD CONSTRAINT ... UNIQUE/PRIMARY KEY USING INDEX in a later file",
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
        ("disallowed-unique-constraint", "adding-serial-primary-key-field"),
        EVERYWHERE,
    ),
    Rule(
        "constraint-validates",
        "error",
        "live-risk",
        "`CHECK` or `FOREIGN KEY` without `NOT VALID` on an existing table (also `ADD COLUMN ... "
        "REFERENCES/CHECK`): every row is checked while the lock is held",
        "add it NOT VALID, then VALIDATE CONSTRAINT in a later migration (SHARE UPDATE EXCLUSIVE: "
        "reads and writes go on)",
        "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);",
        ("constraint-missing-not-valid", "adding-foreign-key-constraint"),
        EVERYWHERE,
    ),
    Rule(
        "validate-same-transaction",
        "error",
        "live-risk",
        "`VALIDATE CONSTRAINT` in the same transaction that added the constraint `NOT VALID`: the "
        "ADD's lock is still held while every row is checked, so `NOT VALID` bought nothing",
        "move VALIDATE CONSTRAINT to a later migration file (each file is one transaction)",
        "ALTER TABLE users ADD CONSTRAINT users_id_positive CHECK (id > 0) NOT VALID;\n"
        "ALTER TABLE users VALIDATE CONSTRAINT users_id_positive;",
        ("constraint-missing-not-valid",),
        EVERYWHERE,
    ),
    Rule(
        "add-column-required",
        "error",
        "live-risk",
        "`ADD COLUMN ... NOT NULL` (or `PRIMARY KEY`) without a default on an existing table: fails "
        "as soon as the table has a row",
        "add it nullable (or with a constant DEFAULT), backfill in batches, then SET NOT NULL via a "
        "validated CHECK (col IS NOT NULL)",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS org_id bigint NOT NULL;",
        ("adding-required-field",),
        EVERYWHERE,
    ),
    Rule(
        "add-column-rewrite",
        "warning",
        "live-risk",
        "`ADD COLUMN` with a volatile default (`random()`, `gen_random_uuid()`, `clock_timestamp()`, "
        "a serial or identity column, an unknown function) or a STORED generated column: the "
        "table is rewritten under ACCESS EXCLUSIVE",
        "add the column without a default (or with a constant or STABLE one: no rewrite since "
        "PostgreSQL 11), set the default afterwards, backfill in batches",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS token uuid DEFAULT gen_random_uuid();",
        ("adding-field-with-default",),
        EVERYWHERE,
    ),
    Rule(
        "column-type-rewrite",
        "warning",
        "live-risk",
        "`ALTER COLUMN ... TYPE` that rewrites the table and its indexes under ACCESS EXCLUSIVE, per "
        "PostgreSQL's rules (varchar widening, varchar -> text, numeric precision widening and "
        "timestamp <-> timestamptz in a UTC session do not rewrite)",
        "add a new column, backfill in batches, switch readers, drop the old one later",
        "ALTER TABLE users ALTER COLUMN id TYPE bigint;",
        ("changing-column-type",),
        EVERYWHERE,
    ),
    Rule(
        "set-not-null-scan",
        "warning",
        "live-risk",
        "`SET NOT NULL` on an existing table: scans every row under ACCESS EXCLUSIVE",
        "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in a later file, then SET NOT NULL "
        "(PostgreSQL 12+ skips the scan when a valid CHECK proves it)",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ("adding-not-nullable-field",),
        EVERYWHERE,
    ),
    Rule(
        "drop-index-not-concurrent",
        "warning",
        "live-risk",
        "`DROP INDEX` without `CONCURRENTLY`: takes ACCESS EXCLUSIVE on the index's table",
        f"use DROP INDEX CONCURRENTLY IF EXISTS; {OWN_FILE}",
        "DROP INDEX IF EXISTS users_email;",
        ("require-concurrent-index-deletion",),
        EVERYWHERE,
    ),
    Rule(
        "reindex-not-concurrent",
        "error",
        "live-risk",
        "`REINDEX` without `CONCURRENTLY`: blocks writes to the table, and reads that use the index, "
        "for the whole rebuild",
        f"use REINDEX ... CONCURRENTLY (PostgreSQL 12+); {OWN_FILE}",
        "REINDEX INDEX users_email;",
        ("require-concurrent-reindex",),
        EVERYWHERE,
    ),
    Rule(
        "non-transactional-in-plpgsql",
        "error",
        "live-risk",
        "`CONCURRENTLY`, `VACUUM` and other statements PostgreSQL refuses in a transaction block, "
        "inside a `DO` block or a function: they fail every time (the body runs in a transaction)",
        "run the statement at the top level of a migration file of its own (the runner then runs "
        "that file in autocommit)",
        "DO $$ BEGIN CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email); END $$;",
        (),
        frozenset({"do", "function"}),
    ),
    Rule(
        "identifier-too-long",
        "error",
        "live-risk",
        "a name over 63 bytes: PostgreSQL truncates it, so catalog guards that compare the full "
        "name never match and two long names can collide",
        "shorten the name to at most 63 bytes",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS " + "a" * 64 + " ON users (email);",
        ("identifier-too-long",),
        EVERYWHERE,
    ),
    # -- breaking changes for the release that is still running while a migration applies
    Rule(
        "drop-column",
        "error",
        "breaking",
        "`DROP COLUMN` on an existing table",
        "breaks the running release: stop using the column in one release, drop it in a later one "
        '(allow=drop-column reason="phase 2 of ...")',
        "ALTER TABLE users DROP COLUMN IF EXISTS legacy;",
        ("ban-drop-column",),
    ),
    Rule(
        "rename-column",
        "error",
        "breaking",
        "`RENAME COLUMN` on an existing table",
        "breaks the running release: add the new column, backfill, switch readers, drop later",
        "ALTER TABLE users RENAME COLUMN a TO b;",
        ("renaming-column",),
    ),
    Rule(
        "rename-table",
        "error",
        "breaking",
        "`RENAME` of an existing table, unless the file creates a table under the old name again (a swap)",
        "breaks the running release: create the new table or a view, migrate, drop later",
        "ALTER TABLE users RENAME TO people;",
        ("renaming-table",),
    ),
    Rule(
        "drop-table",
        "error",
        "breaking",
        "`DROP TABLE` of a table the file did not create before (dropping and creating it again loses its rows)",
        "breaks the running release: stop using the table in one release, drop it in a later one "
        '(allow=drop-table reason="phase 2 of ...")',
        "DROP TABLE IF EXISTS sessions;",
        ("ban-drop-table",),
    ),
    Rule(
        "drop-schema",
        "error",
        "breaking",
        "`DROP SCHEMA` of a schema the file did not create before",
        "breaks the running release: move what is still used out first, drop in a later release",
        "DROP SCHEMA IF EXISTS reporting;",
        ("ban-drop-schema",),
    ),
    Rule(
        "drop-object",
        "warning",
        "breaking",
        "`DROP VIEW/MATERIALIZED VIEW/FUNCTION/PROCEDURE/AGGREGATE/OPERATOR/TYPE/DOMAIN` of an object the file does "
        "not create again (same name, same argument types), or `DROP SEQUENCE` of one it did not create before",
        "callers in the running release break: drop it in the release after the last caller is gone",
        "DROP VIEW IF EXISTS active_users;",
        ("ban-drop-view", "ban-drop-function", "ban-drop-type", "ban-drop-sequence", "ban-drop-domain"),
    ),
    Rule(
        "drop-constraint",
        "warning",
        "breaking",
        "`DROP CONSTRAINT` on an existing table, unless the file adds it again",
        "the running release may rely on the guarantee (uniqueness for ON CONFLICT, a foreign key): "
        "drop it after the release that stops relying on it",
        "ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_key;",
        ("ban-drop-constraint",),
    ),
    Rule(
        "drop-not-null",
        "warning",
        "breaking",
        "`DROP NOT NULL` on an existing table",
        "the running release may not expect NULLs: ship readers that handle them first",
        "ALTER TABLE users ALTER COLUMN email DROP NOT NULL;",
        ("ban-drop-not-null",),
    ),
    Rule(
        "drop-default",
        "warning",
        "breaking",
        "`DROP DEFAULT` on an existing table",
        "inserts of the running release that omit the column get NULL (or fail on NOT NULL): ship "
        "writers that set it first",
        "ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT;",
        ("ban-drop-default",),
    ),
    Rule(
        "rename-object",
        "warning",
        "breaking",
        "`RENAME` of an index, sequence, view, function, type, schema, constraint or trigger the file did not create",
        "callers that use the old name break (nextval('old_seq'), hints, ON CONSTRAINT): create the "
        "new object beside the old one, or rename in the release after the last caller",
        "ALTER SEQUENCE users_id_seq RENAME TO people_id_seq;",
        ("renaming-object",),
    ),
    Rule(
        "alter-identity",
        "warning",
        "breaking",
        "`ALTER COLUMN ... ADD/SET/DROP IDENTITY` on an existing table",
        "inserts of the running release may break (GENERATED ALWAYS refuses explicit values; "
        "DROP IDENTITY leaves no default): change identity in a release that is ready for it",
        "ALTER TABLE users ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;",
        ("ban-alter-identity",),
    ),
    # -- schema-design advice: off unless selected
    Rule(
        "prefer-bigint",
        "off",
        "advice",
        "`integer`/`smallint` (and `serial`) columns: 32-bit keys run out",
        "use bigint (converting later rewrites the table)",
        "CREATE TABLE IF NOT EXISTS t (id integer);",
        ("prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-big-int"),
    ),
    Rule(
        "prefer-text",
        "off",
        "advice",
        "`varchar(n)` columns",
        "use text with a CHECK (length(col) <= n) if a limit is needed: a CHECK can be added NOT VALID",
        "CREATE TABLE IF NOT EXISTS t (name varchar(40));",
        ("prefer-text-field",),
    ),
    Rule(
        "prefer-timestamptz",
        "off",
        "advice",
        "`timestamp` (without time zone) columns",
        "use timestamptz: it stores an instant, whatever the session time zone",
        "CREATE TABLE IF NOT EXISTS t (at timestamp);",
        ("prefer-timestamp-tz", "prefer-timestamptz"),
    ),
    Rule(
        "prefer-identity",
        "off",
        "advice",
        "`serial`/`bigserial` columns",
        "use bigint GENERATED BY DEFAULT AS IDENTITY (the sequence belongs to the column; grants follow)",
        "CREATE TABLE IF NOT EXISTS t (id bigserial);",
        ("prefer-identity",),
    ),
    Rule(
        "ban-char",
        "off",
        "advice",
        "`char(n)` columns: blank-padded, rarely what is meant",
        "use text (or varchar)",
        "CREATE TABLE IF NOT EXISTS t (code char(3));",
        ("ban-char-field",),
    ),
)
RULES: dict[str, Rule] = {rule.id: rule for rule in CATALOGUE}
FAMILIES: dict[str, tuple[str, ...]] = {}
ALIASES: dict[str, tuple[str, ...]] = {}
for _rule in CATALOGUE:
    FAMILIES[_rule.family] = (*FAMILIES.get(_rule.family, ()), _rule.id)
    for _alias in _rule.aliases:
        ALIASES[_alias] = (*ALIASES.get(_alias, ()), _rule.id)


def resolve(name: str) -> tuple[str, ...]:
    """The rule ids a selector names: a rule id, a squawk rule name, a family or ``ALL``.

    Raises ``KeyError`` for anything else.
    """
    if name in RULES:
        return (name,)
    if name == "ALL":
        return tuple(RULES)
    if name in FAMILIES:
        return FAMILIES[name]
    return ALIASES[name]
