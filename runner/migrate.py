"""The one orchestrator: discover -> connect -> lock -> history -> plan -> execute; fills a typed ``Report``.

``migrate`` steps, each an invariant:
1. Discover and checksum every file; a problem with names, numbering or encoding stops the
   run (exit 3) before connecting. Files are parsed no later than the run's first wait
   (``Parsed``): a syntax error is exit 3 before any connection retry or lock wait, and
   before anything is applied.
2. Connect (retrying until ``--connect-timeout``) a dedicated lock connection, resolve the
   history table on it (``history.resolve``), and take the session advisory locks of that
   table (``lock.keys``), waiting at most ``--lock-wait-timeout``; then wait until every
   fence (``lock.fence_key``) is free, which waits out an orphaned work backend of a killed
   runner. Every statement on the lock connection is bounded by the same deadline.
3. Under the lock, on the lock connection: ensure the history table, read it, plan
   (``plan.make_plan``). A changed checksum, a renamed version or an out-of-order file stops
   the run (exit 3) before anything is applied; unknown applied rows warn (exit 3 with
   ``--strict``).
4. Only if something is pending, connect the work connection and hold the fences on it.
   Apply each pending migration in version order (``execute.apply``: a clean session, one
   transaction with its history row; a batched data file, ``batch.apply``: one transaction per
   batch with its progress, the last one with the history row). A ``lock_timeout`` is retried
   with backoff (a batched file's per batch). On failure or interruption: roll back, record a
   ``success=false`` row on the lock connection, stop.
   A migration the server committed is reported as applied whenever an interrupt came.
5. Release the locks in ``finally``, even on interruption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pgerrors

from runner import catalog, history, lock, observe
from runner.config import Settings, redact
from runner.discover import Analysis, Migration, analyse, discover
from runner.errors import (
    ConfigError,
    DatabaseUnavailable,
    DdlLockTimeout,
    Interrupted,
    LockTimeout,
    MigrationFailed,
    Problem,
    ValidationError,
)
from runner.observe import bind, logger
from runner.plan import AppliedRow, Plan, make_plan
from runner.retry import Retry, checkpoint
from runner.retry import sleep as retry_sleep

if TYPE_CHECKING:
    from runner import batch, execute

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")
SESSION_SETUP = (
    "SELECT pg_catalog.set_config('client_connection_check_interval', '2s', false),"
    " pg_catalog.set_config('standard_conforming_strings', 'on', false)"
)
# The runner's own session: its names pinned; dates and intervals in the styles psycopg reads (a database
# set to DateStyle 'SQL, DMY' would otherwise make every history read fail) and batch keys are written in.
RUNNER_SESSION = (
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),"
    " pg_catalog.set_config('lock_timeout', '1s', false),"
    " pg_catalog.set_config('DateStyle', 'ISO', false), pg_catalog.set_config('IntervalStyle', 'postgres', false)"
)
PROGRESS_INTERVAL_S = 5.0


@dataclass
class Report:
    """What a ``migrate`` run did, filled in as it happens (an error still reports it)."""

    pending: int | None = None
    applied: list[tuple[Migration, int]] = field(default_factory=list)  # (migration, duration in ms)
    lock_wait_s: float = 0.0
    on_lock_wait: Callable[[float], None] = lambda _started: None  # Unix time the wait started
    on_lock_acquired: Callable[[float], None] = lambda _waited: None  # seconds waited
    on_progress: Callable[[float, float | None], None] = lambda _since, _ratio: None  # see observe.progress
    on_batch_progress: Callable[[float, float, float | None], None] = lambda _rows, _rate, _left: None

    def totals(self) -> observe.Totals:
        return {
            "applied": len(self.applied),
            "pending": self.pending,
            "lock_wait_s": self.lock_wait_s,
            "durations_s": {m.label: ms / 1000 for m, ms in self.applied},
        }


def connect(
    settings: Settings, deadline: float | None = None, before_waiting: Callable[[], None] = lambda: None
) -> Conn:
    """An autocommit connection, retried with backoff until ``deadline`` (or ``--connect-timeout``).

    Every connection failure is retried: libpq reports start-up errors without a SQLSTATE,
    so "starting up" cannot be told from "wrong password" without reading message text.
    Each attempt's own timeout is what is left of the deadline (libpq's minimum is 2 s).
    ``before_waiting`` runs once, when the first attempt failed, before any wait.
    """
    retry = Retry(0.25, 5.0, deadline=deadline or time.monotonic() + settings.connect_timeout)
    while True:
        try:
            conn: Conn = psycopg.connect(
                settings.database_url or "",
                autocommit=True,
                prepare_threshold=None,
                application_name=settings.application_name,
                client_encoding="UTF8",
                connect_timeout=max(2, min(10, math.ceil(retry.remaining()))),
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
            if retry.attempt == 0:
                before_waiting()
            pause = retry.next_pause()
            if pause is None:
                raise DatabaseUnavailable(f"cannot connect: {message}") from None
            logger().warning("connect_retry", error=message, retry_in_s=round(pause, 2))
            retry_sleep(pause)
            continue
        try:
            conn.execute(SESSION_SETUP)
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


class History:
    """The history table as the runner's own (lock) connection sees it.

    Resolved once; every access is bounded by ``deadline``. While another session's lock on the
    table holds an access up, who holds it is logged every second; past the deadline
    ``timeout_error`` says so.
    """

    def __init__(
        self, conn: Conn, settings: Settings, deadline: float, timeout_error: Callable[[str, float], Exception]
    ) -> None:
        self.conn, self.settings, self.deadline, self.timeout_error = conn, settings, deadline, timeout_error
        with database_errors(f"history table {settings.history_table}", settings):
            self.table = history.resolve(conn, settings.history_schema, settings.history_table)
            conn.execute(RUNNER_SESSION)

    def access(self, what: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        retry = Retry(1.0, 1.0, deadline=self.deadline)
        with database_errors(f"{what} ({self.table.qualified})", self.settings):
            while True:
                try:
                    return action()
                except pgerrors.LockNotAvailable:
                    holders = catalog.relation_holders(self.conn, self.table.ident.as_string(self.conn))
                    pause = retry.next_pause()
                    waited = time.monotonic() - started
                    if pause is None:
                        message = f"{what}: the history table {self.table.qualified} is locked by {holders}"
                        raise self.timeout_error(message, waited) from None
                    logger().info(
                        "history_table_waiting",
                        table=self.table.qualified,
                        waited_ms=round(waited * 1000),
                        holders=holders,
                    )
                    retry_sleep(pause)

    def read(self, *, ensured: bool = False) -> list[AppliedRow]:
        return self.access("reading history", lambda: history.read(self.conn, self.table, ensured=ensured))


class Locked:
    """The lock connection, with the advisory locks held and the history table ensured.

    The work connection is opened and fenced only when something is to be applied.
    """

    def __init__(
        self,
        settings: Settings,
        stack: ExitStack,
        deadline: float,
        report: Report,
        before_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings, self.stack, self.deadline = settings, stack, deadline
        connect_by = min(deadline, time.monotonic() + settings.connect_timeout)
        self.conn = stack.enter_context(connect(settings, connect_by, before_waiting))
        bind(database=self.conn.info.dbname)
        self.history = History(self.conn, settings, deadline, LockTimeout)
        table = self.history.table
        self.keys = lock.keys(self.conn.info.dbname, table.schema, table.name, settings.lock_key)
        self.fences = tuple(map(lock.fence_key, self.keys))
        with database_errors("advisory lock", settings):
            try:

                def waiting(started: float) -> None:
                    before_waiting()
                    report.on_lock_wait(started)

                report.lock_wait_s = stack.enter_context(
                    lock.advisory_lock(self.conn, self.keys, settings.lock_wait_timeout, waiting)
                )
            except LockTimeout as exc:
                report.lock_wait_s = exc.waited_s
                raise
            report.on_lock_acquired(report.lock_wait_s)
            with lock.advisory_lock(self.conn, self.fences, self.remaining(), quiet=True):
                pass
        if self.history.access("creating the history table", lambda: history.ensure(self.conn, table)):
            logger().info("history_table_ready", table=table.qualified)
        self._work: Conn | None = None

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def work(self) -> Conn:
        """The fenced work connection."""
        if self._work is None:
            conn = self.stack.enter_context(connect(self.settings))
            with database_errors("fence lock", self.settings):
                self.stack.enter_context(lock.advisory_lock(conn, self.fences, self.remaining(), quiet=True))
            self._work = conn
        return self._work


def check_plan(plan: Plan, settings: Settings) -> None:
    """Warn about unknown rows; raise ``ValidationError`` (exit 3) if migrate would refuse."""
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


def parse_all(migrations: list[Migration]) -> dict[str, Analysis]:
    """``migrations`` parsed; every syntax (or other file) problem among them is one ``ValidationError``."""
    analyses: dict[str, Analysis] = {}
    problems: list[Problem] = []
    for migration in migrations:
        try:
            analyses[migration.name] = analyse(migration)
        except ValidationError as exc:
            problems += exc.problems
    if problems:
        raise ValidationError(problems)
    return analyses


class Parsed:
    """The files' parses, each made once, and never later than the run's first wait.

    A run that connects at once and gets the lock at once (every pod start) parses only its
    pending files: importing PostgreSQL's parser and parsing every file would double the
    time of a run with nothing to do. Any run that has to wait (the database refuses the
    first connection, the lock is held) parses every file first, so a syntax error anywhere
    is exit 3 at once, with the database down too; and nothing is applied before every
    pending file has parsed.
    """

    def __init__(self, migrations: list[Migration]) -> None:
        self.migrations = migrations
        self.analyses: dict[str, Analysis] = {}

    @classmethod
    def read(cls, settings: Settings) -> Parsed:
        """Every file of the directory, checksummed and parsed: ready to apply anywhere (fleets)."""
        parsed = cls(discover(settings.migrations_dir))
        parsed.everything()
        return parsed

    def everything(self) -> None:
        if len(self.analyses) < len(self.migrations):
            self.analyses = parse_all(self.migrations)

    def of(self, wanted: tuple[Migration, ...]) -> dict[str, Analysis]:
        missing = [m for m in wanted if m.name not in self.analyses]
        self.analyses |= parse_all(missing)
        return self.analyses


def execution_session(settings: Settings) -> execute.Session:
    """What every migration runs with: the runner's timeouts and ``--role``."""
    from runner import execute  # noqa: PLC0415 - a no-op run (every pod start) never needs the executor

    return execute.Session(execute.Timeouts(settings.ddl_lock_timeout, settings.statement_timeout), settings.role)


