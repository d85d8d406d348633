"""``verify`` (prove idempotency) and ``rehearse`` (apply pending migrations to a copy).

Both work in a scratch database created for the purpose on the target server (or
``--scratch-url``) and dropped at the end, also on failure and on interruption.

Invariants of ``verify``:
- Every file is applied once with the real ``migrate`` path, then every file a second time
  with the same executor (a batched data file with ``batch.apply``, from its first key); after
  each second application the catalog fingerprint (``catalog.fingerprint``) must equal the one
  taken before, and so must the rows of the table a batched data file writes
  (``catalog.contents``). Any error or difference is a finding naming the file.

Invariants of ``rehearse``:
- The source is copied with ``pg_dump``/``pg_restore`` (schema and data, or schema only plus
  the history table's rows, so that only what is really pending runs); passwords go to
  those tools through ``PGPASSWORD``, never through argv. The source is only read.
- Each pending migration reports its duration, the rows it wrote, and the strongest lock mode
  it held per table (a batched data file runs in batches, as ``migrate`` runs it): read inside
  its transaction just before COMMIT (every lock is still held
  then; the transaction's statistics count rows written by any statement, DO blocks included)
  and sampled from a second connection while it runs. Autocommit files have only the samples
  (a lock held for less than the sampling interval can be missed) and their statements' counts.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import batch, catalog, execute, history, observe
from runner.config import Settings, redact
from runner.discover import Analysis, Migration, discover
from runner.errors import ConfigError, DatabaseUnavailable, RunnerError
from runner.migrate import (
    History,
    Locked,
    Report,
    batches,
    connect,
    database_errors,
    execution_session,
    migrate,
    parse_all,
)
from runner.plan import make_plan

Conn = psycopg.Connection[tuple[Any, ...]]
SAMPLE_INTERVAL_S = 0.01


def _no_tick(_attempt: execute.Attempt) -> None:
    """Scratch databases have no one to report progress to."""


@contextmanager
def scratch_database(settings: Settings, scratch_url: str | None, purpose: str) -> Iterator[Settings]:
    """Settings pointing at a new database on the scratch server; dropped afterwards, always."""
    server_url = scratch_url or settings.database_url or ""
    name = f"{purpose}_{secrets.token_hex(6)}"
    server = dataclasses.replace(settings, database_url=server_url)
    with connect(server) as conn, database_errors("creating the scratch database", settings):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    observe.logger().info("scratch_database_created", scratch_database=name)
    try:
        params = conninfo_to_dict(server_url) if server_url else {}
        yield dataclasses.replace(settings, database_url=make_conninfo("", **{**params, "dbname": name}))
    finally:
        with connect(server) as conn, database_errors("dropping the scratch database", settings):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        observe.logger().info("scratch_database_dropped", scratch_database=name)


def verify(settings: Settings, scratch_url: str | None) -> tuple[list[str], dict[str, int]]:
    """(findings, first-pass duration in ms per migration); see the module docstring."""
    migrations = discover(settings.migrations_dir)
    analyses = parse_all(migrations)
    findings: list[str] = []
    with scratch_database(settings, scratch_url, "verify") as scratch:
        report = Report()
        try:
            migrate(scratch, report)
        except RunnerError as exc:
            return [f"first application failed: {exc}"], {}
        durations = {m.name: duration for m, duration in report.applied}
        session = execution_session(scratch)
        with connect(scratch) as runner_conn, connect(scratch) as conn:
            table = History(runner_conn, scratch, time.monotonic() + scratch.lock_wait_timeout, ConfigError).table
            before = catalog.fingerprint(conn)
            for migration in migrations:
                analysis = analyses[migration.name]
                rows = _rows(conn, analysis)
                try:
                    if analysis.batch is not None:
                        _batches_again(conn, runner_conn, migration, analysis, table, session, scratch)
                    else:
                        execute.apply(conn, migration, analysis, table, session, execute.Attempt(), _no_tick, 1.0)
                except RunnerError as exc:
                    findings.append(f"{migration.name}: second application failed: {exc}")
                    continue
                after = catalog.fingerprint(conn)
                changes = catalog.difference(before, after)
                if rows is not None and _rows(conn, analysis) != rows:
                    changes.append(f"~ rows of {rows[0]}: the second application changed them")
                if changes:
                    findings.append(
                        f"{migration.name}: second application changed the database:\n    " + "\n    ".join(changes)
                    )
                before = after
    return findings, durations


def _rows(conn: Conn, analysis: Analysis) -> tuple[str, str] | None:
    """(table, digest of its rows) of the table a batched data file writes, if it is one and the table exists."""
    if analysis.batch is None:
        return None
    name = ".".join(analysis.batch.written)
    try:
        return name, catalog.contents(conn, analysis.batch.written)
    except psycopg.Error:
        return None  # no such table (any more): the second application reports it


def _batches_again(
    conn: Conn,
    runner_conn: Conn,
    migration: Migration,
    analysis: Analysis,
    table: history.Table,
    session: execute.Session,
    settings: Settings,
) -> None:
    """Apply a batched data file a second time, from its first key (its progress says it is done)."""
    progress = history.read_batches(runner_conn, table, migration.name).get(migration.name)
    attempt = execute.Attempt()
    retries = settings.ddl_lock_retries
    batch.apply(conn, runner_conn, migration, analysis, table, session, attempt, batch.Quiet(), retries, progress)


@dataclasses.dataclass(frozen=True)
class Rehearsal:
    """One pending migration applied to the copy."""

    migration: str
    duration_ms: int
    rows_touched: int
    locks: dict[str, str]


class LockSampler:
    """Samples, from its own connection in a daemon thread, the relation locks a backend holds.

    Keeps the strongest mode per relation; stops at the first database error.
    """

    def __init__(self, settings: Settings, pid: int) -> None:
        self.conn = connect(settings)
        self.pid = pid
        self.locks: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def record(self, rows: list[tuple[Any, ...]]) -> None:
        modes = catalog.LOCK_MODES
        for relation, mode in rows:
            current = self.locks.get(relation)
            if mode in modes and (current is None or modes.index(mode) > modes.index(current)):
                self.locks[relation] = mode

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            try:
                self.record(self.conn.execute(catalog.LOCKS_OF_PID, [self.pid]).fetchall())
            except psycopg.Error:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def pg_tool(name: str, pg_bin: str | None) -> str:
    path = str(Path(pg_bin) / name) if pg_bin else shutil.which(name)
    if not path or not Path(path).exists():
        raise ConfigError(f"rehearse: {name} not found (put it on PATH or pass --pg-bin DIR)")
    return path


def without_password(url: str) -> tuple[str, dict[str, str]]:
    """A conninfo without its password, and the environment that carries the password."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    return make_conninfo("", **params), env


