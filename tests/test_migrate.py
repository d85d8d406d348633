"""migrate and the other commands against a real PostgreSQL, one exit code at a time."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import psycopg
import pytest

from runner import __version__
from runner.lock import derive_key
from tests.conftest import Database

CREATE_A = "CREATE TABLE IF NOT EXISTS a (id int PRIMARY KEY, name text);\n"


def test_applies_pending_in_order_and_records_each(db: Database) -> None:
    """Pending files apply in version order; each gets a success row with checksum and time."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "-- comment\nCREATE TABLE IF NOT EXISTS b (a_id int REFERENCES a(id));\n")
    db.write("003_data.sql", "INSERT INTO a VALUES (1, '100% sure') ON CONFLICT DO NOTHING;\n")
    result = db.run("migrate")
    assert result.code == 0, result.stdout + result.stderr
    rows = db.query(
        "SELECT migration_name, success, checksum IS NOT NULL, execution_time_ms >= 0,"
        " runner_version, applied_by FROM migration_history ORDER BY id"
    )
    assert rows == [(n, True, True, True, __version__, "postgres") for n in ("001_a.sql", "002_b.sql", "003_data.sql")]
    assert db.query("SELECT name FROM a") == [("100% sure",)]
    assert [e["migration"] for e in result.named("migration_applied")] == ["001_a.sql", "002_b.sql", "003_data.sql"]


def test_second_run_has_nothing_to_do(db: Database) -> None:
    """A run after a complete run applies nothing and exits 0."""
    db.write("001_a.sql", CREATE_A)
    assert db.run("migrate").code == 0
    again = db.run("migrate")
    assert again.code == 0
    assert again.named("migration_started") == []
    assert again.one("run_finished")["applied"] == 0


def test_failed_migration_leaves_nothing_and_is_retried(db: Database) -> None:
    """A failing file rolls back all its objects, records success=false, exits 1; the next run retries."""
    db.write("001_a.sql", CREATE_A)
    db.write(
        "002_bad.sql",
        "CREATE TABLE half (id int);\nCREATE INDEX half_i ON half (id);\n\nINSERT INTO a VALUES (1), (1);\n",
    )
    result = db.run("migrate")
    assert result.code == 1
    assert db.query("SELECT to_regclass('half'), to_regclass('half_i')") == [(None, None)]
    ((name, success, _checksum, error),) = [row for row in db.history() if row[0] == "002_bad.sql"]
    assert (name, success) == ("002_bad.sql", False)
    assert "SQLSTATE 23505" in error
    assert "(line 4)" in error
    failed = result.one("migration_failed")
    assert (failed["sqlstate"], failed["line"]) == ("23505", 4)
    db.write(
        "002_bad.sql",
        "CREATE TABLE half (id int);\nCREATE INDEX half_i ON half (id);\n\nINSERT INTO a VALUES (1), (2);\n",
    )
    retried = db.run("migrate")
    assert retried.code == 0
    assert db.applied() == ["001_a.sql", "002_bad.sql"]


def test_error_line_points_into_the_file(db: Database) -> None:
    """The recorded line is the line of the failing token inside a multi-line statement."""
    db.write("001_a.sql", "-- one\n-- two\nSELECT 1;\nSELECT\n  1,\n  no_such_column\nFROM pg_class;\n")
    result = db.run("migrate")
    assert result.code == 1
    assert result.one("migration_failed")["line"] == 6


