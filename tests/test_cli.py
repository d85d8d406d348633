"""The command line as people and scripts use it: stdout/stderr, per-command options, the console
format, progress, fail-fast checks, repair, status, versions past 999, rehearse's report."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from runner.lock import keys
from tests.conftest import Database, parse_events
from tests.pgcluster import free_port

CREATE_A = "CREATE TABLE IF NOT EXISTS a (id int);\n"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_on_a_terminal(db: Database, *args: str, env: dict[str, str], seconds: float = 60) -> tuple[int, str]:
    """Run the runner with stdout and stderr on a pseudo-terminal; (exit code, everything it wrote)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*db.command(), *args], env=env, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_results_go_to_stdout_and_logs_to_stderr(db: Database) -> None:
    """new prints only the path, status only its table, status --json only JSON, migrate nothing."""
    db.write("001_a.sql", CREATE_A)
    new = db.run("new", "add_users")
    assert new.stdout.strip() == str(db.migrations / "002_add_users.sql")
    assert new.named("run_finished")
    Path(new.stdout.strip()).write_text(CREATE_A.replace(" a ", " users "))
    migrated = db.run("migrate")
    assert (migrated.code, migrated.stdout) == (0, "")
    assert parse_events(migrated.stderr)[-1]["event"] == "run_finished"
    table = db.run("status")
    assert table.stdout.splitlines()[0].startswith("VERSION")
    assert not parse_events(table.stdout)
    report = json.loads(db.run("status", "--json").stdout)
    assert report["counts"]["applied"] == 2


def test_each_command_lists_and_accepts_only_its_own_options(db: Database) -> None:
    """new --help shows no metrics or rehearse options; a foreign option is exit 2."""
    new_help = db.run("new", "--help").stdout
    assert "--migrations-dir" in new_help
    assert "--pushgateway-url" not in new_help
    assert "--from-url" not in new_help
    assert "--pushgateway-url" in db.run("migrate", "--help").stdout
    assert "--from-url" in db.run("rehearse", "--help").stdout
    for args in (("lint", "--from-url", "x"), ("status", "--target", "3"), ("new", "x", "--lock-key", "1")):
        result = db.run(*args)
        assert result.code == 2, args
        assert "unrecognized arguments" in result.stderr


