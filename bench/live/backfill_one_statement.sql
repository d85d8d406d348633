-- Migration: 005_backfill_token_market_cap_sol.sql
-- Author: migration-runner maintainers
-- Date: 2026-12-02
-- Description: Bench (python -m bench.live), case (a): fill latest_market_cap_sol of every
--   token the way a backfill is written today, one UPDATE in one transaction. Every row it
--   updates stays locked until it commits, and the monitor updates a token's latest price
--   on every trade.

-- ==== START MIGRATION ====

UPDATE tokens_unified
SET latest_market_cap_sol = latest_price_sol * total_supply / power(10::numeric, decimals)
WHERE latest_market_cap_sol IS NULL;

-- ==== END MIGRATION ====
