-- Migration: 002_extended_metadata_features.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Extended token metadata: social links, a metadata quality score, and
--   enrichment tracking (per-token status columns and a log of enrichment attempts).
--
-- Expand-only: new nullable columns or columns with constant defaults (no table rewrite since
--   PostgreSQL 11) and a new table. Indexes on tokens_unified for these columns are built
--   concurrently in 005.
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS description TEXT;
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS twitter VARCHAR(256);
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS telegram VARCHAR(256);
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS discord VARCHAR(256);
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS website VARCHAR(512);
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS metadata_score SMALLINT;
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS metadata_source VARCHAR(32);
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS metadata_updated_at TIMESTAMPTZ;
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS enrichment_status VARCHAR(16) NOT NULL DEFAULT 'pending';
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS enrichment_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens_unified ADD COLUMN IF NOT EXISTS last_enrichment_at TIMESTAMPTZ;

CREATE TABLE IF NOT EXISTS token_enrichment_attempts (
    id            BIGSERIAL PRIMARY KEY,
    mint_address  VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    source        VARCHAR(32) NOT NULL,
    status        VARCHAR(16) NOT NULL,
    fields_filled TEXT[] NOT NULL DEFAULT '{}',
    error_message TEXT,
    duration_ms   INTEGER,
    attempted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_enrichment_attempts_status_check CHECK (status IN ('success', 'partial', 'failed'))
);

CREATE INDEX IF NOT EXISTS idx_enrichment_attempts_mint_time
    ON token_enrichment_attempts (mint_address, attempted_at DESC);

-- ==== END MIGRATION ====
