"""Exactly once, whatever a file does: each finding of the hostile review, provoked for real.

Each test here failed on the runner as it was (0.1.0, commit 9be90ba) and passes now.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from runner import execute, history, lock
from runner.discover import analyse, discover
from runner.errors import ExitCode, Interrupted, MigrationFailed
from tests.conftest import Database, parse_events

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parent.parent
RELEASE_0_1_0 = "9be90ba"  # the last commit of 0.1.0
BOOTSTRAP = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(getattr(f, '__module__', ''))"
    " and 'editable' not in type(f).__module__]\n"
    "sys.path.insert(0, sys.argv.pop(1))\n"
    "from runner.cli import entry\n"
    "entry()\n"
)


def runner_session(db: Database) -> execute.Session:
    return execute.Session(execute.Timeouts(lock=5.0, statement=0.0))


@pytest.fixture
def work(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """A work connection as the runner opens it (autocommit, no auto-prepare, UTF-8, scs on)."""
    with db.connect(prepare_threshold=None, client_encoding="UTF8") as conn:
        conn.execute("SET standard_conforming_strings = on")
        yield conn


def apply_file(conn: psycopg.Connection[Any], db: Database, name: str, sql: str) -> execute.Attempt:
    db.write(name, sql)
    (migration,) = [m for m in discover(db.migrations) if m.name == name]
    table = history.Table("public", "migration_history")
    with db.connect() as runner_conn:
        history.ensure(runner_conn, table)
    attempt = execute.Attempt()
    execute.apply(conn, migration, analyse(migration), table, runner_session(db), attempt, lambda _a: None, 1.0)
    return attempt


def test_every_migration_starts_from_a_clean_session(db: Database, work: psycopg.Connection[Any]) -> None:
    """Settings, role, temp tables, prepared statements, listeners and timeouts do not leak into the next file."""
    owner = f"other_{db.name}"
    db.query(f"CREATE ROLE {owner}; GRANT CREATE ON SCHEMA public TO {owner}")
    dirty = (
        f"SET lock_timeout = 0;\nSET search_path = pg_catalog;\nSET ROLE {owner};\n"
        "CREATE TEMP TABLE leftover (id int);\nPREPARE leaked AS SELECT 1;\nLISTEN leaked_channel;\n"
        "SELECT set_config('statement_timeout', '1h', false);\n"
    )
    apply_file(work, db, "001_dirty.sql", dirty)
    probe = (
        "CREATE TABLE public.seen AS SELECT current_setting('lock_timeout') AS lock_timeout,"
        " current_setting('statement_timeout') AS statement_timeout, current_setting('search_path') AS search_path,"
        " current_user::text AS who, (SELECT count(*) FROM pg_prepared_statements) AS prepared,"
        " (SELECT count(*) FROM pg_listening_channels()) AS listening,"
        " to_regclass('pg_temp.leftover') IS NULL AS temp_gone;\n"
    )
    apply_file(work, db, "002_probe.sql", probe)
    assert db.query("SELECT * FROM seen") == [("5s", "0", '"$user", public', "postgres", 0, 0, True)]
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'seen'") == [("postgres",)]
    assert [row[0] for row in db.query("SELECT migration_name FROM public.migration_history")] == [
        "001_dirty.sql",
        "002_probe.sql",
    ]


def test_history_row_lands_in_the_resolved_table_whatever_the_search_path(db: Database) -> None:
    """SET search_path to a schema with its own migration_history: the row still lands in public, once."""
    db.query(
        "CREATE SCHEMA billing; CREATE TABLE billing.migration_history (id serial, migration_name varchar(255)"
        " UNIQUE NOT NULL, applied_at timestamptz, applied_by varchar(100), execution_time_ms int,"
        " success boolean DEFAULT true, error_message text)"
    )
    db.write("001_billing.sql", "SET search_path = billing, public;\nCREATE TABLE IF NOT EXISTS invoices (id int);\n")
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_billing.sql"]
    assert db.query("SELECT count(*) FROM billing.migration_history") == [(0,)]
    second = db.run("migrate")
    assert (second.code, second.one("run_finished")["applied"]) == (0, 0)
    assert db.run("wait", "--wait-timeout", "5s").code == 0


@pytest.mark.parametrize(
    "body",
    [
        (
            "CREATE TEMP TABLE migration_history (migration_name text UNIQUE, execution_time_ms int, success bool,"
            " error_message text, checksum text, runner_version text);\nCREATE TABLE IF NOT EXISTS a (id int);\n"
        ),
        "SELECT pg_catalog.set_config('search_path', '', false);\nCREATE TABLE IF NOT EXISTS public.a (id int);\n",
    ],
    ids=["temp-table-shadow", "pg-dump-style"],
)
def test_temp_tables_and_empty_search_path_cannot_shadow_the_history(db: Database, body: str) -> None:
    """A temp table named like the history, or pg_dump's empty search_path, changes nothing."""
    db.write("001_a.sql", body)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS public.b (id int);\n")
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_a.sql", "002_b.sql"]
    assert db.run("migrate").one("run_finished")["applied"] == 0


