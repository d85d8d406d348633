"""``verify`` (prove idempotency) and ``rehearse`` (apply pending migrations to a copy).

Both work in a scratch database created for the purpose on the target server (or
``--scratch-url``) and dropped at the end, also on failure and on interruption.

Invariants of ``verify``:
- Every file is applied once with the real ``migrate`` path, then every file a second time
  with the same executor; after each second application the catalog fingerprint (tables,
  columns with types, defaults and nullability, constraints, indexes with definitions and
  validity, functions, triggers, views, extensions, sequences, enum labels, and each table's
  row count) must equal the one taken before the second pass. Any error or difference is a
  finding naming the file.

Invariants of ``rehearse``:
- The source is copied with ``pg_dump``/``pg_restore`` (schema and data, or schema only);
  passwords go to those tools through ``PGPASSWORD``, never through argv.
- Each pending migration reports its duration, the rows it wrote, and the strongest lock mode
  it held per table: read inside its transaction just before COMMIT (every lock is still held
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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import execute, history, observe
from runner.config import Settings, redact
from runner.discover import Analysis, Migration, analyse, discover
from runner.errors import ConfigError, DatabaseUnavailable, RunnerError
from runner.lock import Poller
from runner.migrate import connect, database_errors, migrate, session_timeouts, table_of
from runner.plan import make_plan

Conn = psycopg.Connection[tuple[Any, ...]]
USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
FINGERPRINT_QUERIES = {
    "relations": f"""SELECT n.nspname, c.relname, c.relkind::text, c.relispartition,
        pg_get_expr(c.relpartbound, c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": f"""SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": f"""SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS}""",
    "indexes": f"""SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS}""",
    "functions": f"""SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
        md5(pg_get_functiondef(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER_SCHEMAS} AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""",
    "triggers": f"""SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND NOT t.tgisinternal""",
    "views": f"""SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND c.relkind IN ('v', 'm')""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "sequences": """SELECT schemaname, sequencename, data_type::text, increment_by, min_value, max_value, cycle
        FROM pg_sequences""",
    "enums": "SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid",
}
TABLES_SQL = f"""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {USER_SCHEMAS} AND c.relkind = 'r'"""
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
TABLE_KINDS = "c.relkind IN ('r', 'p', 'm')"  # tables, partitioned tables, materialized views
# Run after BEGIN and before COMMIT of a transactional migration: at the end every lock it took
# is still held, and the difference of the backend's pending statistics counts the rows written
# by any statement, DO blocks included.
INSPECT = f"""SELECT 'lock', n.nspname || '.' || c.relname, l.mode FROM pg_locks l
    JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.pid = pg_backend_pid() AND l.granted AND {TABLE_KINDS} AND {USER_SCHEMAS.replace("%%", "%")}
    UNION ALL
    SELECT 'rows', NULL, coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::text FROM pg_stat_xact_user_tables"""
LOCKS_OF_PID = f"""SELECT n.nspname || '.' || c.relname, l.mode FROM pg_locks l
    JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.pid = %s AND l.granted AND {TABLE_KINDS} AND {USER_SCHEMAS}"""
SAMPLE_INTERVAL_S = 0.01

Fingerprint = dict[str, list[tuple[Any, ...]]]


def fingerprint(conn: Conn) -> Fingerprint:
    """Sorted catalog rows per kind of object, plus each table's exact row count."""
    found = {kind: sorted(conn.execute(query).fetchall(), key=repr) for kind, query in FINGERPRINT_QUERIES.items()}
    counts = []
    for schema, name in conn.execute(TABLES_SQL).fetchall():
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()
        counts.append((schema, name, row[0] if row else None))
    found["row_counts"] = sorted(counts)
    return found


def difference(before: Fingerprint, after: Fingerprint) -> list[str]:
    """'- kind row' for what vanished and '+ kind row' for what appeared."""
    lines = []
    for kind in before:
        old, new = set(before[kind]), set(after[kind])
        lines += [f"- {kind} {row}" for row in sorted(old - new, key=repr)]
        lines += [f"+ {kind} {row}" for row in sorted(new - old, key=repr)]
    return lines


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


def prepared(conn: Conn, settings: Settings) -> execute.Timeouts:
    """Give ``conn`` the session timeouts the executor expects; returns them."""
    timeouts = session_timeouts(settings)
    execute.set_session_timeouts(conn, timeouts)
    return timeouts


