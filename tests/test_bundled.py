"""The bundled token-monitor migrations (migrations/001-006) on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from bench import sample_data
from runner.catalog import difference, fingerprint
from runner.discover import analyse, discover
from tests.conftest import Database

BUNDLED = Path(__file__).resolve().parent.parent / "migrations"
ROW_DIGEST = "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {} t"


def month_partition(moment: dt.datetime) -> str:
    return f"trades_unified_y{moment:%Y}m{moment:%m}"


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def run_bundled(db: Database, *args: str) -> None:
    result = db.run("migrate", *args, env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout + result.stderr


def test_bundled_files_pass_validation() -> None:
    """001-006 are named, numbered and parse cleanly; only 005 runs outside a transaction."""
    migrations = discover(BUNDLED)
    assert [m.name for m in migrations] == [
        "001_initial_schema.sql",
        "002_extended_metadata_features.sql",
        "003_add_holder_analysis_tables.sql",
        "004_partition_trades_table.sql",
        "005_add_analytics_indexes.sql",
        "006_create_archival_tables.sql",
    ]
    assert [analyse(m).transactional for m in migrations] == [True, True, True, True, False, True]
    for migration in migrations:
        for header in (
            "-- Migration: ",
            "-- Author: ",
            "-- Date: ",
            "-- Description: ",
            "-- ==== START MIGRATION ====",
            "-- ==== END MIGRATION ====",
        ):
            assert header in migration.sql, (migration.name, header)


def test_apply_to_empty_database(db: Database) -> None:
    """All six apply to an empty database; trades_unified ends partitioned with a default partition."""
    run_bundled(db)
    assert len(db.applied()) == 6
    assert db.query("SELECT relkind FROM pg_class WHERE oid = 'trades_unified'::regclass") == [("p",)]
    now = dt.datetime.now(dt.UTC)
    expected = {month_partition(add_months(now, i)) for i in range(4)} | {"trades_unified_default"}
    partitions = {
        name
        for (name,) in db.query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'trades_unified'::regclass"
        )
    }
    assert partitions == expected
    assert db.query("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]


def test_second_run_of_every_file_changes_nothing(db: Database) -> None:
    """Forcing each file to run again (outside the runner's bookkeeping) leaves the schema identical."""
    run_bundled(db)
    with db.connect() as conn:
        before = fingerprint(conn)
        for migration in discover(BUNDLED):
            analysis = analyse(migration)
            if analysis.transactional:
                with conn.transaction():
                    for statement in analysis.statements:
                        conn.execute(statement.text)
            else:
                for statement in analysis.statements:
                    conn.execute(statement.text)
        after = fingerprint(conn)
    assert difference(before, after) == []


def test_partitioning_keeps_every_trade(db: Database) -> None:
    """001-003, the 500,000-trade sample, then 004-006: every trade identical, partitions as expected,
    next month's inserts land in their partition, and archival moves exactly the old rows."""
    run_bundled(db, "--target", "3")
    with db.connect() as conn:
        with conn.transaction():
            counts = sample_data.load(conn)
        trades_before = conn.execute(ROW_DIGEST.format("trades_unified")).fetchone()
        tokens_before = conn.execute("SELECT count(*) FROM tokens_unified").fetchone()
    assert trades_before[0] == counts["trades_unified"] == 500_000
    started = time.monotonic()
    result = db.run("migrate", env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout
    durations = {e["migration"]: e["duration_ms"] for e in result.named("migration_applied")}
    print(
        f"\n004 on the {counts['trades_unified']}-trade sample: {durations['004_partition_trades_table.sql']} ms;"
        f" 004-006 whole run {time.monotonic() - started:.1f}s"
    )
    with db.connect() as conn:
        assert conn.execute(ROW_DIGEST.format("trades_unified")).fetchone() == trades_before
        assert conn.execute(ROW_DIGEST.format("trades_unified_unpartitioned")).fetchone() == trades_before
        assert conn.execute("SELECT count(*) FROM tokens_unified").fetchone() == tokens_before
        assert conn.execute("SELECT count(*) FROM trades_unified_default").fetchone() == (0,)
        per_month = dict(
            conn.execute("SELECT tableoid::regclass::text, count(*) FROM trades_unified GROUP BY 1").fetchall()
        )
        data_months = {month_partition(dt.datetime(2026, m, 1, tzinfo=dt.UTC)) for m in range(5, 11)}
        assert set(per_month) == data_months
        assert sum(per_month.values()) == 500_000
        next_month = add_months(dt.datetime.now(dt.UTC), 1)
        landed = conn.execute(
            "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address, sol_amount,"
            " token_amount, price_sol, slot, block_time) SELECT 'next-month-sig', mint_address, 'amm_pool', 'buy',"
            " 'wallet', 1, 1, 0.1, 1, %s FROM tokens_unified LIMIT 1 RETURNING tableoid::regclass::text, id",
            [next_month + dt.timedelta(hours=5)],
        ).fetchone()
        assert landed[0] == month_partition(next_month)
        assert landed[1] == 500_001  # the id sequence carried over
        with pytest.raises(Exception, match="chk_positive_price"):
            conn.execute(
                "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address,"
                " sol_amount, token_amount, price_sol, slot, block_time) SELECT 'neg', mint_address,"
                " 'amm_pool', 'buy', 'w', 1, 1, -1, 1, now() FROM tokens_unified LIMIT 1"
            )
        cutoff = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
        old = conn.execute(
            "SELECT count(*), md5(string_agg(signature, ',' ORDER BY id)) FROM trades_unified WHERE block_time < %s",
            [cutoff],
        ).fetchone()
        conn.execute("CALL archive_old_trades(%s, 25000)", [cutoff])
        assert (
            conn.execute("SELECT count(*), md5(string_agg(signature, ',' ORDER BY id)) FROM trades_archive").fetchone()
            == old
        )
        assert conn.execute("SELECT count(*) FROM trades_unified WHERE block_time < %s", [cutoff]).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM trades_unified").fetchone()[0] + old[0] == 500_001
        assert conn.execute("SELECT status, rows_moved FROM archival_runs").fetchall() == [("completed", old[0])]


def test_lint_passes_on_bundled(db: Database) -> None:
    """migration-runner lint reports no finding at all on migrations/."""
    result = db.run("lint", env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout
    assert result.stdout.strip().endswith("6 files, 0 errors, 0 warnings")


def test_verify_passes_on_bundled(db: Database) -> None:
    """migration-runner verify applies 001-006 twice in a scratch database: the second pass changes nothing."""
    result = db.run("verify", env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout + result.stderr
    assert "verified" in result.stdout
    assert db.query("SELECT count(*) FROM pg_database WHERE datname LIKE 'verify\\_%%'") == [(0,)]
