"""Authoring safety: lint rules (provoked and passed), verify's fingerprint, rehearse on a copy."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from runner.lint import RULES, lint_paths
from tests.conftest import Database

HEADER = "-- Migration: {name}\n-- Author: test\n-- Date: 2026-11-25\n-- Description: test\n"
PRELUDE = "CREATE TABLE IF NOT EXISTS users (id int, email text, legacy text, a int);\n"

# rule -> (SQL that breaks it, the fixed SQL that must not)
RULE_CASES = {
    "create-not-idempotent": ("CREATE TABLE t (id int);", "CREATE TABLE IF NOT EXISTS t (id int);"),
    "add-column-not-idempotent": (
        "ALTER TABLE users ADD COLUMN nick text;",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
    ),
    "drop-not-idempotent": ("DROP TABLE old_stuff;", "DROP TABLE IF EXISTS old_stuff;"),
    "replace-missing": ("CREATE VIEW v AS SELECT 1;", "CREATE OR REPLACE VIEW v AS SELECT 1;"),
    "add-constraint-unguarded": (
        "ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID;",
        (
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ck' AND conrelid = 'users'::regclass)"
            " THEN ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0) NOT VALID; END IF; END $$;"
        ),
    ),
    "index-not-concurrent": (
        "CREATE INDEX IF NOT EXISTS users_email ON users (email);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);",
    ),
    "drop-column": ("ALTER TABLE users DROP COLUMN IF EXISTS legacy;", "SELECT 1;"),
    "rename-column": ("ALTER TABLE users RENAME COLUMN a TO b;", "ALTER TABLE users ADD COLUMN IF NOT EXISTS b int;"),
    "rename-table": ("ALTER TABLE users RENAME TO people;", "CREATE OR REPLACE VIEW people AS SELECT * FROM users;"),
    "mixed-schema-data": (
        "CREATE TABLE IF NOT EXISTS t (id int);\nINSERT INTO t VALUES (1);",
        "CREATE TABLE IF NOT EXISTS t (id int);",
    ),
    "constraint-validates": (
        "DO $$ BEGIN NULL; END $$;\nALTER TABLE users ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES users (id);",
        "DO $$ BEGIN NULL; END $$;",
    ),
    "column-type-rewrite": ("ALTER TABLE users ALTER COLUMN id TYPE bigint;", "SELECT 1;"),
    "set-not-null-scan": ("ALTER TABLE users ALTER COLUMN id SET NOT NULL;", "SELECT 1;"),
    "structure": ("SELECT 1;\nCOMMIT;", "SELECT 1;"),
}


def lint_one(tmp_path: Path, body: str, header: bool = True) -> list[str]:
    path = tmp_path / "001_case.sql"
    path.write_text((HEADER.format(name=path.name) if header else "") + body + "\n")
    return [f.rule for f in lint_paths([path])]


def test_every_rule_has_a_case() -> None:
    """Each lint rule (but the header rule, tested apart) is provoked below."""
    assert set(RULE_CASES) | {"header"} == set(RULES)


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_rule_fires_and_fix_passes(tmp_path: Path, rule: str) -> None:
    """The bad SQL triggers exactly this rule at its line; the fixed SQL does not trigger it."""
    bad, good = RULE_CASES[rule]
    assert rule in lint_one(tmp_path, bad)
    assert rule not in lint_one(tmp_path, good)


def test_header_rule(tmp_path: Path) -> None:
    """A missing or malformed template header is an error; the template passes."""
    assert lint_one(tmp_path, "SELECT 1;", header=False).count("header") == 4
    path = tmp_path / "001_case.sql"
    path.write_text("-- Migration: 999_other.sql\n-- Author: a\n-- Date: 25.11.2026\n-- Description: d\nSELECT 1;\n")
    messages = [f.message for f in lint_paths([path])]
    assert "'-- Migration: 999_other.sql' does not name this file" in messages
    assert "'-- Date: 25.11.2026' is not YYYY-MM-DD" in messages
    assert lint_one(tmp_path, "SELECT 1;") == []


def test_findings_name_file_line_and_hint(tmp_path: Path) -> None:
    """A finding carries the file, the statement's line, the severity and a fix hint."""
    path = tmp_path / "001_case.sql"
    path.write_text(HEADER.format(name=path.name) + "SELECT 1;\n\nDROP TABLE gone;\n")
    (finding,) = lint_paths([path])
    assert (finding.file, finding.line, finding.severity, finding.rule) == (
        "001_case.sql",
        7,
        "error",
        "drop-not-idempotent",
    )
    assert "IF EXISTS" in finding.hint


def test_waiver_needs_a_reason_and_a_known_rule(tmp_path: Path) -> None:
    """allow=RULE reason="..." waives a rule; without a reason, or for an unknown rule, it is an error."""
    drop = "ALTER TABLE users DROP COLUMN IF EXISTS legacy;"
    assert lint_one(tmp_path, '-- runner: allow=drop-column reason="phase 2 of the nick rename"\n' + drop) == []
    assert "structure" in lint_one(tmp_path, "-- runner: allow=drop-column\n" + drop)
    assert "structure" in lint_one(tmp_path, '-- runner: allow=no-such-rule reason="x"\nSELECT 1;')


