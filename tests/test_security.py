"""Secrets and TLS: passwords never leak, secret files work, certificates are verified."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from runner.lock import derive_key
from tests.conftest import Database, parse_events
from tests.pgcluster import Cluster


def test_password_not_in_process_arguments(db: Database) -> None:
    """The runner's argv never carries the password (it comes from the environment or a file)."""
    db.write("001_slow.sql", "SELECT pg_sleep(2);\n")
    proc = db.popen("migrate")
    time.sleep(1.0)
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    proc.communicate(timeout=30)
    assert db.cluster.password not in cmdline
    assert proc.returncode == 0


def test_pgpassfile_works_and_never_logs(db: Database, tmp_path: Path) -> None:
    """A libpq passfile supplies the password; its contents appear in no output."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{db.cluster.port}:*:postgres:{db.cluster.password}\n")
    passfile.chmod(0o600)
    env = {k: v for k, v in db.env().items() if k != "DATABASE_URL"}
    env |= {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{db.cluster.port}/{db.name}", "PGPASSFILE": str(passfile)}
    result = db.run("migrate", env=env)
    assert result.code == 0, result.stdout
    assert db.cluster.password not in result.stdout + result.stderr
    status = db.run("status", "--json", env=env)
    assert status.code == 0
    assert db.cluster.password not in status.stdout + status.stderr


def test_status_json_has_no_secret(db: Database) -> None:
    """status --json carries names, states and checksums only."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    result = db.run("status", "--json")
    assert result.code == 0
    assert db.cluster.password not in result.stdout + result.stderr
    assert db.url not in result.stdout


def test_lock_key_and_table_ignore_file_contents(db: Database, tmp_path: Path) -> None:
    """The lock key and history table come from settings only: hostile file contents change neither."""
    db.write("001_a.sql", "-- runner: history-table=evil lock-key=1\nSELECT 1;\n")
    refused = db.run("migrate")
    assert refused.code == 3
    assert "unknown directive 'history-table=evil'" in refused.one("run_failed")["error"]
    db.write("001_a.sql", "SELECT 'history-table=evil; lock_key=1';\n")
    result = db.run("migrate")
    assert result.code == 0
    assert result.one("lock_acquired")["lock_key"] == derive_key(db.name, "public.migration_history")
    assert db.query("SELECT count(*) FROM migration_history") == [(1,)]
    assert db.query("SELECT to_regclass('evil')") == [(None,)]


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[Cluster, trustme.CA]]:
    """A PostgreSQL whose certificate for 'localhost' is signed by a CA made here."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cluster = Cluster().start()
    try:
        data = cluster.datadir
        cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
        cert.private_key_pem.write_to_path(str(data / "server.key"))
        (data / "server.key").chmod(0o600)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for name in ("server.crt", "server.key"):
                os.chown(data / name, nobody.pw_uid, nobody.pw_gid)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        cluster.restart()
        yield cluster, ca
    finally:
        cluster.stop()


def tls_env(db: Database, cluster: Cluster, host: str, ca_file: Path) -> dict[str, str]:
    url = (
        f"postgresql://postgres:{cluster.password}@{host}:{cluster.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={ca_file}"
    )
    return db.env(DATABASE_URL=url)


def test_tls_verify_full(db: Database, tls_server: tuple[Cluster, trustme.CA], tmp_path: Path) -> None:
    """sslmode=verify-full connects with the right CA; a wrong CA or host name is exit 5 with a clear message."""
    cluster, ca = tls_server
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS tls_ok (id int);\n")
    ok = db.run("status", "--connect-timeout", "2s", env=tls_env(db, cluster, "localhost", ca_file))
    assert ok.code == 0, ok.stdout + ok.stderr

    wrong_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    bad_ca = db.run("migrate", "--connect-timeout", "1s", env=tls_env(db, cluster, "localhost", wrong_ca))
    assert bad_ca.code == 5
    assert "certificate verify failed" in bad_ca.one("run_failed")["error"]

    wrong_host = db.run("migrate", "--connect-timeout", "1s", env=tls_env(db, cluster, "127.0.0.1", ca_file))
    assert wrong_host.code == 5
    assert "does not match host name" in wrong_host.one("run_failed")["error"]
    for result in (ok, bad_ca, wrong_host):
        assert cluster.password not in result.stdout + result.stderr
    assert all(e.get("database") == "postgres" for e in parse_events(ok.stderr))
