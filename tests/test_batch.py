"""Batched data files (``-- runner: batch``): refusals, resume after kills, throttling, progress, verify.

Every database test runs the real runner against a real PostgreSQL; random kills use fixed seeds.
Throttling tests assert what the runner decided (the sizes and pauses in its events), not wall-clock times.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pglast import parse_sql

from runner import batch, history, lock
from runner.discover import BatchOptions, analyse, discover
from runner.errors import ValidationError
from tests.conftest import PG_MAJOR, Database, Result, parse_events
from tests.pgcluster import SERVER_USER, Cluster, free_port, running
from tests.test_exactly_once import BOOTSTRAP, release_0_1_0  # noqa: F401 - the fixture is used by name
from tests.test_faults import settle

HEADER = "-- Migration: {name}\n-- Author: t\n-- Date: 2026-12-02\n-- Description: backfill\n"


def rows_table(db: Database, count: int, key: str = "id int PRIMARY KEY", fill: str = "g") -> None:
    """A table t of ``count`` rows with a counter n = 0 (the statement under test adds 1)."""
    db.query(f"CREATE TABLE t ({key}, n int NOT NULL DEFAULT 0, bad int NOT NULL DEFAULT 1)")
    columns = key.split(" ", 1)[0]
    db.query(f"INSERT INTO t ({columns}) SELECT {fill} FROM generate_series(1, %s) g", [count])


def batch_file(db: Database, directive: str, statement: str, name: str = "001_backfill.sql") -> Path:
    return db.write(name, f"-- runner: batch {directive}\n{statement}\n")


def counts(db: Database) -> dict[int, int]:
    """How many rows of t have each value of n."""
    return dict(db.query("SELECT n, count(*) FROM t GROUP BY n ORDER BY n"))


def progress(db: Database) -> history.BatchProgress | None:
    with db.connect() as conn:
        conn.execute("SET DateStyle = ISO")
        return history.read_batches(conn, history.Table("public", "migration_history")).get("001_backfill.sql")


def committed(result: Result) -> list[dict[str, Any]]:
    return result.named("batch_committed")


def migrate(db: Database, *args: str, **env: str) -> Result:
    return db.run("migrate", "--log-level", "debug", *args, env=db.env(**env))


def analysed(tmp_path: Path, text: str) -> Any:
    (tmp_path / "001_backfill.sql").write_text(text)
    (migration,) = discover(tmp_path)
    return analyse(migration)


# --- Directives and static refusals (no database) ---------------------------------------------------------------


def test_batch_directives_are_parsed(tmp_path: Path) -> None:
    """batch with its options, across directive lines, in the one duration grammar and as a share."""
    text = (
        "-- runner: batch batch-size=2000 pause=20ms\n-- runner: batch-time=200ms max-replica-lag=10s max-blocking=20%\n"
        "UPDATE t SET n = 1;\n"
    )
    (tmp_path / "001_backfill.sql").write_text(text)
    (migration,) = discover(tmp_path)
    assert migration.directives.batch == BatchOptions(2000, 0.02, 0.2, 10.0, 0.2)
    (tmp_path / "001_backfill.sql").write_text("-- runner: batch\nUPDATE t SET n = 1;\n")
    (migration,) = discover(tmp_path)
    assert migration.directives.batch == BatchOptions()


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("batch batch-size=0", "batch-size='0' needs a whole number of rows from 1 to 1,000,000"),
        ("batch batch-size=2k", "batch-size='2k' needs a whole number"),
        ("batch pause=soon", "pause='soon' needs a duration"),
        ("batch batch-time=0", "batch-time='0' needs a duration like 2s, 200ms or 1min (above 0)"),
        ("batch max-replica-lag=-1s", "max-replica-lag='-1s' needs a duration"),
        ("batch max-blocking=0.2", "max-blocking='0.2' needs a share like 20%"),
        ("batch max-blocking=150%", "max-blocking='150%' needs a share"),
        ("batch-size=100 pause=1s", "batch-size=, pause= only go with the batch directive"),
    ],
)
def test_bad_batch_directives_are_refused_with_their_line(tmp_path: Path, directive: str, message: str) -> None:
    """A malformed batch option, or one without batch, is a directive problem naming file and line."""
    (tmp_path / "001_backfill.sql").write_text(f"-- header\n-- runner: {directive}\nUPDATE t SET n = 1;\n")
    with pytest.raises(ValidationError) as info:
        discover(tmp_path)
    (problem,) = info.value.problems
    assert (problem.kind, problem.file, problem.line) == ("directive", "001_backfill.sql", 2)
    assert message in problem.message


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("SELECT 1;", "SELECT is not one of the data statements UPDATE, DELETE, INSERT ... SELECT"),
        ("ALTER TABLE t ADD COLUMN IF NOT EXISTS x int;", "ALTER is not one of the data statements"),
        ("UPDATE t SET n = 1;\nDELETE FROM t;", "needs exactly one statement, found 2 (lines 2, 3)"),
        ("WITH x AS (SELECT 1) UPDATE t SET n = 1;", "a WITH clause is not split by key ranges"),
        ("UPDATE t SET n = 1 RETURNING id;", "RETURNING: the rows it returns would be discarded"),
        ("UPDATE t SET n = 1 WHERE CURRENT OF c;", "WHERE CURRENT OF names a cursor's row"),
        ("UPDATE t SET n = $1;", "a parameter ($1) has no value in a migration"),
        ("INSERT INTO d VALUES (1);", "INSERT ... VALUES has no table whose rows the runner can enumerate"),
        ("INSERT INTO d DEFAULT VALUES;", "INSERT ... DEFAULT VALUES has no rows to enumerate"),
        ("INSERT INTO d SELECT id FROM t, u;", "INSERT ... SELECT must read exactly one table"),
        ("INSERT INTO d SELECT id FROM t JOIN u USING (id);", "INSERT ... SELECT must read exactly one table"),
        ("INSERT INTO d SELECT id FROM (SELECT id FROM t) s;", "INSERT ... SELECT must read exactly one table"),
        ("INSERT INTO d SELECT 1;", "INSERT ... SELECT must read exactly one table"),
        ("INSERT INTO d SELECT id FROM t UNION SELECT id FROM u;", "a set operation (UNION, INTERSECT, EXCEPT)"),
        ("INSERT INTO d SELECT DISTINCT n FROM t;", "DISTINCT works on the whole result"),
        ("INSERT INTO d SELECT n FROM t GROUP BY n;", "GROUP BY works on the whole result"),
        ("INSERT INTO d SELECT id FROM t ORDER BY id LIMIT 5;", "ORDER BY works on the whole result"),
        ("INSERT INTO d SELECT id FROM t LIMIT 5;", "LIMIT works on the whole result"),
        ("INSERT INTO d SELECT id FROM t FOR UPDATE;", "FOR UPDATE/SHARE works on the whole result"),
        ("INSERT INTO d SELECT max(n) FROM t;", "max() aggregates over rows"),
        ("INSERT INTO d SELECT count(*) FILTER (WHERE n > 0) FROM t;", "count() aggregates over rows"),
        ("INSERT INTO d SELECT rank() OVER (ORDER BY n) FROM t;", "rank() aggregates over rows"),
        ("INSERT INTO d SELECT json_arrayagg(n) FROM t;", "json_arrayagg() aggregates over rows"),
    ],
)
def test_what_cannot_be_split_by_key_ranges_is_refused(tmp_path: Path, statement: str, reason: str) -> None:
    """Not one data statement on one table, or rows the runner cannot enumerate: a batch problem saying why."""
    with pytest.raises(ValidationError) as info:
        analysed(tmp_path, f"-- runner: batch\n{statement}\n")
    (problem,) = info.value.problems
    assert (problem.kind, problem.file) == ("batch", "001_backfill.sql")
    assert problem.line in {None, 2}
    assert reason in problem.message


def test_no_transaction_does_not_go_with_batch(tmp_path: Path) -> None:
    """Each batch is one transaction with its progress: no-transaction with batch is refused."""
    with pytest.raises(ValidationError, match="no-transaction does not go with batch"):
        analysed(tmp_path, "-- runner: batch no-transaction\nUPDATE t SET n = 1;\n")


def test_what_batches_is_found_in_the_parse_tree(tmp_path: Path) -> None:
    """UPDATE ... FROM, DELETE ... USING and INSERT ... SELECT with a subquery name the table their batches enumerate."""
    update = analysed(tmp_path, "-- runner: batch\nUPDATE s.t AS x SET n = o.n, bad = 2 FROM o WHERE o.id = x.id;\n")
    assert (update.batch.kind, update.batch.table, update.batch.qualifier) == ("update", ("s", "t"), "x")
    assert update.batch.assigned == ("n", "bad")
    delete = analysed(tmp_path, "-- runner: batch\nDELETE FROM t USING o WHERE o.id = t.id;\n")
    assert (delete.batch.kind, delete.batch.table, delete.batch.qualifier) == ("delete", ("t",), "t")
    insert = analysed(
        tmp_path,
        "-- runner: batch\nINSERT INTO d (a) SELECT lower(v) FROM src s WHERE v > (SELECT avg(v) FROM src);\n",
    )
    assert (insert.batch.table, insert.batch.qualifier, insert.batch.written) == (("src",), "s", ("d",))
    assert insert.batch.functions == ("lower",)


def test_validate_lint_and_migrate_refuse_a_bad_batch_file_before_connecting(db: Database) -> None:
    """validate and lint exit 3 naming file, line and reason; migrate too, with the database unreachable."""
    db.write("001_backfill.sql", HEADER.format(name="001_backfill.sql") + "-- runner: batch\nSELECT 1;\n")
    validated = db.run("validate", env=db.env(DATABASE_URL=""))
    assert validated.code == 3
    assert "001_backfill.sql:6: batch file: SELECT is not one of the data statements" in validated.stderr
    linted = db.run("lint")
    assert linted.code == 3
    assert "001_backfill.sql:6: error structure: batch file: SELECT is not one" in linted.stdout
    unreachable = f"postgresql://postgres:x@127.0.0.1:{free_port()}/none"
    refused = db.run("migrate", env=db.env(DATABASE_URL=unreachable))
    assert refused.code == 3
    assert refused.named("connect_retry") == []


def test_a_deparsed_text_that_parses_to_another_tree_is_refused(tmp_path: Path) -> None:
    """The deparse check: a text whose parse tree is not the expected one never runs (exit 3)."""
    text = "-- runner: batch\nUPDATE t SET n = n + 1 WHERE id > 5;\n"
    analysis = analysed(tmp_path, text)
    (migration,) = discover(tmp_path)
    (statement,) = analysis.statements
    expected = parse_sql(statement.text)[0].stmt
    batch.check(migration, statement, expected, "UPDATE t SET n = n + 1 WHERE id > 5")
    with pytest.raises(ValidationError, match="does not parse back to the validated statement"):
        batch.check(migration, statement, expected, "UPDATE t SET n = n + 1 WHERE id >= 5")


# --- Batches over a real table ----------------------------------------------------------------------------------


def test_every_row_once_with_a_fixed_size_and_pause(db: Database) -> None:
    """batch-size=7 pause=50ms over 30 rows: batches of 7 keys, 50 ms apart, the last one unbounded; success."""
    rows_table(db, 30)
    batch_file(db, "batch-size=7 pause=50ms", "UPDATE t SET n = n + 1;")
    result = migrate(db)
    assert result.code == 0, result.stderr
    assert counts(db) == {1: 30}
    batches = committed(result)
    assert [e["rows_done"] for e in batches] == [7, 14, 21, 28, 30]
    assert [e["pause_ms"] for e in batches] == [50, 50, 50, 50, None]
    assert [e["next_size"] for e in batches] == [7, 7, 7, 7, None]
    assert [e["resume_after"] for e in batches] == [["7"], ["14"], ["21"], ["28"], ["28"]]
    assert result.named("batch_throttled") == []
    assert db.applied() == ["001_backfill.sql"]
    done = progress(db)
    assert done is not None
    assert (done.finished, done.batches, done.rows_done, done.rows_changed) == (True, 5, 30, 30)
    final = result.named("batch_progress")[-1]
    assert (final["rows_done"], final["percent"], final["remaining_s"]) == (30, 100.0, 0.0)
    again = migrate(db)
    assert (again.code, again.one("run_finished")["applied"]) == (0, 0)
    assert counts(db) == {1: 30}


def test_composite_key_insert_select_and_keys_as_text(db: Database) -> None:
    """A (timestamptz, text) key with awkward values, the database in DateStyle SQL, DMY: INSERT ... SELECT copies
    every row once, also across a failed batch and the resumed run that reads its key back from the progress table."""
    db.query(f"ALTER DATABASE {db.name} SET \"DateStyle\" = 'SQL, DMY'")
    db.query(
        "CREATE TABLE t (at timestamptz, label text, n int NOT NULL DEFAULT 0, bad int NOT NULL DEFAULT 1,"
        " PRIMARY KEY (at, label))"
    )
    labels = ["a,b", 'q"uote', "back\\slash", "{brace}", "ümlaut", "it's", " lead", "NULL"]
    db.query(
        "INSERT INTO t (at, label) SELECT timestamptz '2026-01-01 00:00:00+00' + (d || ' days')::interval"
        " + (h || ' hours')::interval, l FROM generate_series(0, 11) d, generate_series(0, 1) h, unnest(%s::text[]) l",
        [labels],
    )
    db.query("CREATE TABLE copy (at timestamptz, label text)")
    db.query("UPDATE t SET bad = 0 WHERE at = timestamptz '2026-01-07 01:00:00+00' AND label = 'it''s'")
    batch_file(db, "batch-size=11", "INSERT INTO copy SELECT at, label FROM t WHERE 1 / bad = 1;")
    failed = migrate(db)
    assert failed.code == 1
    assert "SQLSTATE 22012" in failed.one("migration_failed")["error"]
    first = progress(db)
    assert first is not None
    assert first.batches > 3
    assert not first.finished
    db.query("UPDATE t SET bad = 1")
    resumed = migrate(db)
    assert resumed.code == 0, resumed.stderr
    assert resumed.one("batch_started")["resume_after"] == list(first.resume_after or ())
    assert db.query("SELECT count(*), count(DISTINCT (at, label)) FROM copy") == [(192, 192)]
    assert db.query("SELECT count(*) FROM t LEFT JOIN copy USING (at, label) WHERE copy.at IS NULL") == [(0,)]


def test_a_failing_batch_keeps_the_committed_ones_and_names_the_line(db: Database) -> None:
    """Division by zero in batch 6: exit 1, a failure row with SQLSTATE and line, batches 1-5 stay; status shows where
    it stands; once the data is fixed the next run resumes after batch 5."""
    rows_table(db, 100)
    db.query("UPDATE t SET bad = 0 WHERE id = 55")
    db.write("001_backfill.sql", "-- runner: batch batch-size=10\n\nUPDATE t\nSET n = n + 1 / bad;\n")
    failed = migrate(db)
    assert failed.code == 1
    error = failed.one("migration_failed")
    assert (error["sqlstate"], error["line"]) == ("22012", 3)
    assert counts(db) == {0: 50, 1: 50}
    assert db.query("SELECT max(id) FROM t WHERE n = 1") == [(50,)]
    ((_name, success, _checksum, message),) = db.history()
    assert success is False
    assert "SQLSTATE 22012" in message
    assert "(line 3)" in message
    status = db.run("status")
    assert "in progress: 50 rows in 5 batches, resumes after key (50)" in status.stdout
    (row,) = json.loads(db.run("status", "--json").stdout)["migrations"]
    assert (row["state"], row["progress"]) == ("failed", "in progress: 50 rows in 5 batches, resumes after key (50)")
    db.query("UPDATE t SET bad = 1")
    resumed = migrate(db)
    assert resumed.code == 0
    assert resumed.one("batch_started")["resume_after"] == ["50"]
    assert counts(db) == {1: 100}
    assert json.loads(db.run("status", "--json").stdout)["migrations"][0]["progress"] is None


def follows_the_rule(result: Result, first: int, target_ms: float, low: int, high: int) -> list[int]:
    """The sizes the runner used; each next one is size * target / duration, the factor within [0.5, 2], clamped."""
    sizes = [first]
    for event in committed(result)[:-1]:
        factor = min(2.0, max(0.5, target_ms / event["duration_ms"]))
        expected = min(high, max(low, round(sizes[-1] * factor)))
        assert abs(event["next_size"] - expected) <= 1, (event, sizes)
        sizes.append(event["next_size"])
    return sizes


def test_batch_size_adapts_towards_the_batch_time(db: Database) -> None:
    """A statement costing over 1 ms a row, batch-time=40ms: from 5 rows the size grows, from 200 it halves twice
    (the factor's bound); every step follows the rule and stays within a tenth and ten times batch-size."""
    rows_table(db, 600)
    slow = "UPDATE t SET n = n + 1 WHERE pg_sleep(0.001) IS NOT NULL;"
    batch_file(db, "batch-size=5 batch-time=40ms", slow)
    growing = migrate(db)
    assert growing.code == 0, growing.stderr
    sizes = follows_the_rule(growing, 5, 40, 1, 50)
    assert sizes[1] > 5
    assert max(sizes) < 40  # a row costs over 1 ms: 40 rows never fit in 40 ms
    db.query("UPDATE t SET n = 0; TRUNCATE migration_history, migration_history_batches")
    batch_file(db, "batch-size=200 batch-time=40ms", slow)
    shrinking = migrate(db)
    assert shrinking.code == 0
    sizes = follows_the_rule(shrinking, 200, 40, 20, 2000)
    assert sizes[:3] == [200, 100, 50]
    assert counts(db) == {1: 600}


@contextmanager
def table_lock_hammer(db: Database) -> Iterator[threading.Event]:
    """An application session that takes SHARE on t again and again: it waits for every batch in flight."""
    stop = threading.Event()

    def hammer() -> None:
        with db.connect(application_name="app-hammer") as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("LOCK TABLE t IN SHARE MODE")

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)


