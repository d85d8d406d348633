"""The one orchestrator: connect -> lock -> ensure table -> discover -> plan -> execute.

``migrate`` steps, each an invariant:
1. Discover and checksum the files; any file problem stops the run before connecting.
2. Connect (retrying until ``--connect-timeout``) a dedicated lock connection, and take the
   session advisory lock on it (``lock.advisory_lock``), waiting at most
   ``--lock-wait-timeout``; then wait until the fence (``lock.fence_key``) is free, which
   waits out an orphaned work backend of a killed runner.
3. Under the lock, on the lock connection: ensure the history table, read it, plan. A changed
   checksum or an out-of-order file stops the run (exit 3) before anything is applied;
   unknown applied rows warn (exit 3 with ``--strict``). Every pending file is parsed before
   the first is applied.
4. Only if something is pending, connect the work connection and hold the fence on it. Apply
   each pending migration in version order, each in its own transaction with its history row.
   A ``lock_timeout`` is retried with capped exponential backoff and jitter. On failure or
   interruption: roll back, record a ``success=false`` row in a separate
   transaction, stop.
5. Release the lock in ``finally``, even on interruption.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from runner import __version__, history, observe
from runner.config import Settings, redact
from runner.discover import Analysis, Migration, analyse, discover
from runner.errors import (
    ConfigError,
    DatabaseUnavailable,
    DdlLockTimeout,
    Interrupted,
    MigrationFailed,
    Problem,
    ValidationError,
    WaitTimeout,
)
from runner.lock import BlockerWatch, advisory_lock, derive_key, fence_key
from runner.observe import bind, logger
from runner.plan import Plan, make_plan

if TYPE_CHECKING:
    from runner.execute import Timeouts

Conn = psycopg.Connection[tuple[Any, ...]]
SESSION_SETTINGS = "SET client_connection_check_interval = '2s'"
RETRY_BACKOFF_CAP = 30.0


def table_of(settings: Settings) -> history.Table:
    return history.Table(settings.history_schema, settings.history_table)


def connect(settings: Settings) -> Conn:
    """A connection in autocommit mode, retried with backoff until ``--connect-timeout``.

    Every connection failure is retried: libpq reports start-up errors without a SQLSTATE,
    so "starting up" cannot be told from "wrong password" without reading message text.
    """
    deadline = time.monotonic() + settings.connect_timeout
    delay = 0.25
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn: Conn = psycopg.connect(
                settings.database_url or "",
                autocommit=True,
                application_name=settings.application_name,
                connect_timeout=max(2, min(10, round(remaining))),
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=3,
                keepalives_count=3,
                tcp_user_timeout=20000,
            )
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid database URL: {redact(str(exc), settings.secrets)}") from None
        except psycopg.OperationalError as exc:
            message = redact(str(exc).strip(), settings.secrets)
            if remaining <= delay:
                raise DatabaseUnavailable(f"cannot connect: {message}") from None
            logger().warning("connect_retry", error=message, retry_in_s=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        try:
            conn.execute(SESSION_SETTINGS)
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"cannot set up the session: {redact(str(exc), settings.secrets)}") from None
        return conn


@contextmanager
def database_errors(what: str, settings: Settings) -> Iterator[None]:
    """Turn a server error outside a migration into ``DatabaseUnavailable`` (exit 5)."""
    try:
        yield
    except psycopg.Error as exc:
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        raise DatabaseUnavailable(f"{what}: {redact(str(exc).strip(), settings.secrets)}{state}") from None


def check_plan(plan: Plan, settings: Settings) -> None:
    log = logger()
    for row in plan.unknown:
        log.warning(
            "migration_unknown",
            migration=row.name,
            note="applied in the database but not in this directory (newer release?)",
        )
    problems = plan.blocking_problems(strict=settings.strict)
    if problems:
        raise ValidationError(problems)


def session_timeouts(settings: Settings) -> Timeouts:
    """The work connection's default lock and statement timeouts, as PostgreSQL values."""
    from runner.execute import Timeouts  # noqa: PLC0415 - loaded with the executor only

    return Timeouts(
        lock=f"{round(settings.ddl_lock_timeout * 1000)}ms", statement=f"{round(settings.statement_timeout * 1000)}ms"
    )


