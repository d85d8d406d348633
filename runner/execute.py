"""Apply one migration, in a clean session, with its history row; map SQLSTATEs to the runner's errors.

Invariants:
- Every migration starts from the same clean session. Its first message begins with
  ``RESET_SESSION`` (``DISCARD ALL`` minus the advisory unlock, so the fence stays held) and
  the runner's session values, then sets its own ``lock_timeout`` and ``statement_timeout``
  (the runner's, or the file's directives) and ``--role``: nothing an earlier file did to the
  session (settings, role, temp objects, prepared statements, cursors, listeners) survives.
- What the server executes is exactly the text the parser validated. A transactional
  migration is one simple-query message: ``<reset>; BEGIN; <settings>; <the file, verbatim>
  ; <record>; COMMIT``. The server lexes a simple-query message as a whole before running
  any of it, with the settings the session had when it arrived; those are checked from the
  server's own reports (standard_conforming_strings on, client_encoding UTF8) before every
  message, so the server splits the file as pglast did. A non-transactional migration sends
  each statement's exact slice as its own message, and stops if a statement changed how the
  server lexes the next one.
- The history row is written by the session user (never a role a file switched to), with
  ``search_path = pg_catalog, pg_temp``, into the schema-qualified table, inside the
  migration's transaction; if no row was written (a trigger swallowed it) the statement
  fails and the migration rolls back.
- Results are read at libpq level, in chunks, and never decoded (except the rows of an
  optional ``Probe``): memory does not grow with the rows a file returns, and no value can
  fail to decode. The failing statement is the one whose result is an error; nothing is
  ever replayed.
- ``Attempt`` records progress as results arrive (``completed``, ``committed``): an
  interrupt at any moment leaves a true record of whether the server committed.
- Connection loss (class 08, 57P0x, no SQLSTATE) is ``DatabaseUnavailable``; ``55P03`` is
  ``DdlLockTimeout``; a failure of the runner's own statements is ``DatabaseUnavailable``
  (privileges, roles); any other server error is ``MigrationFailed`` naming file and line.
- After a non-transactional file, no index that its CONCURRENTLY statements created or
  rebuilt is INVALID: INVALID leftovers of earlier attempts (same name, REINDEX's
  ``_ccnew``/``_ccold``, or an unnamed build's twin) are dropped concurrently, and an index
  left INVALID by this run fails the migration.
"""

from __future__ import annotations

import dataclasses
import re
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql

from runner import history
from runner.discover import Analysis, Migration, Statement
from runner.errors import DatabaseUnavailable, DdlLockTimeout, Interrupted, MigrationFailed
from runner.observe import logger

Conn = psycopg.Connection[tuple[Any, ...]]
# DISCARD ALL without pg_advisory_unlock_all(): the work connection's fence stays held.
RESET_SESSION = (
    "CLOSE ALL",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL",
    "DEALLOCATE ALL",
    "UNLISTEN *",
    "DISCARD PLANS",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
)
SESSION_VALUES = {"client_connection_check_interval": "2s", "standard_conforming_strings": "on"}
LEXING = {b"standard_conforming_strings": b"on", b"client_encoding": b"UTF8"}
SERVER_GONE_SQLSTATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
ROW_CHUNK = 256  # rows per result in chunked mode: memory stays flat whatever a SELECT returns
DONE = {pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY}
ROWS = {pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK}
COPY = {pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH}
REINDEX_LEFTOVER = re.compile(r"_cc(new|old)[0-9]*$")  # REINDEX CONCURRENTLY's transient index names
INDEXES_OF = """SELECT i.indexrelid, c.relname, n.nspname, i.indisvalid
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE i.indrelid = %s"""
# An index is the twin of another when both would answer the same queries.
TWIN_SQL = """SELECT c.relname, n.nspname FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_index v ON v.indexrelid = %s JOIN pg_catalog.pg_class vc ON vc.oid = v.indexrelid
WHERE i.indrelid = v.indrelid AND NOT i.indisvalid AND i.indexrelid <> v.indexrelid
  AND i.indkey::text = v.indkey::text AND i.indclass::text = v.indclass::text
  AND i.indcollation::text = v.indcollation::text AND i.indoption::text = v.indoption::text
  AND i.indisunique = v.indisunique AND c.relam = vc.relam
  AND pg_catalog.pg_get_expr(i.indexprs, i.indrelid)
      IS NOT DISTINCT FROM pg_catalog.pg_get_expr(v.indexprs, v.indrelid)
  AND pg_catalog.pg_get_expr(i.indpred, i.indrelid)
      IS NOT DISTINCT FROM pg_catalog.pg_get_expr(v.indpred, v.indrelid)"""


