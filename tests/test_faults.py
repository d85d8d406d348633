"""Fault injection: kill the runner, restart the server, cut the network, pile on runners.

The promise: whatever happens, the history table tells the truth, no migration is applied
twice or half, the next run finishes the job. Random choices use fixed seeds.
"""

from __future__ import annotations

import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from runner.lock import derive_key
from tests.conftest import PG_MAJOR, Database, parse_events, wait_for
from tests.pgcluster import running

SIDE = "CREATE TABLE IF NOT EXISTS side (version text)"


def write_counted(db: Database, count: int, sleep_s: float = 0.0) -> None:
    """``count`` migrations, each creating t_NNN and inserting one row into side."""
    db.query(SIDE)
    for i in range(1, count + 1):
        pause = f"SELECT pg_sleep({sleep_s});\n" if sleep_s else ""
        db.write(
            f"{i:03d}_m.sql",
            f"CREATE TABLE IF NOT EXISTS t_{i:03d} (id int);\nINSERT INTO side VALUES ('{i:03d}');\n{pause}",
        )


def wait_first_commit(db: Database) -> None:
    """Until a migration of ``write_counted``'s has committed (its row in side is visible)."""
    wait_for(lambda: db.query("SELECT count(*) FROM side") != [(0,)], 60, what="the first migration to commit")


def settle(db: Database, seconds: float = 15) -> None:
    """Wait until no other backend works in the test database (orphans finished)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        busy = db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db.name]
        )
        if busy == [(0,)]:
            return
        time.sleep(0.1)
    pytest.fail("backends of a killed runner did not go away")


def assert_history_matches_objects(db: Database, count: int) -> set[str]:
    """Each applied file's objects exist exactly once; no pending file's do. Returns applied versions."""
    applied = (
        {name[:3] for name in db.applied()}
        if db.query("SELECT to_regclass('migration_history')") != [(None,)]
        else set()
    )
    tables = {
        name[2:] for (name,) in db.query("SELECT relname FROM pg_class WHERE relname LIKE 't\\_%%' AND relkind = 'r'")
    }
    side = dict(db.query("SELECT version, count(*) FROM side GROUP BY 1"))
    assert tables == applied
    assert side == dict.fromkeys(applied, 1)
    assert applied == {f"{i:03d}" for i in range(1, len(applied) + 1)}  # a prefix: in order
    assert len(applied) <= count
    return applied


def test_orphaned_migration_is_not_applied_twice(db: Database) -> None:
    """SIGKILL right after a migration was sent: its backend still commits it, and a runner
    started at once waits for that orphan (the fence) instead of applying the migration again."""
    db.query(SIDE)
    db.write("001_slow.sql", "INSERT INTO side VALUES ('001');\nSELECT pg_sleep(1.5);\n")
    first = db.popen("migrate")
    db.backend_running("SELECT pg_sleep(1.5)")
    first.kill()
    first.communicate()
    second = db.run("migrate")
    assert second.code == 0, second.stdout
    settle(db)
    assert db.query("SELECT count(*) FROM side") == [(1,)]
    assert db.applied() == ["001_slow.sql"]


@pytest.mark.slow
def test_sigkill_at_random_moments(db: Database) -> None:
    """20 trials of SIGKILL at a random moment of a 50-migration run: the history matches the objects
    after each kill, the next run succeeds, and every migration is applied exactly once.

    Half the kills fall anywhere from the start (start-up, lock, history table included); the
    other half within 0.8 s of the first commit, while at least 0.98 s of sleeps remain, so
    they land mid-run however slowly the process starts."""
    write_counted(db, 50, sleep_s=0.02)
    rng = random.Random(20261125)
    kills_mid_run = 0
    for trial in range(20):
        db.query("DROP TABLE IF EXISTS migration_history; TRUNCATE side")
        for (name,) in db.query("SELECT relname FROM pg_class WHERE relname LIKE 't\\_%%' AND relkind = 'r'"):
            db.query(f'DROP TABLE "{name}"')
        proc = db.popen("migrate")
        if trial % 2:
            wait_first_commit(db)
            time.sleep(rng.uniform(0, 0.8))
        else:
            time.sleep(rng.uniform(0.1, 1.5))
        proc.kill()
        proc.communicate()
        settle(db)
        applied = assert_history_matches_objects(db, 50)
        kills_mid_run += 0 < len(applied) < 50
        rerun = db.run("migrate")
        assert rerun.code == 0, rerun.stdout
        assert assert_history_matches_objects(db, 50) == {f"{i:03d}" for i in range(1, 51)}
    assert kills_mid_run >= 5  # the kills really landed mid-run


@pytest.mark.slow
def test_server_restart_mid_run() -> None:
    """pg_ctl restart -m fast during a run: the runner exits 5 promptly; the next run completes."""
    with running(PG_MAJOR) as cluster, tempfile.TemporaryDirectory() as directory:
        db = Database(cluster, "postgres", Path(directory))
        write_counted(db, 30, sleep_s=0.1)
        proc = db.popen("migrate", "--connect-timeout", "1s")
        wait_first_commit(db)  # restart after the first commit, however slow start-up
        restarted_at = time.monotonic()
        cluster.restart("fast")
        _, out = proc.communicate(timeout=30)
        assert proc.returncode == 5, out
        assert time.monotonic() - restarted_at < 10
        assert any(e["event"] == "run_failed" and "connection" in e["error"] for e in parse_events(out))
        applied = assert_history_matches_objects(db, 30)
        assert 0 < len(applied) < 30
        assert db.run("migrate").code == 0
        assert len(assert_history_matches_objects(db, 30)) == 30


class BlackholeProxy:
    """A TCP proxy on loopback; ``blackhole()`` keeps every socket open but drops all data."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropping = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.dropping.is_set():
                try:
                    sink.sendall(data)
                except OSError:
                    return

    def blackhole(self) -> None:
        self.dropping.set()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def proxy_to(port: int) -> Iterator[BlackholeProxy]:
    proxy = BlackholeProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.slow