def test_sixteen_runners_apply_each_migration_once(db: Database) -> None:
    """16 runners started together: all exit 0 and each migration runs exactly once."""
    db.query("CREATE TABLE side (migration text)")
    for i in range(1, 11):
        db.write(f"{i:03d}_m.sql", f"CREATE TABLE IF NOT EXISTS t{i} (id int);\nINSERT INTO side VALUES ('{i:03d}');\n")
    procs = [db.popen("migrate") for _ in range(16)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 16, outputs
    assert db.query("SELECT migration, count(*) FROM side GROUP BY 1 ORDER BY 1") == [
        (f"{i:03d}", 1) for i in range(1, 11)
    ]
    assert len(db.applied()) == 10


SEED_TABLE = """
CREATE TABLE migration_history (
    id SERIAL PRIMARY KEY, migration_name VARCHAR(255) UNIQUE NOT NULL,
    applied_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP, applied_by VARCHAR(100) DEFAULT CURRENT_USER,
    execution_time_ms INTEGER, success BOOLEAN DEFAULT true, error_message TEXT)
"""


def test_seed_format_table_is_adopted(db: Database) -> None:
    """A seed-format table with hand-inserted rows counts them as applied and fills their checksum."""
    db.query(SEED_TABLE)
    db.query(CREATE_A)
    db.query("INSERT INTO migration_history (migration_name, execution_time_ms) VALUES ('001_a.sql', 12)")
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    result = db.run("migrate")
    assert result.code == 0, result.stdout
    assert result.one("migration_adopted")["migration"] == "001_a.sql"
    assert [e["migration"] for e in result.named("migration_applied")] == ["002_b.sql"]
    assert all(checksum for _n, _s, checksum, _e in db.history())


def test_changed_checksum_stops_before_applying(db: Database) -> None:
    """An applied file that changed stops the run with exit 3 and applies nothing."""
    db.write("001_a.sql", CREATE_A)
    assert db.run("migrate").code == 0
    db.write("001_a.sql", CREATE_A + "-- edited\n")
    db.write("002_b.sql", "CREATE TABLE b (id int);\n")
    result = db.run("migrate")
    assert result.code == 3
    assert "001_a.sql: checksum changed" in result.one("run_failed")["error"]
    assert db.applied() == ["001_a.sql"]
    repaired = db.run("repair")
    assert repaired.code == 0
    assert repaired.one("checksum_accepted")["migration"] == "001_a.sql"
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_a.sql", "002_b.sql"]


def test_crlf_and_bom_do_not_change_the_checksum(db: Database) -> None:
    """Re-saving a file with CRLF line ends and a BOM is not drift."""
    db.write("001_a.sql", CREATE_A)
    assert db.run("migrate").code == 0
    (db.migrations / "001_a.sql").write_bytes(b"\xef\xbb\xbf" + CREATE_A.replace("\n", "\r\n").encode())
    assert db.run("migrate").code == 0


def test_pending_below_highest_applied_is_refused(db: Database) -> None:
    """A pending file numbered below the highest applied one is exit 3."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate").code == 0
    db.query("DELETE FROM migration_history WHERE migration_name = '001_a.sql'")
    result = db.run("migrate")
    assert result.code == 3
    assert "001_a.sql: pending but numbered below" in result.one("run_failed")["error"]


def test_unknown_applied_rows_warn_or_fail_with_strict(db: Database) -> None:
    """Rows with no file (a rollback to an older image) warn and exit 0, or exit 3 with --strict."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate").code == 0
    (db.migrations / "002_b.sql").unlink()
    relaxed = db.run("migrate")
    assert relaxed.code == 0
    assert relaxed.one("migration_unknown")["migration"] == "002_b.sql"
    assert db.run("migrate", "--strict").code == 3
    assert db.run("migrate", env=db.env(RUNNER_STRICT="true")).code == 3


def test_target_stops_after_that_version(db: Database) -> None:
    """--target 2 applies 001 and 002 only."""
    for i in range(1, 4):
        db.write(f"{i:03d}_t.sql", f"CREATE TABLE IF NOT EXISTS t{i} (id int);\n")
    assert db.run("migrate", "--target", "2").code == 0
    assert db.applied() == ["001_t.sql", "002_t.sql"]


def test_schema_qualified_history_table(db: Database) -> None:
    """--history-table ops.migration_history creates the schema and records there."""
    db.write("001_a.sql", CREATE_A)
    assert db.run("migrate", "--history-table", "ops.migration_history").code == 0
    assert db.query("SELECT migration_name FROM ops.migration_history") == [("001_a.sql",)]
    assert db.query("SELECT to_regclass('public.migration_history')") == [(None,)]