@dataclass(frozen=True)
class Timeouts:
    """``lock_timeout`` and ``statement_timeout`` in seconds (0 disables)."""

    lock: float
    statement: float


@dataclass(frozen=True)
class Session:
    """What every migration starts from besides the clean session: its timeouts and role."""

    timeouts: Timeouts
    role: str | None = None


@dataclass(frozen=True)
class ServerError:
    """A server error as the server reported it (from the result's diagnostic fields)."""

    sqlstate: str | None
    message: str
    position: int | None  # 1-based character offset in the message, when the server gave one
    context: str | None = None

    @classmethod
    def of(cls, result: pq.abc.PGresult) -> ServerError:
        def text(name: pq.DiagnosticField) -> str | None:
            value = result.error_field(name)
            return value.decode("utf-8", "replace") if value else None

        position = text(pq.DiagnosticField.STATEMENT_POSITION)
        message = text(pq.DiagnosticField.MESSAGE_PRIMARY) or result.error_message.decode("utf-8", "replace")
        return cls(
            text(pq.DiagnosticField.SQLSTATE),
            message.strip(),
            int(position) if position else None,
            text(pq.DiagnosticField.CONTEXT),
        )

    @property
    def connection_lost(self) -> bool:
        """Class 08 (connection exception), a server shutting down, or no SQLSTATE (libpq's own)."""
        state = self.sqlstate
        return state is None or state.startswith("08") or state in SERVER_GONE_SQLSTATES


