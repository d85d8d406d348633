"""Every SQL statement about the history table, fully qualified. Identifiers via ``sql.Identifier``.

Invariants:
- The table is resolved once (``resolve``), on a session of the runner's own that no file
  ever touched: where ``--history-table`` names it, else where it exists on that session's
  search_path, else where ``CREATE TABLE`` would put it. From then on every statement names
  it ``schema.table`` and every function ``pg_catalog.``: no file's ``search_path``, temp
  table or role can redirect or shadow it. Two spellings of one table are one ``Table``.
- The table has the seed design's exact columns plus the runner's own (``RUNNER_COLUMNS``),
  added with ``ADD COLUMN IF NOT EXISTS``: a seed-format table is adopted, never rejected.
- ``migration_name`` is the file name and is unique: one row per migration, updated in place
  when a failed migration is retried.
- A success row is written inside the migration's own transaction (``record_success``), and
  the statement fails unless exactly one row was written; failure rows and every other change
  are written on the runner's own session, never on a session a file ran on.
- A batched data file's progress lives next to the history, in ``<table>_batches`` (one row per
  file, created when a batch file first runs; the history table itself is unchanged, so 0.1.0
  runners share it as before). Each batch writes its row inside the batch's own transaction
  (``record_batch``), and only over the row it started from: the statement fails unless it
  wrote exactly one row, so two batches can never both commit from the same progress.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from runner import __version__
from runner.discover import Migration
from runner.errors import ConfigError
from runner.plan import AppliedRow

Conn = psycopg.Connection[tuple[Any, ...]]
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
READ_COLUMNS = (
    "migration_name",
    "checksum",
    "success",
    "error_message",
    "applied_at",
    "applied_by",
    "execution_time_ms",
    "runner_version",
)
ELAPSED_MS = sql.SQL(
    "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - pg_catalog.transaction_timestamp()) * 1000)::int4"
)
RESOLVE_SQL = """SELECT coalesce(
    (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = pg_catalog.to_regclass(%s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%'),
    pg_catalog.current_schema())"""
COLUMNS_SQL = """SELECT c.oid IS NOT NULL, array(SELECT attname::text FROM pg_catalog.pg_attribute
    WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)
    FROM (SELECT pg_catalog.to_regclass(%s) AS oid) AS c"""
UPSERT = """INSERT INTO {table} AS h (migration_name, execution_time_ms, success, error_message, checksum,
 runner_version) VALUES ({name}, {elapsed}, {success}, {error}, {checksum}, {version})
 ON CONFLICT (migration_name) DO UPDATE SET applied_at = CURRENT_TIMESTAMP, applied_by = SESSION_USER,
 execution_time_ms = EXCLUDED.execution_time_ms, success = EXCLUDED.success, error_message = EXCLUDED.error_message,
 checksum = EXCLUDED.checksum, runner_version = EXCLUDED.runner_version"""
NOT_WRITTEN = "migration-runner: the history row was not written"
BATCH_COLUMNS = """
    migration_name VARCHAR(255) PRIMARY KEY,
    checksum VARCHAR(64) NOT NULL,
    resume_after TEXT[],
    batches INTEGER NOT NULL,
    rows_done BIGINT NOT NULL,
    rows_changed BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    finished_at TIMESTAMPTZ,
    runner_version VARCHAR(32)
"""
BATCH_READ = "migration_name, checksum, resume_after, batches, rows_done, rows_changed, finished_at, updated_at"
BATCH_UPSERT = """INSERT INTO {table} AS p (migration_name, checksum, resume_after, batches, rows_done, rows_changed,
 finished_at, runner_version) VALUES ({name}, {checksum}, {after}, {batches}, {rows_done}, {rows_changed},
 {finished}, {version})
 ON CONFLICT (migration_name) DO UPDATE SET checksum = EXCLUDED.checksum, resume_after = EXCLUDED.resume_after,
 batches = EXCLUDED.batches, rows_done = EXCLUDED.rows_done, rows_changed = EXCLUDED.rows_changed,
 updated_at = CURRENT_TIMESTAMP, finished_at = EXCLUDED.finished_at, runner_version = EXCLUDED.runner_version
 WHERE p.batches = {expected}"""
BATCH_NOT_WRITTEN = "migration-runner: the batch progress was not written"


@dataclass(frozen=True)
class Table:
    """The resolved history table: its schema and name."""

    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def resolve(conn: Conn, schema: str | None, name: str) -> Table:
    """Where the history table is (or will be), from the catalog; see the module docstring."""
    if schema:
        return Table(schema, name)
    row = conn.execute(RESOLVE_SQL, [sql.Identifier(name).as_string(conn)]).fetchone()
    if row is None or row[0] is None:
        raise ConfigError(
            f"--history-table {name}: no schema of the search_path exists to hold it; name one (schema.{name})"
        )
    return Table(str(row[0]), name)


def columns(conn: Conn, table: Table) -> set[str] | None:
    """The table's column names, or None when it does not exist. One round trip."""
    row = conn.execute(COLUMNS_SQL, [table.ident.as_string(conn)]).fetchone()
    assert row is not None
    exists, names = row
    return set(names) if exists else None


def ensure(conn: Conn, table: Table) -> bool:
    """Create the table or add the runner's columns, as needed. True if it changed anything."""
    existing = columns(conn, table)
    if existing is not None and set(RUNNER_COLUMNS) <= existing:
        return False
    statements: list[sql.Composed] = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table.ident, sql.SQL(SEED_COLUMNS)),
    ]
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


