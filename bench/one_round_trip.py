"""The physical bound for W1/W2: each migration as one simple-query message, nothing else.

``python bench/one_round_trip.py DIR`` (URL in DATABASE_URL) sends, per file, one message
"BEGIN; <file>; INSERT INTO history ...; COMMIT" and waits for it: a single round trip and no
client work beyond psycopg's. No lock, no checksums, no parsing, no logs: not a migration
runner, only a measure of how fast any client could possibly go.
"""

import os
import sys
from pathlib import Path

import psycopg

with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migration_history (id SERIAL PRIMARY KEY,"
        " migration_name VARCHAR(255) UNIQUE NOT NULL)"
    )
    for path in sorted(Path(sys.argv[1]).glob("*.sql")):
        conn.execute(
            f"BEGIN; {path.read_text()}; INSERT INTO migration_history (migration_name) VALUES ('{path.name}'); COMMIT"
        )