def test_status_reports_every_state(db: Database) -> None:
    """status --json lists applied, failed, pending, changed and unknown migrations."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate").code == 0
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int, x int);\n")
    db.write("003_bad.sql", "SELECT 1/0;\n")
    db.write("004_later.sql", "SELECT 1;\n")
    db.query("INSERT INTO migration_history (migration_name, checksum) VALUES ('099_gone.sql', 'x')")
    assert db.run("migrate").code == 3  # 002 changed: nothing applied
    db.query(
        "INSERT INTO migration_history (migration_name, success, error_message) VALUES ('003_bad.sql', false, 'boom')"
    )
    result = db.run("status", "--json")
    assert result.code == 0
    report = json.loads(result.stdout)
    states = {row["migration"]: row["state"] for row in report["migrations"]}
    assert states == {
        "001_a.sql": "applied",
        "002_b.sql": "changed",
        "003_bad.sql": "failed",
        "004_later.sql": "pending",
        "099_gone.sql": "unknown",
    }
    table = db.run("status")
    assert "003_bad.sql\n" in table.stdout
    assert "error: boom" in table.stdout


def test_baseline_marks_without_running_and_refuses_twice(db: Database) -> None:
    """baseline 2 records 001-002 without running them; a second baseline is refused (exit 3)."""
    db.write("001_a.sql", "SELECT 1/0;\n")
    db.write("002_b.sql", "SELECT 1/0;\n")
    db.write("003_c.sql", "CREATE TABLE IF NOT EXISTS c (id int);\n")
    assert db.run("baseline", "2").code == 0
    assert db.run("baseline", "2").code == 3
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_a.sql", "002_b.sql", "003_c.sql"]


def test_repair_clears_failed_rows(db: Database) -> None:
    """repair deletes success=false rows and logs each."""
    db.write("001_bad.sql", "SELECT 1/0;\n")
    assert db.run("migrate").code == 1
    result = db.run("repair")
    assert result.code == 0
    assert result.one("failed_row_cleared")["migration"] == "001_bad.sql"
    assert db.history() == []


def test_new_writes_next_numbered_template(db: Database) -> None:
    """new add_users writes 002_add_users.sql with the template header."""
    db.write("001_a.sql", CREATE_A)
    result = db.run("new", "add_users")
    assert result.code == 0
    text = (db.migrations / "002_add_users.sql").read_text()
    for header in (
        "-- Migration: 002_add_users.sql",
        "-- Author:",
        "-- Date:",
        "-- Description:",
        "START MIGRATION",
        "END MIGRATION",
    ):
        assert header in text
    assert db.run("new", "Bad-Name").code == 2


def test_validate_checks_files_and_history(db: Database) -> None:
    """validate passes good files, fails on a parse error (exit 3), and checks checksums with a database."""
    db.write("001_a.sql", CREATE_A)
    env_without_db = {k: v for k, v in db.env().items() if k != "DATABASE_URL"}
    assert db.run("validate", env=env_without_db).code == 0
    assert db.run("migrate").code == 0
    db.write("001_a.sql", CREATE_A + "-- changed\n")
    assert db.run("validate", env=env_without_db).code == 0
    assert db.run("validate").code == 3
    db.write("002_b.sql", "CREATE TABLE (;\n")
    assert db.run("validate", env=env_without_db).code == 3


def test_no_database_given_is_a_usage_error(db: Database) -> None:
    """No DATABASE_URL and no PGHOST: exit 2 and no fallback to a local database."""
    db.write("001_a.sql", CREATE_A)
    env = {k: v for k, v in db.env().items() if k != "DATABASE_URL"}
    result = db.run("migrate", env=env)
    assert result.code == 2
    assert "no database given" in result.one("run_failed")["error"]


def test_database_url_file_and_pg_variables(db: Database) -> None:
    """DATABASE_URL_FILE is read; plain libpq variables (PGHOST, PGPASSWORD, ...) work too."""
    db.write("001_a.sql", CREATE_A)
    secret_file = db.migrations.parent / "url"
    secret_file.write_text(db.url + "\n")
    env = {k: v for k, v in db.env().items() if k != "DATABASE_URL"}
    assert db.run("migrate", env={**env, "DATABASE_URL_FILE": str(secret_file)}).code == 0
    libpq = {
        **env,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(db.cluster.port),
        "PGUSER": "postgres",
        "PGPASSWORD": db.cluster.password,
        "PGDATABASE": db.name,
    }
    result = db.run("status", env=libpq)
    assert result.code == 0
    assert db.cluster.password not in result.stdout + result.stderr


def test_wrong_password_is_exit_5_without_the_password(db: Database) -> None:
    """A wrong password: exit 5 with the server's message; the password appears nowhere."""
    db.write("001_a.sql", CREATE_A)
    bad = "wrong-pass-4c1d"
    result = db.run(
        "migrate", "--connect-timeout", "1s", env=db.env(DATABASE_URL=db.cluster.url(db.name, password=bad))
    )
    assert result.code == 5
    assert "password authentication failed" in result.one("run_failed")["error"]
    assert bad not in result.stdout + result.stderr


def test_missing_database_is_exit_5(db: Database) -> None:
    """A database that does not exist: retried until --connect-timeout, then exit 5 with the server's message."""
    db.write("001_a.sql", CREATE_A)
    result = db.run("migrate", "--connect-timeout", "1s", env=db.env(DATABASE_URL=db.cluster.url("no_such_db")))
    assert result.code == 5
    assert "does not exist" in result.one("run_failed")["error"]


