"""The commands besides ``migrate``: status, validate, wait, baseline, repair, new. Thin, on the orchestrator's parts.

Invariants:
- ``status``, ``validate`` and ``wait`` never lock, create or change anything; they read the
  history on a runner-owned connection, bounded by their deadline.
- They and ``migrate`` share one answer (``plan.make_plan`` + ``blocking_problems``): ``wait``
  is ready only when migrate would find nothing to apply and nothing to refuse, and exits 3
  (as migrate would) when migrate would refuse; ``status`` shows the same plan.
- ``baseline`` and ``repair`` change the history only under the advisory lock, log every
  change with its old and new value, and say so when there is nothing to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner import __version__, history
from runner.config import Settings
from runner.discover import Migration, discover
from runner.errors import ConfigError, DatabaseUnavailable, LockTimeout, Problem, ValidationError, WaitTimeout
from runner.migrate import History, Locked, Report, check_plan, connect, parse_all
from runner.observe import bind, logger
from runner.plan import AppliedRow, Plan, make_plan
from runner.retry import Retry
from runner.retry import sleep as retry_sleep

TimeoutError_ = Callable[[str, float], Exception]


@contextmanager
def reading(settings: Settings, deadline: float, timeout_error: TimeoutError_) -> Iterator[History]:
    """The history as a runner-owned connection reads it: no lock, no table creation."""
    with connect(settings, min(deadline, time.monotonic() + settings.connect_timeout)) as conn:
        bind(database=conn.info.dbname)
        yield History(conn, settings, deadline, timeout_error)


def current_plan(settings: Settings, deadline: float, timeout_error: TimeoutError_) -> tuple[list[Migration], Plan]:
    migrations = discover(settings.migrations_dir)
    with reading(settings, deadline, timeout_error) as table:
        return migrations, make_plan(migrations, table.read())


@dataclass(frozen=True)
class StatusRow:
    """One line of ``status``: a file, or a history row with no file."""

    version: str | None
    migration: str
    state: str  # applied, pending, failed, changed, renamed, unknown
    checksum: str | None
    row: AppliedRow | None
    batches: history.BatchProgress | None = None  # a batched data file not yet done: where it stands

    def as_dict(self) -> dict[str, object]:
        row = self.row
        return {
            "version": self.version,
            "migration": self.migration,
            "state": self.state,
            "checksum": self.checksum,
            "applied_at": row.applied_at.isoformat() if row and row.applied_at else None,
            "applied_by": row.applied_by if row else None,
            "duration_ms": row.execution_time_ms if row else None,
            "runner_version": row.runner_version if row else None,
            "error": row.error_message if row and not row.success else None,
            "recorded_as": row.name if row and row.name != self.migration else None,
            "progress": self.progress(),
        }

    def progress(self) -> str | None:
        """Where a batched data file not yet done stands, in words."""
        done = self.batches
        if done is None:
            return None
        after = ", ".join(done.resume_after) if done.resume_after else "-"
        changed = "" if done.checksum == self.checksum else " (by an earlier version of the file)"
        return f"in progress: {done.rows_done:,} rows in {done.batches:,} batches{changed}, resumes after key ({after})"


def status(settings: Settings) -> dict[str, object]:
    """Every migration's state, with when, by whom, how long and by which runner it was applied.

    A batched data file not yet done shows where its committed batches stand.
    """
    migrations = discover(settings.migrations_dir)
    with reading(settings, time.monotonic() + settings.lock_wait_timeout, LockTimeout) as table:
        plan = make_plan(migrations, table.read())
        batches = table.access("reading the batch progress", lambda: history.read_batches(table.conn, table.table))
    renamed = {m.name: row for m, row in plan.renamed}
    states = {m.name: "applied" for m in plan.applied}
    states |= {m.name: "changed" for m in plan.changed}
    states |= dict.fromkeys(renamed, "renamed")
    rows = []
    for m in migrations:
        row = renamed.get(m.name) or plan.rows.get(m.name)
        default = "failed" if row is not None and not row.success else "pending"
        state = states.get(m.name, default)
        progress = batches.get(m.name)
        unfinished = progress if state in {"pending", "failed"} and progress and not progress.finished else None
        rows.append(StatusRow(m.label, m.name, state, m.checksum, row, unfinished))
    rows += [StatusRow(None, row.name, "unknown", row.checksum, row) for row in plan.unknown]
    counts = {
        state: sum(1 for r in rows if r.state == state)
        for state in ("applied", "pending", "failed", "changed", "renamed", "unknown")
    }
    return {
        "runner_version": __version__,
        "counts": counts,
        "refused": [str(problem) for problem in plan.blocking_problems(strict=settings.strict)],
        "migrations": [r.as_dict() for r in rows],
    }


def validate(settings: Settings, *, with_database: bool) -> list[Migration]:
    """Check every file (names, numbering, encoding, parse) and, with a database, the history."""
    migrations = discover(settings.migrations_dir)
    parse_all(migrations)
    if with_database:
        check_plan(current_plan(settings, time.monotonic() + settings.lock_wait_timeout, LockTimeout)[1], settings)
    return migrations


def wait(settings: Settings) -> None:
    """Poll until migrate would have nothing to apply; exit 3 at once if migrate would refuse.

    Every poll (connect included) is bounded by ``--wait-timeout``; then ``WaitTimeout``
    names what is still pending, or the last error.
    """
    log = logger()
    retry = Retry.within(settings.wait_timeout, 2.0, 2.0)
    deadline = retry.deadline or 0.0

    def timed_out(message: str, _waited: float) -> Exception:
        return WaitTimeout(f"schema not ready after {settings.wait_timeout:g}s: {message}")

    while True:
        try:
            _, plan = current_plan(settings, deadline, timed_out)
            check_plan(plan, settings)
            if not plan.pending:
                log.info("schema_ready", applied=len(plan.applied))
                return
            detail: dict[str, object] = {"pending": [m.name for m in plan.pending]}
        except DatabaseUnavailable as exc:
            detail = {"error": str(exc)}
        pause = retry.next_pause()
        if pause is None:
            raise timed_out(str(detail), settings.wait_timeout)
        log.info("schema_waiting", **detail)
        retry_sleep(pause)


@contextmanager
def locked(settings: Settings) -> Iterator[Locked]:
    with ExitStack() as stack:
        yield Locked(settings, stack, time.monotonic() + settings.lock_wait_timeout, Report())


def baseline(settings: Settings, version: int) -> list[str]:
    """Mark 001..``version`` applied without running them; refuses if any is recorded."""
    migrations = [m for m in discover(settings.migrations_dir) if m.version <= version]
    if not migrations or migrations[-1].version != version:
        raise ConfigError(f"baseline: no migration file with version {version:03d}")
    with locked(settings) as session:
        recorded = {row.name for row in session.history.read(ensured=True)}
        clash = sorted(recorded & {m.name for m in migrations})
        if clash:
            raise ValidationError([Problem("baseline", f"baseline refused: already recorded: {', '.join(clash)}")])
        session.history.access(
            "baseline", lambda: history.insert_baseline(session.conn, session.history.table, migrations)
        )
    for migration in migrations:
        logger().info("migration_baselined", migration=migration.name, checksum=migration.checksum)
    return [m.name for m in migrations]


@dataclass(frozen=True)
class Repair:
    """What ``repair`` changes (or, with ``--dry-run``, would change)."""

    checksums: list[tuple[Migration, str | None]]  # (file, recorded checksum)
    renames: list[tuple[Migration, AppliedRow]]  # (file, row recorded under another name)
    failed: list[str]  # names of failed rows to clear

    def __bool__(self) -> bool:
        return bool(self.checksums or self.renames or self.failed)


def repair(settings: Settings, names: list[str], *, dry_run: bool) -> Repair:
    """Accept changed checksums and deliberate renames, clear failed rows; each change logged.

    ``names`` (file names or paths) limits it to those files; empty means every file.
    """
    migrations = discover(settings.migrations_dir)
    wanted = {Path(name).name for name in names}
    unknown = wanted - {m.name for m in migrations}
    if unknown:
        raise ConfigError(f"repair: no such migration file: {', '.join(sorted(unknown))}")

    def chosen(name: str) -> bool:
        return not wanted or name in wanted

    log = logger()
    with locked(settings) as session:
        plan = make_plan(migrations, session.history.read(ensured=True))
        todo = Repair(
            [(m, plan.rows[m.name].checksum) for m in plan.changed if chosen(m.name)],
            [(m, row) for m, row in plan.renamed if chosen(m.name)],
            [row.name for row in plan.failed if chosen(row.name)],
        )
        verb = "would accept" if dry_run else "accepted"
        for m, old in todo.checksums:
            log.warning(
                "checksum_accepted",
                migration=m.name,
                old_checksum=old,
                new_checksum=m.checksum,
                dry_run=dry_run,
                note=f"{verb} the file's current content",
            )
        for m, row in todo.renames:
            log.warning(
                "rename_accepted",
                migration=m.name,
                recorded_as=row.name,
                old_checksum=row.checksum,
                new_checksum=m.checksum,
                dry_run=dry_run,
            )
        for name in todo.failed:
            log.info("failed_row_cleared", migration=name, error=plan.rows[name].error_message, dry_run=dry_run)
        if not todo:
            log.info("nothing_to_repair", note="no changed checksum, renamed file or failed row")
        elif not dry_run:
            table, conn = session.history.table, session.conn
            session.history.access("repair", lambda: _apply_repair(conn, table, todo))
    return todo


def _apply_repair(conn: history.Conn, table: history.Table, todo: Repair) -> None:
    history.set_checksums(conn, table, [m for m, _ in todo.checksums])
    history.rename(conn, table, [(row.name, m) for m, row in todo.renames])
    history.delete_failed(conn, table, todo.failed)


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
