-- Migration: 005_backfill_token_market_cap_sol.sql
-- Author: migration-runner maintainers
-- Date: 2026-12-02
-- Description: Bench (python -m bench.live), case (b): the same backfill as case (a), as a
--   batched data file. The runner applies the statement in short transactions over ranges of
--   the table's key (mint_address, the primary key), adding the range to the WHERE clause,
--   pausing 20 ms between batches and sizing them towards 50 ms each (the longest an
--   application's price update may wait for a batch's row lock), halving them when sessions
--   waited for a batch more than a fifth of its time; an interrupted run resumes after the
--   last committed range. WHERE latest_market_cap_sol IS NULL also makes a second run a no-op.
-- runner: batch batch-size=2000 pause=20ms batch-time=50ms max-blocking=20%

-- ==== START MIGRATION ====

UPDATE tokens_unified
SET latest_market_cap_sol = latest_price_sol * total_supply / power(10::numeric, decimals)
WHERE latest_market_cap_sol IS NULL;

-- ==== END MIGRATION ====
