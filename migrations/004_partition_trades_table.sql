-- Migration: 004_partition_trades_table.sql
-- Author: migration-runner maintainers
-- Date: 2026-11-25
-- Description: Partition trades_unified by month of block_time (UTC), keeping every row.
--
-- What it does, once (the first run; later runs only ensure upcoming partitions):
--   1. Renames the plain table to trades_unified_unpartitioned (and its indexes to old_*).
--      It is kept, data included, for a separate phase-two migration that drops it once the
--      partitioned table has been verified in production. Nothing is dropped here.
--   2. Creates trades_unified PARTITION BY RANGE (block_time) with the same columns, defaults
--      (the id sequence is reused and now owned by the new table) and CHECK constraints
--      (chk_positive_price included); one partition per month the data covers, the current
--      month and the next three, and a DEFAULT partition for anything else.
--   3. Copies every row, then builds keys, indexes and the foreign key (faster after the load).
--
-- Uniqueness: a unique key on a partitioned table must include the partition key, so the old
--   UNIQUE (signature) becomes UNIQUE (signature, block_time), and the primary key becomes
--   (id, block_time). A Solana transaction signature always comes with the same block time,
--   so a re-delivered trade still collides: writers must use
--   ON CONFLICT (signature, block_time) DO NOTHING. A signature can only repeat with another
--   block_time if a writer invents the time; writers take block_time from the chain.
--
-- Locking: the conversion holds ACCESS EXCLUSIVE on trades_unified for the copy (seconds per
--   million rows); run it in a quiet window. ensure_trades_partitions() is also meant for a
--   monthly job, so the DEFAULT partition stays empty in normal operation.
-- Idempotent: a second run changes nothing apart from ensuring upcoming partitions.

-- ==== START MIGRATION ====

-- Create the partition for the UTC month holding month_utc. If the DEFAULT partition already
-- holds rows of that month, they are moved into the new partition. Safe to call repeatedly.
CREATE OR REPLACE FUNCTION ensure_trades_partition(month_utc TIMESTAMP) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lower_bound    TIMESTAMPTZ := date_trunc('month', month_utc) AT TIME ZONE 'UTC';
    upper_bound    TIMESTAMPTZ := (date_trunc('month', month_utc) + interval '1 month') AT TIME ZONE 'UTC';
    partition_name TEXT := 'trades_unified_y' || to_char(month_utc, 'YYYY') || 'm' || to_char(month_utc, 'MM');
    default_rows   BOOLEAN := false;
BEGIN
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN;
    END IF;
    IF to_regclass('trades_unified_default') IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM trades_unified_default
                       WHERE block_time >= lower_bound AND block_time < upper_bound)
        INTO default_rows;
    END IF;
    IF default_rows THEN
        EXECUTE format('CREATE TABLE %I (LIKE trades_unified INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       partition_name);
        EXECUTE format('WITH moved AS (DELETE FROM trades_unified_default'
                       ' WHERE block_time >= %L AND block_time < %L RETURNING *)'
                       ' INSERT INTO %I SELECT * FROM moved', lower_bound, upper_bound, partition_name);
        EXECUTE format('ALTER TABLE trades_unified ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       partition_name, lower_bound, upper_bound);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF trades_unified FOR VALUES FROM (%L) TO (%L)',
                       partition_name, lower_bound, upper_bound);
    END IF;
END;
$$;

-- Partitions for the current UTC month and the next months_ahead months.
CREATE OR REPLACE FUNCTION ensure_trades_partitions(months_ahead INTEGER DEFAULT 3) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    this_month TIMESTAMP := date_trunc('month', now() AT TIME ZONE 'UTC');
BEGIN
    FOR i IN 0..months_ahead LOOP
        PERFORM ensure_trades_partition(this_month + make_interval(months => i));
    END LOOP;
END;
$$;

DO $$
DECLARE
    first_month TIMESTAMP;
    last_month  TIMESTAMP;
    old_index   RECORD;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'trades_unified'::regclass) = 'p' THEN
        RETURN;  -- already partitioned
    END IF;

    ALTER TABLE trades_unified RENAME TO trades_unified_unpartitioned;
    FOR old_index IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'trades_unified_unpartitioned'::regclass
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', old_index.relname, left('old_' || old_index.relname, 63));
    END LOOP;

    CREATE TABLE trades_unified (
        LIKE trades_unified_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS
    ) PARTITION BY RANGE (block_time);
    ALTER SEQUENCE trades_unified_id_seq OWNED BY trades_unified.id;

    SELECT date_trunc('month', min(block_time) AT TIME ZONE 'UTC'),
           date_trunc('month', max(block_time) AT TIME ZONE 'UTC')
    INTO first_month, last_month
    FROM trades_unified_unpartitioned;
    WHILE first_month <= last_month LOOP
        PERFORM ensure_trades_partition(first_month);
        first_month := first_month + interval '1 month';
    END LOOP;
    PERFORM ensure_trades_partitions(3);
    CREATE TABLE trades_unified_default PARTITION OF trades_unified DEFAULT;

    INSERT INTO trades_unified SELECT * FROM trades_unified_unpartitioned;

    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_pkey PRIMARY KEY (id, block_time);
    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_signature_block_time_key UNIQUE (signature, block_time);
    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_mint_address_fkey
        FOREIGN KEY (mint_address) REFERENCES tokens_unified (mint_address);
    CREATE INDEX idx_trades_mint_time ON trades_unified (mint_address, block_time DESC);
    CREATE INDEX idx_trades_block_time ON trades_unified (block_time DESC);
    CREATE INDEX idx_trades_user ON trades_unified (user_address);
END $$;

SELECT ensure_trades_partitions(3);

-- ==== END MIGRATION ====