def verify(settings: Settings, scratch_url: str | None) -> tuple[list[str], dict[str, int]]:
    """(findings, first-pass duration in ms per migration); see the module docstring."""
    migrations = discover(settings.migrations_dir)
    analyses = {m.name: analyse(m) for m in migrations}
    findings: list[str] = []
    with scratch_database(settings, scratch_url, "verify") as scratch:
        try:
            migrate(scratch)
        except RunnerError as exc:
            return [f"first application failed: {exc}"], {}
        durations = {m.name: round(observe.RUN.durations_s.get(f"{m.version:03d}", 0) * 1000) for m in migrations}
        with connect(scratch) as conn:
            session = prepared(conn, scratch)
            before = fingerprint(conn)
            for migration in migrations:
                try:
                    execute.apply(conn, migration, analyses[migration.name], table_of(scratch), session, session)
                except RunnerError as exc:
                    findings.append(f"{migration.name}: second application failed: {exc}")
                    continue
                after = fingerprint(conn)
                changes = difference(before, after)
                if changes:
                    findings.append(
                        f"{migration.name}: second application changed the database:\n    " + "\n    ".join(changes)
                    )
                before = after
    return findings, durations


@dataclasses.dataclass(frozen=True)
class Rehearsal:
    """One pending migration applied to the copy."""

    migration: str
    duration_ms: int
    rows_touched: int
    locks: dict[str, str]


class LockSampler(Poller):
    """Samples, from its own connection, the locks a backend holds: strongest mode per relation."""

    def __init__(self, settings: Settings, pid: int) -> None:
        super().__init__(SAMPLE_INTERVAL_S, "lock-sampler")
        self.conn = connect(settings)
        self.pid = pid
        self.locks: dict[str, str] = {}

    def record(self, rows: list[tuple[Any, ...]]) -> None:
        for relation, mode in rows:
            current = self.locks.get(relation)
            if mode in LOCK_MODES and (current is None or LOCK_MODES.index(mode) > LOCK_MODES.index(current)):
                self.locks[relation] = mode

    def sample(self) -> None:
        self.record(self.conn.execute(LOCKS_OF_PID, [self.pid]).fetchall())

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
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
    source_url: str, target_url: str, *, schema_only: bool, pg_bin: str | None, settings: Settings
) -> None:
    with tempfile.TemporaryDirectory(prefix="rehearse-") as tmp:
        dump = Path(tmp) / "source.dump"
        source, source_env = without_password(source_url)
        target, target_env = without_password(target_url)
        steps = [
            (
                [
                    pg_tool("pg_dump", pg_bin),
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    *(["--schema-only"] if schema_only else []),
                    f"--file={dump}",
                    f"--dbname={source}",
                ],
                source_env,
            ),
            (
                [
                    pg_tool("pg_restore", pg_bin),
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    f"--dbname={target}",
                    str(dump),
                ],
                target_env,
            ),
        ]
        for argv, env in steps:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - our argv
            if done.returncode != 0:
                message = redact(done.stderr.strip()[-2000:], settings.secrets)
                raise DatabaseUnavailable(f"rehearse: {Path(argv[0]).name} failed: {message}")


def rehearse(
    settings: Settings, from_url: str, *, schema_only: bool, scratch_url: str | None, pg_bin: str | None
) -> list[Rehearsal]:
    """Copy ``from_url`` into a scratch database and apply the pending migrations there."""
    migrations = discover(settings.migrations_dir)
    report: list[Rehearsal] = []
    settings = dataclasses.replace(
        settings, secrets=settings.secrets | {str(conninfo_to_dict(from_url).get("password") or "")} - {""}
    )
    with scratch_database(settings, scratch_url, "rehearse") as scratch:
        copy_database(from_url, scratch.database_url or "", schema_only=schema_only, pg_bin=pg_bin, settings=settings)
        table = table_of(scratch)
        with connect(scratch) as conn, database_errors("rehearsal", settings):
            history.ensure(conn, table)
            plan = make_plan(migrations, history.read(conn, table, ensured=True))
            analyses: dict[str, Analysis] = {m.name: analyse(m) for m in plan.pending}
            session = prepared(conn, scratch)
            report.extend(rehearse_one(conn, scratch, session, m, analyses[m.name]) for m in plan.pending)
    return report


def rehearse_one(
    conn: Conn, settings: Settings, session: execute.Timeouts, migration: Migration, analysis: Analysis
) -> Rehearsal:
    started = time.monotonic()
    with LockSampler(settings, conn.info.backend_pid) as sampler:
        outcome = execute.apply(conn, migration, analysis, table_of(settings), session, session, inspect=INSPECT)
        first, last = outcome.inspected or ([], [])
        sampler.record([(relation, mode) for kind, relation, mode in last if kind == "lock"])
    if outcome.inspected:
        rows = sum(int(count) for kind, _, count in last if kind == "rows") - sum(
            int(count) for kind, _, count in first if kind == "rows"
        )
    else:
        rows = outcome.rows_touched  # autocommit files: their statements' row counts
    rehearsal = Rehearsal(
        migration.name, round((time.monotonic() - started) * 1000), rows, dict(sorted(sampler.locks.items()))
    )
    observe.logger().info(
        "migration_rehearsed",
        migration=migration.name,
        duration_ms=rehearsal.duration_ms,
        rows_touched=rehearsal.rows_touched,
        locks=rehearsal.locks,
    )
    return rehearsal