def test_blocking_other_sessions_halves_the_batch_and_lengthens_the_pause(db: Database) -> None:
    """max-blocking=50%: while a session waits for the batches' locks, each throttled batch halves the next size and
    pauses as long as it took; every row is still done once."""
    rows_table(db, 400)
    batch_file(
        db,
        "batch-size=40 batch-time=100ms max-blocking=50%",
        "UPDATE t SET n = n + 1 WHERE pg_sleep(0.002) IS NOT NULL;",
    )
    with table_lock_hammer(db):
        result = migrate(db)
    assert result.code == 0, result.stderr
    throttled = result.named("batch_throttled")
    assert throttled
    assert {e["reason"] for e in throttled} == {"blocking"}
    batches = {e["batch"]: e for e in committed(result)}
    for event in throttled:
        number = event["batch"]
        size = batches[number - 1]["next_size"] if number > 1 else 40
        assert event["next_size"] == batches[number]["next_size"] == max(4, size // 2)
        assert event["pause_ms"] == batches[number]["pause_ms"] >= batches[number]["duration_ms"]
        assert event["blocked"] > 0.5
    assert counts(db) == {1: 400}


@pytest.mark.parametrize(
    ("statement", "blocked"),
    [
        ("LOCK TABLE t IN EXCLUSIVE MODE", True),  # the UPDATE waits
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", False),  # the key lookup, on the runner's connection, waits
        ("LOCK TABLE migration_history_batches IN SHARE MODE", True),  # the progress write waits
    ],
    ids=["statement", "key-lookup", "progress"],
)
def test_lock_timeouts_retry_the_batch_not_the_run(db: Database, statement: str, blocked: bool) -> None:
    """A lock held where the batch needs one until the runner waited past its lock_timeout: a ddl_lock_retry of that
    batch (naming the holder when the work connection waited), then the run completes, every row once."""
    rows_table(db, 50)
    with db.connect() as conn:
        history.ensure(conn, history.Table("public", "migration_history"))
        history.ensure_batches(conn, history.Table("public", "migration_history"))
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 1;")
    with db.connect(application_name="holder") as holder:
        holder.execute("BEGIN")
        holder.execute(statement)
        proc = db.popen("migrate", "--ddl-lock-timeout", "900ms")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db.query(
            "SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE NOT l.granted AND d.datname = %s",
            [db.name],
        ):
            time.sleep(0.05)
        time.sleep(1.5)  # longer than one lock_timeout: the batch waited, timed out, and is being retried
        holder.execute("ROLLBACK")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    retries = [e for e in parse_events(err) if e["event"] == "ddl_lock_retry"]
    assert retries
    assert {e["batch"] for e in retries} == {1}
    named = {b["application_name"] for e in retries for b in e["blockers"]}
    assert ("holder" in named) == blocked
    assert counts(db) == {1: 50}


def test_lock_timeout_retries_run_out_into_a_failure(db: Database) -> None:
    """With the lock held throughout and --ddl-lock-retries 1: exit 1, failure row 55P03 after 1 retries."""
    rows_table(db, 20)
    batch_file(db, "batch-size=10 lock-timeout=300ms", "UPDATE t SET n = n + 1;")
    with db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE t IN EXCLUSIVE MODE")
        result = migrate(db, "--ddl-lock-retries", "1")
        holder.execute("ROLLBACK")
    assert result.code == 1
    failure = result.one("migration_failed")
    assert failure["sqlstate"] == "55P03"
    assert "batch 1:" in failure["error"]
    assert "after 1 retries" in failure["error"]
    assert counts(db) == {0: 20}


@pytest.mark.parametrize(
    ("setup", "statement", "message"),
    [
        (
            "CREATE TABLE t (id int, n int)",
            "UPDATE t SET n = 1;",
            "cannot enumerate the rows of public.t: no primary key",
        ),
        (None, "UPDATE t SET id = id + 1000;", "the UPDATE sets key column id"),
        (None, "INSERT INTO t (id) SELECT id + 1000 FROM t;", "the INSERT writes the table it reads"),
        (
            "CREATE AGGREGATE total(int) (sfunc = int4pl, stype = int); CREATE TABLE d (n int)",
            "INSERT INTO d SELECT total(n) FROM t;",
            "total aggregates over rows here",
        ),
        (
            "CREATE EXTENSION citext; DROP TABLE t; CREATE TABLE t (tag citext, id int, n int, PRIMARY KEY (tag, id))",
            "UPDATE t SET n = 1;",
            "the key's comparison operators are not <= and > of one schema",
        ),
    ],
    ids=["no-primary-key", "key-update", "insert-into-itself", "user-aggregate", "mixed-operator-schemas"],
)
def test_rows_the_runner_cannot_enumerate_are_refused_at_run_time(
    db: Database, setup: str | None, statement: str, message: str
) -> None:
    """What only the catalog tells: exit 3 naming the table and why, nothing written, no history row."""
    if setup is None or not setup.startswith("CREATE TABLE t"):
        rows_table(db, 20)
    if setup:
        db.query(setup)
    batch_file(db, "batch-size=5", statement)
    result = migrate(db)
    assert result.code == 3, result.stderr
    assert message in result.one("run_failed")["error"]
    assert "001_backfill.sql:2: batch file:" in result.one("run_failed")["error"]
    assert db.applied() == []
    assert progress(db) is None


def test_a_missing_table_fails_like_the_statement_would(db: Database) -> None:
    """A batch file on a table that does not exist: exit 1, SQLSTATE 42P01 at the statement's line."""
    batch_file(db, "batch-size=5", "UPDATE nowhere SET n = 1;")
    result = migrate(db)
    assert result.code == 1
    failure = result.one("migration_failed")
    assert (failure["sqlstate"], failure["line"]) == ("42P01", 2)


def test_a_role_that_cannot_be_set_is_exit_5(db: Database) -> None:
    """--role naming no role: resolving the table in the migration's session fails, exit 5."""
    rows_table(db, 5)
    batch_file(db, "batch-size=5", "UPDATE t SET n = n + 1;")
    result = migrate(db, "--role", "no_such_role")
    assert result.code == 5
    assert "resolving t:" in result.one("run_failed")["error"]


def test_the_role_option_runs_lookups_and_batches_as_that_role(db: Database) -> None:
    """--role owner_role where only that role may read and write t: every batch runs, the history is written."""
    owner = f"owner_{db.name}"
    rows_table(db, 25)
    db.query(f"CREATE ROLE {owner}; ALTER TABLE t OWNER TO {owner}")
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 1 WHERE current_user = '" + owner + "';")
    result = migrate(db, "--role", owner)
    assert result.code == 0, result.stderr
    assert counts(db) == {1: 25}


def login_role(db: Database, *grants: str) -> str:
    """A non-superuser login that may create the runner's tables; its URL."""
    name = f"login_{db.name}"
    db.query(
        f"CREATE ROLE {name} LOGIN PASSWORD 'login-pw'; GRANT CREATE ON SCHEMA public TO {name};"
        f" GRANT CREATE ON DATABASE {db.name} TO {name}"
    )
    for grant in grants:
        db.query(grant.format(role=name))
    return db.cluster.url(db.name, user=name, password="login-pw")


def test_privileges_the_runner_lacks_are_exit_5(db: Database) -> None:
    """A login that may UPDATE t but not read its keys, or that cannot read the replicas' lag, or that may not write
    the progress table: exit 5 naming what it could not do, nothing applied."""
    rows_table(db, 20)
    url = login_role(db, "GRANT UPDATE ON t TO {role}")
    batch_file(db, "batch-size=5", "UPDATE t SET n = 1;")
    lookup = migrate(db, DATABASE_URL=url)
    assert lookup.code == 5
    assert "looking up the next keys of public.t" in lookup.one("run_failed")["error"]
    db.query(f"GRANT SELECT ON t TO login_{db.name}")
    batch_file(db, "batch-size=5 max-replica-lag=5s", "UPDATE t SET n = 1;")
    lag = migrate(db, DATABASE_URL=url)
    assert lag.code == 5
    assert "grant it pg_read_all_stats" in lag.one("run_failed")["error"]
    db.query(f"REVOKE INSERT, UPDATE ON migration_history_batches FROM login_{db.name}")
    batch_file(db, "batch-size=5", "UPDATE t SET n = 1;")
    record = migrate(db, DATABASE_URL=url)
    assert record.code == 5
    assert "cannot write the batch progress in public.migration_history_batches" in record.one("run_failed")["error"]
    assert counts(db) == {0: 20}


def test_progress_that_moved_under_the_runner_rolls_the_batch_back(db: Database) -> None:
    """Another writer moves the progress row between batches: the next batch's progress write matches no row, the
    batch rolls back (exit 1); a file changed after that is refused (exit 3) rather than resumed."""
    rows_table(db, 60)
    batch_file(db, "batch-size=10 pause=400ms", "UPDATE t SET n = n + 1;")
    proc = db.popen("migrate")
    deadline = time.monotonic() + 30
    while (found := progress(db)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found is not None
    db.query("UPDATE migration_history_batches SET batches = batches + 100")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "moved while this batch ran" in err
    moved = progress(db)
    assert moved is not None
    assert counts(db) == {0: 60 - moved.rows_done, 1: moved.rows_done}
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 2;")
    changed = migrate(db)
    assert changed.code == 3
    assert "the file changed after" in changed.one("run_failed")["error"]


def test_a_failing_progress_write_fails_the_batch(db: Database) -> None:
    """A trigger on the progress table raises: the batch rolls back, exit 1 naming the progress table."""
    rows_table(db, 10)
    with db.connect() as conn:
        history.ensure_batches(conn, history.Table("public", "migration_history"))
    db.query(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;"
        " CREATE TRIGGER boom BEFORE INSERT ON migration_history_batches FOR EACH ROW EXECUTE FUNCTION boom()"
    )
    batch_file(db, "batch-size=5", "UPDATE t SET n = n + 1;")
    result = migrate(db)
    assert result.code == 1
    assert "recording the batch progress in public.migration_history_batches failed: boom" in result.stderr
    assert counts(db) == {0: 10}


def test_a_batch_whose_commit_fails_is_rolled_back_alone(db: Database) -> None:
    """A deferred constraint trigger fails batch 2 at COMMIT: exit 1, COMMIT failed, batch 1 stays."""
    rows_table(db, 30)
    db.query(
        "CREATE FUNCTION refuse_15() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF NEW.id = 15 THEN RAISE EXCEPTION 'not 15'; END IF; RETURN NULL; END $$;"
        " CREATE CONSTRAINT TRIGGER refuse AFTER UPDATE ON t DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION refuse_15()"
    )
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 1;")
    result = migrate(db)
    assert result.code == 1
    assert "COMMIT failed: not 15" in result.one("migration_failed")["error"]
    assert counts(db) == {0: 20, 1: 10}
    stopped = progress(db)
    assert stopped is not None
    assert (stopped.batches, stopped.resume_after) == (1, ("10",))


def test_sigterm_mid_batch_rolls_back_that_batch_only(db: Database) -> None:
    """SIGTERM during a batch: exit 143, earlier batches stay with their progress, the batch in flight is rolled
    back, the failure row says interrupted, no lock is left; the next run completes every row once."""
    rows_table(db, 200)
    batch_file(db, "batch-size=20", "UPDATE t SET n = n + 1 WHERE pg_sleep(0.01) IS NOT NULL;")
    proc = db.popen("migrate")
    deadline = time.monotonic() + 30
    while ((found := progress(db)) is None or found.batches < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    db.backend_running("pg_sleep(0.01)")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    stopped = progress(db)
    assert stopped is not None
    assert not stopped.finished
    assert counts(db) == {0: 200 - stopped.rows_done, 1: stopped.rows_done}
    assert db.query("SELECT max(id) FROM t WHERE n = 1") == [(int((stopped.resume_after or ("0",))[0]),)]
    ((_name, success, _checksum, message),) = db.history()
    assert (success, "SIGTERM" in message) == (False, True)
    assert db.advisory_locks() == 0
    assert migrate(db).code == 0
    assert counts(db) == {1: 200}


def test_orphaned_batch_is_not_applied_twice(db: Database) -> None:
    """SIGKILL while the first batch commits (a deferred trigger makes COMMIT slow): its backend still commits it,
    and a runner started at once waits for that orphan (the fence), then resumes after it: every row once."""
    rows_table(db, 150)
    db.query(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF NEW.id = 1 THEN PERFORM pg_sleep(1.2); END IF; RETURN NULL; END $$;"
        " CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON t DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    batch_file(db, "batch-size=50", "UPDATE t SET n = n + 1;")
    first = db.popen("migrate")
    db.backend_running("SET LOCAL SESSION AUTHORIZATION DEFAULT")  # the batch's progress and COMMIT are sent
    first.kill()
    first.communicate()
    second = migrate(db)
    assert second.code == 0, second.stderr
    assert second.one("batch_started")["resume_after"] == ["50"]  # the orphan's batch, committed
    settle(db)
    assert counts(db) == {1: 150}


@pytest.mark.slow
def test_sigkill_at_random_moments_processes_every_row_once(db: Database) -> None:
    """UPDATE t SET n = n + 1 (not idempotent) over 8,000 rows, SIGKILLed 10 times at seeded random moments of its
    batches: after each kill the rows done are exactly those up to the progress row's key, each once, and status
    shows it pending with that progress; then one run finishes with every n = 1 and the history row success."""
    rows_table(db, 8000)
    statement = "UPDATE t SET n = n + 1 WHERE pg_sleep(0.0002) IS NOT NULL;"
    batch_file(db, "batch-size=40 pause=10ms", statement)
    rng = random.Random(20261202)
    for _trial in range(10):
        proc = db.popen("migrate")
        db.backend_running("pg_sleep(0.0002)")  # batches are running
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate()
        settle(db)
        done = progress(db)
        if done is None:  # killed inside the first batch
            assert counts(db) == {0: 8000}
            continue
        assert not done.finished
        last = int((done.resume_after or ("0",))[0])
        assert counts(db) == {0: 8000 - last, 1: last}
        assert db.query("SELECT max(id) FROM t WHERE n = 1") == [(last,)]
    assert done is not None
    (row,) = json.loads(db.run("status", "--json").stdout)["migrations"]
    assert (row["state"], row["progress"]) == (
        "pending",
        f"in progress: {done.rows_done:,} rows in {done.batches:,} batches, resumes after key ({last})",
    )
    final = migrate(db)
    assert final.code == 0, final.stderr
    assert counts(db) == {1: 8000}
    assert db.applied() == ["001_backfill.sql"]


def test_the_runners_own_connection_lost_mid_run_is_exit_5(db: Database) -> None:
    """The lock connection terminated while batches run: blocking samples fail quietly, the next key lookup fails
    (exit 5), the batch in flight commits or not as a whole, and the next run completes every row once."""
    rows_table(db, 300)
    batch_file(
        db,
        "batch-size=20 batch-time=100ms max-blocking=50%",
        "UPDATE t SET n = n + 1 WHERE pg_sleep(0.003) IS NOT NULL;",
    )
    proc = db.popen("migrate", "--log-level", "debug")
    db.backend_running("pg_sleep(0.003)")
    with db.connect() as conn:
        (holder,) = lock.holders(conn, lock.keys(db.name, "public", "migration_history", None))
        conn.execute("SELECT pg_terminate_backend(%s)", [holder["pid"]])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    failed = next(e for e in parse_events(err) if e["event"] == "run_failed")
    assert "looking up the next keys of public.t" in failed["error"]
    settle(db)
    stopped = progress(db)
    done = stopped.rows_done if stopped else 0
    assert counts(db) == ({0: 300 - done, 1: done} if done else {0: 300})
    assert migrate(db).code == 0
    assert counts(db) == {1: 300}


def test_an_empty_table_is_one_unbounded_batch(db: Database) -> None:
    """No rows: one batch, the statement as written (no range), the history row success."""
    rows_table(db, 0)
    batch_file(db, "batch-size=10", "DELETE FROM t WHERE n > 0;")
    result = migrate(db)
    assert result.code == 0
    (only,) = committed(result)
    assert (only["rows_done"], only["resume_after"], only["next_size"]) == (0, None, None)
    assert db.applied() == ["001_backfill.sql"]


def test_progress_is_a_metric_and_a_live_line(db: Database, tmp_path: Path) -> None:
    """--metrics-file carries batch_rows_done and the rate; the console format shows the progress line."""
    rows_table(db, 40)
    db.query("ANALYZE t")
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 1;")
    metrics = tmp_path / "runner.prom"
    result = db.run("migrate", "--metrics-file", str(metrics), env=db.env(RUNNER_LOG_FORMAT="console"))
    assert result.code == 0, result.stderr
    text = metrics.read_text()
    assert "migration_runner_batch_rows_done 40.0" in text
    assert "migration_runner_batch_rows_per_second" in text
    assert "migration_runner_batch_remaining_seconds 0.0" in text
    assert "batches  001_backfill.sql  40 rows" in result.stderr
    assert "[####################] 100%" in result.stderr


def test_verify_shows_a_batch_file_idempotent_or_not(db: Database) -> None:
    """verify applies a batch file twice in batches: WHERE x IS NULL passes; n = n + 1 is reported with its table."""
    db.write(
        "001_table.sql",
        "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, x int);\n"
        "INSERT INTO t (id) SELECT g FROM generate_series(1, 30) g ON CONFLICT DO NOTHING;\n",
    )
    batch_file(db, "batch-size=7", "UPDATE t SET x = id * 2 WHERE x IS NULL;", name="002_backfill.sql")
    passed = db.run("verify")
    assert passed.code == 0, passed.stdout + passed.stderr
    assert "verified" in passed.stdout
    batch_file(db, "batch-size=7", "UPDATE t SET n = n + 1;", name="002_backfill.sql")
    found = db.run("verify")
    assert found.code == 3
    assert "002_backfill.sql: second application changed the database:" in found.stdout
    assert "~ rows of t: the second application changed them" in found.stdout


def test_rehearse_runs_a_batch_file_in_batches(db: Database) -> None:
    """rehearse on a copy applies a pending batch file as migrate would: rows counted, row locks only."""
    rows_table(db, 45)
    batch_file(db, "batch-size=10", "UPDATE t SET n = n + 1 WHERE id <= 30;")
    env = db.env(RUNNER_FROM_URL=db.url, RUNNER_PG_BIN=str(db.cluster.bindir))
    result = db.run("rehearse", "--format", "json", env=env)
    assert result.code == 0, result.stdout + result.stderr
    (report,) = json.loads(result.stdout)
    assert report["rows_touched"] == 30
    assert report["locks"].get("public.t") in {None, "RowExclusiveLock"}
    assert counts(db) == {0: 45}


def test_release_0_1_0_refuses_a_batch_file(db: Database, release_0_1_0: Path) -> None:  # noqa: F811
    """Rolling upgrade: a 0.1.0 runner refuses a batch file (unknown directive, exit 3) and applies nothing."""
    rows_table(db, 10)
    batch_file(db, "batch-size=4", "UPDATE t SET n = n + 1;")
    refused = db.run_argv([sys.executable, "-c", BOOTSTRAP, str(release_0_1_0), "migrate"])
    assert refused.code == 3
    assert "unknown directive 'batch'" in refused.stdout + refused.stderr
    assert counts(db) == {0: 10}


@contextmanager
def standby_of(primary: Cluster) -> Iterator[psycopg.Connection[Any]]:
    """A streaming replica of ``primary`` (pg_basebackup, replies every second); yields a connection to it."""
    root = Path(tempfile.mkdtemp(prefix="runner-standby-"))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam(SERVER_USER)
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": SERVER_USER}
    data, port = root / "data", free_port()
    env = {**os.environ, "PGPASSWORD": primary.password}
    basebackup = [str(primary.bindir / "pg_basebackup"), "-D", str(data), "-h", "127.0.0.1", "-p", str(primary.port)]
    subprocess.run([*basebackup, "-U", "postgres", "-X", "stream"], env=env, check=True, cwd=root, **as_user)
    with (data / "postgresql.conf").open("a") as conf:
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres password={primary.password}"
        conf.write(f"wal_receiver_status_interval = 1\nprimary_conninfo = '{conninfo}'\n")
    (data / "standby.signal").write_text("")
    pg_ctl = [str(primary.bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    subprocess.run([*pg_ctl, "-o", f"-p {port}", "start"], check=True, cwd=root, capture_output=True, **as_user)
    try:
        with psycopg.connect(primary.url().rsplit(":", 1)[0] + f":{port}/postgres", autocommit=True) as conn:
            yield conn
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], cwd=root, capture_output=True, check=False, **as_user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_replica_lag_over_the_ceiling_holds_the_next_batch(tmp_path: Path) -> None:
    """A real standby with its replay paused: once its replay lag passes max-replica-lag=1s the runner holds the next
    batch (batch_throttled replica_lag, lag and ceiling logged) until replay resumes; then every row is done once."""
    with running(PG_MAJOR) as primary, standby_of(primary) as standby:
        db = Database(primary, "postgres", tmp_path)
        rows_table(db, 200)
        batch_file(db, "batch-size=20 pause=100ms max-replica-lag=1s", "UPDATE t SET n = n + 1;")
        standby.execute("SELECT pg_wal_replay_pause()")
        proc = db.popen("migrate")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db.query(
            "SELECT 1 FROM pg_stat_replication WHERE replay_lag > interval '2 seconds'"
        ):
            time.sleep(0.1)
        held = progress(db)
        time.sleep(1.5)
        assert progress(db) == held  # nothing committed while the lag is over the ceiling
        standby.execute("SELECT pg_wal_replay_resume()")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert counts(db) == {1: 200}
    throttled = [e for e in parse_events(err) if e["event"] == "batch_throttled"]
    assert throttled
    assert {e["reason"] for e in throttled} == {"replica_lag"}
    assert all(e["lag_s"] > e["ceiling_s"] == 1.0 for e in throttled)