@dataclass
class Attempt:
    """One attempt at one migration, updated as the server's results arrive.

    ``completed`` counts the finished statements of the message in flight; ``committed``
    turns true the moment the server confirms the migration's COMMIT, so an interrupt at any
    later point cannot mistake an applied migration for a failed one. ``statement`` is the
    file's statement running now (for progress reports), or None while the runner's own run.
    """

    started: float = field(default_factory=time.monotonic)
    completed: int = 0
    committed: bool = False
    statement: Statement | None = None
    rows: int = 0
    probed: dict[int, list[tuple[str | None, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """A query run right after the transaction's settings and right before its record (rehearse).

    Its rows, decoded as text, are returned by ``apply`` (before, after). Transactional
    migrations only.
    """

    sql: str


Tick = Callable[[Attempt], None]


@dataclass(frozen=True)
class Message:
    """One simple-query message and where the file's statements stand in it."""

    text: str
    before: int  # statements of ours before the file's
    statements: Sequence[Statement]  # the file's statements it carries, in order
    file_offset: int | None  # character offset of the file's text in the message (verbatim), or None
    total: int  # every statement of the message
    commits: bool = False  # its last statement is the migration's COMMIT
    record: int | None = None  # index of the history record statement
    keep: frozenset[int] = frozenset()  # statement indexes whose rows are decoded (probes)
    params: tuple[bytes, ...] | None = None  # one statement's $n values, as text (extended protocol)

    @classmethod
    def of(cls, parts: Sequence[str], *, commits: bool = False) -> Message:
        """A message made of the runner's own statements only."""
        return cls(";\n".join(parts), len(parts), (), None, len(parts), commits)

    def statement_at(self, error: ServerError, index: int) -> tuple[Statement | None, int | None]:
        """The file's statement an error belongs to, and the error's line in the file (if known)."""
        file_index = index - self.before
        if not 0 <= file_index < len(self.statements):
            return None, None
        statement = self.statements[file_index]
        if error.position is not None and self.file_offset is not None:
            offset = error.position - 1 - self.file_offset - statement.offset
            if 0 <= offset <= len(statement.text):
                return statement, statement.line_at(offset)
        elif error.position is not None and self.file_offset is None and len(self.statements) == 1:
            return statement, statement.line_at(error.position - 1)
        return statement, statement.line


def duration(seconds: float) -> str:
    """A PostgreSQL duration setting: whole milliseconds."""
    return f"{round(seconds * 1000)}ms"


def set_statement(name: str, value: str, *, local: bool) -> str:
    scope = sql.SQL("LOCAL " if local else "")
    return sql.SQL("SET {}{} = {}").format(scope, sql.Identifier(name), sql.Literal(value)).as_string()


def opening(session: Session, timeouts: Timeouts, *, transaction: bool) -> list[str]:
    """The clean-session reset, committed on its own, then the migration's own settings.

    In a transaction the settings are ``SET LOCAL`` after ``BEGIN``; the reset stays done
    whether the migration commits or not (``UNLISTEN`` takes effect at commit, so it must).
    """
    statements = [
        "BEGIN",
        *RESET_SESSION,
        *(set_statement(k, v, local=False) for k, v in SESSION_VALUES.items()),
        "COMMIT",
    ]
    if transaction:
        statements.append("BEGIN")
    statements += [
        set_statement("lock_timeout", duration(timeouts.lock), local=transaction),
        set_statement("statement_timeout", duration(timeouts.statement), local=transaction),
    ]
    if session.role:
        scope = sql.SQL("LOCAL " if transaction else "")
        statements.append(sql.SQL("SET {}ROLE {}").format(scope, sql.Identifier(session.role)).as_string())
    return statements


def as_runner(session: Session) -> list[str]:
    """Back to the runner inside a migration's transaction: session user, pinned search_path, its timeouts."""
    return [
        "SET LOCAL SESSION AUTHORIZATION DEFAULT",
        "SET LOCAL search_path = pg_catalog, pg_temp",
        set_statement("lock_timeout", duration(session.timeouts.lock), local=True),
        set_statement("statement_timeout", duration(session.timeouts.statement), local=True),
    ]


def recording(session: Session, table: history.Table, migration: Migration, elapsed_ms: int | None) -> list[str]:
    """The runner's own end of a migration's transaction: back to itself, then the record."""
    return [*as_runner(session), history.record_success(table, migration, elapsed_ms).as_string(), "COMMIT"]


def pin_lexing(conn: Conn) -> None:
    """Make the server lex the next message as pglast did (an earlier file may have changed it)."""
    status = conn.pgconn.parameter_status
    if status(b"standard_conforming_strings") != b"on":
        conn.execute("SET standard_conforming_strings = on")
    if status(b"client_encoding") != b"UTF8":
        conn.execute("SET client_encoding = 'UTF8'")


def lexing_changed(conn: Conn) -> str | None:
    """The lexing setting a statement changed since ``pin_lexing``, as ``name = value``, if any."""
    for name, value in LEXING.items():
        current = conn.pgconn.parameter_status(name)
        if current != value:
            return f"{name.decode()} = {(current or b'?').decode()}"
    return None


def exchange(conn: Conn, message: Message, attempt: Attempt, tick: Tick, tick_s: float) -> ServerError | None:
    """Send ``message``, read every result, update ``attempt``; the first error, or None.

    A message with ``params`` is one statement sent with its values (the extended protocol).
    Waits are sliced by ``tick_s``: ``tick(attempt)`` runs whenever the message has been
    running that long again. On an interrupt the statement is cancelled on the server and
    the results are drained (the clean-up deadline bounds this), so ``attempt`` tells the
    truth when the interrupt propagates.
    """
    pgconn = conn.pgconn
    attempt.completed = 0
    with conn.lock:
        try:
            if message.params is None:
                pgconn.send_query(message.text.encode())
            else:
                pgconn.send_query_params(message.text.encode(), message.params)
            if pq.version() >= 170000:
                pgconn.set_chunked_rows_mode(ROW_CHUNK)
            else:
                pgconn.set_single_row_mode()
            try:
                return _read(pgconn, message, attempt, tick, tick_s)
            except Interrupted:
                if pgconn.status == pq.ConnStatus.OK:
                    conn.cancel_safe(timeout=5.0)
                    _read(pgconn, message, attempt, lambda _attempt: None, tick_s)
                raise
        except psycopg.OperationalError as exc:
            return ServerError(None, str(exc).strip(), None)


def _wait(pgconn: pq.abc.PGconn, *, write: bool, timeout: float) -> bool:
    """Wait for the socket; True if it is ready, False after ``timeout``."""
    sock = pgconn.socket
    readable, writable, _ = select.select([sock], [sock] if write else [], [], timeout)
    return bool(readable or writable)


def _read(pgconn: pq.abc.PGconn, message: Message, attempt: Attempt, tick: Tick, tick_s: float) -> ServerError | None:
    error = None
    while pgconn.flush() != 0:
        if _wait(pgconn, write=True, timeout=tick_s):
            pgconn.consume_input()
    while True:
        file_index = attempt.completed - message.before
        attempt.statement = message.statements[file_index] if 0 <= file_index < len(message.statements) else None
        while pgconn.is_busy():
            if _wait(pgconn, write=False, timeout=tick_s):
                pgconn.consume_input()
            else:
                tick(attempt)
        result = pgconn.get_result()
        if result is None:
            return error
        status = result.status
        tag = result.command_status or b""
        if tag and not tag.startswith(b"SELECT") and attempt.statement is not None:
            attempt.rows += max(result.command_tuples or 0, 0)
        if status in ROWS and attempt.completed in message.keep:
            attempt.probed.setdefault(attempt.completed, []).extend(_decode(result))
        if status in DONE:
            attempt.completed += 1
            attempt.committed = message.commits and attempt.completed == message.total
        elif status == pq.ExecStatus.FATAL_ERROR:
            error = ServerError.of(result)
        elif status in COPY:  # validation refuses COPY to/from the client: end the session, never hang
            pgconn.finish()
            return ServerError(None, "the server started a COPY to or from the client", None)
        result.clear()


def _decode(result: pq.abc.PGresult) -> list[tuple[str | None, ...]]:
    def value(row: int, column: int) -> str | None:
        raw = result.get_value(row, column)
        return None if raw is None else raw.decode("utf-8", "replace")

    return [tuple(value(r, c) for c in range(result.nfields)) for r in range(result.ntuples)]


def rollback(conn: Conn) -> None:
    """End an open or failed transaction of the work connection, if the connection still works."""
    if not conn.closed and not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def failure(migration: Migration, message: Message, error: ServerError, index: int, table: history.Table) -> Exception:
    """The runner's error for ``error``, raised by statement ``index`` of ``message``."""
    name = migration.name
    if error.connection_lost:
        return DatabaseUnavailable(f"connection lost while applying {name}: {error.message}")
    statement, line = message.statement_at(error, index)
    if statement is not None:
        kind = DdlLockTimeout if error.sqlstate == "55P03" else MigrationFailed
        return kind(name, error.message, sqlstate=error.sqlstate, line=line)
    if index == message.record:
        swallowed = f"no history row was written to {table.qualified} (a trigger or rule on it swallowed the row)"
        return record_error(name, error, ("history row", table.qualified), history.NOT_WRITTEN, swallowed)
    if message.commits and index == message.total - 1:
        return MigrationFailed(name, f"COMMIT failed: {error.message}", sqlstate=error.sqlstate, line=None)
    return DatabaseUnavailable(f"{name}: the runner could not prepare the session: {error.message}")


def record_error(name: str, error: ServerError, record: tuple[str, str], not_written: str, unwritten: str) -> Exception:
    """The runner's error for one of its own records that failed: ``record`` is (what, where).

    No privilege is ``DatabaseUnavailable``; a record that wrote no row (it raised
    ``not_written``) is ``unwritten``; a lock timeout is worth a retry.
    """
    what, where = record
    if error.sqlstate == "42501":
        return DatabaseUnavailable(f"{name}: cannot write the {what} in {where}: {error.message}")
    if error.message.endswith(f'"{not_written}"'):
        detail = unwritten
    else:
        detail = f"recording the {what} in {where} failed: {error.message}"
    kind = DdlLockTimeout if error.sqlstate == "55P03" else MigrationFailed
    return kind(name, detail, sqlstate=error.sqlstate, line=None)


def apply(
    conn: Conn,
    migration: Migration,
    analysis: Analysis,
    table: history.Table,
    session: Session,
    attempt: Attempt,
    tick: Tick,
    tick_s: float,
    probe: Probe | None = None,
) -> None:
    """Apply ``migration`` and record it, as the module docstring says; raises a ``RunnerError``.

    ``attempt`` is updated as the server reports progress (see ``Attempt``); ``probe`` runs
    inside a transactional migration (rehearse), its rows in ``attempt.probed``.
    """
    job = Job(conn, migration, analysis, table, session, timeouts_of(migration, session), attempt, tick, tick_s)
    pin_lexing(conn)
    if analysis.transactional:
        job.transactional(probe)
    else:
        job.autocommit()


def timeouts_of(migration: Migration, session: Session) -> Timeouts:
    """The migration's timeouts: its directives', else the runner's."""
    directives = migration.directives
    return Timeouts(
        session.timeouts.lock if directives.lock_timeout is None else directives.lock_timeout,
        session.timeouts.statement if directives.statement_timeout is None else directives.statement_timeout,
    )


@dataclass(frozen=True)
class Job:
    """One attempt at one migration: what ``apply`` works with, and its two ways of running."""

    conn: Conn
    migration: Migration
    analysis: Analysis
    table: history.Table
    session: Session
    timeouts: Timeouts
    attempt: Attempt
    tick: Tick
    tick_s: float

    def send(self, message: Message) -> None:
        """Run ``message``; on an error roll back (if the connection lives) and raise the runner's error."""
        error = exchange(self.conn, message, self.attempt, self.tick, self.tick_s)
        if error is not None:
            index = self.attempt.completed
            if not error.connection_lost:
                rollback(self.conn)
            raise failure(self.migration, message, error, index, self.table)

    def transactional(self, probe: Probe | None) -> None:
        """The whole file, verbatim, in one message with its reset, settings, record and COMMIT."""
        head = [*opening(self.session, self.timeouts, transaction=True), *([probe.sql] if probe else [])]
        tail = [*([probe.sql] if probe else []), *recording(self.session, self.table, self.migration, None)]
        prefix = ";\n".join(head) + ";\n"
        count = len(self.analysis.statements)
        self.send(
            Message(
                text=prefix + self.migration.sql + "\n;\n" + ";\n".join(tail),
                before=len(head),
                statements=self.analysis.statements,
                file_offset=len(prefix),
                total=len(head) + count + len(tail),
                commits=True,
                record=len(head) + count + len(tail) - 2,
                keep=frozenset({len(head) - 1, len(head) + count}) if probe else frozenset(),
            )
        )

    def autocommit(self) -> None:
        """Statement by statement, each its exact slice, then the record in a transaction of its own."""
        conn, migration, statements = self.conn, self.migration, self.analysis.statements
        self.send(Message.of(opening(self.session, self.timeouts, transaction=False)))
        built: list[int] = []
        for previous, statement in zip((None, *statements), statements, strict=False):
            changed = lexing_changed(conn)
            if changed:
                where = f"the statement at line {previous.line}" if previous else "the session set-up"
                raise MigrationFailed(
                    migration.name,
                    f"{where} changed {changed}: the server would no longer split the rest of the file as it was "
                    "validated; the runner stops here (keep such settings inside one statement, or out of the file)",
                    sqlstate=None,
                    line=statement.line,
                )
            guard = IndexGuard.before(conn, migration, statement) if statement.concurrent_index else None
            unbounded = statement.concurrently and migration.directives.lock_timeout is None
            if unbounded:  # its waits block no one; a lock_timeout would only throw the build away
                conn.execute(set_statement("lock_timeout", "0", local=False))
            self.send(Message(statement.text, 0, (statement,), None, 1))
            if unbounded:
                conn.execute(set_statement("lock_timeout", duration(self.timeouts.lock), local=False))
            if guard:
                built += guard.after(conn, migration)
        invalid = [name for name, valid in _indexes(conn, built) if not valid]
        if invalid:
            raise MigrationFailed(
                migration.name,
                f"index {', '.join(invalid)} is INVALID after the migration (the next run drops and rebuilds it)",
                sqlstate=None,
                line=None,
            )
        elapsed_ms = round((time.monotonic() - self.attempt.started) * 1000)
        record = Message.of(["BEGIN", *recording(self.session, self.table, migration, elapsed_ms)], commits=True)
        self.send(dataclasses.replace(record, record=record.total - 2))


def _indexes(conn: Conn, oids: Sequence[int]) -> list[tuple[str, bool]]:
    """(qualified name, valid) of the indexes ``oids`` that still exist."""
    rows = conn.execute(
        "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname), i.indisvalid FROM pg_catalog.pg_index i"
        " JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.indexrelid = ANY (%s::oid[])",
        [list(oids)],
    ).fetchall()
    return [(str(name), bool(valid)) for name, valid in rows]


@dataclass
class IndexGuard:
    """Around one CREATE INDEX CONCURRENTLY / REINDEX CONCURRENTLY.

    Before it, INVALID leftovers of earlier attempts are dropped; after it, it tells which
    indexes the statement created or rebuilt.

    The table is resolved the way the statement resolves it (same session, same search_path).
    """

    table: int  # oid
    statement: Statement
    existing: set[int]  # index oids before the statement

    @classmethod
    def before(cls, conn: Conn, migration: Migration, statement: Statement) -> IndexGuard | None:
        body = statement.node[statement.kind]
        relation = body.get("relation") or {}
        if not relation.get("relname"):
            return None  # REINDEX SCHEMA/DATABASE/SYSTEM: no single table to guard
        name = sql.Identifier(*(part for part in (relation.get("schemaname"), relation["relname"]) if part))
        row = conn.execute(
            "SELECT coalesce((SELECT indrelid FROM pg_catalog.pg_index WHERE indexrelid = r), r)"
            " FROM (SELECT pg_catalog.to_regclass(%s)::oid AS r) AS t",
            [name.as_string(conn)],
        ).fetchone()
        if row is None or row[0] is None:
            return None  # no such table: the statement itself reports it
        table = int(row[0])
        indexes = conn.execute(INDEXES_OF, [table]).fetchall()
        wanted = body.get("idxname") if statement.kind == "IndexStmt" else None
        for _oid, index, schema, valid in indexes:
            leftover = index == wanted or (statement.kind == "ReindexStmt" and REINDEX_LEFTOVER.search(index))
            if not valid and leftover:
                _drop(conn, migration, schema, index, "left INVALID by an earlier failed attempt")
        return cls(table, statement, {int(oid) for oid, *_ in conn.execute(INDEXES_OF, [table]).fetchall()})

    def after(self, conn: Conn, migration: Migration) -> list[int]:
        """The indexes this statement created or rebuilt; INVALID twins of a new valid index are dropped."""
        rows = conn.execute(INDEXES_OF, [self.table]).fetchall()
        new = [(int(oid), bool(valid)) for oid, _name, _schema, valid in rows if int(oid) not in self.existing]
        for oid, valid in new:
            if valid and self.statement.kind == "IndexStmt":
                for index, schema in conn.execute(TWIN_SQL, [oid]).fetchall():
                    _drop(conn, migration, schema, index, "an INVALID twin left by an earlier failed attempt")
        return [oid for oid, _valid in new]


def _drop(conn: Conn, migration: Migration, schema: str, index: str, reason: str) -> None:
    logger().warning("invalid_index_dropped", migration=migration.name, index=f"{schema}.{index}", reason=reason)
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index)))
