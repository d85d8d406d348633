"""Authoring safety: verify's fingerprint, rehearse on a copy (lint: tests/test_lint.py)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import Database

PRELUDE = "CREATE TABLE IF NOT EXISTS users (id int, email text, legacy text, a int);\n"


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
