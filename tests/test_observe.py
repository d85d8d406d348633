"""Logs, metrics and alerts: exact events, a real Pushgateway, a real Prometheus, promtool."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import __version__
from runner.config import redact
from runner.lock import derive_key
from runner.observe import scrubber
from tests.conftest import Database, parse_events, wait_for
from tests.pgcluster import free_port
from tests.services import FLEET_RULES, RULES, alerts, binary, http_get, prometheus, pushgateway, scrape

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z$")
CREATE_A = "CREATE TABLE IF NOT EXISTS a (id int PRIMARY KEY);\n"


@pytest.mark.parametrize("rules", [RULES, FLEET_RULES], ids=["rules", "fleet-rules"])
def test_promtool_checks_and_unit_tests_the_rules(rules: Path) -> None:
    """promtool check rules and promtool test rules pass on the shipped rules (and the fleet rules)."""
    promtool = binary("promtool")
    subprocess.run([promtool, "check", "rules", str(rules)], check=True, capture_output=True)
    tests = rules.with_suffix(".test.yaml")
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_events_of_a_successful_run(db: Database) -> None:
    """A successful run logs exactly these events, each with timestamp, level, run_id and database."""
    db.write("001_a.sql", CREATE_A)
    result = db.run("migrate")
    assert result.code == 0
    assert [e["event"] for e in result.events] == [
        "run_started",
        "lock_acquired",
        "history_table_ready",
        "plan_ready",
        "migration_started",
        "migration_applied",
        "lock_released",
        "run_finished",
    ]
    assert len({e["run_id"] for e in result.events}) == 1
    for event in result.events:
        assert ISO_UTC.match(event["timestamp"]), event
        assert event["level"] in {"info", "warning", "error"}
        assert event["database"] == db.name
    applied = result.one("migration_applied")
    assert {k: applied[k] for k in ("migration", "version")} == {"migration": "001_a.sql", "version": "001"}
    assert len(applied["checksum"]) == 64
    assert isinstance(applied["duration_ms"], int)
    finished = result.one("run_finished")
    assert {k: finished[k] for k in ("applied", "pending", "exit_code")} == {"applied": 1, "pending": 1, "exit_code": 0}
    assert isinstance(finished["duration_ms"], int)
    assert isinstance(finished["lock_wait_ms"], int)


def test_events_of_a_failed_run(db: Database) -> None:
    """A failed run logs migration_failed with sqlstate, error and line, then run_failed and exit_code 1."""
    db.write("001_a.sql", "SELECT 1;\nSELECT 1/0;\n")
    result = db.run("migrate")
    assert result.code == 1
    assert [e["event"] for e in result.events] == [
        "run_started",
        "lock_acquired",
        "history_table_ready",
        "plan_ready",
        "migration_started",
        "migration_failed",
        "lock_released",
        "run_failed",
        "run_finished",
    ]
    failed = result.one("migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["migration"]) == ("22012", 2, "001_a.sql")
    assert "division by zero" in failed["error"]
    assert failed["level"] == "error"
    assert result.one("run_finished")["exit_code"] == 1


def test_events_of_a_lock_wait(db: Database) -> None:
    """Waiting for the lock logs lock_waiting with the holder, then lock_acquired with the wait time."""
    db.write("001_a.sql", CREATE_A)
    with db.connect(application_name="deploy-in-progress") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(db.name, "migration_history")])
        proc = db.popen("migrate")
        polling = (
            "SELECT count(*) FROM pg_catalog.pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid() AND query LIKE '%%pg_try_advisory_lock%%'"
        )

        def polled() -> object:
            assert proc.poll() is None, proc.communicate()
            return holder.execute(polling, [db.name]).fetchone()[0]

        wait_for(polled, 60, what="the runner to poll for the lock")
        time.sleep(1.0)  # the runner has been waiting at least this long when the lock is released
    _, out = proc.communicate(timeout=30)
    events = parse_events(out)
    waiting = [e for e in events if e["event"] == "lock_waiting"]
    assert waiting
    assert waiting[0]["holders"][0]["application_name"] == "deploy-in-progress"
    assert {"pid", "state", "connected_since"} <= set(waiting[0]["holders"][0])
    acquired = next(e for e in events if e["event"] == "lock_acquired")
    assert acquired["lock_wait_ms"] >= 1000


def test_redaction_processor_scrubs_nested_values() -> None:
    """The processor scrubs URL userinfo and password= pairs from nested values, without knowing the secret."""
    processor = scrubber(redact)
    event = processor(
        None,
        "info",
        {
            "error": "connection to postgresql://app:s3cr3t-xyz@db:5432/app failed",
            "detail": {"conninfo": ["host=db password=s3cr3t-xyz"]},
            "exc": ValueError("password='s3cr3t-xyz'"),
        },
    )
    assert "s3cr3t-xyz" not in repr(event)


def test_password_in_a_connection_error_is_redacted(db: Database) -> None:
    """libpq echoes part of an unquoted password with a space; the log line must not."""
    db.write("001_a.sql", CREATE_A)
    secret = "error-9931"
    conninfo = f"host=127.0.0.1 port={db.cluster.port} password=pw-in {secret} user=postgres"
    result = db.run("migrate", env=db.env(DATABASE_URL=conninfo))
    assert result.code == 2
    unredacted = subprocess.run(
        [sys.executable, "-c", f"import psycopg\ntry: psycopg.connect({conninfo!r})\nexcept Exception as e: print(e)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert secret in unredacted.stdout  # the driver's own message does carry it ...
    assert secret not in result.stdout + result.stderr  # ... ours does not
    db.write("001_a.sql", CREATE_A)
    url_secret = "pw-url-5521"
    result = db.run(
        "migrate",
        "--connect-timeout",
        "1s",
        env=db.env(DATABASE_URL=f"postgresql://postgres:{url_secret}@127.0.0.1:{db.cluster.port}/{db.name}"),
    )
    assert result.code == 5
    assert url_secret not in result.stdout + result.stderr


def metric(samples: dict[str, float], name: str, db: Database, extra: str = "") -> float:
    key = f'migration_runner_{name}{{database="{db.name}",instance="",job="migration-runner"{extra}}}'
    return samples[key]


def test_pushgateway_after_success_and_failure(db: Database) -> None:
    """Every metric reaches a real Pushgateway; a failure keeps the earlier success time."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    with pushgateway() as url:
        before = time.time()
        assert db.run("migrate", "--pushgateway-url", url).code == 0
        ok = scrape(url + "/metrics")
        success_time = metric(ok, "last_success_timestamp_seconds", db)
        assert before <= success_time <= time.time()
        assert metric(ok, "migrations_applied", db) == 2
        assert metric(ok, "migrations_pending", db) == 2
        assert metric(ok, "last_exit_code", db) == 0
        assert metric(ok, "lock_wait_started_timestamp_seconds", db) == 0
        assert 0 <= metric(ok, "lock_wait_seconds", db) < 5
        assert 0 < metric(ok, "last_run_duration_seconds", db) < 30
        assert metric(ok, "migration_duration_seconds", db, ',version="001"') >= 0
        assert metric(ok, "migration_duration_seconds", db, ',version="002"') >= 0
        assert metric(ok, "info", db, f',runner_version="{__version__}"') == 1
        assert [k for k in ok if k.startswith("migration_runner_last_failure")] == []
        leaky = [k for k in ok if k.startswith("migration_runner") and ("pod=" in k or 'instance=""' not in k)]
        assert leaky == []  # grouping key is job + database only: no pod, no instance
        assert db.cluster.password not in http_get(url + "/metrics")

        db.write("003_bad.sql", "SELECT 1/0;\n")
        assert db.run("migrate", "--pushgateway-url", url).code == 1
        failed = scrape(url + "/metrics")
        assert metric(failed, "last_success_timestamp_seconds", db) == success_time
        assert metric(failed, "last_failure_timestamp_seconds", db) > success_time
        assert metric(failed, "last_exit_code", db) == 1
        assert metric(failed, "migrations_applied", db) == 0
        assert metric(failed, "migrations_pending", db) == 1


