"""The bundled token-monitor migrations (migrations/001-006) on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from bench import sample_data
from runner.catalog import difference, fingerprint
from runner.discover import analyse, discover
from tests.conftest import Database, wait_for

BUNDLED = Path(__file__).resolve().parent.parent / "migrations"
ROW_DIGEST = "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {} t"


def month_partition(moment: dt.datetime) -> str:
    return f"trades_unified_y{moment:%Y}m{moment:%m}"


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def cutover(now: dt.datetime) -> dt.datetime:
    """004's cutover: the first UTC month start at least 7 days after ``now``."""
    return add_months(now + dt.timedelta(days=7), 1)


def partitions(db: Database) -> dict[str, str]:
    """Partition name -> bound of trades_unified."""
    return dict(
        db.query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c"
            " ON c.oid = i.inhrelid WHERE i.inhparent = 'trades_unified'::regclass"
        )
    )


def expected_partitions(now: dt.datetime) -> dict[str, str]:
    """trades_unified_legacy up to the cutover, a partition per month from it to now + 3 months, DEFAULT."""

    def utc(moment: dt.datetime) -> str:
        return f"'{moment:%Y-%m-%d} 00:00:00+00'"

    start = cutover(now)
    months = [add_months(start, i) for i in range(4) if add_months(start, i) <= add_months(now, 3)]
    expected = {
        "trades_unified_legacy": f"FOR VALUES FROM (MINVALUE) TO ({utc(start)})",
        "trades_unified_default": "DEFAULT",
    }
    for month in months:
        expected[month_partition(month)] = f"FOR VALUES FROM ({utc(month)}) TO ({utc(add_months(month, 1))})"
    return expected