def error_text(exc: MigrationFailed) -> str:
    state = f"SQLSTATE {exc.sqlstate}: " if exc.sqlstate else ""
    where = f" (line {exc.line})" if exc.line is not None else ""
    return f"{state}{exc.message}{where}"


class Monitor:
    """The executor's tick while a migration runs.

    It samples who blocks the migration, and every ``PROGRESS_INTERVAL_S`` (every second when
    the log is a live terminal) logs ``migration_progress`` (elapsed, statement, what it waits
    on, PostgreSQL's own progress report) and updates the progress metrics. It reads on the
    lock connection, which is idle meanwhile.
    """

    def __init__(
        self,
        conn: Conn,
        pid: int,
        fields: dict[str, str],
        lock_timeout: float,
        report: Report,
    ) -> None:
        self.conn, self.pid, self.fields, self.report = conn, pid, fields, report
        self.every = 1.0 if observe.live() else PROGRESS_INTERVAL_S
        self.interval = max(0.2, min(self.every, lock_timeout / 3 if lock_timeout else self.every))
        self.blockers: list[dict[str, object]] = []
        self.reported = time.monotonic()
        self.published = False

    def tick(self, attempt: execute.Attempt) -> None:
        checkpoint()  # a fleet's stop request interrupts the migration here, in its own thread
        try:
            found = catalog.blockers(self.conn, self.pid)
            self.blockers = found or self.blockers
            now = time.monotonic()
            if now - self.reported < self.every:
                return
            self.reported = now
            statement = attempt.statement
            report = catalog.progress(self.conn, self.pid)
            logger().info(
                "migration_progress",
                **self.fields,
                elapsed_ms=round((now - attempt.started) * 1000),
                line=statement.line if statement else None,
                statement=statement.text.strip().split("\n", 1)[0][:80] if statement else None,
                waiting_on=catalog.waiting_on(self.conn, self.pid),
                blockers=found,
                **({"phase": f"{report.command}: {report.phase}", "percent": report.percent} if report else {}),
            )
            ratio = report.percent / 100 if report and report.percent is not None else None
            self.report.on_progress(time.time() - (now - attempt.started), ratio)
            self.published = True
        except psycopg.Error as exc:
            logger().debug("progress_unavailable", error=str(exc))

    def publish_batch(self, rows_done: float, rate: float, remaining_s: float | None) -> None:
        """A batched data file's progress, for the metrics (``batch.Watcher``)."""
        self.report.on_batch_progress(rows_done, rate, remaining_s)

    def close(self) -> None:
        """Publish that no migration runs any more, if progress was published."""
        if self.published:
            self.report.on_progress(0.0, None)


