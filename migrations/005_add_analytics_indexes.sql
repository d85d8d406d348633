-- Migration: 005_add_analytics_indexes.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Indexes for the analytics queries (enrichment queue, market-cap leaderboard,
--   graduation feed, wallet lookups), built CONCURRENTLY so writers are never blocked.
--
-- Non-transactional: CREATE INDEX CONCURRENTLY cannot run in a transaction block, so the
--   runner runs these statements one by one in autocommit. If one fails it leaves an INVALID
--   index; the runner drops it before the retry builds it again (IF NOT EXISTS alone would
--   keep the invalid one).
-- trades_unified is partitioned since 004 and PostgreSQL cannot build an index CONCURRENTLY
--   on a partitioned table; its indexes are built in 004.
-- Idempotent: every statement is safe to run twice.
-- runner: no-transaction

-- ==== START MIGRATION ====

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_tokens_enrichment_queue
    ON tokens_unified (enrichment_status, last_enrichment_at NULLS FIRST)
    WHERE enrichment_status IN ('pending', 'failed');

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_tokens_active_market_cap
    ON tokens_unified (latest_market_cap_usd DESC NULLS LAST)
    WHERE is_active;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_tokens_threshold_crossed
    ON tokens_unified (threshold_crossed_at DESC)
    WHERE threshold_crossed_at IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_tokens_creator
    ON tokens_unified (creator);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_price_snapshots_created_at
    ON price_snapshots_unified USING brin (created_at);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_wallet_classifications_last_activity
    ON wallet_classifications (classification, last_activity_at DESC);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_holder_snapshots_score
    ON holder_snapshots (holder_score DESC, snapshot_time DESC);

-- ==== END MIGRATION ====
