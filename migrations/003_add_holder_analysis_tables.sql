-- Migration: 003_add_holder_analysis_tables.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Holder analysis: holder snapshots per token, wallet classifications, per-token
--   holder details, analysis runs and holder trends; a trigger keeps each wallet's
--   last_activity_at current whenever it is seen holding a token.
--
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

CREATE TABLE IF NOT EXISTS holder_snapshots (
    id                BIGSERIAL PRIMARY KEY,
    mint_address      VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    snapshot_time     TIMESTAMPTZ NOT NULL DEFAULT now(),
    total_holders     INTEGER NOT NULL,
    unique_holders    INTEGER NOT NULL,
    top_10_percentage NUMERIC(6, 3),
    top_25_percentage NUMERIC(6, 3),
    gini_coefficient  NUMERIC(6, 5),
    holder_score      SMALLINT,
    slot              BIGINT,
    CONSTRAINT holder_snapshots_mint_time_key UNIQUE (mint_address, snapshot_time),
    CONSTRAINT holder_snapshots_score_check CHECK (holder_score BETWEEN 0 AND 300)
);

CREATE TABLE IF NOT EXISTS wallet_classifications (
    wallet_address   VARCHAR(44) PRIMARY KEY,
    classification   VARCHAR(20) NOT NULL DEFAULT 'unknown',
    confidence       NUMERIC(4, 3),
    first_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_activity_at TIMESTAMPTZ,
    tokens_held      INTEGER NOT NULL DEFAULT 0,
    metadata         JSONB NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT wallet_classifications_classification_check
        CHECK (classification IN ('sniper', 'bot', 'bundler', 'developer', 'whale', 'normal', 'unknown'))
);

CREATE TABLE IF NOT EXISTS token_holder_details (
    id             BIGSERIAL PRIMARY KEY,
    snapshot_id    BIGINT NOT NULL REFERENCES holder_snapshots (id) ON DELETE CASCADE,
    mint_address   VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    wallet_address VARCHAR(44) NOT NULL,
    balance        NUMERIC(40, 0) NOT NULL,
    percentage     NUMERIC(9, 6) NOT NULL,
    rank           INTEGER NOT NULL,
    CONSTRAINT token_holder_details_snapshot_wallet_key UNIQUE (snapshot_id, wallet_address)
);

CREATE TABLE IF NOT EXISTS holder_analysis_runs (
    id               UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    mint_address     VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    status           VARCHAR(16) NOT NULL DEFAULT 'running',
    holders_analyzed INTEGER,
    error_message    TEXT,
    CONSTRAINT holder_analysis_runs_status_check CHECK (status IN ('running', 'completed', 'failed'))
);

CREATE TABLE IF NOT EXISTS holder_trends (
    id                  BIGSERIAL PRIMARY KEY,
    mint_address        VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    time_window         VARCHAR(4) NOT NULL,
    holder_count_change INTEGER NOT NULL,
    growth_rate         NUMERIC(10, 4),
    top_10_change       NUMERIC(7, 3),
    calculated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT holder_trends_window_check CHECK (time_window IN ('1h', '6h', '24h', '7d')),
    CONSTRAINT holder_trends_mint_window_time_key UNIQUE (mint_address, time_window, calculated_at)
);

CREATE INDEX IF NOT EXISTS idx_holder_snapshots_mint_time ON holder_snapshots (mint_address, snapshot_time DESC);
CREATE INDEX IF NOT EXISTS idx_holder_details_wallet ON token_holder_details (wallet_address);
CREATE INDEX IF NOT EXISTS idx_holder_details_mint ON token_holder_details (mint_address);
CREATE INDEX IF NOT EXISTS idx_wallet_classifications_class ON wallet_classifications (classification);
CREATE INDEX IF NOT EXISTS idx_holder_analysis_runs_mint ON holder_analysis_runs (mint_address, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_holder_trends_mint_window ON holder_trends (mint_address, time_window, calculated_at DESC);

CREATE OR REPLACE FUNCTION update_wallet_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wallet_classifications (wallet_address, last_activity_at, tokens_held)
    VALUES (NEW.wallet_address, now(), 1)
    ON CONFLICT (wallet_address) DO UPDATE
        SET last_activity_at = EXCLUDED.last_activity_at,
            tokens_held = (SELECT count(DISTINCT mint_address) FROM token_holder_details
                           WHERE wallet_address = NEW.wallet_address),
            updated_at = now();
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER trg_token_holder_details_wallet_activity
    AFTER INSERT ON token_holder_details
    FOR EACH ROW EXECUTE FUNCTION update_wallet_activity();

CREATE OR REPLACE TRIGGER trg_wallet_classifications_updated_at
    BEFORE UPDATE ON wallet_classifications
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ==== END MIGRATION ====
