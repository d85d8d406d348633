"""Production safety on a live database: lock-safe DDL, CONCURRENTLY, poolers, wait."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Database, parse_events
from tests.pgcluster import free_port
from tests.services import binary


def test_ddl_behind_a_long_transaction_does_not_stall_readers(db: Database) -> None:
    """A reader's open transaction blocks an ALTER: readers queued behind it wait at most about the
    lock timeout, the runner logs who blocks and retries, and succeeds once the transaction ends."""
    db.query("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    db.write("001_alter.sql", "ALTER TABLE t ADD COLUMN IF NOT EXISTS note text;\n")
    probe_waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with db.connect() as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM t")
                probe_waits.append(time.monotonic() - started)
                time.sleep(0.02)

    with db.connect(application_name="long-report") as blocker:
        blocker.execute("BEGIN; SELECT count(*) FROM t")
        runner = db.popen("migrate", "--ddl-lock-timeout", "300ms", "--ddl-lock-retries", "30")
        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(4)
        blocker.execute("COMMIT")
        out, err = runner.communicate(timeout=60)
    stop.set()
    prober.join()
    assert runner.returncode == 0, out + err
    events = parse_events(err)
    retries = [e for e in events if e["event"] == "ddl_lock_retry"]
    assert len(retries) >= 2
    assert any(
        b["application_name"] == "long-report" and b["state"] == "idle in transaction"
        for e in retries
        for b in e["blockers"]
    )
    assert {"pid", "xact_age", "query"} <= set(retries[0]["blockers"][0])
    assert len(probe_waits) > 50
    assert max(probe_waits) < 0.3 + 0.7  # the lock timeout plus scheduling slack; without it: ~4 s
    assert db.query(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = 'note'"
    ) == [(1,)]


def test_ddl_lock_retries_exhausted_fails_the_migration(db: Database) -> None:
    """When the blocker never goes away, retries run out: exit 1 with a failure row naming 55P03."""
    db.query("CREATE TABLE t (id int)")
    db.write("001_alter.sql", "ALTER TABLE t ADD COLUMN IF NOT EXISTS note text;\n")
    with db.connect() as blocker:
        blocker.execute("BEGIN; SELECT count(*) FROM t")
        result = db.run("migrate", "--ddl-lock-timeout", "100ms", "--ddl-lock-retries", "2")
    assert result.code == 1
    assert len(result.named("ddl_lock_retry")) == 2
    ((_name, success, _checksum, error),) = db.history()
    assert success is False
    assert "55P03" in error
    assert "after 2 retries" in error


def test_file_directive_overrides_lock_timeout(db: Database) -> None:
    """-- runner: lock-timeout=... is applied with SET LOCAL for that file only."""
    db.write(
        "001_a.sql",
        "-- runner: lock-timeout=1234ms statement-timeout=7s\n"
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lt,"
        " current_setting('statement_timeout') AS st;\n",
    )
    db.write("002_b.sql", "CREATE TABLE seen2 AS SELECT current_setting('lock_timeout') AS lt;\n")
    assert db.run("migrate", "--ddl-lock-timeout", "5s").code == 0
    assert db.query("SELECT lt, st FROM seen") == [("1234ms", "7s")]
    assert db.query("SELECT lt FROM seen2") == [("5s",)]


def test_failed_unique_cic_is_rebuilt_valid_on_retry(db: Database) -> None:
    """A unique CREATE INDEX CONCURRENTLY fails on duplicates and leaves an INVALID index; once the data
    is fixed, the rerun drops it and builds a valid one (IF NOT EXISTS alone would keep the invalid one)."""
    db.query("CREATE TABLE users (email text); INSERT INTO users VALUES ('a@x'), ('a@x'), ('b@x')")
    db.write(
        "001_unique_email.sql", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);\n"
    )
    failed = db.run("migrate")
    assert failed.code == 1
    assert failed.one("migration_failed")["sqlstate"] == "23505"
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_key'::regclass") == [(False,)]
    db.query("DELETE FROM users WHERE ctid = (SELECT max(ctid) FROM users WHERE email = 'a@x')")
    retried = db.run("migrate")
    assert retried.code == 0, retried.stdout
    assert retried.one("invalid_index_dropped")["index"] == "public.users_email_key"
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_key'::regclass") == [(True,)]
    assert db.applied() == ["001_unique_email.sql"]


def test_mixed_file_runs_in_autocommit_with_a_warning(db: Database) -> None:
    """CIC beside ordinary DDL: the file runs statement by statement, with a not-atomic warning."""
    db.write("001_mixed.sql", "CREATE TABLE m (id int);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS m_id ON m (id);\n")
    result = db.run("migrate")
    assert result.code == 0
    assert result.one("migration_not_atomic")["migration"] == "001_mixed.sql"
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'm_id'::regclass") == [(True,)]


def test_vacuum_file_runs_outside_a_transaction(db: Database) -> None:
    """A statement that cannot run in a transaction block (VACUUM) is detected and runs in autocommit."""
    db.write("001_t.sql", "CREATE TABLE IF NOT EXISTS v (id int);\n")
    db.write("002_vacuum.sql", "VACUUM (ANALYZE) v;\n")
    result = db.run("migrate")
    assert result.code == 0, result.stdout
    assert result.one("migration_autocommit")["migration"] == "002_vacuum.sql"


def test_wait_returns_when_schema_is_ready(db: Database) -> None:
    """wait polls until every migration in the directory is applied, then exits 0."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    waiter = db.popen("wait", "--wait-timeout", "60s")
    time.sleep(2.5)
    assert waiter.poll() is None
    assert db.run("migrate").code == 0
    _, out = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    events = [e["event"] for e in parse_events(out)]
    assert "schema_waiting" in events
    assert "schema_ready" in events