def test_two_spellings_of_the_table_are_one_lock(db: Database) -> None:
    """migration_history and public.migration_history started together: the data migration runs once."""
    db.query("CREATE TABLE side (n int)")
    db.write("001_data.sql", "SELECT pg_sleep(1);\nINSERT INTO side VALUES (1);\n")
    procs = [
        db.popen("migrate", env=db.env(RUNNER_HISTORY_TABLE=table))
        for table in ("migration_history", "public.migration_history")
    ]
    assert [proc.communicate(timeout=60) and proc.returncode for proc in procs] == [0, 0]
    assert db.query("SELECT count(*) FROM side") == [(1,)]
    with db.connect() as conn:
        bare = history.resolve(conn, None, "migration_history")
    assert lock.keys(db.name, bare.schema, bare.name, None) == lock.keys(db.name, "public", "migration_history", None)


@pytest.fixture(scope="session")
def release_0_1_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.1.0 source tree, from this repository's own git history."""
    target = tmp_path_factory.mktemp("release-0.1.0")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", RELEASE_0_1_0, "runner"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot read 0.1.0 from git history: {archive.stderr.decode()}")
        pytest.skip("not a git checkout with the 0.1.0 history")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def test_runners_of_this_release_and_of_0_1_0_apply_each_file_once(db: Database, release_0_1_0: Path) -> None:
    """A rolling upgrade: 0.1.0 and this release started together on one database double-apply nothing."""
    db.query("CREATE TABLE side (migration text)")
    for version in range(1, 6):
        db.write(f"{version:03d}_m.sql", f"SELECT pg_sleep(0.2);\nINSERT INTO side VALUES ('{version:03d}');\n")
    old = [sys.executable, "-c", BOOTSTRAP, str(release_0_1_0), "migrate"]
    procs = [
        subprocess.Popen(argv, env=db.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in (old, [*db.command(), "migrate"], old, [*db.command(), "migrate"])
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    versions = {
        json["runner_version"] for out, _ in outputs[::2] for json in parse_events(out) if "runner_version" in json
    }
    assert versions == {"0.1.0"}
    assert db.query("SELECT migration, count(*) FROM side GROUP BY 1 ORDER BY 1") == [
        (f"{v:03d}", 1) for v in range(1, 6)
    ]


def test_a_file_that_sets_lock_timeout_0_does_not_unbound_the_next(db: Database) -> None:
    """001 sets lock_timeout = 0 (or RESET ALL): 002 behind a reader still fails fast and retries."""
    db.query("CREATE TABLE busy (id int)")
    db.write("001_a.sql", "SET lock_timeout = 0;\nRESET ALL;\nSET lock_timeout = 0;\n")
    db.write("002_b.sql", "ALTER TABLE busy ADD COLUMN IF NOT EXISTS note text;\n")
    with db.connect() as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM busy")
        proc = db.popen("migrate", env=db.env(RUNNER_DDL_LOCK_TIMEOUT="300ms", RUNNER_DDL_LOCK_RETRIES="2"))
        _, err = proc.communicate(timeout=60)
        reader.execute("ROLLBACK")
    events = parse_events(err)
    assert proc.returncode == 1
    assert [e["attempt"] for e in events if e["event"] == "ddl_lock_retry"] == [1, 2]
    assert next(e for e in events if e["event"] == "migration_failed")["sqlstate"] == "55P03"


def test_set_role_in_one_file_changes_neither_the_next_owner_nor_the_history_writer(db: Database) -> None:
    """After SET ROLE in 001, 002's table belongs to the runner's role, and the history is written."""
    weak = f"weak_{db.name}"
    db.query(f"CREATE ROLE {weak} NOLOGIN; GRANT CREATE ON SCHEMA public TO {weak}")
    db.write("001_a.sql", f"SET ROLE {weak};\n")
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS owned (id int);\n")
    assert db.run("migrate").code == 0
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'") == [("postgres",)]
    assert db.applied() == ["001_a.sql", "002_b.sql"]


def test_role_option_makes_a_dedicated_role_own_the_objects(db: Database) -> None:
    """--role app_owner: every file runs as that role; the history is still written by the runner."""
    owner = f"owner_{db.name}"
    db.query(f"CREATE ROLE {owner} NOLOGIN; GRANT CREATE ON SCHEMA public TO {owner}")
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS owned (id int);\n")
    db.write("002_b.sql", "CREATE INDEX CONCURRENTLY IF NOT EXISTS owned_id ON owned (id);\n")
    assert db.run("migrate", "--role", owner).code == 0
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'") == [(owner,)]
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'migration_history'") == [("postgres",)]
    assert db.applied() == ["001_a.sql", "002_b.sql"]


def test_wait_agrees_with_migrate_about_an_edited_file(db: Database) -> None:
    """An applied file edited afterwards: migrate refuses (exit 3), and so does wait, at once."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    assert db.run("migrate").code == 0
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id bigint);\n")
    assert db.run("migrate").code == 3
    started = time.monotonic()
    waited = db.run("wait", "--wait-timeout", "30s")
    assert waited.code == 3
    assert time.monotonic() - started < 10
    assert "checksum changed" in waited.one("run_failed")["error"]


def test_a_renamed_file_is_a_reused_version(db: Database) -> None:
    """002 applied, then renamed with the same content: exit 3 naming both; repair accepts; nothing runs twice."""
    db.query("CREATE TABLE prices (n int)")
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    db.write("002_backfill_prices.sql", "INSERT INTO prices VALUES (1);\n")
    assert db.run("migrate").code == 0
    (db.migrations / "002_backfill_prices.sql").rename(db.migrations / "002_backfill_token_prices.sql")
    refused = db.run("migrate")
    assert refused.code == 3
    error = refused.one("run_failed")["error"]
    assert "002_backfill_token_prices.sql" in error
    assert "002_backfill_prices.sql" in error
    assert db.run("wait", "--wait-timeout", "5s").code == 3
    dry = db.run("repair", "--dry-run")
    assert dry.code == 0
    assert dry.one("rename_accepted")["recorded_as"] == "002_backfill_prices.sql"
    assert db.run("migrate").code == 3
    assert db.run("repair", "002_backfill_token_prices.sql").code == 0
    again = db.run("migrate")
    assert (again.code, again.one("run_finished")["applied"]) == (0, 0)
    assert db.query("SELECT count(*) FROM prices") == [(1,)]
    assert db.applied() == ["001_a.sql", "002_backfill_token_prices.sql"]


@pytest.mark.parametrize(
    "body",
    [
        "CREATE TABLE IF NOT EXISTS a (id int)\n\n-- ==== END MIGRATION ====\n",
        "CREATE TABLE IF NOT EXISTS a (id int) -- note\n;\n",
        "CREATE TABLE IF NOT EXISTS a (id int) -- no newline at the end",
    ],
    ids=["trailing-comment-line", "comment-before-semicolon", "comment-at-eof"],
)
def test_trailing_comments_never_swallow_a_separator(db: Database, body: str) -> None:
    """Files that psql -f runs apply too: the server gets the file's own text, not a re-joined one."""
    db.write("001_a.sql", body)
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate").code == 0
    assert db.applied() == ["001_a.sql", "002_b.sql"]


def test_standard_conforming_strings_off_cannot_split_a_file_differently(db: Database) -> None:
    """With scs off as the database default, a COMMIT inside a string literal stays inside it: atomic."""
    db.query(f'ALTER DATABASE "{db.name}" SET standard_conforming_strings = off')
    db.write(
        "001_a.sql",
        "CREATE TABLE side (a text, b text);\n"
        "INSERT INTO side SELECT 'a\\' AS x, '; COMMIT; SELECT ' AS y --'\n;\n"
        "SELECT 1/0;\n",
    )
    result = db.run("migrate")
    assert result.code == 1
    assert result.one("migration_failed")["line"] == 4
    assert db.query("SELECT to_regclass('side')") == [(None,)]


def test_a_statement_that_turns_scs_off_stops_a_non_transactional_file(db: Database) -> None:
    """In autocommit, SET standard_conforming_strings = off would change how later statements are split: refused."""
    db.write(
        "001_a.sql",
        "-- runner: no-transaction\nSET standard_conforming_strings = off;\nCREATE TABLE IF NOT EXISTS t (a text);\n",
    )
    result = db.run("migrate")
    assert result.code == 1
    failed = result.one("migration_failed")
    assert "standard_conforming_strings = off" in failed["error"]
    assert failed["line"] == 3
    assert db.query("SELECT to_regclass('t')") == [(None,)]


@pytest.mark.parametrize("copy", ["COPY a FROM STDIN;", "COPY a TO STDOUT;"])
def test_copy_to_or_from_the_client_is_exit_3_before_anything_runs(db: Database, copy: str) -> None:
    """COPY FROM STDIN / TO STDOUT cannot be served: validate and migrate say so (exit 3), naming file and line."""
    db.write("001_a.sql", f"CREATE TABLE IF NOT EXISTS a (id int);\n{copy}\n")
    for command in ("validate", "migrate"):
        result = db.run(command)
        assert result.code == 3
        assert "001_a.sql:2: COPY ... " in result.one("run_failed")["error"]
    assert db.query("SELECT to_regclass('a')") == [(None,)]


def test_a_lock_on_the_history_table_bounds_migrate_and_wait(db: Database) -> None:
    """LOCK TABLE migration_history held elsewhere: migrate exits 4 and wait 6, each about on time, naming it."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    assert db.run("migrate").code == 0
    with db.connect(application_name="table-locker") as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE migration_history IN ACCESS EXCLUSIVE MODE")
        for command, option, code in (("migrate", "--lock-wait-timeout", 4), ("wait", "--wait-timeout", 6)):
            started = time.monotonic()
            result = db.run(command, option, "3s", timeout=30)
            elapsed = time.monotonic() - started
            assert result.code == code, result.stderr
            assert elapsed < 3 + 2.5, (command, elapsed)
            assert "table-locker" in result.one("run_failed")["error"]
        waiting = [e for e in parse_events(result.stderr) if e["event"] == "history_table_waiting"]
        assert waiting
        assert waiting[0]["holders"][0]["application_name"] == "table-locker"
        locker.execute("ROLLBACK")


def test_failed_concurrent_index_in_an_unlisted_schema_is_rebuilt_valid(db: Database) -> None:
    """A failed unique CIC on app.t (app not on search_path) is dropped and rebuilt VALID on the next run."""
    db.query("CREATE SCHEMA app; CREATE TABLE app.t (code int); INSERT INTO app.t VALUES (1), (1)")
    db.write("001_a.sql", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_code_uq ON app.t (code);\n")
    assert db.run("migrate").code == 1
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.t_code_uq'::regclass") == [(False,)]
    db.query("DELETE FROM app.t WHERE ctid = (SELECT max(ctid) FROM app.t)")
    result = db.run("migrate")
    assert result.code == 0
    assert result.one("invalid_index_dropped")["index"] == "app.t_code_uq"
    assert db.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.t_code_uq'::regclass") == [(True,)]


def test_an_unnamed_concurrent_index_leaves_no_invalid_twin(db: Database) -> None:
    """A failed unnamed unique CIC, retried after the data is fixed: exactly one index, VALID."""
    db.query("CREATE TABLE t (code int); INSERT INTO t VALUES (1), (1)")
    db.write("001_a.sql", "CREATE UNIQUE INDEX CONCURRENTLY ON t (code);\n")
    assert db.run("migrate").code == 1
    db.query("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t)")
    assert db.run("migrate").code == 0
    assert db.query("SELECT indisvalid FROM pg_index WHERE indrelid = 't'::regclass") == [(True,)]


def test_results_are_neither_decoded_nor_accumulated(db: Database) -> None:
    """A value the client could not decode ('infinity'::date) and a large diagnostic SELECT: applied, no traceback."""
    db.write(
        "001_a.sql",
        "SELECT 'infinity'::date, 'NaN'::numeric;\nSELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;\n",
    )
    result = db.run("migrate")
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.one("run_finished")["applied"] == 1


def test_runner_comment_in_a_function_body_is_just_a_comment(db: Database) -> None:
    """`-- runner: no-transaction` inside $$ and an ordinary `-- runner:` remark mid-file change nothing."""
    db.write(
        "001_a.sql",
        "CREATE TABLE IF NOT EXISTS a (id int);\n"
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n-- runner: no-transaction\nSELECT 1\n$$;\n"
        "-- runner: called by the nightly job\nSELECT f();\n",
    )
    result = db.run("migrate")
    assert result.code == 0
    assert not result.named("migration_autocommit")


def test_sigterm_after_the_server_committed_is_recorded_as_applied(db: Database) -> None:
    """The runner is stopped while the server commits; SIGTERM then: logged and counted as applied, exit 0."""
    db.write("001_a.sql", "SELECT pg_sleep(1);\nCREATE TABLE IF NOT EXISTS a (id int);\n")
    proc = db.popen("migrate")
    db.backend_running("SELECT pg_sleep(1)")
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 20
    while db.query("SELECT to_regclass('migration_history') IS NOT NULL")[0][0] and not db.applied():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert db.applied() == ["001_a.sql"]
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    events = parse_events(err)
    names = [e["event"] for e in events]
    assert "migration_applied" in names
    assert "migration_failed" not in names
    assert proc.returncode == 0
    assert events[-1]["applied"] == 1
    assert db.history()[0][1] is True


def test_sighup_is_handled_like_sigterm(db: Database) -> None:
    """SIGHUP cancels the running statement, rolls back, records it, frees the lock: exit 129."""
    db.write("001_slow.sql", "CREATE TABLE IF NOT EXISTS never (id int);\nSELECT pg_sleep(60);\n")
    proc = db.popen("migrate")
    db.backend_running("SELECT pg_sleep(60)")
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=30)
    assert proc.returncode == 129
    assert db.query("SELECT to_regclass('never')") == [(None,)]
    assert db.advisory_locks() == 0


def test_lock_key_out_of_range_is_a_usage_error(db: Database) -> None:
    """--lock-key beyond signed 64 bits is exit 2 naming the option, before connecting."""
    result = db.run("migrate", "--lock-key", str(2**63))
    assert result.code == 2
    assert "--lock-key" in result.stderr


def test_select_only_privilege_on_the_history_table_is_exit_5(db: Database) -> None:
    """A runner role that can read but not write the history table: exit 5, nothing left applied."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    db.write("002_b.sql", "CREATE TABLE IF NOT EXISTS b (id int);\n")
    assert db.run("migrate", "--target", "1").code == 0
    reader = f"reader_{db.name}"
    db.query(
        f"CREATE ROLE {reader} LOGIN PASSWORD 'reader-pass-1'; GRANT CREATE, USAGE ON SCHEMA public TO {reader};"
        f" GRANT SELECT ON migration_history TO {reader}"
    )
    url = db.cluster.url(db.name, user=reader, password="reader-pass-1")
    result = db.run("migrate", env=db.env(DATABASE_URL=url))
    assert result.code == 5, result.stderr
    assert db.query("SELECT to_regclass('b')") == [(None,)]


@pytest.mark.parametrize("sink", ["closed-pipe", "full-device"])
def test_a_closed_or_full_stdout_never_leaves_a_traceback_or_a_lock(db: Database, sink: str) -> None:
    """status | head -1, and status > /dev/full: no traceback, no advisory lock left, a non-zero exit when lost."""
    for version in range(1, 40):
        db.write(f"{version:03d}_m.sql", "SELECT 1;\n")
    assert db.run("migrate").code == 0
    if sink == "full-device":
        with Path("/dev/full").open("w") as full:
            proc = subprocess.run(
                [*db.command(), "status"], env=db.env(), stdout=full, stderr=subprocess.PIPE, text=True
            )
        assert proc.returncode == 2
        err = proc.stderr
    else:
        with subprocess.Popen(
            [*db.command(), "status"], env=db.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            proc.stdout.readline()
            proc.stdout.close()
            err = proc.stderr.read()
            proc.wait(timeout=30)
    assert "Traceback" not in err
    assert db.advisory_locks() == 0


def test_a_fifo_named_like_a_migration_is_exit_3_without_hanging(db: Database) -> None:
    """validate with a FIFO 001_a.sql: exit 3 at once, naming it."""
    os.mkfifo(db.migrations / "001_a.sql")
    result = db.run("validate", timeout=20)
    assert result.code == 3
    assert "not a regular file" in result.one("run_failed")["error"]


def test_a_trigger_that_swallows_the_history_row_fails_the_migration(
    db: Database, work: psycopg.Connection[Any]
) -> None:
    """If no history row is written (a BEFORE trigger returns NULL), the migration rolls back: never applied unrecorded."""
    db.write("000_placeholder.sql", "SELECT 1;\n")
    table = history.Table("public", "migration_history")
    with db.connect() as conn:
        history.ensure(conn, table)
        conn.execute(
            "CREATE FUNCTION swallow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
            " CREATE TRIGGER swallow BEFORE INSERT ON migration_history FOR EACH ROW EXECUTE FUNCTION swallow()"
        )
    (db.migrations / "000_placeholder.sql").unlink()
    with capture_logs() as logs, pytest.raises(MigrationFailed, match="no history row was written"):
        apply_file(work, db, "001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\n")
    assert db.query("SELECT to_regclass('a')") == [(None,)]
    assert logs == []


def test_progress_ticks_report_the_running_statement(db: Database, work: psycopg.Connection[Any]) -> None:
    """While a file runs, the executor ticks; in autocommit it knows which statement is running."""
    seen: list[int | None] = []

    def tick(attempt: execute.Attempt) -> None:
        seen.append(attempt.statement.line if attempt.statement else None)

    db.write(
        "001_a.sql", "-- runner: no-transaction\nCREATE TABLE IF NOT EXISTS a (id int);\n\nSELECT pg_sleep(0.6);\n"
    )
    (migration,) = discover(db.migrations)
    table = history.Table("public", "migration_history")
    with db.connect() as conn:
        history.ensure(conn, table)
    attempt = execute.Attempt()
    execute.apply(work, migration, analyse(migration), table, runner_session(db), attempt, tick, 0.1)
    assert attempt.committed
    assert len(seen) >= 3
    assert set(seen) == {4}


def test_an_interrupt_cancels_on_the_server_and_tells_whether_it_committed(
    db: Database, work: psycopg.Connection[Any]
) -> None:
    """An Interrupted raised while waiting cancels the statement; the attempt says not committed."""
    db.write("001_a.sql", "CREATE TABLE IF NOT EXISTS a (id int);\nSELECT pg_sleep(30);\n")
    (migration,) = discover(db.migrations)
    table = history.Table("public", "migration_history")
    with db.connect() as conn:
        history.ensure(conn, table)
    attempt = execute.Attempt()
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGUSR1))

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted("SIGUSR1", ExitCode.SIGTERM)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            execute.apply(work, migration, analyse(migration), table, runner_session(db), attempt, lambda _a: None, 0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 10
    assert not attempt.committed
    execute.rollback(work)
    assert db.query("SELECT to_regclass('a')") == [(None,)]