def backoff(attempt: int) -> float:
    """Capped exponential backoff with jitter: 50-100 % of 1 s, 2 s, 4 s ... capped at 30 s."""
    return random.uniform(0.5, 1.0) * min(RETRY_BACKOFF_CAP, 0.5 * 2.0**attempt)  # noqa: S311 - jitter


def error_text(exc: MigrationFailed) -> str:
    state = f"SQLSTATE {exc.sqlstate}: " if exc.sqlstate else ""
    where = f" (line {exc.line})" if exc.line is not None else ""
    return f"{state}{exc.message}{where}"


def fail(
    conn: Conn,
    table: history.Table,
    migration: Migration,
    fields: dict[str, str],
    message: str,
    started: float,
    sqlstate: str | None,
    line: int | None,
) -> None:
    """Log ``migration_failed`` and record the failure row; best effort, never masks the error."""
    from runner import execute  # noqa: PLC0415

    elapsed_ms = round((time.monotonic() - started) * 1000)
    logger().error("migration_failed", **fields, duration_ms=elapsed_ms, sqlstate=sqlstate, error=message, line=line)
    try:
        execute.rollback(conn)
        history.record_failure(conn, table, migration, message, elapsed_ms)
    except psycopg.Error as exc:
        logger().warning("failure_row_not_written", migration=migration.name, error=str(exc))


def apply_one(conn: Conn, watch: BlockerWatch, migration: Migration, analysis: Analysis, settings: Settings) -> int:
    """Apply ``migration`` with lock-timeout retries; returns its duration in ms."""
    from runner import execute  # noqa: PLC0415 - a no-op run (every pod start) never needs it

    log = logger()
    table = table_of(settings)
    fields = {"migration": migration.name, "version": f"{migration.version:03d}", "checksum": migration.checksum}
    if not analysis.transactional:
        mixed = any(s.transactional for s in analysis.statements)
        log.warning(
            "migration_not_atomic" if mixed else "migration_autocommit",
            **fields,
            note="runs statement by statement in autocommit"
            + ("; a failure leaves earlier statements applied" if mixed else ""),
        )
    session = session_timeouts(settings)
    lock, statement = migration.directives.lock_timeout, migration.directives.statement_timeout
    timeouts = execute.Timeouts(
        lock=session.lock if lock is None else f"{round(lock * 1000)}ms",
        statement=session.statement if statement is None else f"{round(statement * 1000)}ms",
    )
    attempt = 0
    while True:
        log.info("migration_started", **fields, attempt=attempt + 1)
        started = time.monotonic()
        watch.latest = []
        try:
            execute.apply(conn, migration, analysis, table, timeouts, session)
        except DdlLockTimeout as exc:
            if attempt < settings.ddl_lock_retries:
                attempt += 1
                pause = backoff(attempt)
                log.warning(
                    "ddl_lock_retry",
                    **fields,
                    attempt=attempt,
                    retry_in_s=round(pause, 2),
                    blockers=watch.latest,
                    sqlstate=exc.sqlstate,
                    line=exc.line,
                )
                time.sleep(pause)
                continue
            message = f"{error_text(exc)} after {attempt} retries"
            fail(conn, table, migration, fields, message, started, exc.sqlstate, exc.line)
            raise
        except MigrationFailed as exc:
            fail(conn, table, migration, fields, error_text(exc), started, exc.sqlstate, exc.line)
            raise
        except Interrupted as exc:
            fail(conn, table, migration, fields, f"interrupted: {exc.reason}", started, "57014", None)
            raise
        duration = round((time.monotonic() - started) * 1000)
        log.info("migration_applied", **fields, duration_ms=duration, attempts=attempt + 1)
        return duration