def test_console_format_is_short_readable_and_plain_off_a_terminal(db: Database) -> None:
    """--log-format console: short lines, no run id or full checksum, the error on a line of its own, no colour."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "SELECT 1/0;\n")
    result = db.run("migrate", env=db.env(RUNNER_LOG_FORMAT="console"))
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert not ANSI.search(result.stderr)
    assert max(len(line) for line in lines if "migrations_dir=" not in line) < 120, result.stderr
    assert "run_id" not in result.stderr
    assert "{'" not in result.stderr
    checksum = db.history()[0][2]
    assert checksum not in result.stderr
    assert checksum[:12] in result.stderr
    failed = next(i for i, line in enumerate(lines) if "FAILED" in line and "002_b.sql" in line)
    assert "ERROR" in lines[failed]
    assert lines[failed + 1].strip() == "SQLSTATE 22012: division by zero (line 1)"


def test_colour_and_a_live_progress_line_only_on_a_terminal_and_never_with_no_color(db: Database) -> None:
    """At a terminal: colour, console format by default, a live progress line; NO_COLOR removes the colour."""
    db.write("001_a.sql", "SELECT pg_sleep(2.5);\n")
    env = {k: v for k, v in db.env().items() if k != "RUNNER_LOG_FORMAT"}
    code, out = run_on_a_terminal(db, "migrate", env=env)
    assert code == 0, out
    assert ANSI.search(out)
    assert "\r" in out
    assert "running  001_a.sql" in out
    assert "{" not in out  # not JSON
    db.write("002_b.sql", CREATE_A)
    code, out = run_on_a_terminal(db, "migrate", env={**env, "NO_COLOR": "1"})
    assert code == 0, out
    assert not ANSI.search(out)
    assert "applied  002_b.sql" in out


def test_progress_reports_what_a_long_migration_waits_on(db: Database) -> None:
    """A CREATE INDEX CONCURRENTLY held up by an old transaction past lock_timeout: it waits (its wait blocks
    no one), and migration_progress names its phase."""
    db.query("CREATE TABLE big (id int); INSERT INTO big SELECT generate_series(1, 1000)")
    db.write("001_a.sql", "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_id ON big (id);\n")
    with db.connect() as blocker:
        blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT count(*) FROM big")
        proc = db.popen("migrate")
        deadline = time.monotonic() + 30
        while not db.query(
            "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid)"
            " WHERE a.datname = %s",
            [db.name],
        )[0][0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(6)
        blocker.execute("ROLLBACK")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    progress = [e for e in parse_events(err) if e["event"] == "migration_progress"]
    assert progress
    assert progress[0]["phase"].startswith("create_index: waiting for")
    assert progress[0]["elapsed_ms"] >= 4000
    assert progress[0]["line"] == 1
    assert not [e for e in parse_events(err) if e["event"] == "ddl_lock_retry"]  # no lock_timeout threw it away


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:secret-pw-1@127.0.0.1:notaport/app", "host=127.0.0.1 port=", "host=127.0.0.1 port=99999"],
)
def test_a_url_libpq_cannot_use_is_exit_2_at_once(db: Database, url: str) -> None:
    """A malformed URL or port is exit 2 in well under the connect timeout, naming the problem."""
    db.write("001_a.sql", CREATE_A)
    started = time.monotonic()
    result = db.run("migrate", env=db.env(DATABASE_URL=url, RUNNER_CONNECT_TIMEOUT="60s"))
    assert result.code == 2
    assert time.monotonic() - started < 10
    assert "port" in result.stderr
    assert "secret-pw-1" not in result.stdout + result.stderr


def test_a_syntax_error_is_exit_3_even_with_the_database_down(db: Database) -> None:
    """Every file is parsed before the first connection retry: a syntax error is exit 3, not 5, at once."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE oops (;\n")
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    result = db.run("migrate", env=db.env(DATABASE_URL=down, RUNNER_CONNECT_TIMEOUT="30s"))
    assert result.code == 3
    assert time.monotonic() - started < 10
    assert "002_b.sql:1: syntax error" in result.one("run_failed")["error"]


def test_a_syntax_error_is_exit_3_before_waiting_for_a_held_lock(db: Database) -> None:
    """With the lock held elsewhere, a syntax error in any file ends the run at once (exit 3), not at the timeout."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE oops (;\n")
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [_public_key(db)])
        started = time.monotonic()
        result = db.run("migrate", "--lock-wait-timeout", "60s")
    assert result.code == 3
    assert time.monotonic() - started < 10
    assert "002_b.sql:1: syntax error" in result.one("run_failed")["error"]


def test_exit_4_reports_how_long_it_waited(db: Database) -> None:
    """run_finished after a lock timeout says how long the run waited for the lock."""
    db.write("001_a.sql", CREATE_A)
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [_public_key(db)])
        result = db.run("migrate", "--lock-wait-timeout", "2s")
    assert result.code == 4
    assert 1500 <= result.one("run_finished")["lock_wait_ms"] <= 5000


def _public_key(db: Database) -> int:
    return keys(db.name, "public", "migration_history", None)[0]


def test_repair_dry_run_one_file_and_nothing_to_repair(db: Database) -> None:
    """repair --dry-run changes nothing; repair FILE touches that file only; then it says nothing is left."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate").code == 0
    old = {name: checksum for name, _s, checksum, _e in db.history()}
    db.write("001_a.sql", CREATE_A + "-- reformatted\n")
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int); -- reformatted\n")
    dry = db.run("repair", "--dry-run")
    accepted = {e["migration"]: e for e in dry.named("checksum_accepted")}
    assert set(accepted) == {"001_a.sql", "002_b.sql"}
    assert accepted["001_a.sql"]["old_checksum"] == old["001_a.sql"]
    assert accepted["001_a.sql"]["dry_run"] is True
    assert {name: checksum for name, _s, checksum, _e in db.history()} == old
    one = db.run("repair", str(db.migrations / "001_a.sql"))
    assert [e["migration"] for e in one.named("checksum_accepted")] == ["001_a.sql"]
    assert db.run("migrate").code == 3  # 002 still changed
    assert db.run("repair", "002_b.sql").code == 0
    nothing = db.run("repair")
    assert nothing.code == 0
    assert nothing.named("nothing_to_repair")
    assert db.run("repair", "009_nope.sql").code == 2


