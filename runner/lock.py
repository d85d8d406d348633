"""The session advisory lock, on its own dedicated connection, always released.

Invariants:
- Acquired by polling ``pg_try_advisory_lock`` until a deadline, never by a blocking
  ``pg_advisory_lock`` (a waiter holding a snapshot can deadlock CREATE INDEX CONCURRENTLY).
- While waiting, the holder (pid, application_name, connected since) is logged every
  ``HOLDER_LOG_INTERVAL`` seconds; past the deadline ``LockTimeout`` names it.
- The backend pid must not change while the lock is held: a transaction-mode pooler would
  silently drop a session lock, so a change is a ``ConfigError``.
- Released in ``finally``; if the connection is gone the server has released it already.
- The work connection holds a second lock, the fence (``fence_key``), for as long as it lives.
  A SIGKILLed runner's lock connection dies at once, but its work backend may still be
  executing (and then committing) a migration it had already received; a new runner takes the
  fence before reading the history, so it waits for such an orphan to finish first.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg

from runner.errors import ConfigError, LockTimeout
from runner.observe import logger

POLL_INTERVAL = (0.05, 0.25)  # seconds, uniformly drawn: waiters do not poll in step
HOLDER_LOG_INTERVAL = 5.0
HOLDERS_SQL = """
SELECT a.pid, a.application_name, a.state, a.backend_start::text, a.client_addr::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
"""
BLOCKERS_SQL = """
SELECT a.pid, a.application_name, a.state, (now() - a.xact_start)::text AS xact_age, left(a.query, 120)
FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids(%s))
"""

Conn = psycopg.Connection[tuple[Any, ...]]


def derive_key(database: str, table: str) -> int:
    """A stable signed 64-bit key from the database name and the history table."""
    digest = hashlib.sha256(f"migration-runner:{database}:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def fence_key(key: int) -> int:
    """The work connection's lock key, derived from the session lock's key."""
    digest = hashlib.sha256(f"migration-runner-fence:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holders(conn: Conn, key: int) -> list[dict[str, object]]:
    """Sessions holding the advisory lock ``key`` in this database."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    rows = conn.execute(HOLDERS_SQL, [unsigned >> 32, unsigned & 0xFFFFFFFF]).fetchall()
    fields = ("pid", "application_name", "state", "connected_since", "client_addr")
    return [dict(zip(fields, row, strict=True)) for row in rows]


def blockers(conn: Conn, pid: int) -> list[dict[str, object]]:
    """Sessions that block backend ``pid`` (pg_blocking_pids x pg_stat_activity)."""
    fields = ("pid", "application_name", "state", "xact_age", "query")
    return [dict(zip(fields, row, strict=True)) for row in conn.execute(BLOCKERS_SQL, [pid]).fetchall()]


def check_backend(conn: Conn, pid: int) -> None:
    if pid != conn.info.backend_pid:
        raise ConfigError(
            f"the lock connection's backend pid changed ({conn.info.backend_pid} -> {pid}): the "
            "connection goes through a transaction-mode pooler, which cannot hold a session "
            "advisory lock; connect directly or through a session-mode pool"
        )


@contextmanager
def advisory_lock(
    conn: Conn,
    key: int,
    timeout: float,
    on_wait: Callable[[float], None] = lambda _started: None,
    *,
    quiet: bool = False,
) -> Iterator[float]:
    """Hold ``key`` for the block; yields the seconds spent waiting for it.

    ``quiet`` logs only waits (for the fence, which is normally free at once).
    """
    log = logger()
    started = time.monotonic()
    last_report = started - HOLDER_LOG_INTERVAL
    waiting = False
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", [key]).fetchone()
        assert row is not None
        check_backend(conn, row[1])
        if row[0]:
            break
        now = time.monotonic()
        if not waiting:
            waiting = True
            on_wait(time.time())
        if now - started >= timeout:
            raise LockTimeout(
                f"advisory lock {key} not acquired within {timeout:g}s; held by "
                f"{holders(conn, key) or 'a session that just released it'}"
            )
        if now - last_report >= HOLDER_LOG_INTERVAL:
            last_report = now
            log.info("lock_waiting", lock_key=key, waited_ms=round((now - started) * 1000), holders=holders(conn, key))
        time.sleep(min(random.uniform(*POLL_INTERVAL), max(0.0, timeout - (now - started))))  # noqa: S311 - jitter, not crypto
    waited = time.monotonic() - started
    if not quiet or waiting:
        log.info("lock_acquired", lock_key=key, lock_wait_ms=round(waited * 1000))
    try:
        yield waited
    finally:
        if not conn.closed and not conn.broken:
            try:
                row = conn.execute("SELECT pg_advisory_unlock(%s), pg_backend_pid()", [key]).fetchone()
                if not quiet:
                    log.info("lock_released", lock_key=key, released=bool(row and row[0]))
            except psycopg.Error as exc:
                log.warning(
                    "lock_release_failed",
                    lock_key=key,
                    error=str(exc),
                    note="the server releases it when the session ends",
                )


class Poller:
    """Calls ``sample`` every ``interval`` seconds in a daemon thread during the ``with`` block.

    It stops at the first database error (the connection is gone or busy).
    """

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except psycopg.Error:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class BlockerWatch(Poller):
    """Samples, from the lock connection, who blocks the migrating backend.

    The latest non-empty sample is kept so that a ``lock_timeout`` failure can name the
    sessions that were in the way, which are no longer waited on once it fires. The caller
    clears ``latest`` before each attempt.
    """

    def __init__(self, conn: Conn, pid: int, interval: float) -> None:
        super().__init__(interval, "blocker-watch")
        self.conn, self.pid = conn, pid
        self.latest: list[dict[str, object]] = []

    def sample(self) -> None:
        found = blockers(self.conn, self.pid)
        if found:
            self.latest = found