class Session:
    """The lock connection, which also reads and plans, and the work connection.

    The work connection is opened and fenced (``lock.fence_key``) only when something is to
    be applied.
    """

    def __init__(self, settings: Settings, lock_conn: Conn, key: int, deadline: float, stack: ExitStack) -> None:
        self.settings, self.lock_conn, self.key, self.deadline, self.stack = settings, lock_conn, key, deadline, stack
        self._work: Conn | None = None
        self._watch: BlockerWatch

    def work(self) -> tuple[Conn, BlockerWatch]:
        """The fenced work connection, and the watch on what blocks it (one thread per run)."""
        if self._work is None:
            conn = self.stack.enter_context(connect(self.settings))
            with database_errors("fence lock", self.settings):
                self.stack.enter_context(advisory_lock(conn, fence_key(self.key), self.remaining(), quiet=True))
            from runner import execute  # noqa: PLC0415 - a no-op run never opens the work connection

            execute.set_session_timeouts(conn, session_timeouts(self.settings))
            interval = max(0.2, self.settings.ddl_lock_timeout / 3)
            self._watch = self.stack.enter_context(BlockerWatch(self.lock_conn, conn.info.backend_pid, interval))
            self._work = conn
        return self._work, self._watch

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


@contextmanager
def locked_session(settings: Settings) -> Iterator[Session]:
    """A ``Session`` with the advisory lock held and the history table ensured, for the block.

    Before reading anything it waits for the fence to be free: a killed runner's work backend
    may still be committing a migration it had received.
    """
    table = table_of(settings)
    deadline = time.monotonic() + settings.lock_wait_timeout
    with ExitStack() as stack:
        lock_conn = stack.enter_context(connect(settings))
        bind(database=lock_conn.info.dbname)
        key = settings.lock_key
        if key is None:
            key = derive_key(lock_conn.info.dbname, table.qualified)
        session = Session(settings, lock_conn, key, deadline, stack)
        with database_errors("advisory lock", settings):
            waited = stack.enter_context(
                advisory_lock(lock_conn, key, settings.lock_wait_timeout, on_wait=observe.lock_wait_started)
            )
            observe.lock_acquired(waited)
            with advisory_lock(lock_conn, fence_key(key), session.remaining(), quiet=True):
                pass
        with database_errors(f"history table {table.qualified}", settings):
            if history.ensure(lock_conn, table):
                logger().info("history_table_ready", table=table.qualified)
        yield session


def adopt(conn: Conn, plan: Plan, settings: Settings) -> None:
    if plan.adopted:
        with database_errors("adopting history rows", settings):
            history.set_checksums(conn, table_of(settings), list(plan.adopted))
        for migration in plan.adopted:
            logger().info(
                "migration_adopted",
                migration=migration.name,
                checksum=migration.checksum,
                note="recorded without a checksum (seed-format table); checksum filled in",
            )


def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; see the module docstring. Returns the names applied.

    Progress is recorded in ``observe.RUN`` as it happens, so an error still reports it.
    """
    migrations = discover(settings.migrations_dir)
    applied: list[str] = []
    with locked_session(settings) as session:
        with database_errors("reading history", settings):
            rows = history.read(session.lock_conn, table_of(settings), ensured=True)
            plan = make_plan(migrations, rows, settings.target)
        check_plan(plan, settings)
        analyses = [analyse(m) for m in plan.pending]
        adopt(session.lock_conn, plan, settings)
        observe.RUN.pending = len(plan.pending)
        logger().info(
            "plan_ready",
            pending=len(plan.pending),
            applied=len(plan.applied),
            failed_before=[row.name for row in plan.failed],
        )
        for migration, analysis in zip(plan.pending, analyses, strict=True):
            try:
                duration_ms = apply_one(*session.work(), migration, analysis, settings)
            except MigrationFailed as exc:
                exc.applied = tuple(applied)
                raise
            applied.append(migration.name)
            observe.RUN.applied = len(applied)
            observe.RUN.durations_s[f"{migration.version:03d}"] = duration_ms / 1000
    return applied


def plan_only(settings: Settings) -> tuple[list[Migration], Plan]:
    """Read-only: files and history, no lock, no table creation (``status``, ``wait``)."""
    migrations = discover(settings.migrations_dir)
    with connect(settings) as conn, database_errors("reading history", settings):
        bind(database=conn.info.dbname)
        return migrations, make_plan(migrations, history.read(conn, table_of(settings)))


def status(settings: Settings) -> dict[str, object]:
    """Every migration's state: applied, pending, failed, changed; plus unknown rows."""
    migrations, plan = plan_only(settings)
    failed = {row.name: row.error_message for row in plan.failed}
    changed = {m.name for m in plan.changed}
    applied = {m.name for m in plan.applied}

    def state(m: Migration) -> str:
        if m.name in changed:
            return "changed"
        if m.name in applied:
            return "applied"
        return "failed" if m.name in failed else "pending"

    rows = [
        {
            "version": f"{m.version:03d}",
            "migration": m.name,
            "state": state(m),
            "checksum": m.checksum,
            "error": failed.get(m.name),
        }
        for m in migrations
    ]
    rows += [
        {"version": None, "migration": row.name, "state": "unknown", "checksum": row.checksum, "error": None}
        for row in plan.unknown
    ]
    counts = {
        s: sum(1 for r in rows if r["state"] == s) for s in ("applied", "pending", "failed", "changed", "unknown")
    }
    return {"runner_version": __version__, "counts": counts, "migrations": rows}


