"""Deterministic sample data for the token-monitor schema as of migration 003.

``load(conn, seed=42, tokens=5_000, trades=500_000)`` fills tokens, trades over six months
(2026-05-01 to 2026-10-31 UTC), price snapshots, SOL/USD prices and holder data through COPY.
The same seed gives the same rows on every PostgreSQL version (all randomness is Python's).

``load_large(conn, tokens=500_000, trades=5_000_000)`` fills tokens and trades only, generated
by the server in SQL (about ten times faster than COPY from Python) for the live-traffic bench.
Its rows differ from ``load``'s but are as deterministic: every value derives from the row
number through md5 and ``hashint8extended``, whose results PostgreSQL keeps stable across
versions (hash partitioning depends on them). Trades are spread evenly over the same six
months in block_time order, as the monitor appends them; ``bench_mint(n)`` and
``bench_wallet(n)`` are left in the database so that application traffic can name token n.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
START = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SPAN_S = int((END - START).total_seconds())
SLOTS_PER_S = 2.5
FIRST_SLOT = 380_000_000


def b58(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(BASE58, k=length))


def load(conn: Any, seed: int = 42, tokens: int = 5_000, trades: int = 500_000) -> dict[str, int]:
    """Insert the sample; returns row counts per table. Runs in the caller's connection."""
    rng = random.Random(seed)
    mints = [b58(rng, 44) for _ in range(tokens)]
    wallets = [b58(rng, 44) for _ in range(max(50, tokens * 4))]
    born = sorted(rng.randrange(0, SPAN_S - 86_400) for _ in range(tokens))
    with conn.cursor() as cur:
        with cur.copy(
            "COPY tokens_unified (mint_address, symbol, name, uri, creator, first_program, current_program,"
            " first_seen_at, first_seen_slot, first_price_sol, latest_price_sol, latest_market_cap_usd,"
            " bonding_curve_key, latest_bonding_curve_progress, bonding_curve_complete, graduated_to_amm,"
            " graduation_at, total_supply, decimals, enrichment_status, metadata_score) FROM STDIN"
        ) as copy:
            for i, mint in enumerate(mints):
                graduated = rng.random() < 0.02
                seen = START + dt.timedelta(seconds=born[i])
                copy.write_row(
                    (
                        mint,
                        f"T{i:04d}",
                        f"Token {i}",
                        f"https://ipfs.io/ipfs/{b58(rng, 46)}",
                        rng.choice(wallets),
                        "bonding_curve",
                        "amm_pool" if graduated else "bonding_curve",
                        seen,
                        FIRST_SLOT + int(born[i] * SLOTS_PER_S),
                        Decimal("0.000000028"),
                        Decimal(f"{rng.uniform(2.8e-8, 4e-7):.18f}"),
                        Decimal(f"{rng.uniform(4_000, 900_000):.2f}"),
                        b58(rng, 44),
                        Decimal(f"{100 if graduated else rng.uniform(0, 99.9):.3f}"),
                        graduated,
                        graduated,
                        seen + dt.timedelta(hours=rng.randint(1, 72)) if graduated else None,
                        1_000_000_000_000_000,
                        6,
                        rng.choice(["pending", "completed", "failed"]),
                        rng.randint(0, 100),
                    )
                )
        with cur.copy(
            "COPY trades_unified (id, signature, mint_address, program, trade_type, user_address, sol_amount,"
            " token_amount, price_sol, price_usd, market_cap_usd, virtual_sol_reserves, virtual_token_reserves,"
            " bonding_curve_progress, slot, block_time) FROM STDIN"
        ) as copy:
            for trade_id in range(1, trades + 1):
                token = rng.randrange(tokens)
                offset = born[token] + int(rng.random() ** 2 * (SPAN_S - born[token] - 1))
                sol = rng.randint(10_000_000, 5_000_000_000)
                price = rng.uniform(2.8e-8, 4e-7)
                copy.write_row(
                    (
                        trade_id,
                        b58(rng, 88),
                        mints[token],
                        "bonding_curve",
                        "buy" if rng.random() < 0.55 else "sell",
                        rng.choice(wallets),
                        sol,
                        int(sol / 1e9 / price * 1e6),
                        Decimal(f"{price:.18f}"),
                        Decimal(f"{price * 150:.12f}"),
                        Decimal(f"{price * 150 * 1e9:.2f}"),
                        30_000_000_000 + sol,
                        1_073_000_000_000_000 - sol * 1000,
                        Decimal(f"{rng.uniform(0, 99):.3f}"),
                        FIRST_SLOT + int(offset * SLOTS_PER_S),
                        START + dt.timedelta(seconds=offset),
                    )
                )
        cur.execute("SELECT setval('trades_unified_id_seq', %s)", [trades])
        snapshots = tokens * 4
        with cur.copy(
            "COPY price_snapshots_unified (mint_address, program, price_sol, price_usd, market_cap_usd, slot,"
            " created_at) FROM STDIN"
        ) as copy:
            for _ in range(snapshots):
                token = rng.randrange(tokens)
                offset = born[token] + rng.randrange(SPAN_S - born[token])
                price = rng.uniform(2.8e-8, 4e-7)
                copy.write_row(
                    (
                        mints[token],
                        "bonding_curve",
                        Decimal(f"{price:.18f}"),
                        Decimal(f"{price * 150:.12f}"),
                        Decimal(f"{price * 1.5e11:.2f}"),
                        FIRST_SLOT + int(offset * SLOTS_PER_S),
                        START + dt.timedelta(seconds=offset),
                    )
                )
        hours = SPAN_S // 3600
        with cur.copy("COPY sol_prices (price_usd, source, created_at) FROM STDIN") as copy:
            for hour in range(hours):
                copy.write_row((Decimal(f"{rng.uniform(120, 210):.8f}"), "pyth", START + dt.timedelta(hours=hour)))
        holder_tokens = min(tokens, 500)
        cur.execute(
            "INSERT INTO holder_snapshots (mint_address, snapshot_time, total_holders, unique_holders,"
            " top_10_percentage, holder_score) SELECT unnest(%s::text[]), %s, 10, 10, 42.5, 150",
            [mints[:holder_tokens], END],
        )
        cur.execute("SELECT id, mint_address FROM holder_snapshots ORDER BY id")
        details = [
            (snapshot, mint, wallets[(snapshot * 7 + rank) % len(wallets)], 10_000 * (11 - rank), Decimal("10.0"), rank)
            for snapshot, mint in cur.fetchall()
            for rank in range(1, 11)
        ]
        cur.executemany(
            "INSERT INTO token_holder_details (snapshot_id, mint_address, wallet_address, balance, percentage, rank)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            details,
        )
    return {
        "tokens_unified": tokens,
        "trades_unified": trades,
        "price_snapshots_unified": snapshots,
        "sol_prices": hours,
        "holder_snapshots": holder_tokens,
        "token_holder_details": len(details),
    }