def test_status_shows_when_by_whom_how_long_and_which_runner(db: Database) -> None:
    """status --json and the table carry applied_at, applied_by, duration and runner version; failed rows their error."""
    db.write("001_a.sql", CREATE_A)
    db.write("002_b.sql", "SELECT 1/0;\n")
    assert db.run("migrate").code == 1
    rows = {r["migration"]: r for r in json.loads(db.run("status", "--json").stdout)["migrations"]}
    applied = rows["001_a.sql"]
    assert applied["applied_at"].startswith(time.strftime("%Y-", time.gmtime()))
    assert applied["applied_by"] == "postgres"
    assert isinstance(applied["duration_ms"], int)
    assert applied["runner_version"]
    assert rows["002_b.sql"]["state"] == "failed"
    assert "division by zero" in rows["002_b.sql"]["error"]
    table = db.run("status").stdout
    assert "postgres" in table
    assert "error: SQLSTATE 22012: division by zero" in table


def test_versions_go_past_999(db: Database) -> None:
    """999_x.sql is followed by 1000_x.sql: new counts on, migrate applies in numeric order."""
    for version in range(1, 1000):
        db.write(f"{version:03d}_m.sql", "SELECT 1;\n")
    assert db.run("migrate").code == 0
    created = Path(db.run("new", "after_999").stdout.strip())
    assert created.name == "1000_after_999.sql"
    created.write_text(CREATE_A)
    result = db.run("migrate")
    assert result.code == 0
    assert result.one("migration_applied")["migration"] == "1000_after_999.sql"
    assert db.applied()[-2:] == ["999_m.sql", "1000_after_999.sql"]


def test_rehearse_schema_only_runs_only_what_is_pending_and_reports_table_locks(db: Database) -> None:
    """rehearse --schema-only copies the history rows too; a plain UPDATE reports RowExclusive, not Exclusive."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, active boolean);\n")
    db.write("002_b.sql", "INSERT INTO users SELECT g, false FROM generate_series(1, 20000) g;\n")
    assert db.run("migrate").code == 0
    db.write("003_c.sql", "UPDATE users SET active = true;\n")
    env = db.env(RUNNER_FROM_URL=db.url, RUNNER_PG_BIN=str(db.cluster.bindir))
    for extra in ((), ("--schema-only",)):
        result = db.run("rehearse", "--format", "json", *extra, env=env)
        assert result.code == 0, result.stderr
        report = {r["migration"]: r for r in json.loads(result.stdout)}
        assert set(report) == {"003_c.sql"}, extra
        assert report["003_c.sql"]["locks"]["public.users"] == "RowExclusiveLock"


@pytest.mark.parametrize("columns", [None, "60", "200", "abc", "-5"])
def test_help_is_laid_out_as_argparse_lays_it_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], columns: str | None
) -> None:
    """The formatter that spares every run the import of shutil sizes help as argparse's own does."""
    import argparse  # noqa: PLC0415

    from runner import cli  # noqa: PLC0415

    def help_text(*args: str) -> str:
        with pytest.raises(SystemExit):
            cli.main([*args, "--help"])
        return capsys.readouterr().out

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    for command in (("lint",), ("migrate",), ()):
        ours = help_text(*command)
        with monkeypatch.context() as stock:
            stock.setattr(cli, "Formatter", argparse.HelpFormatter)
            assert help_text(*command) == ours
