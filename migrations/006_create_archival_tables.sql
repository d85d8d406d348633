-- Migration: 006_create_archival_tables.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Archive tables for trades and price snapshots, a log of archival runs, and a
--   procedure that moves trades older than a cut-off into trades_archive in batches.
--
-- Usage: CALL archive_old_trades(now() - interval '90 days', 10000);
--   It commits after every batch, so it must be called outside a transaction block; an
--   interrupted call is resumed by calling it again (rows already archived are skipped).
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

CREATE TABLE IF NOT EXISTS trades_archive (
    id                     BIGINT NOT NULL,
    signature              VARCHAR(88) NOT NULL,
    mint_address           VARCHAR(44) NOT NULL,
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
    created_at             TIMESTAMPTZ NOT NULL,
    archived_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT trades_archive_pkey PRIMARY KEY (id, block_time)
);

CREATE TABLE IF NOT EXISTS price_snapshots_archive (
    id                     BIGINT PRIMARY KEY,
    mint_address           VARCHAR(44) NOT NULL,
    program                VARCHAR(16) NOT NULL,
    price_sol              NUMERIC(30, 18) NOT NULL,
    price_usd              NUMERIC(30, 12),
    market_cap_usd         NUMERIC(24, 2),
    virtual_sol_reserves   NUMERIC(30, 0),
    virtual_token_reserves NUMERIC(40, 0),
    bonding_curve_progress NUMERIC(6, 3),
    slot                   BIGINT NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL,
    archived_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS archival_runs (
    id          BIGSERIAL PRIMARY KEY,
    table_name  VARCHAR(63) NOT NULL,
    cutoff      TIMESTAMPTZ NOT NULL,
    batch_size  INTEGER NOT NULL,
    rows_moved  BIGINT NOT NULL DEFAULT 0,
    batches     INTEGER NOT NULL DEFAULT 0,
    status      VARCHAR(16) NOT NULL DEFAULT 'running',
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    CONSTRAINT archival_runs_status_check CHECK (status IN ('running', 'completed'))
);

CREATE INDEX IF NOT EXISTS idx_trades_archive_mint_time ON trades_archive (mint_address, block_time DESC);
CREATE INDEX IF NOT EXISTS idx_trades_archive_block_time ON trades_archive (block_time);
CREATE INDEX IF NOT EXISTS idx_price_snapshots_archive_mint_time ON price_snapshots_archive (mint_address, created_at DESC);

CREATE OR REPLACE PROCEDURE archive_old_trades(cutoff TIMESTAMPTZ, batch_size INTEGER DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    v_run_id  BIGINT;
    v_moved   BIGINT;
    v_total   BIGINT := 0;
    v_batches INTEGER := 0;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'archive_old_trades: batch_size must be at least 1, got %', batch_size;
    END IF;
    INSERT INTO archival_runs (table_name, cutoff, batch_size)
    VALUES ('trades_unified', cutoff, batch_size)
    RETURNING id INTO v_run_id;
    COMMIT;
    LOOP
        WITH batch AS (
            SELECT id, block_time FROM trades_unified
            WHERE block_time < cutoff
            ORDER BY block_time, id
            LIMIT batch_size
        ), moved AS (
            DELETE FROM trades_unified t USING batch b
            WHERE t.id = b.id AND t.block_time = b.block_time
            RETURNING t.*
        ), archived AS (
            INSERT INTO trades_archive (id, signature, mint_address, program, trade_type, user_address,
                                        sol_amount, token_amount, price_sol, price_usd, market_cap_usd,
                                        virtual_sol_reserves, virtual_token_reserves, bonding_curve_progress,
                                        slot, block_time, created_at)
            SELECT id, signature, mint_address, program, trade_type, user_address,
                   sol_amount, token_amount, price_sol, price_usd, market_cap_usd,
                   virtual_sol_reserves, virtual_token_reserves, bonding_curve_progress,
                   slot, block_time, created_at
            FROM moved
            ON CONFLICT (id, block_time) DO NOTHING
            RETURNING 1
        )
        SELECT count(*) INTO v_moved FROM moved;
        EXIT WHEN v_moved = 0;
        v_total := v_total + v_moved;
        v_batches := v_batches + 1;
        UPDATE archival_runs SET rows_moved = v_total, batches = v_batches WHERE id = v_run_id;
        COMMIT;
    END LOOP;
    UPDATE archival_runs SET status = 'completed', finished_at = now() WHERE id = v_run_id;
    COMMIT;
END;
$$;

-- ==== END MIGRATION ====
