"""``python -m bench.lint.rewrite_probe``: which ALTER COLUMN TYPE changes rewrite the table (PostgreSQL 18).

For each (old, new) pair: create a one-column table, note its relfilenode, change the type,
compare. Run with TimeZone UTC and Europe/Berlin (timestamp <-> timestamptz depends on it).
``runner/lint/types.py`` follows what this prints.
"""

from __future__ import annotations

import psycopg

from tests.pgcluster import running

CASES = [
    ("varchar(10)", "text"),
    ("varchar(10)", "varchar(20)"),
    ("varchar(20)", "varchar(10)"),
    ("varchar(10)", "varchar"),
    ("varchar", "varchar(10)"),
    ("text", "varchar"),
    ("text", "varchar(10)"),
    ("char(5)", "text"),
    ("char(5)", "char(10)"),
    ("numeric(10,2)", "numeric(12,2)"),
    ("numeric(10,2)", "numeric(12,3)"),
    ("numeric(10,2)", "numeric"),
    ("numeric", "numeric(10,2)"),
    ("int", "bigint"),
    ("timestamp", "timestamptz"),
    ("timestamptz", "timestamp"),
    ("timestamp(3)", "timestamp(6)"),
    ("timestamp(6)", "timestamp(3)"),
    ("varbit(5)", "varbit(10)"),
    ("bit(5)", "bit(10)"),
    ("cidr", "inet"),
    ("inet", "cidr"),
    ("xml", "text"),
    ("int", "oid"),
    ("json", "jsonb"),
    ("varchar(10)[]", "text[]"),
    ("text", "bpchar"),
]


def main() -> None:
    with running(18) as cluster, psycopg.connect(cluster.url(), autocommit=True) as conn:
        for zone in ("UTC", "Europe/Berlin"):
            conn.execute(f"SET TimeZone = '{zone}'")
            for old, new in CASES:
                conn.execute("DROP TABLE IF EXISTS t")
                conn.execute(f"CREATE TABLE t (c {old})")
                before = conn.execute("SELECT relfilenode FROM pg_class WHERE relname = 't'").fetchone()
                conn.execute(f"ALTER TABLE t ALTER COLUMN c TYPE {new}")
                after = conn.execute("SELECT relfilenode FROM pg_class WHERE relname = 't'").fetchone()
                print(f"{zone:14} {old:>14} -> {new:<14} {'REWRITE' if before != after else 'no rewrite'}")


if __name__ == "__main__":
    main()
