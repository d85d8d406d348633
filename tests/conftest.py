"""Test plugin: one real PostgreSQL per session, one fresh database per test.

The server major version comes from ``RUNNER_TEST_PG`` (default 18). If the server cannot
be started or reached, the whole session stops at once instead of failing every test.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgcluster import Cluster

PG_MAJOR = int(os.environ.get("RUNNER_TEST_PG", "18"))
OUTPUTS: list[str] = []  # everything every runner process printed, scanned for the password


class RecordedPopen(subprocess.Popen[str]):
    """A runner process whose output is kept for the session-wide secret scan."""

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:  # noqa: A002
        out, err = super().communicate(input, timeout)
        OUTPUTS.append((out or "") + (err or ""))
        return out, err


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    cluster = Cluster(major=PG_MAJOR)
    try:
        cluster.start()
        with psycopg.connect(cluster.url(), connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        cluster.stop()
        pytest.exit(f"PostgreSQL {PG_MAJOR} test server unavailable: {exc}", returncode=3)
    yield cluster
    cluster.stop()
    leaks = [text for text in OUTPUTS if cluster.password in text]
    assert leaks == [], f"the server password appeared in {len(leaks)} runner outputs"


@dataclass
class Result:
    """A finished runner process: exit code, raw output, and its JSON log events."""

    code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def one(self, event: str) -> dict[str, Any]:
        (found,) = self.named(event)
        return found


def wait_for(condition: Callable[[], object], timeout: float = 30, *, what: str = "the condition") -> None:
    """Poll ``condition`` every 10 ms until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.01)


def parse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


@dataclass
class Database:
    """A fresh database on the session server, with helpers to run the runner against it."""

    cluster: Cluster
    name: str
    migrations: Path

    @property
    def url(self) -> str:
        return self.cluster.url(self.name)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def write(self, name: str, sql: str) -> Path:
        path = self.migrations / name
        path.write_text(sql)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PG", "DATABASE_URL"))}
        return {
            **base,
            "DATABASE_URL": self.url,
            "MIGRATIONS_DIR": str(self.migrations),
            "RUNNER_LOG_FORMAT": "json",
            **extra,
        }

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "runner"]

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return RecordedPopen(
            [*self.command(), *args], env=env or self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        return self.run_argv([*self.command(), *args], env=env, timeout=timeout)

    def run_argv(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        proc = subprocess.run(argv, env=env or self.env(), capture_output=True, text=True, timeout=timeout)
        OUTPUTS.append(proc.stdout + proc.stderr)
        return Result(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stdout + proc.stderr))

    def backend_running(self, statement: str, timeout: float = 20) -> int:
        """The pid of another backend of this database whose query contains ``statement`` (a migration
        is sent as one message); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND state = 'active' AND strpos(query, %s) > 0",
                [self.name, statement],
            )
            if rows:
                return int(rows[0][0])
            time.sleep(0.05)
        pytest.fail(f"no backend ran {statement!r} within {timeout}s")

    def advisory_locks(self, settle: float = 5.0) -> int:
        """Advisory locks held in this database, once backends of exited runners had ``settle``
        seconds to end (a closed connection's backend releases its locks as it exits)."""
        deadline = time.monotonic() + settle
        while True:
            ((count,),) = self.query(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            if count == 0 or time.monotonic() > deadline:
                return int(count)
            time.sleep(0.05)

    def history(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT migration_name, success, checksum, error_message FROM migration_history ORDER BY id")

    def applied(self) -> list[str]:
        return [name for name, success, *_ in self.history() if success]


@pytest.fixture
def db(pg: Cluster, tmp_path: Path) -> Iterator[Database]:
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    yield Database(pg, name, migrations)
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