def test_unreachable_server_retries_until_connect_timeout(db: Database) -> None:
    """Nothing listening: retries with backoff, then exit 5 after --connect-timeout."""
    db.write("001_a.sql", CREATE_A)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = db.run(
        "migrate", "--connect-timeout", "2s", env=db.env(DATABASE_URL=f"postgresql://postgres:x@127.0.0.1:{port}/x")
    )
    elapsed = time.monotonic() - started
    assert result.code == 5
    assert result.named("connect_retry")
    assert 1.5 < elapsed < 10


def test_malformed_url_is_exit_2(db: Database) -> None:
    """A malformed DATABASE_URL is a configuration error (exit 2), its secret redacted."""
    db.write("001_a.sql", CREATE_A)
    result = db.run("migrate", env=db.env(DATABASE_URL="host=127.0.0.1 password=sekrit-7781 bogus"))
    assert result.code == 2
    assert "sekrit-7781" not in result.stdout + result.stderr


def test_no_create_privilege_is_exit_5(db: Database) -> None:
    """A role that cannot create the history table: exit 5 with the server's message."""
    db.write("001_a.sql", CREATE_A)
    db.query("CREATE ROLE weak LOGIN PASSWORD 'weak-pass-99'")
    db.query(
        f'REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE ALL ON DATABASE "{db.name}" FROM PUBLIC;'
        f' GRANT CONNECT ON DATABASE "{db.name}" TO weak'
    )
    try:
        result = db.run(
            "migrate",
            "--connect-timeout",
            "1s",
            env=db.env(DATABASE_URL=db.cluster.url(db.name, user="weak", password="weak-pass-99")),
        )
        assert result.code == 5
        assert "42501" in result.one("run_failed")["error"]
    finally:
        db.query(f'REVOKE ALL ON DATABASE "{db.name}" FROM weak; DROP ROLE weak')


def test_lock_timeout_is_exit_4_and_names_the_holder(db: Database) -> None:
    """Another session holds the advisory lock: the runner logs the holder and exits 4 at its deadline."""
    db.write("001_a.sql", CREATE_A)
    with db.connect(application_name="stuck-holder") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(db.name, "migration_history")])
        result = db.run("migrate", "--lock-wait-timeout", "1.5s")
    assert result.code == 4
    waiting = result.named("lock_waiting")
    assert waiting
    assert waiting[0]["holders"][0]["application_name"] == "stuck-holder"
    assert "stuck-holder" in result.one("run_failed")["error"]
    assert db.query("SELECT to_regclass('a')") == [(None,)]


def test_runner_waits_for_the_lock_then_finds_nothing_to_do(db: Database) -> None:
    """A runner that gets the lock after another finished finds nothing pending."""
    db.write("001_a.sql", CREATE_A)
    assert db.run("migrate").code == 0
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(db.name, "migration_history")])
        proc = db.popen("migrate")
        time.sleep(1.0)
        assert proc.poll() is None
    _, out = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_application_name_shows_the_runner(db: Database) -> None:
    """Connections carry application_name migration-runner/<version>/<HOSTNAME>."""
    db.write("001_a.sql", "SELECT pg_sleep(3);\n")
    proc = db.popen("migrate", env=db.env(HOSTNAME="web-7f9c-abcde"))
    names: list[tuple[str]] = []
    for _ in range(50):
        names = db.query(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db.name]
        )
        if len(names) >= 2:
            break
        time.sleep(0.1)
    proc.communicate(timeout=30)
    assert (f"migration-runner/{__version__}/web-7f9c-abcde",) in names


def test_sigterm_cancels_rolls_back_and_releases(db: Database) -> None:
    """SIGTERM during pg_sleep(60): exit 143 in under 5 s, lock free, no backend left, failure row."""
    db.write("001_slow.sql", "CREATE TABLE IF NOT EXISTS never (id int);\nSELECT pg_sleep(60);\n")
    proc = db.popen("migrate")
    db.backend_running("SELECT pg_sleep(60)")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, out = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert time.monotonic() - started < 5
    assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE strpos(query, 'pg_sleep(60)') > 0 AND state = 'active'"
        " AND pid <> pg_backend_pid() AND datname = %s",
        [db.name],
    ) == [(0,)]
    assert db.query("SELECT to_regclass('never')") == [(None,)]
    ((_name, success, _c, error),) = db.history()
    assert success is False
    assert "SIGTERM" in error


