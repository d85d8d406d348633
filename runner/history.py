"""Every SQL statement about the history table. Identifiers go through ``sql.Identifier``.

Invariants:
- The table has the seed design's exact columns plus the runner's own (``RUNNER_COLUMNS``),
  added with ``ADD COLUMN IF NOT EXISTS``: a seed-format table is adopted, never rejected.
- ``migration_name`` is the file name and is unique: one row per migration, updated in place
  when a failed migration is retried.
- A success row is written inside the migration's own transaction (``success_statement``);
  a failure row in a separate transaction after the rollback.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from runner import __version__
from runner.discover import Migration
from runner.plan import AppliedRow

SEED_COLUMNS = """
    id SERIAL PRIMARY KEY,
    migration_name VARCHAR(255) UNIQUE NOT NULL,
    applied_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    applied_by VARCHAR(100) DEFAULT CURRENT_USER,
    execution_time_ms INTEGER,
    success BOOLEAN DEFAULT true,
    error_message TEXT
"""
RUNNER_COLUMNS = {"checksum": "VARCHAR(64)", "runner_version": "VARCHAR(32)"}
ELAPSED_MS = sql.SQL("(extract(epoch from clock_timestamp() - transaction_timestamp()) * 1000)::int")


@dataclass(frozen=True)
class Table:
    """The history table's (optional) schema and name."""

    schema: str | None
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name) if self.schema else sql.Identifier(self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def columns(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> set[str] | None:
    """The table's column names, or None when it does not exist. One round trip."""
    row = conn.execute(
        "SELECT c.oid IS NOT NULL, array(SELECT attname::text FROM pg_attribute"
        " WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)"
        " FROM (SELECT to_regclass(%s) AS oid) AS c",
        [table.ident.as_string(conn)],
    ).fetchone()
    assert row is not None
    exists, names = row
    return set(names) if exists else None  # type: ignore[call-overload]


def ensure(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> bool:
    """Create the table or add the runner's columns, as needed. True if it changed anything."""
    existing = columns(conn, table)
    if existing is not None and set(RUNNER_COLUMNS) <= existing:
        return False
    statements: list[sql.Composed] = []
    if table.schema:
        statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    statements.append(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table.ident, sql.SQL(SEED_COLUMNS)))
    statements += [
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            table.ident, sql.Identifier(column), sql.SQL(kind)
        )
        for column, kind in RUNNER_COLUMNS.items()
    ]
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)
    return True


def read(conn: psycopg.Connection[tuple[object, ...]], table: Table, *, ensured: bool = False) -> list[AppliedRow]:
    """Every row; an absent table reads as empty.

    ``ensured``: the caller has just run ``ensure``, so the table exists with every column and
    one round trip suffices; otherwise the columns are probed first (two round trips).
    """
    present = set(RUNNER_COLUMNS) if ensured else columns(conn, table)
    if present is None:
        return []
    checksum = sql.Identifier("checksum") if "checksum" in present else sql.SQL("NULL")
    query = sql.SQL("SELECT migration_name, {}, coalesce(success, true), error_message FROM {}").format(
        checksum, table.ident
    )
    return [
        AppliedRow(str(name), checksum_, bool(success), error)  # type: ignore[arg-type]
        for name, checksum_, success, error in conn.execute(query).fetchall()
    ]


def success_statement(table: Table, migration: Migration, elapsed_ms: int | None = None) -> sql.Composed:
    """The upsert that records ``migration`` as applied; runs inside its transaction.

    Without ``elapsed_ms`` the server measures the time since the transaction began.
    """
    elapsed = ELAPSED_MS if elapsed_ms is None else sql.Literal(elapsed_ms)
    return sql.SQL(
        "INSERT INTO {table} (migration_name, execution_time_ms, success, error_message, checksum, runner_version)"
        " VALUES ({name}, {elapsed}, true, NULL, {checksum}, {version})"
        " ON CONFLICT (migration_name) DO UPDATE SET applied_at = CURRENT_TIMESTAMP,"
        " applied_by = CURRENT_USER, execution_time_ms = EXCLUDED.execution_time_ms, success = true,"
        " error_message = NULL, checksum = EXCLUDED.checksum, runner_version = EXCLUDED.runner_version"
    ).format(
        table=table.ident,
        name=sql.Literal(migration.name),
        elapsed=elapsed,
        checksum=sql.Literal(migration.checksum),
        version=sql.Literal(__version__),
    )


def record_failure(
    conn: psycopg.Connection[tuple[object, ...]],
    table: Table,
    migration: Migration,
    error_message: str,
    elapsed_ms: int,
) -> None:
    """Record a failed attempt in its own transaction; never overwrites a success."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} AS h (migration_name, execution_time_ms, success, error_message, checksum,"
                " runner_version) VALUES (%s, %s, false, %s, %s, %s)"
                " ON CONFLICT (migration_name) DO UPDATE SET applied_at = CURRENT_TIMESTAMP,"
                " applied_by = CURRENT_USER, execution_time_ms = EXCLUDED.execution_time_ms,"
                " success = false, error_message = EXCLUDED.error_message, checksum = EXCLUDED.checksum,"
                " runner_version = EXCLUDED.runner_version WHERE NOT coalesce(h.success, true)"
            ).format(table.ident),
            [migration.name, elapsed_ms, error_message, migration.checksum, __version__],
        )


def set_checksums(conn: psycopg.Connection[tuple[object, ...]], table: Table, migrations: list[Migration]) -> None:
    """Store the current checksum of each migration (adoption and ``repair``)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            sql.SQL("UPDATE {} SET checksum = %s WHERE migration_name = %s").format(table.ident),
            [(m.checksum, m.name) for m in migrations],
        )


def delete_failed(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> list[str]:
    """Remove the rows of failed attempts (``repair``); returns their names."""
    with conn.transaction():
        rows = conn.execute(
            sql.SQL("DELETE FROM {} WHERE NOT coalesce(success, true) RETURNING migration_name").format(table.ident)
        ).fetchall()
    return sorted(str(name) for (name,) in rows)


def insert_baseline(conn: psycopg.Connection[tuple[object, ...]], table: Table, migrations: list[Migration]) -> None:
    """Mark ``migrations`` applied without running them (``baseline``)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (migration_name, execution_time_ms, success, error_message, checksum, runner_version)"
                " VALUES (%s, 0, true, 'baseline: marked applied without running', %s, %s)"
            ).format(table.ident),
            [(m.name, m.checksum, __version__) for m in migrations],
        )