def test_lock_wait_start_is_pushed_while_waiting(db: Database) -> None:
    """While a runner waits for the lock, the Pushgateway already shows when the wait started."""
    db.write("001_a.sql", CREATE_A)
    with pushgateway() as url, db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(db.name, "migration_history")])
        started = time.time()
        proc = db.popen("migrate", "--pushgateway-url", url, "--lock-wait-timeout", "3s")
        samples: dict[str, float] = {}
        for _ in range(50):
            samples = scrape(url + "/metrics")
            if any("lock_wait_started" in k for k in samples):
                break
            time.sleep(0.1)
        assert started - 1 <= metric(samples, "lock_wait_started_timestamp_seconds", db) <= time.time()
        proc.communicate(timeout=30)
        assert proc.returncode == 4
        after = scrape(url + "/metrics")
        assert metric(after, "lock_wait_started_timestamp_seconds", db) == 0
        assert metric(after, "last_exit_code", db) == 4


def test_pushgateway_down_or_silent_never_changes_the_outcome(db: Database) -> None:
    """A refused or black-holed Pushgateway is logged; exit 0, and the push gives up within its timeout."""
    db.write("001_a.sql", CREATE_A)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the TCP handshake, never answers
        started = time.monotonic()
        result = db.run("migrate", "--pushgateway-url", f"http://127.0.0.1:{silent.getsockname()[1]}")
        elapsed = time.monotonic() - started
    assert result.code == 0
    assert result.one("metrics_push_failed")["phase"] == "finished"
    assert elapsed < 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = db.run("migrate", "--pushgateway-url", f"http://127.0.0.1:{closed_port}")
    assert refused.code == 0
    assert refused.named("metrics_push_failed")