def test_lint_cli_exit_codes_and_json(db: Database) -> None:
    """lint exits 3 on an error finding, 0 on warnings only; --format json lists the findings."""
    db.write("001_a.sql", HEADER.format(name="001_a.sql") + PRELUDE)
    assert db.run("lint").code == 0
    db.write("002_b.sql", HEADER.format(name="002_b.sql") + "ALTER TABLE users ALTER COLUMN id TYPE bigint;\n")
    warned = db.run("lint", "--format", "json")
    assert warned.code == 0
    assert [f["rule"] for f in json.loads(warned.stdout)] == ["column-type-rewrite"]
    db.write("003_c.sql", HEADER.format(name="003_c.sql") + "DROP TABLE gone;\n")
    failed = db.run("lint", str(db.migrations / "003_c.sql"))
    assert failed.code == 3
    assert "003_c.sql:5: error drop-not-idempotent" in failed.stdout


def scratch_databases(db: Database) -> list[tuple[str]]:
    return db.query("SELECT datname FROM pg_database WHERE datname LIKE 'verify\\_%%' OR datname LIKE 'rehearse\\_%%'")


def test_verify_passes_idempotent_migrations(db: Database) -> None:
    """Idempotent files: exit 0, per-migration durations, and the scratch database is gone."""
    db.write("001_a.sql", PRELUDE)
    db.write("002_b.sql", "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);\n")
    db.write(
        "003_c.sql",
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ck'"
        " AND conrelid = 'users'::regclass) THEN ALTER TABLE users ADD CONSTRAINT ck"
        " CHECK (id > 0); END IF; END $$;\n"
        "INSERT INTO users (id) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = 1);\n",
    )
    result = db.run("verify")
    assert result.code == 0, result.stdout + result.stderr
    assert "verified" in result.stdout
    assert "001_a.sql" in result.stdout
    assert scratch_databases(db) == []
    assert db.query("SELECT to_regclass('users')") == [(None,)]  # the target itself is untouched


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("DO $$ BEGIN ALTER TABLE users ADD CONSTRAINT ck CHECK (id > 0); END $$;", "second application failed"),
        ("INSERT INTO users (id) VALUES (1);", "+ row_counts ('public', 'users', 2)"),
        (
            (
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN"
                " CREATE TYPE mood AS ENUM ('ok'); END IF; END $$;\nALTER TYPE mood ADD VALUE 'meh';"
            ),
            "second application failed",
        ),
        ("CREATE INDEX users_id ON users (id);", "second application failed"),
        (
            "DO $$ BEGIN EXECUTE format('CREATE TABLE t_%s (id int)', (SELECT count(*) FROM pg_class)); END $$;",
            "+ relations",
        ),
    ],
)
def test_verify_finds_non_idempotent_migrations(db: Database, body: str, expected: str) -> None:
    """Unguarded ADD CONSTRAINT in a DO block, a bare INSERT, ALTER TYPE ADD VALUE, a bare CREATE INDEX and a
    schema that grows each run are each found, the file named and the difference printed; exit 3."""
    db.write("001_a.sql", PRELUDE)
    db.write("002_b.sql", body + "\n")
    result = db.run("verify")
    assert result.code == 3, result.stdout + result.stderr
    assert "002_b.sql" in result.stdout
    assert expected in result.stdout
    assert "001_a.sql:" not in result.stdout
    assert scratch_databases(db) == []


def test_verify_drops_scratch_database_on_interrupt(db: Database) -> None:
    """Ctrl-C during verify still drops the scratch database."""
    db.write("001_slow.sql", "SELECT pg_sleep(30);\n")
    proc = db.popen("verify")
    for _ in range(100):
        if scratch_databases(db):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert scratch_databases(db) == []


def test_rehearse_reports_duration_locks_and_rows(db: Database) -> None:
    """rehearse copies the database, applies what is pending there, reports locks and rows, leaves the source alone."""
    db.write("001_a.sql", PRELUDE)
    assert db.run("migrate").code == 0
    db.query("INSERT INTO users (id, email) SELECT g, 'u' || g FROM generate_series(1, 500) g")
    db.write("002_b.sql", "ALTER TABLE users ADD COLUMN IF NOT EXISTS active boolean;\n")
    db.write("003_c.sql", "UPDATE users SET active = true WHERE id <= 200;\n")
    env = db.env(RUNNER_FROM_URL=db.url, RUNNER_PG_BIN=str(db.cluster.bindir))
    result = db.run("rehearse", "--format", "json", env=env)
    assert result.code == 0, result.stdout + result.stderr
    report = {r["migration"]: r for r in json.loads(result.stdout)}
    assert set(report) == {"002_b.sql", "003_c.sql"}
    assert report["002_b.sql"]["locks"]["public.users"] == "AccessExclusiveLock"
    assert report["003_c.sql"]["locks"]["public.users"] == "RowExclusiveLock"
    assert report["003_c.sql"]["rows_touched"] == 200
    assert all(r["duration_ms"] >= 0 for r in report.values())
    assert db.applied() == ["001_a.sql"]
    assert db.query(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'active'"
    ) == [(0,)]
    assert scratch_databases(db) == []
    assert db.cluster.password not in result.stdout + result.stderr
    schema_only = db.run("rehearse", "--schema-only", "--format", "json", env=env)
    assert schema_only.code == 0
    assert {r["migration"]: r["rows_touched"] for r in json.loads(schema_only.stdout)}["003_c.sql"] == 0
    human = db.run("rehearse", env=env)
    assert "public.users=AccessExclusive" in human.stdout