def fail(
    locked: Locked,
    migration: Migration,
    fields: dict[str, str],
    message: str,
    started: float,
    sqlstate: str | None,
    line: int | None,
) -> None:
    """Log ``migration_failed`` and record the failure row (on the lock connection); best effort."""
    elapsed_ms = round((time.monotonic() - started) * 1000)
    logger().error("migration_failed", **fields, duration_ms=elapsed_ms, sqlstate=sqlstate, error=message, line=line)
    try:
        locked.history.access(
            "recording the failure",
            lambda: history.record_failure(locked.conn, locked.history.table, migration, message, elapsed_ms),
        )
    except (DatabaseUnavailable, LockTimeout) as exc:
        logger().warning("failure_row_not_written", migration=migration.name, error=str(exc))


def committed(locked: Locked, migration: Migration, attempt: execute.Attempt) -> bool:
    """Whether the server committed ``migration``: from the attempt, or else from the history."""
    if attempt.committed:
        return True
    try:
        return locked.history.access(
            "checking the outcome", lambda: history.is_recorded(locked.conn, locked.history.table, migration)
        )
    except (DatabaseUnavailable, LockTimeout):
        return False


def apply_one(locked: Locked, migration: Migration, analysis: Analysis, settings: Settings, report: Report) -> int:
    """Apply ``migration`` with lock-timeout retries; returns its duration in ms."""
    log = logger()
    fields = {"migration": migration.name, "version": migration.label, "checksum": migration.checksum}
    if not analysis.transactional:
        mixed = any(s.transactional for s in analysis.statements)
        log.warning(
            "migration_not_atomic" if mixed else "migration_autocommit",
            **fields,
            note="runs statement by statement in autocommit"
            + ("; a failure leaves earlier statements applied" if mixed else ""),
        )
    conn = locked.work()
    lock_timeout = migration.directives.lock_timeout or settings.ddl_lock_timeout
    monitor = Monitor(locked.conn, conn.info.backend_pid, fields, lock_timeout, report)
    retry = Retry(1.0, 30.0, (0.5, 1.0), attempts=settings.ddl_lock_retries)
    if analysis.batch is not None:
        run = batches(locked, migration, analysis, settings, conn, monitor)
    else:
        from runner import execute  # noqa: PLC0415 - a no-op run (every pod start) never needs it

        session, table = execution_session(settings), locked.history.table

        def run(attempt: execute.Attempt) -> None:
            execute.apply(conn, migration, analysis, table, session, attempt, monitor.tick, monitor.interval)

    try:
        return _attempts(locked, migration, run, monitor, retry, fields)
    finally:
        monitor.close()


