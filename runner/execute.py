"""Apply one migration with its history row; map SQLSTATEs to the runner's errors.

Invariants:
- The work connection carries the default ``lock_timeout`` and ``statement_timeout`` as
  session settings (``set_session_timeouts``); a file's own values apply with ``SET LOCAL``
  to its transaction only, or, in autocommit, are set and then restored.
- A transactional migration is one simple-query message, one round trip: ``BEGIN``, its
  statements, the history upsert, ``COMMIT``. It commits whole or not at all.
- A non-transactional migration runs its statements one by one in autocommit, then writes
  its history row; before each ``CREATE INDEX CONCURRENTLY`` an INVALID index of that name
  (left by an earlier failed attempt) is dropped, and afterwards none of them may be invalid.
- Errors name the file and the line of the failing statement: from the error's position in
  the message, or else by replaying the statements one by one in a transaction that is
  always rolled back (only when the failed attempt was short, and never for cancellations,
  lock timeouts or lost connections; then the line stays unknown). Connection loss (SQLSTATE
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


LOCATE_MAX_S = 2.0  # replay a failed migration to find its statement only if it failed this fast
NOT_REPLAYED_CLASSES = ("08", "40", "55", "57")  # connection, rollback, lock, cancel/shutdown


def failure_line(statement: Statement | None, offset: int | None) -> int | None:
    """The file line of ``offset`` (0-based, into the statement's text), or its first line."""
    if statement is None:
        return None
    return statement.line - 1 + line_of(statement.text, offset) if offset is not None else statement.line


def set_session_timeouts(conn: Conn, timeouts: Timeouts) -> None:
    """Make ``timeouts`` the work connection's defaults (one round trip per connection)."""
    conn.execute(
        sql.SQL("SELECT set_config('lock_timeout', {}, false), set_config('statement_timeout', {}, false)").format(
            timeouts.lock, timeouts.statement
        )
    )


def connection_lost(error: psycopg.Error) -> bool:
    """Class 08 (connection exception), a server shutting down, or no SQLSTATE at all (libpq's own)."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in SERVER_GONE_SQLSTATES


def as_runner_error(
    migration: Migration, statement: Statement | None, error: psycopg.Error, offset: int | None = None
) -> Exception:
    """The runner's error for a server error raised by ``statement`` of ``migration``.

    ``offset`` is the error's 0-based position inside the statement's text, when known.
    """
    line = failure_line(statement, offset)
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


def local_overrides(conn: Conn, timeouts: Timeouts, session: Timeouts) -> list[str]:
    """``SET LOCAL`` statements for the values in which this migration differs from the session."""
    overrides = {
        "lock_timeout": (timeouts.lock, session.lock),
        "statement_timeout": (timeouts.statement, session.statement),
    }
    return [
        sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), mine).as_string(conn)
        for name, (mine, default) in overrides.items()
        if mine != default
    ]


def locate(conn: Conn, analysis: Analysis, prefix: list[str], failed: psycopg.Error) -> Statement | None:
    """The statement that fails with ``failed``'s SQLSTATE when replayed one by one.

    The replay runs in a transaction that is always rolled back.
    """
    culprit = None
    try:
        conn.execute("BEGIN")
        for part in prefix[1:]:
            conn.execute(part)
        for statement in analysis.statements:
            try:
                conn.execute(statement.text)
            except psycopg.Error as exc:
                culprit = statement if exc.sqlstate == failed.sqlstate else None
                break
    except psycopg.Error:
        culprit = None
    finally:
        rollback(conn)
    return culprit


def apply_transactional(
    conn: Conn,
    migration: Migration,
    analysis: Analysis,
    table: history.Table,
    timeouts: Timeouts,
    session: Timeouts,
    inspect: str | None,
) -> Outcome:
    prefix = ["BEGIN", *local_overrides(conn, timeouts, session), *([inspect] if inspect else [])]
    parts = [
        *prefix,
        *(s.text for s in analysis.statements),
        *([inspect] if inspect else []),
        history.success_statement(table, migration).as_string(conn),
        "COMMIT",
    ]
    separator = ";\n"
    starts, offset = [], 0
    for part in parts:
        starts.append(offset)
        offset += len(part) + len(separator)
    started = time.monotonic()
    try:
        cursor = conn.execute(separator.join(parts))
    except psycopg.Error as exc:
        statement, within = None, None
        position = exc.diag.statement_position
        if position:
            index = max(i for i, start in enumerate(starts) if start <= int(position) - 1) - len(prefix)
            if 0 <= index < len(analysis.statements):
                statement = analysis.statements[index]
                within = int(position) - 1 - starts[index + len(prefix)]
        error = as_runner_error(migration, statement, exc, within)
        if isinstance(error, DatabaseUnavailable):
            raise error from exc
        rollback(conn)
        replay = (
            statement is None
            and time.monotonic() - started < LOCATE_MAX_S
            and not (exc.sqlstate or "").startswith(NOT_REPLAYED_CLASSES)
        )
        if replay and (statement := locate(conn, analysis, prefix, exc)) is not None:
            error = as_runner_error(migration, statement, exc)
        raise error from exc
    results: list[tuple[int, list[tuple[Any, ...]] | None]] = []
    while True:
        results.append((cursor.rowcount, cursor.fetchall() if cursor.description else None))
        if not cursor.nextset():
            break
    file_results = results[len(prefix) : len(prefix) + len(analysis.statements)]
    touched = sum(max(count, 0) for count, _ in file_results)
    if not inspect:
        return Outcome(touched)
    first, last = results[len(prefix) - 1][1], results[len(prefix) + len(analysis.statements)][1]
    return Outcome(touched, (first or [], last or []))


def drop_invalid_index(conn: Conn, migration: Migration, name: str) -> None:
    for (qualified,) in conn.execute(INVALID_INDEX_SQL, [name]).fetchall():
        logger().warning(
            "invalid_index_dropped",
            migration=migration.name,
            index=qualified,
            reason="left INVALID by an earlier failed CREATE INDEX CONCURRENTLY",
        )
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(qualified)))


def apply_autocommit(
    conn: Conn, migration: Migration, analysis: Analysis, table: history.Table, timeouts: Timeouts, session: Timeouts
) -> Outcome:
    started = time.monotonic()
    statement: Statement | None = None
    touched = 0
    try:
        if timeouts != session:
            set_session_timeouts(conn, timeouts)
        for statement in analysis.statements:
            index_name = statement.node.get("IndexStmt", {}).get("idxname")
            if statement.concurrent_index and index_name:
                drop_invalid_index(conn, migration, index_name)
            touched += max(conn.execute(statement.text).rowcount, 0)
        statement = None
        invalid = [
            row[0]
            for s in analysis.statements
            if s.concurrent_index and s.node.get("IndexStmt", {}).get("idxname")
            for row in conn.execute(INVALID_INDEX_SQL, [s.node["IndexStmt"]["idxname"]]).fetchall()
        ]
        if invalid:
            raise MigrationFailed(
                migration.name, f"index {', '.join(invalid)} is INVALID after the migration", sqlstate=None, line=None
            )
        elapsed_ms = round((time.monotonic() - started) * 1000)
        conn.execute(history.success_statement(table, migration, elapsed_ms))
    except psycopg.Error as exc:
        position = exc.diag.statement_position
        raise as_runner_error(migration, statement, exc, int(position) - 1 if position else None) from exc
    finally:
        if timeouts != session and not conn.closed and not conn.broken:
            set_session_timeouts(conn, session)
    return Outcome(touched)


def apply(
    conn: Conn,
    migration: Migration,
    analysis: Analysis,
    table: history.Table,
    timeouts: Timeouts,
    session: Timeouts,
    inspect: str | None = None,
) -> Outcome:
    """Apply ``migration`` with ``timeouts`` and record it; raises a ``RunnerError`` on failure.

    ``session`` holds the timeouts the connection already has (``set_session_timeouts``).
    ``inspect`` runs after BEGIN and before COMMIT of a transactional migration (see ``Outcome``).
    """
    if analysis.transactional:
        return apply_transactional(conn, migration, analysis, table, timeouts, session, inspect)
    return apply_autocommit(conn, migration, analysis, table, timeouts, session)
