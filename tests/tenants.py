"""Tenant databases for the fleet tests and benches: many databases cloned from one template.

``created`` makes ``count`` databases named ``<prefix>_NNN`` from a template ``<prefix>_tpl``
(marked a template, so ``--targets-match '<prefix>_%'`` must skip it) holding a ``side``
table, into which the counted migrations insert one row each: a migration applied twice
shows as a count of 2. Everything is dropped afterwards.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from runner.lock import derive_key
from tests.conftest import OUTPUTS, Database, Result, parse_events
from tests.pgcluster import Cluster
from tests.services import scrape

SIDE = "CREATE TABLE side (version text)"
POISON = "CREATE TABLE poison ()"  # makes the poison check of ``counted`` fail in that tenant
POISON_CHECK = (
    "DO $$ BEGIN IF pg_catalog.to_regclass('public.poison') IS NOT NULL THEN"
    " RAISE EXCEPTION 'poisoned tenant'; END IF; END $$;\n"
)


def counted(directory: Path, count: int, *, sleep_s: dict[int, float] | None = None, poison_at: int = 2) -> None:
    """``count`` migrations: each creates t_NNN and inserts NNN into side; ``poison_at`` first
    fails in a poisoned tenant; ``sleep_s`` maps a version to a pg_sleep it ends with."""
    for version in range(1, count + 1):
        body = POISON_CHECK if version == poison_at else ""
        body += f"CREATE TABLE IF NOT EXISTS t_{version:03d} (id int);\nINSERT INTO side VALUES ('{version:03d}');\n"
        if sleep_s and version in sleep_s:
            body += f"SELECT pg_sleep({sleep_s[version]});\n"
        (directory / f"{version:03d}_m.sql").write_text(body)


@dataclass
class Tenants:
    """Databases ``names`` on ``cluster``; their common prefix makes a ``LIKE`` pattern."""

    cluster: Cluster
    prefix: str
    names: list[str]

    @property
    def pattern(self) -> str:
        return f"{self.prefix}\\_%"

    def url(self, name: str) -> str:
        return self.cluster.url(name)

    def query(self, name: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def targets_file(self, path: Path, names: list[str] | None = None) -> Path:
        """A ``--targets`` file: ``name URL`` a line."""
        path.write_text("".join(f"{name} {self.url(name)}\n" for name in names or self.names))
        return path

    def side(self, name: str) -> dict[str, int]:
        """How often each version ran its insert in tenant ``name``."""
        return dict(self.query(name, "SELECT version, count(*)::int FROM side GROUP BY 1"))

    def history(self, name: str) -> list[tuple[str, bool, str | None]]:
        """(migration, success, error) rows, or [] without a history table."""
        if self.query(name, "SELECT to_regclass('migration_history')") == [(None,)]:
            return []
        return [
            (row[0], row[1], row[2])
            for row in self.query(
                name, "SELECT migration_name, success, error_message FROM migration_history ORDER BY id"
            )
        ]

    def migrated(self, name: str, count: int) -> bool:
        """Every one of ``count`` counted migrations applied exactly once and recorded once."""
        versions = {f"{v:03d}" for v in range(1, count + 1)}
        applied = [m for m, success, _ in self.history(name) if success]
        return self.side(name) == dict.fromkeys(versions, 1) and sorted(applied) == [
            f"{v}_m.sql" for v in sorted(versions)
        ]

    def untouched(self, name: str) -> bool:
        return self.history(name) == [] and self.side(name) == {}

    def advisory_locks(self) -> int:
        """Advisory locks held in any tenant database (pg_locks shows every database's)."""
        rows = self.query(
            "postgres",
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname LIKE %s",
            [self.pattern],
        )
        return int(rows[0][0])


def admin(cluster: Cluster, statement: sql.Composable) -> None:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def created(cluster: Cluster, count: int) -> Iterator[Tenants]:
    """``count`` tenant databases cloned from a template with the side table; dropped afterwards."""
    prefix = f"f{secrets.token_hex(4)}"
    template = f"{prefix}_tpl"
    names = [f"{prefix}_{n:03d}" for n in range(1, count + 1)]
    admin(cluster, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
    try:
        with psycopg.connect(cluster.url(template), autocommit=True) as conn:
            conn.execute(SIDE)
        admin(cluster, sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(template)))
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
                )
        yield Tenants(cluster, prefix, names)
    finally:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(template)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(template)))


class Background:
    """A runner process whose stdout and stderr go to files, never to a pipe nobody reads while it runs."""

    def __init__(self, db: Database, *args: str, env: dict[str, str] | None = None) -> None:
        self.out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.proc = subprocess.Popen([*db.command(), *args], env=env or db.env(), stdout=self.out, stderr=self.err)

    def finish(self, timeout: float = 180) -> Result:
        """Wait for the end; the output joins the session's password scan."""
        code = self.proc.wait(timeout=timeout)
        texts = []
        for stream in (self.out, self.err):
            stream.seek(0)
            texts.append(stream.read().decode(errors="replace"))
            stream.close()
        OUTPUTS.append(texts[0] + texts[1])
        return Result(code, texts[0], texts[1], parse_events(texts[0] + texts[1]))


@dataclass
class DashboardRun:
    """What ``dashboard_run`` did: the facts every dashboard panel is checked against."""

    job: str
    broken: str  # its 002 fails
    waited: str  # its lock was held until ``while_waiting`` returned
    started: float
    ended: float
    results: list[Result]  # shard 0, shard 1


def dashboard_run(
    db: Database,
    tenants: Tenants,
    gateway: str,
    job: str,
    while_waiting: Callable[[str], None],
    sleep_s: dict[int, float] | None = None,
) -> DashboardRun:
    """Two shards of one fleet, pushing to ``gateway``: one tenant broken, one waiting for its lock.

    ``while_waiting(tenant)`` runs once the Pushgateway shows that tenant waiting; the lock is
    released when it returns.
    """
    counted(db.migrations, 4, sleep_s=sleep_s)
    broken, waited = tenants.names[7], tenants.names[3]
    tenants.query(broken, POISON)
    args = ("fleet", "--json", "--targets-match", tenants.pattern, "--shards", "2", "--parallel", "8")
    args += ("--on-error", "continue", "--pushgateway-url", gateway, "--metrics-job", job)
    started = time.time()
    with psycopg.connect(tenants.url(waited), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(waited, "public.migration_history")])
        shards = [Background(db, *args, env=db.env(JOB_COMPLETION_INDEX=str(index))) for index in (0, 1)]
        key = f'migration_runner_lock_wait_started_timestamp_seconds{{database="{waited}",instance="",job="{job}"}}'
        deadline = time.monotonic() + 60
        while scrape(gateway + "/metrics").get(key, 0) <= 0:
            assert time.monotonic() < deadline, "the lock wait was never pushed"
            time.sleep(0.1)
        while_waiting(waited)
    results = [shard.finish() for shard in shards]
    return DashboardRun(job, broken, waited, started, time.time(), results)
