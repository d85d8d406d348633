-- Migration: 001_create_orders.sql
-- Author: example-app maintainers
-- Date: 2026-12-02
-- Description: The example application's own schema: orders, one row per order.
--
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

CREATE TABLE IF NOT EXISTS orders (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer    TEXT NOT NULL,
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ==== END MIGRATION ====