def batches(
    locked: Locked, migration: Migration, analysis: Analysis, settings: Settings, conn: Conn, monitor: batch.Watcher
) -> Callable[[execute.Attempt], None]:
    """A batched data file's run: its progress read (the table created on first use), then ``batch.apply``.

    Retries of a lock timeout are per batch, inside ``batch.apply``; what it raises ends the run.
    """
    from runner import batch  # noqa: PLC0415 - only batched data files need it

    table = locked.history.table
    if locked.history.access("creating the batch progress table", lambda: history.ensure_batches(locked.conn, table)):
        logger().info("batch_table_ready", table=history.batches_table(table).qualified)
    found = locked.history.access(
        "reading the batch progress", lambda: history.read_batches(locked.conn, table, migration.name)
    )
    session, progress, retries = execution_session(settings), found.get(migration.name), settings.ddl_lock_retries

    def run(attempt: execute.Attempt) -> None:
        batch.apply(conn, locked.conn, migration, analysis, table, session, attempt, monitor, retries, progress)

    return run


def _attempts(
    locked: Locked,
    migration: Migration,
    run: Callable[[execute.Attempt], None],
    monitor: Monitor,
    retry: Retry,
    fields: dict[str, str],
) -> int:
    from runner import execute  # noqa: PLC0415 - a no-op run (every pod start) never needs it

    log = logger()
    while True:
        attempt = execute.Attempt()
        log.info("migration_started", **fields, attempt=retry.attempt + 1)
        try:
            run(attempt)
        except DdlLockTimeout as exc:
            pause = retry.next_pause()
            if pause is not None:
                log.warning(
                    "ddl_lock_retry",
                    **fields,
                    attempt=retry.attempt,
                    retry_in_s=round(pause, 2),
                    blockers=monitor.blockers,
                    sqlstate=exc.sqlstate,
                    line=exc.line,
                )
                monitor.blockers = []
                retry_sleep(pause)
                continue
            message = f"{error_text(exc)} after {retry.attempt} retries"
            fail(locked, migration, fields, message, attempt.started, exc.sqlstate, exc.line)
            raise
        except MigrationFailed as exc:
            fail(locked, migration, fields, error_text(exc), attempt.started, exc.sqlstate, exc.line)
            raise
        except (Interrupted, DatabaseUnavailable) as exc:
            if not committed(locked, migration, attempt):
                if isinstance(exc, Interrupted):
                    fail(locked, migration, fields, f"interrupted: {exc.reason}", attempt.started, "57014", None)
                raise
            duration = round((time.monotonic() - attempt.started) * 1000)
            log.info("migration_applied", **fields, duration_ms=duration, attempts=retry.attempt + 1, rows=attempt.rows)
            raise AppliedThenInterrupted(duration, exc) from exc
        duration = round((time.monotonic() - attempt.started) * 1000)
        log.info("migration_applied", **fields, duration_ms=duration, attempts=retry.attempt + 1, rows=attempt.rows)
        return duration


