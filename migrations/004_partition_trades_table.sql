-- Migration: 004_partition_trades_table.sql
-- Author: migration-runner maintainers
-- Date: 2026-12-02
-- Description: Partition trades_unified by month of block_time (UTC) while the monitor keeps
--   inserting and reading: the existing table becomes one partition, trades_unified_legacy,
--   holding every month before a cutover; monthly partitions take the rows from the cutover on.
--   No row is copied or moved.
--
-- Steps (each short, each skipped when already done, so a second run changes nothing apart
-- from ensuring upcoming partitions; the file runs statement by statement in autocommit):
--   1. CHECK (block_time < cutover) NOT VALID on the plain table. The cutover is the first UTC
--      month start at least 7 days ahead, so current writes pass it. ACCESS EXCLUSIVE for an
--      instant (no scan).
--   2. VALIDATE it: scans the table under SHARE UPDATE EXCLUSIVE; inserts, updates and reads go on.
--   3. One atomic step: rename the table to trades_unified_legacy; create the partitioned
--      trades_unified like it (same columns, defaults, CHECKs; the id sequence is now owned by
--      it); ATTACH the old table FOR VALUES FROM (MINVALUE) TO (cutover), which does not scan
--      because the validated CHECK and the NOT NULL on block_time imply the range; create the
--      parent's three indexes and its foreign key to tokens_unified, which adopt the old
--      table's matching index and constraint instead of building or validating; monthly
--      partitions from the cutover, and a DEFAULT partition. Milliseconds under ACCESS
--      EXCLUSIVE on trades_unified and SHARE ROW EXCLUSIVE on tokens_unified.
--   4. CREATE UNIQUE INDEX CONCURRENTLY on trades_unified_legacy for (id, block_time) and
--      (signature, block_time): writers go on.
--   5. One atomic step: on trades_unified_legacy, the old keys (id) and (signature) are dropped
--      and the new indexes become its PRIMARY KEY and UNIQUE constraints; the parent's
--      PRIMARY KEY (id, block_time) and UNIQUE (signature, block_time) then adopt them without
--      a build. Milliseconds under ACCESS EXCLUSIVE.
-- Lock waits: steps 1, 3 and 5 set lock_timeout to 500ms for themselves, since the monitor's
--   statements queue behind a waiting ACCESS EXCLUSIVE request. Steps 2 and 4 keep the runner's
--   (--ddl-lock-timeout, 5s by default): their waits block no reader or writer, and a wait
--   longer than deadlock_timeout (1s) makes PostgreSQL cancel an autovacuum in the way, where
--   a shorter one would time out first. On a timeout the runner retries the file, and the
--   steps already done are skipped.
--
-- Uniqueness: a unique key on a partitioned table must include the partition key, so the old
--   UNIQUE (signature) becomes UNIQUE (signature, block_time), and the primary key becomes
--   (id, block_time). A Solana transaction signature always comes with the same block time,
--   so a re-delivered trade still collides. Writers use ON CONFLICT DO NOTHING (no conflict
--   target): it works before, during and after this migration. ON CONFLICT (signature,
--   block_time) works once step 5 is done; ON CONFLICT (signature) only before step 3.
--
-- Old rows stay in trades_unified_legacy, which queries on block_time >= cutover prune away.
--   archive_old_trades (006) drains it in batches as its cut-off passes; once it is empty a
--   later migration detaches (CONCURRENTLY) and drops it. Moving them into monthly partitions
--   instead cannot keep them visible in short transactions: see "The bundled migrations" in
--   README.md.
-- If a run stops after step 1 and is not resumed before the cutover, inserts of trades from
--   the cutover on fail the CHECK: resume the migration (a re-run moves a cutover less than a
--   day ahead), or drop the constraint trades_unified_legacy_range.
-- ensure_trades_partitions() is meant for a monthly job, so the DEFAULT partition stays empty.
-- runner: no-transaction

-- ==== START MIGRATION ====

-- Create the partition for the UTC month holding month_utc, unless another partition already
-- covers that month (trades_unified_legacy covers every month before its cutover). If the
-- DEFAULT partition holds rows of that month, they are moved into the new partition. Safe to
-- call repeatedly.
CREATE OR REPLACE FUNCTION ensure_trades_partition(month_utc TIMESTAMP) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lower_bound    TIMESTAMPTZ := date_trunc('month', month_utc) AT TIME ZONE 'UTC';
    upper_bound    TIMESTAMPTZ := (date_trunc('month', month_utc) + interval '1 month') AT TIME ZONE 'UTC';
    partition_name TEXT := 'trades_unified_y' || to_char(month_utc, 'YYYY') || 'm' || to_char(month_utc, 'MM');
    default_rows   BOOLEAN := false;
    part_bound     TEXT;
    covered        BOOLEAN;