def read(conn: Conn, table: Table, *, ensured: bool = False) -> list[AppliedRow]:
    """Every row; an absent table reads as empty.

    ``ensured``: the caller has just run ``ensure``, so the table exists with every column and
    one round trip suffices; otherwise the columns are probed first (two round trips).
    """
    present = set(READ_COLUMNS) if ensured else columns(conn, table)
    if present is None:
        return []
    picked = sql.SQL(", ").join(sql.Identifier(c) if c in present else sql.SQL("NULL") for c in READ_COLUMNS)
    query = sql.SQL("SELECT {} FROM {}").format(picked, table.ident)
    return [
        AppliedRow(
            str(name),
            checksum,
            success is not False,
            error,
            applied_at,
            None if applied_by is None else str(applied_by),
            elapsed,
            version,
        )
        for name, checksum, success, error, applied_at, applied_by, elapsed, version in conn.execute(query)
    ]


def record_success(table: Table, migration: Migration, elapsed_ms: int | None = None) -> sql.Composed:
    """The upsert recording ``migration`` as applied; it fails unless it wrote exactly one row.

    Runs inside the migration's transaction with ``search_path = pg_catalog, pg_temp``.
    Without ``elapsed_ms`` the server measures the time since the transaction began.
    """
    upsert = sql.SQL(UPSERT).format(
        table=table.ident,
        name=sql.Literal(migration.name),
        elapsed=ELAPSED_MS if elapsed_ms is None else sql.Literal(elapsed_ms),
        success=sql.SQL("true"),
        error=sql.NULL,
        checksum=sql.Literal(migration.checksum),
        version=sql.Literal(__version__),
    )
    return _exactly_one(upsert, NOT_WRITTEN)


def _exactly_one(upsert: sql.Composed, message: str) -> sql.Composed:
    """``upsert`` as a statement that fails (casting ``message`` to int4) unless it wrote one row."""
    return sql.SQL(
        "WITH recorded AS ({} RETURNING 1) SELECT CAST(CASE pg_catalog.count(*) WHEN 1 THEN '1' ELSE {} END AS "
        "pg_catalog.int4) FROM recorded"
    ).format(upsert, sql.Literal(message))


def record_failure(conn: Conn, table: Table, migration: Migration, error_message: str, elapsed_ms: int) -> None:
    """Record a failed attempt in its own transaction; never overwrites a success."""
    upsert = sql.SQL(UPSERT + " WHERE NOT coalesce(h.success, true)").format(
        table=table.ident,
        name=sql.Literal(migration.name),
        elapsed=sql.Literal(elapsed_ms),
        success=sql.SQL("false"),
        error=sql.Literal(error_message),
        checksum=sql.Literal(migration.checksum),
        version=sql.Literal(__version__),
    )
    with conn.transaction():
        conn.execute(upsert)


def is_recorded(conn: Conn, table: Table, migration: Migration) -> bool:
    """Whether ``migration`` is recorded as applied with its current checksum."""
    query = sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE migration_name = %s AND success AND checksum = %s")
    row = conn.execute(query.format(table.ident), [migration.name, migration.checksum]).fetchone()
    return bool(row and row[0])