class AppliedThenInterrupted(Exception):
    """The migration was committed, then the run was interrupted (or lost its connection)."""

    def __init__(self, duration_ms: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.duration_ms, self.cause = duration_ms, cause


def migrate(settings: Settings, report: Report, parsed: Parsed | None = None) -> Report:
    """Apply pending migrations; see the module docstring. ``report`` is filled in as it goes.

    ``parsed`` saves step 1 when the caller read the files already (a fleet reads and parses
    them once for all its targets).
    """
    parsed = parsed or Parsed(discover(settings.migrations_dir))
    migrations = parsed.migrations
    deadline = time.monotonic() + settings.lock_wait_timeout
    with ExitStack() as stack:
        locked = Locked(settings, stack, deadline, report, parsed.everything)
        plan = make_plan(migrations, locked.history.read(ensured=True), settings.target)
        check_plan(plan, settings)
        analyses = parsed.of(plan.pending)
        adopt(locked, plan)
        report.pending = len(plan.pending)
        logger().info(
            "plan_ready",
            pending=len(plan.pending),
            applied=len(plan.applied),
            failed_before=[row.name for row in plan.failed],
        )
        for migration in plan.pending:
            checkpoint()  # a fleet's stop request: start no further migration
            try:
                duration_ms = apply_one(locked, migration, analyses[migration.name], settings, report)
            except MigrationFailed as exc:
                exc.applied = tuple(m.name for m, _ in report.applied)
                raise
            except AppliedThenInterrupted as exc:
                report.applied.append((migration, exc.duration_ms))
                if migration is plan.pending[-1] and isinstance(exc.cause, Interrupted):
                    logger().warning(
                        "interrupted_after_commit",
                        migration=migration.name,
                        note="every pending migration is applied: the run is complete",
                    )
                    return report
                raise exc.cause from None
            report.applied.append((migration, duration_ms))
    return report


def adopt(locked: Locked, plan: Plan) -> None:
    if plan.adopted:
        locked.history.access(
            "adopting history rows",
            lambda: history.set_checksums(locked.conn, locked.history.table, list(plan.adopted)),
        )
        for migration in plan.adopted:
            logger().info(
                "migration_adopted",
                migration=migration.name,
                checksum=migration.checksum,
                note="recorded without a checksum (seed-format table); checksum filled in",
            )