def test_metrics_port_serves_during_and_after_the_run(db: Database) -> None:
    """--metrics-port serves /metrics; --metrics-linger keeps it up after the run for a final scrape."""
    db.write("001_a.sql", CREATE_A)
    port = free_port()
    proc = db.popen("migrate", "--metrics-port", str(port), "--metrics-linger", "3s")
    samples: dict[str, float] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            time.sleep(0.1)
            continue
        if "migration_runner_last_exit_code" in samples:
            break
        time.sleep(0.1)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert samples["migration_runner_last_exit_code"] == 0
    assert samples["migration_runner_migrations_applied"] == 1
    assert samples['migration_runner_migration_duration_seconds{version="001"}'] >= 0


def test_metrics_file_is_written_atomically(db: Database, tmp_path: Path) -> None:
    """--metrics-file writes the textfile-collector format via a temporary file and a rename."""
    db.write("001_a.sql", CREATE_A)
    target = tmp_path / "migration_runner.prom"
    assert db.run("migrate", "--metrics-file", str(target)).code == 0
    text = target.read_text()
    assert "migration_runner_last_success_timestamp_seconds " in text
    assert "# TYPE migration_runner_last_exit_code gauge" in text
    assert list(tmp_path.glob("*.tmp*")) == []


@pytest.mark.slow
def test_failed_migration_alert_fires_and_resolves_in_prometheus(db: Database, tmp_path: Path) -> None:
    """Real Pushgateway + Prometheus: a failed run fires MigrationRunnerFailed; a fixed run resolves it."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_bad.sql", "SELECT 1/0;\n")

    def firing() -> list[str]:
        return [
            a["state"]
            for a in alerts(prom)
            if a["labels"].get("alertname") == "MigrationRunnerFailed" and a["labels"].get("database") == db.name
        ]

    with pushgateway() as gateway, prometheus(gateway, tmp_path) as prom:
        assert db.run("migrate", "--pushgateway-url", gateway).code == 1
        deadline = time.monotonic() + 60
        while not firing() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert firing() in (["firing"], ["pending"])
        db.write("002_bad.sql", "SELECT 1;\n")
        assert db.run("migrate", "--pushgateway-url", gateway).code == 0
        deadline = time.monotonic() + 60
        while firing() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert firing() == []