BEGIN
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN;
    END IF;
    FOR part_bound IN
        SELECT pg_get_partition_constraintdef(c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'trades_unified'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        EXECUTE 'SELECT ' || part_bound || ' FROM (SELECT $1 AS block_time) AS probe' INTO covered USING lower_bound;
        IF covered THEN
            RETURN;
        END IF;
    END LOOP;
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

-- Step 1: the range CHECK, not validated yet. A cutover less than a day ahead (a run that
-- stopped here long ago) is replaced by a later one.
DO $$
DECLARE
    cutover  TIMESTAMPTZ := (date_trunc('month', now() AT TIME ZONE 'UTC' + interval '7 days')
                             + interval '1 month') AT TIME ZONE 'UTC';
    existing TEXT;
BEGIN
    SET LOCAL lock_timeout = '500ms';
    IF (SELECT relkind FROM pg_class WHERE oid = 'trades_unified'::regclass) <> 'r' THEN
        RETURN;  -- already partitioned
    END IF;
    SELECT pg_get_constraintdef(oid) INTO existing FROM pg_constraint
    WHERE conrelid = 'trades_unified'::regclass AND conname = 'trades_unified_legacy_range';
    IF existing IS NOT NULL THEN
        IF substring(existing FROM '''(.*)''')::timestamptz >= now() + interval '1 day' THEN
            RETURN;
        END IF;
        ALTER TABLE trades_unified DROP CONSTRAINT trades_unified_legacy_range;
    END IF;
    EXECUTE format('ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_legacy_range'
                   ' CHECK (block_time < %L) NOT VALID', cutover);
END $$;

-- Step 2: validate it without blocking writers.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conrelid = 'trades_unified'::regclass AND conname = 'trades_unified_legacy_range'
                 AND NOT convalidated) THEN
        ALTER TABLE trades_unified VALIDATE CONSTRAINT trades_unified_legacy_range;
    END IF;
END $$;

-- Step 3: the swap.
DO $$
DECLARE
    cutover TIMESTAMPTZ;
BEGIN
    SET LOCAL lock_timeout = '500ms';
    IF (SELECT relkind FROM pg_class WHERE oid = 'trades_unified'::regclass) <> 'r' THEN
        RETURN;  -- already partitioned
    END IF;
    SELECT substring(pg_get_constraintdef(oid) FROM '''(.*)''')::timestamptz INTO cutover FROM pg_constraint
    WHERE conrelid = 'trades_unified'::regclass AND conname = 'trades_unified_legacy_range' AND convalidated;
    IF cutover IS NULL THEN
        RAISE EXCEPTION 'trades_unified_legacy_range is missing or not validated (steps 1 and 2 come first)';
    END IF;

    ALTER TABLE trades_unified RENAME TO trades_unified_legacy;
    ALTER INDEX idx_trades_mint_time RENAME TO trades_unified_legacy_mint_time_idx;
    ALTER INDEX idx_trades_block_time RENAME TO trades_unified_legacy_block_time_idx;
    ALTER INDEX idx_trades_user RENAME TO trades_unified_legacy_user_idx;

    CREATE TABLE trades_unified (
        LIKE trades_unified_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS
    ) PARTITION BY RANGE (block_time);
    ALTER TABLE trades_unified DROP CONSTRAINT trades_unified_legacy_range;  -- copied by LIKE; the partition keeps it
    ALTER SEQUENCE trades_unified_id_seq OWNED BY trades_unified.id;
    EXECUTE format('ALTER TABLE trades_unified ATTACH PARTITION trades_unified_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', cutover);

    CREATE INDEX idx_trades_mint_time ON trades_unified (mint_address, block_time DESC);
    CREATE INDEX idx_trades_block_time ON trades_unified (block_time DESC);
    CREATE INDEX idx_trades_user ON trades_unified (user_address);
    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_mint_address_fkey
        FOREIGN KEY (mint_address) REFERENCES tokens_unified (mint_address);

    PERFORM ensure_trades_partitions(3);
    CREATE TABLE trades_unified_default PARTITION OF trades_unified DEFAULT;
END $$;

-- Step 4: the keys' indexes on the old rows, built without blocking writers.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS trades_unified_legacy_pkey
    ON trades_unified_legacy (id, block_time);

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS trades_unified_legacy_signature_block_time_key
    ON trades_unified_legacy (signature, block_time);

-- Step 5: the keys.
-- runner: allow=drop-constraint reason="the partition's one-column keys give way to the composite keys the partitioned parent needs; writers use ON CONFLICT DO NOTHING without a target (see above)"
DO $$
BEGIN
    SET LOCAL lock_timeout = '500ms';
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'trades_unified'::regclass AND contype = 'p') THEN
        RETURN;
    END IF;
    -- The parent first, then (by recursion) its partitions: the order every writer locks them in.
    -- Locking the partition first deadlocks with a writer that holds the parent and waits for
    -- the partition, and lock_timeout ends it (55P03) before the deadlock detector would.
    LOCK TABLE trades_unified IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE trades_unified_legacy
        DROP CONSTRAINT IF EXISTS trades_unified_pkey,
        DROP CONSTRAINT IF EXISTS trades_unified_signature_key,
        ADD CONSTRAINT trades_unified_legacy_pkey PRIMARY KEY USING INDEX trades_unified_legacy_pkey,
        ADD CONSTRAINT trades_unified_legacy_signature_block_time_key
            UNIQUE USING INDEX trades_unified_legacy_signature_block_time_key;
    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_pkey PRIMARY KEY (id, block_time);
    ALTER TABLE trades_unified ADD CONSTRAINT trades_unified_signature_block_time_key UNIQUE (signature, block_time);
END $$;

SELECT ensure_trades_partitions(3);

-- ==== END MIGRATION ====
