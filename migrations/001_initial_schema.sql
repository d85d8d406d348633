-- Migration: 001_initial_schema.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Token-monitor core schema: tokens launched on pump.fun bonding curves and
--   traded on pump.swap AMM pools (tokens_unified), one row per swap (trades_unified), price
--   snapshots, AMM pool states and SOL/USD prices, with keys, foreign keys, indexes and an
--   updated_at trigger.
--
-- Units: SOL amounts in lamports (1 SOL = 1e9), token amounts in base units (6 decimals on
--   pump.fun), prices in SOL or USD per whole token.
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE TABLE IF NOT EXISTS tokens_unified (
    mint_address                  VARCHAR(44) PRIMARY KEY,
    symbol                        VARCHAR(32),
    name                          VARCHAR(128),
    uri                           TEXT,
    image_uri                     TEXT,
    creator                       VARCHAR(44),
    first_program                 VARCHAR(16) NOT NULL,
    current_program               VARCHAR(16) NOT NULL,
    first_seen_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    first_seen_slot               BIGINT,
    first_price_sol               NUMERIC(30, 18),
    first_price_usd               NUMERIC(30, 12),
    first_market_cap_usd          NUMERIC(24, 2),
    latest_price_sol              NUMERIC(30, 18),
    latest_price_usd              NUMERIC(30, 12),
    latest_market_cap_usd         NUMERIC(24, 2),
    latest_update_slot            BIGINT,
    bonding_curve_key             VARCHAR(44),
    latest_bonding_curve_progress NUMERIC(6, 3),
    bonding_curve_complete        BOOLEAN NOT NULL DEFAULT false,
    graduated_to_amm              BOOLEAN NOT NULL DEFAULT false,
    graduation_at                 TIMESTAMPTZ,
    graduation_slot               BIGINT,
    graduation_signature          VARCHAR(88),
    graduation_price_sol          NUMERIC(30, 18),
    amm_pool_address              VARCHAR(44),
    total_supply                  NUMERIC(40, 0),
    decimals                      SMALLINT NOT NULL DEFAULT 6,
    mint_authority                VARCHAR(44),
    freeze_authority              VARCHAR(44),
    is_active                     BOOLEAN NOT NULL DEFAULT true,
    is_stale                      BOOLEAN NOT NULL DEFAULT false,
    threshold_crossed_at          TIMESTAMPTZ,
    created_at                    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT tokens_unified_first_program_check CHECK (first_program IN ('bonding_curve', 'amm_pool')),
    CONSTRAINT tokens_unified_current_program_check CHECK (current_program IN ('bonding_curve', 'amm_pool')),
    CONSTRAINT tokens_unified_progress_check CHECK (latest_bonding_curve_progress BETWEEN 0 AND 100)
);

CREATE TABLE IF NOT EXISTS trades_unified (
    id                     BIGSERIAL PRIMARY KEY,
    signature              VARCHAR(88) NOT NULL UNIQUE,
    mint_address           VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    program                VARCHAR(16) NOT NULL,
    trade_type             VARCHAR(4) NOT NULL,
    user_address           VARCHAR(44) NOT NULL,
    sol_amount             NUMERIC(30, 0) NOT NULL,
    token_amount           NUMERIC(40, 0) NOT NULL,
    price_sol              NUMERIC(30, 18) NOT NULL,
    price_usd              NUMERIC(30, 12),
    market_cap_usd         NUMERIC(24, 2),
    virtual_sol_reserves   NUMERIC(30, 0),
    virtual_token_reserves NUMERIC(40, 0),
    bonding_curve_progress NUMERIC(6, 3),
    slot                   BIGINT NOT NULL,
    block_time             TIMESTAMPTZ NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT trades_unified_program_check CHECK (program IN ('bonding_curve', 'amm_pool')),
    CONSTRAINT trades_unified_trade_type_check CHECK (trade_type IN ('buy', 'sell'))
);

CREATE TABLE IF NOT EXISTS price_snapshots_unified (
    id                     BIGSERIAL PRIMARY KEY,
    mint_address           VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    program                VARCHAR(16) NOT NULL,
    price_sol              NUMERIC(30, 18) NOT NULL,
    price_usd              NUMERIC(30, 12),
    market_cap_usd         NUMERIC(24, 2),
    virtual_sol_reserves   NUMERIC(30, 0),
    virtual_token_reserves NUMERIC(40, 0),
    bonding_curve_progress NUMERIC(6, 3),
    slot                   BIGINT NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS amm_pool_states (
    id                     BIGSERIAL PRIMARY KEY,
    mint_address           VARCHAR(44) NOT NULL REFERENCES tokens_unified (mint_address),
    pool_address           VARCHAR(44) NOT NULL,
    virtual_sol_reserves   NUMERIC(30, 0) NOT NULL,
    virtual_token_reserves NUMERIC(40, 0) NOT NULL,
    real_sol_reserves      NUMERIC(30, 0),
    real_token_reserves    NUMERIC(40, 0),
    pool_open              BOOLEAN NOT NULL DEFAULT true,
    slot                   BIGINT NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sol_prices (
    id         BIGSERIAL PRIMARY KEY,
    price_usd  NUMERIC(20, 8) NOT NULL,
    source     VARCHAR(32) NOT NULL DEFAULT 'pyth',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sol_prices_source_created_at_key UNIQUE (source, created_at)
);

-- The seed's constraint example, guarded as the seed shows (and by table, since constraint
-- names are only unique per table).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'chk_positive_price' AND conrelid = 'trades_unified'::regclass
    ) THEN
        ALTER TABLE trades_unified ADD CONSTRAINT chk_positive_price CHECK (price_sol >= 0);
    END IF;
END $$;

CREATE INDEX IF NOT EXISTS idx_tokens_symbol_trgm ON tokens_unified USING gin (symbol gin_trgm_ops);
CREATE INDEX IF NOT EXISTS idx_tokens_name_trgm ON tokens_unified USING gin (name gin_trgm_ops);
CREATE INDEX IF NOT EXISTS idx_tokens_current_program ON tokens_unified (current_program);
CREATE INDEX IF NOT EXISTS idx_tokens_first_seen_at ON tokens_unified (first_seen_at DESC);
CREATE INDEX IF NOT EXISTS idx_tokens_graduated ON tokens_unified (graduation_at DESC) WHERE graduated_to_amm;

CREATE INDEX IF NOT EXISTS idx_trades_mint_time ON trades_unified (mint_address, block_time DESC);
CREATE INDEX IF NOT EXISTS idx_trades_block_time ON trades_unified (block_time DESC);
CREATE INDEX IF NOT EXISTS idx_trades_user ON trades_unified (user_address);

CREATE INDEX IF NOT EXISTS idx_price_snapshots_mint_time ON price_snapshots_unified (mint_address, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_amm_pool_states_mint_slot ON amm_pool_states (mint_address, slot DESC);
CREATE INDEX IF NOT EXISTS idx_sol_prices_created_at ON sol_prices (created_at DESC);

CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER trg_tokens_unified_updated_at
    BEFORE UPDATE ON tokens_unified
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ==== END MIGRATION ====