def test_network_blackhole_mid_migration(db: Database) -> None:
    """Traffic black-holed mid-run: the runner gives up by its deadline (plus the bounded clean-up),
    exits non-zero; once the path closes the backend is gone, the lock free, and a rerun completes."""
    write_counted(db, 5, sleep_s=1.0)
    with proxy_to(db.cluster.port) as proxy:
        url = f"postgresql://postgres:{db.cluster.password}@127.0.0.1:{proxy.port}/{db.name}"
        started = time.monotonic()
        proc = db.popen("migrate", "--deadline", "4s", env=db.env(DATABASE_URL=url))
        time.sleep(1.5)
        proxy.blackhole()
        _, out = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
    assert proc.returncode == 143, out
    assert elapsed < 4 + 10 + 3  # deadline + clean-up grace + start-up
    settle(db)
    assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert_history_matches_objects(db, 5)
    assert db.run("migrate").code == 0
    assert len(assert_history_matches_objects(db, 5)) == 5


@pytest.mark.slow
def test_sixty_four_runners_at_once(db: Database) -> None:
    """64 runner processes started together: all exit 0 and every migration is applied exactly once."""
    write_counted(db, 20)
    procs = [db.popen("migrate", "--lock-wait-timeout", "120s") for _ in range(64)]
    results = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 64, [
        r[1][-500:] for r, p in zip(results, procs, strict=False) if p.returncode
    ]
    assert len(assert_history_matches_objects(db, 20)) == 20
    applied_by = [e["applied"] for _, out in results for e in parse_events(out) if e["event"] == "run_finished"]
    assert sum(applied_by) == 20


def test_stuck_lock_holder_makes_every_runner_exit_4(db: Database) -> None:
    """A session that holds our lock and never lets go: each runner exits 4 at its deadline, naming it."""
    write_counted(db, 3)
    with db.connect(application_name="stuck-session") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(db.name, "migration_history")])
        procs = [db.popen("migrate", "--lock-wait-timeout", "2s") for _ in range(4)]
        outputs = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [4] * 4
    for out in outputs:
        failed = next(e for e in parse_events(out) if e["event"] == "run_failed")
        assert "stuck-session" in failed["error"]
    assert db.query("SELECT to_regclass('t_001')") == [(None,)]
