"""Deterministic sample data for the token-monitor schema as of migration 003.

``load(conn, seed=42, tokens=5_000, trades=500_000)`` fills tokens, trades over six months
(2026-05-01 to 2026-10-31 UTC), price snapshots, SOL/USD prices and holder data through COPY.
The same seed gives the same rows on every PostgreSQL version (all randomness is Python's).
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