LARGE_FUNCTIONS = """
CREATE OR REPLACE FUNCTION bench_mint(n BIGINT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT left(md5('mint' || n) || md5('mint:' || n), 44) $$;
CREATE OR REPLACE FUNCTION bench_wallet(n BIGINT) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT left(md5('wallet' || n) || md5('wallet:' || n), 44) $$;
CREATE OR REPLACE FUNCTION bench_hash(n BIGINT, seed BIGINT, modulus BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (hashint8extended(n, seed) & 9223372036854775807) % modulus $$;
"""
LARGE_TOKENS = """
INSERT INTO tokens_unified (mint_address, symbol, name, creator, first_program, current_program, first_seen_at,
    first_seen_slot, first_price_sol, latest_price_sol, latest_price_usd, latest_market_cap_usd,
    latest_update_slot, bonding_curve_key, latest_bonding_curve_progress, total_supply, decimals,
    enrichment_status, metadata_score)
SELECT bench_mint(n), 'T' || n, 'Token ' || n, bench_wallet(bench_hash(n, 1, %(wallets)s)), 'bonding_curve',
    'bonding_curve', %(start)s::timestamptz + make_interval(secs => (n - 1) * %(span)s / %(tokens)s),
    %(first_slot)s + (n - 1) * %(span)s * 2.5 / %(tokens)s, 0.000000028, price, price * 150, price * 150e9,
    %(first_slot)s + (n - 1) * %(span)s * 2.5 / %(tokens)s, bench_wallet(-n), bench_hash(n, 2, 99900) / 1000.0,
    1000000000000000, 6, (ARRAY['pending', 'completed', 'failed'])[1 + bench_hash(n, 3, 3)], bench_hash(n, 4, 101)
FROM generate_series(1, %(tokens)s::bigint) AS n,
    LATERAL (SELECT (28 + bench_hash(n, 5, 372)) / 1e9 AS price) AS p
"""
LARGE_TRADES = """
INSERT INTO trades_unified (id, signature, mint_address, program, trade_type, user_address, sol_amount, token_amount,
    price_sol, price_usd, market_cap_usd, virtual_sol_reserves, virtual_token_reserves, bonding_curve_progress,
    slot, block_time)
SELECT i, md5(i || 's1') || md5(i || 's2') || left(md5(i || 's3'), 24), bench_mint(1 + bench_hash(i, 11, %(tokens)s)),
    'bonding_curve', CASE WHEN bench_hash(i, 12, 100) < 55 THEN 'buy' ELSE 'sell' END,
    bench_wallet(bench_hash(i, 13, %(wallets)s)), sol, floor(sol / price / 1000), price, price * 150,
    price * 150e9, 30000000000 + sol, 1073000000000000 - sol * 1000, bench_hash(i, 14, 99000) / 1000.0,
    %(first_slot)s + offset_s * 2.5, %(start)s::timestamptz + make_interval(secs => offset_s)
FROM generate_series(%(first)s::bigint, %(last)s) AS i,
    LATERAL (SELECT 10000000 + bench_hash(i, 15, 4990000000) AS sol, (28 + bench_hash(i, 16, 372)) / 1e9 AS price,
                    (i - 1) * %(span)s / %(trades)s AS offset_s) AS v
"""


def load_large(conn: Any, tokens: int = 500_000, trades: int = 5_000_000, chunk: int = 500_000) -> dict[str, int]:
    """Generate ``tokens`` tokens and ``trades`` trades in SQL (see the module docstring).

    Runs in the caller's connection and transaction; foreign-key triggers are skipped for the
    load (``session_replication_role = replica``, superuser only) since every trade names a
    generated token. Trades go in ``chunk``-row statements.
    """
    params = {
        "tokens": tokens,
        "trades": trades,
        "wallets": max(50, tokens * 4),
        "start": START,
        "span": SPAN_S,
        "first_slot": FIRST_SLOT,
    }
    with conn.cursor() as cur:
        cur.execute(LARGE_FUNCTIONS)
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute(LARGE_TOKENS, params)
        for first in range(1, trades + 1, chunk):
            cur.execute(LARGE_TRADES, {**params, "first": first, "last": min(trades, first + chunk - 1)})
        cur.execute("SELECT setval('trades_unified_id_seq', %s)", [trades])
    return {"tokens_unified": tokens, "trades_unified": trades}