def validate(settings: Settings, with_database: bool) -> list[Migration]:
    """Check every file (names, numbering, encoding, parse) and, with a database, the history."""
    migrations = discover(settings.migrations_dir)
    problems: list[Problem] = []
    for migration in migrations:
        try:
            analyse(migration)
        except ValidationError as exc:
            problems += exc.problems
    if problems:
        raise ValidationError(problems)
    if with_database:
        check_plan(plan_only(settings)[1], settings)
    return migrations


def wait(settings: Settings) -> None:
    """Poll until every migration in the directory is applied; ``WaitTimeout`` after the limit."""
    log = logger()
    deadline = time.monotonic() + settings.wait_timeout
    while True:
        try:
            _, plan = plan_only(settings)
            if not plan.pending:
                log.info("schema_ready", applied=len(plan.applied))
                return
            detail: dict[str, object] = {"pending": [m.name for m in plan.pending]}
        except DatabaseUnavailable as exc:
            detail = {"error": str(exc)}
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"schema not ready after {settings.wait_timeout:g}s: {detail}")
        log.info("schema_waiting", **detail)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def baseline(settings: Settings, version: int) -> list[str]:
    """Mark 001..``version`` applied without running them; refuses if any is recorded."""
    migrations = [m for m in discover(settings.migrations_dir) if m.version <= version]
    if not migrations or migrations[-1].version != version:
        raise ConfigError(f"baseline: no migration file with version {version:03d}")
    with locked_session(settings) as session, database_errors("baseline", settings):
        conn = session.lock_conn
        recorded = {row.name for row in history.read(conn, table_of(settings), ensured=True)}
        clash = sorted(recorded & {m.name for m in migrations})
        if clash:
            raise ValidationError([Problem("baseline", f"baseline refused: already recorded: {', '.join(clash)}")])
        history.insert_baseline(conn, table_of(settings), migrations)
    for migration in migrations:
        logger().info("migration_baselined", migration=migration.name, checksum=migration.checksum)
    return [m.name for m in migrations]


def repair(settings: Settings) -> None:
    """Accept changed checksums and clear failed rows, each logged."""
    migrations = discover(settings.migrations_dir)
    table = table_of(settings)
    with locked_session(settings) as session, database_errors("repair", settings):
        conn = session.lock_conn
        plan = make_plan(migrations, history.read(conn, table, ensured=True))
        history.set_checksums(conn, table, list(plan.changed))
        for migration in plan.changed:
            logger().warning("checksum_accepted", migration=migration.name, checksum=migration.checksum)
        for name in history.delete_failed(conn, table):
            logger().info("failed_row_cleared", migration=name)


def new_file(settings: Settings, name: str, author: str, today: str) -> Path:
    """Write the next-numbered migration from the template; returns its path."""
    if not name or not all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "_") for ch in name):
        raise ConfigError(f"new: {name!r} must be lower-case letters, digits and underscores")
    directory = settings.migrations_dir
    version = max((m.version for m in discover(directory)), default=0) + 1
    path = directory / f"{version:03d}_{name}.sql"
    path.write_text(
        f"-- Migration: {path.name}\n-- Author: {author}\n-- Date: {today}\n"
        f"-- Description: {name.replace('_', ' ')}\n--\n"
        "-- Idempotent: every statement must be safe to run twice (IF NOT EXISTS, OR REPLACE, guards).\n\n"
        "-- ==== START MIGRATION ====\n\n\n-- ==== END MIGRATION ====\n"
    )
    return path