def run_bundled(db: Database, *args: str) -> None:
    result = db.run("migrate", *args, env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout + result.stderr


def test_bundled_files_pass_validation() -> None:
    """001-006 are named, numbered and parse cleanly; 004 and 005 run outside a transaction."""
    migrations = discover(BUNDLED)
    assert [m.name for m in migrations] == [
        "001_initial_schema.sql",
        "002_extended_metadata_features.sql",
        "003_add_holder_analysis_tables.sql",
        "004_partition_trades_table.sql",
        "005_add_analytics_indexes.sql",
        "006_create_archival_tables.sql",
    ]
    assert [analyse(m).transactional for m in migrations] == [True, True, True, False, False, True]
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
    """All six apply to an empty database; trades_unified ends partitioned: the (empty) legacy partition up to
    the cutover, monthly partitions from it, a DEFAULT partition, every index valid."""
    run_bundled(db)
    assert len(db.applied()) == 6
    assert db.query("SELECT relkind FROM pg_class WHERE oid = 'trades_unified'::regclass") == [("p",)]
    assert partitions(db) == expected_partitions(dt.datetime.now(dt.UTC))
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
    """001-003, the 500,000-trade sample, then 004-006: every trade identical and now in the legacy partition,
    attached without a scan; new months land in their partitions; archival moves exactly the old rows."""
    run_bundled(db, "--target", "3")
    with db.connect() as conn:
        with conn.transaction():
            counts = sample_data.load(conn)
        trades_before = conn.execute(ROW_DIGEST.format("trades_unified")).fetchone()
        tokens_before = conn.execute("SELECT count(*) FROM tokens_unified").fetchone()
        conn.execute(f'ALTER DATABASE "{db.name}" SET log_min_messages = debug1')
    assert trades_before[0] == counts["trades_unified"] == 500_000
    started = time.monotonic()
    result = db.run("migrate", env=db.env(MIGRATIONS_DIR=str(BUNDLED)))
    assert result.code == 0, result.stdout
    durations = {e["migration"]: e["duration_ms"] for e in result.named("migration_applied")}
    print(
        f"\n004 on the {counts['trades_unified']}-trade sample: {durations['004_partition_trades_table.sql']} ms;"
        f" 004-006 whole run {time.monotonic() - started:.1f}s"
    )
    assert (
        'partition constraint for table "trades_unified_legacy" is implied by existing constraints' in db.cluster.log()
    )
    now = dt.datetime.now(dt.UTC)
    assert partitions(db) == expected_partitions(now)
    with db.connect() as conn:
        conn.execute(f'ALTER DATABASE "{db.name}" RESET log_min_messages')
        assert conn.execute(ROW_DIGEST.format("trades_unified")).fetchone() == trades_before
        assert conn.execute(ROW_DIGEST.format("trades_unified_legacy")).fetchone() == trades_before
        assert conn.execute("SELECT count(*) FROM tokens_unified").fetchone() == tokens_before
        assert conn.execute("SELECT to_regclass('trades_unified_unpartitioned')").fetchone() == (None,)
        next_month = add_months(now, 1)
        landed = conn.execute(
            "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address, sol_amount,"
            " token_amount, price_sol, slot, block_time) SELECT 'next-month-sig', mint_address, 'amm_pool', 'buy',"
            " 'wallet', 1, 1, 0.1, 1, %s FROM tokens_unified LIMIT 1 RETURNING tableoid::regclass::text, id",
            [next_month + dt.timedelta(hours=5)],
        ).fetchone()
        assert landed[0] == (month_partition(next_month) if next_month >= cutover(now) else "trades_unified_legacy")
        assert landed[1] == 500_001  # the id sequence carried over
        after_cutover = conn.execute(
            "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address, sol_amount,"
            " token_amount, price_sol, slot, block_time) SELECT 'after-cutover-sig', mint_address, 'amm_pool', 'buy',"
            " 'wallet', 1, 1, 0.1, 1, %s FROM tokens_unified LIMIT 1 RETURNING tableoid::regclass::text",
            [cutover(now)],
        ).fetchone()
        assert after_cutover == (month_partition(cutover(now)),)
        old_trade = conn.execute("SELECT signature, block_time FROM trades_unified WHERE id = 7").fetchone()
        for conflict in ("", "(signature, block_time)"):
            redelivered = conn.execute(
                "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address, sol_amount,"
                " token_amount, price_sol, slot, block_time) SELECT %s, mint_address, 'amm_pool', 'buy', 'w', 1, 1,"
                f" 0.1, 1, %s FROM tokens_unified LIMIT 1 ON CONFLICT {conflict} DO NOTHING",
                old_trade,
            )
            assert redelivered.rowcount == 0
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
        assert conn.execute("SELECT count(*) FROM trades_unified").fetchone()[0] + old[0] == 500_002
        assert conn.execute("SELECT status, rows_moved FROM archival_runs").fetchall() == [("completed", old[0])]


def monitor_writer(db: Database, stop: threading.Event, landed: list[str], errors: list[BaseException]) -> None:
    """The monitor's statements in a loop, each in its own transaction: insert a trade (ON CONFLICT DO NOTHING,
    the form that works throughout 004), update its token's latest price, read the token's recent trades.
    ``landed`` gets the table each insert went to."""
    try:
        with db.connect() as conn:
            mints = [m for (m,) in conn.execute("SELECT mint_address FROM tokens_unified ORDER BY 1 LIMIT 50")]
            n = 0
            while not stop.is_set():
                mint = mints[n % len(mints)]
                row = conn.execute(
                    "INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address,"
                    " sol_amount, token_amount, price_sol, slot, block_time) VALUES (%s, %s, 'amm_pool', 'buy',"
                    " 'writer', 1, 1, 0.5, 1, now()) ON CONFLICT DO NOTHING RETURNING tableoid::regclass::text",
                    [f"writer-{n}", mint],
                ).fetchone()
                assert row is not None
                landed.append(row[0])
                conn.execute("UPDATE tokens_unified SET latest_price_sol = 0.5 WHERE mint_address = %s", [mint])
                conn.execute(
                    "SELECT * FROM trades_unified WHERE mint_address = %s ORDER BY block_time DESC LIMIT 20", [mint]
                ).fetchall()
                n += 1
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_conversion_keeps_a_concurrent_writer_going(db: Database) -> None:
    """A writer inserting, updating and reading all through 004 never fails, writes before and after the swap,
    and every row it wrote is in the partitioned table."""
    run_bundled(db, "--target", "3")
    with db.connect() as conn, conn.transaction():
        sample_data.load(conn, trades=50_000, tokens=500)
    stop, landed, errors = threading.Event(), [], []
    writer = threading.Thread(target=monitor_writer, args=(db, stop, landed, errors))
    writer.start()
    try:
        wait_for(lambda: len(landed) >= 20 or errors, what="the writer's first 20 inserts")
        run_bundled(db, "--target", "4")
        written = len(landed)
        wait_for(lambda: len(landed) >= written + 20 or errors, what="20 inserts after 004")
    finally:
        stop.set()
        writer.join(30)
    assert errors == []
    assert landed[0] == "trades_unified"  # the plain table, before the swap
    assert landed[-1] == "trades_unified_legacy"  # the current month's partition, after it
    assert db.query("SELECT count(*) FROM trades_unified WHERE user_address = 'writer'") == [(len(landed),)]
    assert db.query("SELECT count(*) FROM trades_unified") == [(50_000 + len(landed),)]


def test_stale_cutover_is_replaced(db: Database) -> None:
    """A range CHECK left by a run that stopped long ago, its cutover less than a day ahead, is replaced by a
    later cutover before the swap, so writers of the coming days are never refused."""
    run_bundled(db, "--target", "3")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    db.query(
        "ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_legacy_range"
        f" CHECK (block_time < '{soon.isoformat()}'::timestamptz) NOT VALID"
    )
    run_bundled(db)
    assert partitions(db) == expected_partitions(dt.datetime.now(dt.UTC))


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
