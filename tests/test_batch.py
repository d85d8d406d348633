"""Batched data files (``-- runner: batch``): the directive and the refusals that need no database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.discover import BatchOptions, analyse, discover
from runner.errors import ValidationError
from tests.conftest import Database
from tests.pgcluster import free_port

HEADER = "-- Migration: {name}\n-- Author: t\n-- Date: 2026-12-02\n-- Description: backfill\n"


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