def copy_database(
    source_url: str,
    target_url: str,
    *,
    schema_only: bool,
    history_table: str | None,
    pg_bin: str | None,
    settings: Settings,
) -> None:
    """``pg_dump`` the source and ``pg_restore`` it into the target.

    With ``schema_only``, the history table's rows (``history_table``, quoted and qualified,
    if it exists) come along.
    """
    with tempfile.TemporaryDirectory(prefix="rehearse-") as tmp:
        source, source_env = without_password(source_url)
        target, target_env = without_password(target_url)
        dumps = [(Path(tmp) / "source.dump", ["--schema-only"] if schema_only else [])]
        if schema_only and history_table:
            dumps.append((Path(tmp) / "history.dump", ["--data-only", f"--table={history_table}"]))
        steps = []
        for dump, options in dumps:
            dump_argv = [
                pg_tool("pg_dump", pg_bin),
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                *options,
                f"--file={dump}",
                f"--dbname={source}",
            ]
            restore_argv = [
                pg_tool("pg_restore", pg_bin),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                f"--dbname={target}",
                str(dump),
            ]
            steps += [(dump_argv, source_env), (restore_argv, target_env)]
        for argv, env in steps:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - our argv
            if done.returncode != 0:
                message = redact(done.stderr.strip()[-2000:], settings.secrets)
                raise DatabaseUnavailable(f"rehearse: {Path(argv[0]).name} failed: {message}")


def source_history_table(settings: Settings, from_url: str) -> str | None:
    """The source's history table, quoted and qualified, if it exists there."""
    source = dataclasses.replace(settings, database_url=from_url)
    with connect(source) as conn:
        table = History(conn, source, time.monotonic() + settings.lock_wait_timeout, ConfigError).table
        return table.ident.as_string(conn) if history.columns(conn, table) is not None else None


def rehearse(
    settings: Settings, from_url: str, *, schema_only: bool, scratch_url: str | None, pg_bin: str | None
) -> list[Rehearsal]:
    """Copy ``from_url`` into a scratch database and apply the pending migrations there."""
    migrations = discover(settings.migrations_dir)
    analyses = parse_all(migrations)
    settings = dataclasses.replace(
        settings, secrets=settings.secrets | {str(conninfo_to_dict(from_url).get("password") or "")} - {""}
    )
    history_table = source_history_table(settings, from_url) if schema_only else None
    with scratch_database(settings, scratch_url, "rehearse") as scratch, ExitStack() as stack:
        copy_database(
            from_url,
            scratch.database_url or "",
            schema_only=schema_only,
            history_table=history_table,
            pg_bin=pg_bin,
            settings=settings,
        )
        locked = Locked(scratch, stack, time.monotonic() + scratch.lock_wait_timeout, Report())
        plan = make_plan(migrations, locked.history.read(ensured=True))
        conn = locked.work()
        return [rehearse_one(conn, locked, scratch, m, analyses[m.name]) for m in plan.pending]


def rehearse_one(conn: Conn, locked: Locked, settings: Settings, migration: Migration, analysis: Analysis) -> Rehearsal:
    attempt = execute.Attempt()
    probe = execute.Probe(catalog.INSPECT) if analysis.transactional and analysis.batch is None else None
    with database_errors("rehearsal", settings), LockSampler(settings, conn.info.backend_pid) as sampler:
        if analysis.batch is not None:
            batches(locked, migration, analysis, settings, conn, batch.Quiet())(attempt)
        else:
            session = execution_session(settings)
            execute.apply(conn, migration, analysis, locked.history.table, session, attempt, _no_tick, 1.0, probe)
        first, last = ([*attempt.probed.values(), [], []])[:2]
        sampler.record([(relation, mode) for kind, relation, mode in last if kind == "lock"])
    if probe:
        rows = sum(int(count or 0) for kind, _, count in last if kind == "rows") - sum(
            int(count or 0) for kind, _, count in first if kind == "rows"
        )
    else:
        rows = attempt.rows  # autocommit and batched files: their statements' row counts
    rehearsal = Rehearsal(
        migration.name, round((time.monotonic() - attempt.started) * 1000), rows, dict(sorted(sampler.locks.items()))
    )
    observe.logger().info(
        "migration_rehearsed",
        migration=migration.name,
        duration_ms=rehearsal.duration_ms,
        rows_touched=rehearsal.rows_touched,
        locks=rehearsal.locks,
    )
    return rehearsal
