-- Migration: 002_add_orders_status.sql
-- Author: example-app maintainers
-- Date: 2026-12-02
-- Description: Order status, and an index to find the open orders of a customer.
--
-- Idempotent: every statement is safe to run twice.

-- ==== START MIGRATION ====

ALTER TABLE orders ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'open';
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_open_by_customer ON orders (customer) WHERE status = 'open';

-- ==== END MIGRATION ====