def set_checksums(conn: Conn, table: Table, migrations: list[Migration]) -> None:
    """Store the current checksum of each migration (adoption and ``repair``)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            sql.SQL("UPDATE {} SET checksum = %s WHERE migration_name = %s").format(table.ident),
            [(m.checksum, m.name) for m in migrations],
        )


def rename(conn: Conn, table: Table, renames: list[tuple[str, Migration]]) -> None:
    """Record each (old name, file) under the file's name and checksum (``repair`` of a rename)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            sql.SQL("UPDATE {} SET migration_name = %s, checksum = %s WHERE migration_name = %s").format(table.ident),
            [(m.name, m.checksum, old) for old, m in renames],
        )


def delete_failed(conn: Conn, table: Table, names: list[str] | None = None) -> list[str]:
    """Remove the rows of failed attempts (all, or those of ``names``); returns their names."""
    only = sql.SQL(" AND migration_name = ANY (%s)") if names is not None else sql.SQL("")
    with conn.transaction():
        rows = conn.execute(
            sql.SQL("DELETE FROM {} WHERE NOT coalesce(success, true){} RETURNING migration_name").format(
                table.ident, only
            ),
            [names] if names is not None else None,
        ).fetchall()
    return sorted(str(name) for (name,) in rows)


def insert_baseline(conn: Conn, table: Table, migrations: list[Migration]) -> None:
    """Mark ``migrations`` applied without running them (``baseline``)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (migration_name, execution_time_ms, success, error_message, checksum, runner_version)"
                " VALUES (%s, 0, true, 'baseline: marked applied without running', %s, %s)"
            ).format(table.ident),
            [(m.name, m.checksum, __version__) for m in migrations],
        )


@dataclass(frozen=True)
class BatchProgress:
    """A batched data file's committed progress: one row of ``<table>_batches``.

    ``resume_after`` is the key (as text, one value per key column) after which the next batch
    starts; None: at the first key. ``batches`` counts committed batches and versions the row.
    """

    checksum: str
    resume_after: tuple[str, ...] | None
    batches: int
    rows_done: int  # rows of the enumerated table the committed batches covered
    rows_changed: int  # rows the statement changed (its command tags)
    finished: bool = False
    updated_at: datetime.datetime | None = None


def batches_table(table: Table) -> Table:
    """Where the progress of batched data files is kept: next to the history table."""
    return Table(table.schema, f"{table.name}_batches")


def ensure_batches(conn: Conn, table: Table) -> bool:
    """Create the progress table of the history ``table`` if it is missing. True if it created it."""
    batches = batches_table(table)
    if columns(conn, batches) is not None:
        return False
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(batches.ident, sql.SQL(BATCH_COLUMNS)))
    return True


def read_batches(conn: Conn, table: Table, name: str | None = None) -> dict[str, BatchProgress]:
    """Progress by file name (of one file, with ``name``); an absent progress table reads as empty."""
    batches = batches_table(table)
    if columns(conn, batches) is None:
        return {}
    only = sql.SQL(" WHERE migration_name = %s") if name is not None else sql.SQL("")
    query = sql.SQL("SELECT {} FROM {}{}").format(sql.SQL(BATCH_READ), batches.ident, only)
    return {
        str(row[0]): BatchProgress(
            str(row[1]),
            None if row[2] is None else tuple(map(str, row[2])),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            row[6] is not None,
            row[7],
        )
        for row in conn.execute(query, [name] if name is not None else None)
    }


def record_batch(table: Table, migration: Migration, progress: BatchProgress, expected: int) -> sql.Composed:
    """The upsert of ``migration``'s progress, inside the batch's transaction.

    It writes only over the row that counted ``expected`` batches (none: a first batch), and
    fails unless it wrote exactly one row: a batch commits only from the progress it started at.
    """
    after = progress.resume_after
    upsert = sql.SQL(BATCH_UPSERT).format(
        table=batches_table(table).ident,
        name=sql.Literal(migration.name),
        checksum=sql.Literal(migration.checksum),
        after=sql.NULL if after is None else sql.SQL("{}::pg_catalog.text[]").format(sql.Literal(list(after))),
        batches=sql.Literal(progress.batches),
        rows_done=sql.Literal(progress.rows_done),
        rows_changed=sql.Literal(progress.rows_changed),
        finished=sql.SQL("CURRENT_TIMESTAMP" if progress.finished else "NULL"),
        version=sql.Literal(__version__),
        expected=sql.Literal(expected),
    )
    return _exactly_one(upsert, BATCH_NOT_WRITTEN)
