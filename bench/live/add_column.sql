-- Migration: 004_add_token_market_cap_sol.sql
-- Author: migration-runner maintainers
-- Date: 2026-12-02
-- Description: Bench (python -m bench.live): a token's market cap in SOL, a nullable column
--   (no rewrite), filled by the backfill that follows.

-- ==== START MIGRATION ====

ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS latest_market_cap_sol NUMERIC(30, 9);

-- ==== END MIGRATION ====
