"""The session advisory locks, on the runner's dedicated lock connection, always released.

Invariants:
- The keys come from the resolved history table, never from how ``--history-table`` is
  spelled: ``keys`` derives one key from ``schema.table`` and takes the key a 0.1.0 runner
  derives from the bare table name as well, so runners of both releases (and every spelling)
  exclude each other. ``--lock-key`` replaces both.
- Acquired by polling ``pg_try_advisory_lock`` until a deadline, never by a blocking
  ``pg_advisory_lock`` (a waiter holding a snapshot can deadlock CREATE INDEX CONCURRENTLY).
  Keys are taken in the same order by every runner of this release.
- While waiting, the holder (pid, application_name, connected since) is logged every
  ``HOLDER_LOG_INTERVAL`` seconds; past the deadline ``LockTimeout`` names it.
- The backend pid must not change while the lock is held: a transaction-mode pooler would
  silently drop a session lock, so a change is a ``ConfigError``.
- Released in ``finally``; if the connection is gone the server has released it already.
- The work connection holds the fences (``fence_key`` of each key) for as long as it lives.
  A SIGKILLed runner's lock connection dies at once, but its work backend may still be
  executing (and then committing) a migration it had already received; a new runner waits
  until every fence is free before reading the history, so it waits for such an orphan.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from runner.errors import ConfigError, LockTimeout
from runner.observe import logger
from runner.retry import Retry
from runner.retry import sleep as retry_sleep

HOLDER_LOG_INTERVAL = 5.0
HOLDERS_SQL = """
SELECT a.pid, a.application_name, a.state, a.backend_start::text, a.client_addr::text
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND l.classid = %s::int8::oid AND l.objid = %s::int8::oid
"""

Conn = psycopg.Connection[tuple[Any, ...]]


def derive_key(database: str, table: str) -> int:
    """A stable signed 64-bit key from the database name and a table name (0.1.0's derivation)."""
    digest = hashlib.sha256(f"migration-runner:{database}:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def keys(database: str, schema: str, table: str, explicit: int | None) -> tuple[int, ...]:
    """The lock keys of a resolved history table: ``schema.table``'s, then the bare name's."""
    if explicit is not None:
        return (explicit,)
    return derive_key(database, f"{schema}.{table}"), derive_key(database, table)


def fence_key(key: int) -> int:
    """The work connection's lock key, derived from the session lock's key."""
    digest = hashlib.sha256(f"migration-runner-fence:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holders(conn: Conn, lock_keys: Sequence[int]) -> list[dict[str, object]]:
    """Other sessions holding any of the advisory locks ``lock_keys`` in this database."""
    fields = ("pid", "application_name", "state", "connected_since", "client_addr")
    found: dict[object, dict[str, object]] = {}
    for key in lock_keys:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        for row in conn.execute(HOLDERS_SQL, [unsigned >> 32, unsigned & 0xFFFFFFFF]).fetchall():
            if row[0] != conn.info.backend_pid:
                found[row[0]] = dict(zip(fields, row, strict=True))
    return list(found.values())


def check_backend(conn: Conn, pid: int) -> None:
    if pid != conn.info.backend_pid:
        raise ConfigError(
            f"the lock connection's backend pid changed ({conn.info.backend_pid} -> {pid}): the "
            "connection goes through a transaction-mode pooler, which cannot hold a session "
            "advisory lock; connect directly or through a session-mode pool"
        )


def _acquire(
    conn: Conn,
    key: int,
    lock_keys: Sequence[int],
    retry: Retry,
    on_wait: Callable[[float], None],
    started: float,
    *,
    quiet: bool,
) -> bool:
    """Poll for ``key`` until ``retry`` runs out; True if this runner had to wait."""
    log = logger()
    last_report = time.monotonic() - HOLDER_LOG_INTERVAL
    waiting = False
    while True:
        row = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s), pg_catalog.pg_backend_pid()", [key]).fetchone()
        assert row is not None
        check_backend(conn, row[1])
        if row[0]:
            return waiting
        if not waiting:
            waiting = True
            on_wait(time.time())
        pause = retry.next_pause()
        now = time.monotonic()
        if pause is None:
            found = holders(conn, lock_keys) or "a session that just released it"
            waited = now - started
            raise LockTimeout(f"advisory lock {key} not acquired within {waited:.0f}s; held by {found}", waited)
        if now - last_report >= HOLDER_LOG_INTERVAL and not quiet:
            last_report = now
            log.info(
                "lock_waiting", lock_key=key, waited_ms=round((now - started) * 1000), holders=holders(conn, lock_keys)
            )
        retry_sleep(pause)


@contextmanager
def advisory_lock(
    conn: Conn,
    lock_keys: Sequence[int],
    timeout: float,
    on_wait: Callable[[float], None] = lambda _started: None,
    *,
    quiet: bool = False,
) -> Iterator[float]:
    """Hold every key of ``lock_keys`` for the block; yields the seconds spent waiting.

    ``quiet`` logs only waits that last (for the fences, which are normally free at once).
    The wait, when the lock is not acquired in time, ends in ``LockTimeout``.
    """
    log = logger()
    started = time.monotonic()
    retry = Retry(0.25, 0.25, (0.2, 1.0), deadline=started + timeout)  # polls every 50-250 ms
    held: list[int] = []
    try:
        waited_at_all = False
        for key in lock_keys:
            waited_at_all |= _acquire(conn, key, lock_keys, retry, on_wait, started, quiet=quiet)
            held.append(key)
        waited = time.monotonic() - started
        if not quiet or waited_at_all:
            log.info("lock_acquired", lock_key=lock_keys[0], lock_wait_ms=round(waited * 1000))
        yield waited
    finally:
        release(conn, held, quiet=quiet)


def release(conn: Conn, held: Sequence[int], *, quiet: bool) -> None:
    """Release ``held`` keys (last first); a dead connection has released them already."""
    if not held or conn.closed or conn.broken:
        return
    try:
        for key in reversed(held):
            row = conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", [key]).fetchone()
            if not quiet and key == held[0]:
                logger().info("lock_released", lock_key=key, released=bool(row and row[0]))
    except psycopg.Error as exc:
        logger().warning("lock_release_failed", error=str(exc), note="the server releases it when the session ends")