def test_sigkill_frees_the_lock_and_next_run_succeeds(db: Database) -> None:
    """SIGKILL mid-migration: within a few seconds the backend is gone, the lock free, and a rerun works."""
    db.write("001_slow.sql", "CREATE TABLE IF NOT EXISTS done (id int);\nSELECT pg_sleep(30);\n")
    proc = db.popen("migrate")
    db.backend_running("SELECT pg_sleep(30)")
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") != [
        (0,)
    ]:
        time.sleep(0.2)
    assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert time.monotonic() < deadline
    db.write("001_slow.sql", "CREATE TABLE IF NOT EXISTS done (id int);\nSELECT pg_sleep(30);\n".replace("30", "0"))
    assert db.run("repair").code == 0  # the edited file is a deliberate change after an unfinished run
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_slow.sql"]


def test_deadline_behaves_like_sigterm(db: Database) -> None:
    """--deadline 1s during a long statement: exit 143 soon after, rolled back, lock released."""
    db.write("001_slow.sql", "SELECT pg_sleep(60);\n")
    started = time.monotonic()
    result = db.run("migrate", "--deadline", "1s")
    assert result.code == 143
    assert time.monotonic() - started < 6
    assert "deadline" in result.one("migration_aborted")["reason"]
    assert db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


def test_python_dash_m_and_console_script_agree(db: Database) -> None:
    """`python -m runner --version` prints the version (the console script calls the same main)."""
    out = subprocess.run([sys.executable, "-m", "runner", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"migration-runner {__version__}"


@pytest.mark.parametrize("name", ['x"; DROP TABLE t; --', "Upper.Case", "a.b.c", ""])
def test_hostile_history_table_names_are_refused(db: Database, name: str) -> None:
    """History table names that are not plain identifiers are a usage error; nothing is created."""
    db.write("001_a.sql", CREATE_A)
    result = (
        db.run("migrate", "--history-table", name) if name else db.run("migrate", env=db.env(RUNNER_HISTORY_TABLE=" "))
    )
    assert result.code == 2
    assert db.query(
        "SELECT count(*) FROM pg_class WHERE relname NOT LIKE 'pg_%%' AND relnamespace = 'public'::regnamespace"
    ) == [(0,)]


def test_readonly_database_is_exit_5(db: Database) -> None:
    """default_transaction_read_only: the runner cannot create its table: exit 5."""
    db.write("001_a.sql", CREATE_A)
    db.query(f'ALTER DATABASE "{db.name}" SET default_transaction_read_only = on')
    result = db.run("migrate")
    assert result.code == 5
    assert "25006" in result.one("run_failed")["error"]


def test_connection_closed_by_server_is_exit_5(db: Database) -> None:
    """The server terminates the runner's backend mid-migration: exit 5; the next run completes."""
    db.write("001_slow.sql", "CREATE TABLE IF NOT EXISTS t (id int);\nSELECT pg_sleep(30);\n")
    proc = db.popen("migrate")
    db.query("SELECT pg_terminate_backend(%s)", [db.backend_running("SELECT pg_sleep(30)")])
    _, out = proc.communicate(timeout=30)
    assert proc.returncode == 5, out
    assert db.query("SELECT to_regclass('t')") == [(None,)]
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_failure_without_position_is_located_without_replay(db: Database) -> None:
    """A failure without a position names its line, and nothing ran twice (a sequence advanced once)."""
    db.query("CREATE SEQUENCE side_effect")
    db.write(
        "001_a.sql",
        "CREATE TABLE IF NOT EXISTS replayed (id int);\nINSERT INTO replayed VALUES (1);\n"
        "SELECT nextval('side_effect');\nSELECT 1/0;\n",
    )
    result = db.run("migrate")
    assert result.code == 1
    failed = result.one("migration_failed")
    assert failed["sqlstate"] == "22012"
    assert failed["line"] == 4
    assert db.query("SELECT to_regclass('replayed')") == [(None,)]
    assert db.query("SELECT last_value FROM side_effect") == [(1,)]


def test_statement_timeout_is_reported_without_replay(db: Database) -> None:
    """A statement_timeout (57014) fails the migration at once, rolled back, and is never replayed."""
    db.write(
        "001_a.sql",
        "-- runner: statement-timeout=300ms\nCREATE TABLE IF NOT EXISTS slow (id int);\nSELECT pg_sleep(5);\n",
    )
    started = time.monotonic()
    result = db.run("migrate")
    assert result.code == 1
    assert time.monotonic() - started < 4
    assert result.one("migration_failed")["sqlstate"] == "57014"
    assert db.query("SELECT to_regclass('slow')") == [(None,)]