def test_wait_times_out_with_exit_6(db: Database) -> None:
    """wait exits 6 after --wait-timeout while migrations are still pending, naming them."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    started = time.monotonic()
    result = db.run("wait", "--wait-timeout", "1s")
    assert result.code == 6
    assert time.monotonic() - started < 10
    assert "001_a.sql" in result.one("run_failed")["error"]
    assert db.query("SELECT to_regclass('a')") == [(None,)]


@contextmanager
def pgbouncer(db: Database) -> Iterator[int]:
    """A real PgBouncer in transaction pooling mode in front of the test database."""
    workdir = Path(tempfile.mkdtemp(prefix="runner-pgbouncer-"))
    port = free_port()
    auth = workdir / "userlist.txt"
    auth.write_text(f'"postgres" "{db.cluster.password}"\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{db.name} = host=127.0.0.1 port={db.cluster.port} dbname={db.name} user=postgres "
        f"password={db.cluster.password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = plain\nauth_file = {auth}\npool_mode = transaction\n"
        "default_pool_size = 4\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {workdir / 'pgbouncer.log'}\npidfile = {workdir / 'pgbouncer.pid'}\n"
    )
    as_user = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (workdir, auth, config):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": "nobody"}
    proc = subprocess.Popen(
        [binary("pgbouncer"), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user
    )  # type: ignore[call-overload]
    try:
        time.sleep(1.0)
        assert proc.poll() is None, (workdir / "pgbouncer.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_transaction_pooler_is_refused_with_exit_2(db: Database) -> None:
    """Through PgBouncer in transaction mode the session lock cannot hold: exit 2, and why."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    with pgbouncer(db) as port:
        url = f"postgresql://postgres:{db.cluster.password}@127.0.0.1:{port}/{db.name}"
        result = db.run("migrate", env=db.env(DATABASE_URL=url))
    assert result.code == 2, result.stdout + result.stderr
    assert "transaction-mode pooler" in result.one("run_failed")["error"]
    assert db.query("SELECT to_regclass('a')") == [(None,)]
