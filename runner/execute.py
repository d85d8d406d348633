"""Apply one migration with its history row; map SQLSTATEs to the runner's errors.

Invariants:
- A transactional migration is one pipeline, one round trip: ``BEGIN``, ``SET LOCAL``
  timeouts, its statements, the history upsert, ``COMMIT``. It commits whole or not at all.
- A non-transactional migration runs its statements one by one in autocommit, then writes
  its history row; before each ``CREATE INDEX CONCURRENTLY`` an INVALID index of that name
  (left by an earlier failed attempt) is dropped, and afterwards none of them may be invalid.
- Errors name the file and the line of the failing statement. Connection loss (SQLSTATE
  classes 08 and 57P0x) is ``DatabaseUnavailable``; ``55P03`` is ``DdlLockTimeout``; any other
  server error is ``MigrationFailed``. Nothing here branches on message text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.pq import TransactionStatus

from runner import history
from runner.discover import Analysis, Migration, Statement, line_of
from runner.errors import DatabaseUnavailable, DdlLockTimeout, MigrationFailed
from runner.observe import logger

Conn = psycopg.Connection[tuple[Any, ...]]
SERVER_GONE_SQLSTATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
INVALID_INDEX_SQL = """
SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND c.relname = %s AND n.nspname = ANY (current_schemas(false))
"""


@dataclass(frozen=True)
class Timeouts:
    """``lock_timeout`` and ``statement_timeout`` as PostgreSQL settings ('5s', '0')."""

    lock: str
    statement: str


def failure_line(statement: Statement | None, error: psycopg.Error) -> int | None:
    if statement is None:
        return None
    position = error.diag.statement_position
    return statement.line - 1 + line_of(statement.text, int(position) - 1) if position else statement.line


def connection_lost(error: psycopg.Error) -> bool:
    """Class 08 (connection exception), a server shutting down, or no SQLSTATE at all (libpq's own)."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in SERVER_GONE_SQLSTATES


def as_runner_error(migration: Migration, statement: Statement | None, error: psycopg.Error) -> Exception:
    """The runner's error for a server error raised by ``statement`` of ``migration``."""
    line = failure_line(statement, error)
    message = error.diag.message_primary or str(error).strip()
    if connection_lost(error):
        return DatabaseUnavailable(f"connection lost while applying {migration.name}: {message}")
    kind = DdlLockTimeout if isinstance(error, pgerrors.LockNotAvailable) else MigrationFailed
    return kind(migration.name, message, sqlstate=error.sqlstate, line=line)


def rollback(conn: Conn) -> None:
    if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


@dataclass
class Outcome:
    """What applying one migration reported.

    ``rows_touched`` sums its statements' row counts. The optional ``inspect`` query runs twice
    inside a transactional migration: right after BEGIN and right before COMMIT (e.g. on
    pg_locks); ``inspected`` holds both results.
    """

    rows_touched: int = 0
    inspected: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] | None = None


def rows_touched(cursors: list[psycopg.Cursor[tuple[Any, ...]]]) -> int:
    return sum(max(cur.rowcount, 0) for cur in cursors)


def apply_transactional(conn: Conn, migration: Migration, analysis: Analysis,
                        table: history.Table, timeouts: Timeouts, inspect: str | None) -> Outcome:
    prefix: list[str | sql.Composed] = [
        "BEGIN",
        sql.SQL("SET LOCAL lock_timeout = {}").format(timeouts.lock),
        sql.SQL("SET LOCAL statement_timeout = {}").format(timeouts.statement),
        *([inspect] if inspect else []),
    ]
    queries = [*prefix, *(s.text for s in analysis.statements),
               *([inspect] if inspect else []), history.success_statement(table, migration), "COMMIT"]
    cursors: list[psycopg.Cursor[tuple[Any, ...]]] = []
    try:
        with conn.pipeline():
            cursors.extend(conn.execute(query) for query in queries)
    except psycopg.Error as exc:
        done = sum(1 for cur in cursors if cur.statusmessage is not None)
        index = done - len(prefix)
        statement = analysis.statements[index] if 0 <= index < len(analysis.statements) else None
        error = as_runner_error(migration, statement, exc)
        if not isinstance(error, DatabaseUnavailable):
            rollback(conn)
        raise error from exc
    file_cursors = cursors[len(prefix):len(prefix) + len(analysis.statements)]
    if not inspect:
        return Outcome(rows_touched(file_cursors))
    first, last = cursors[len(prefix) - 1], cursors[len(prefix) + len(analysis.statements)]
    return Outcome(rows_touched(file_cursors), (first.fetchall(), last.fetchall()))


def drop_invalid_index(conn: Conn, migration: Migration, name: str) -> None:
    for (qualified,) in conn.execute(INVALID_INDEX_SQL, [name]).fetchall():
        logger().warning("invalid_index_dropped", migration=migration.name, index=qualified,
                         reason="left INVALID by an earlier failed CREATE INDEX CONCURRENTLY")
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(qualified)))


def apply_autocommit(conn: Conn, migration: Migration, analysis: Analysis,
                     table: history.Table, timeouts: Timeouts) -> Outcome:
    started = time.monotonic()
    statement: Statement | None = None
    touched = 0
    try:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(timeouts.lock))
        conn.execute(sql.SQL("SET statement_timeout = {}").format(timeouts.statement))
        for statement in analysis.statements:
            if statement.concurrent_index:
                drop_invalid_index(conn, migration, statement.concurrent_index)
            touched += max(conn.execute(statement.text).rowcount, 0)
        statement = None
        invalid = [row[0] for s in analysis.statements if s.concurrent_index
                   for row in conn.execute(INVALID_INDEX_SQL, [s.concurrent_index]).fetchall()]
        if invalid:
            raise MigrationFailed(migration.name, f"index {', '.join(invalid)} is INVALID after the migration",
                                  sqlstate=None, line=None)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        conn.execute(history.success_statement(table, migration, elapsed_ms))
    except psycopg.Error as exc:
        raise as_runner_error(migration, statement, exc) from exc
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("RESET lock_timeout; RESET statement_timeout")
    return Outcome(touched)


def apply(conn: Conn, migration: Migration, analysis: Analysis, table: history.Table, timeouts: Timeouts,
          inspect: str | None = None) -> Outcome:
    """Apply ``migration`` and record it; raises a ``RunnerError`` on failure.

    ``inspect`` runs after BEGIN and before COMMIT of a transactional migration (see ``Outcome``).
    """
    if analysis.transactional:
        return apply_transactional(conn, migration, analysis, table, timeouts, inspect)
    return apply_autocommit(conn, migration, analysis, table, timeouts)
