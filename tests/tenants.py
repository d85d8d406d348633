"""Tenant databases for the fleet tests and benches: many databases cloned from one template.

``created`` makes ``count`` databases named ``<prefix>_NNN`` from a template ``<prefix>_tpl``
(marked a template, so ``--targets-match '<prefix>_%'`` must skip it) holding a ``side``
table, into which the counted migrations insert one row each: a migration applied twice
shows as a count of 2. Everything is dropped afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.pgcluster import Cluster

SIDE = "CREATE TABLE side (version text)"
POISON = "CREATE TABLE poison ()"  # makes the poison check of ``counted`` fail in that tenant
POISON_CHECK = (
    "DO $$ BEGIN IF pg_catalog.to_regclass('public.poison') IS NOT NULL THEN"
    " RAISE EXCEPTION 'poisoned tenant'; END IF; END $$;\n"
)


def counted(directory: Path, count: int, *, sleep_s: dict[int, float] | None = None, poison_at: int = 2) -> None:
    """``count`` migrations: each creates t_NNN and inserts NNN into side; ``poison_at`` first
    fails in a poisoned tenant; ``sleep_s`` maps a version to a pg_sleep it ends with."""
    for version in range(1, count + 1):
        body = POISON_CHECK if version == poison_at else ""
        body += f"CREATE TABLE IF NOT EXISTS t_{version:03d} (id int);\nINSERT INTO side VALUES ('{version:03d}');\n"
        if sleep_s and version in sleep_s:
            body += f"SELECT pg_sleep({sleep_s[version]});\n"
        (directory / f"{version:03d}_m.sql").write_text(body)


@dataclass
class Tenants:
    """Databases ``names`` on ``cluster``; their common prefix makes a ``LIKE`` pattern."""

    cluster: Cluster
    prefix: str
    names: list[str]

    @property
    def pattern(self) -> str:
        return f"{self.prefix}\\_%"

    def url(self, name: str) -> str:
        return self.cluster.url(name)

    def query(self, name: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def targets_file(self, path: Path, names: list[str] | None = None) -> Path:
        """A ``--targets`` file: ``name URL`` a line."""
        path.write_text("".join(f"{name} {self.url(name)}\n" for name in names or self.names))
        return path

    def side(self, name: str) -> dict[str, int]:
        """How often each version ran its insert in tenant ``name``."""
        return dict(self.query(name, "SELECT version, count(*)::int FROM side GROUP BY 1"))

    def history(self, name: str) -> list[tuple[str, bool, str | None]]:
        """(migration, success, error) rows, or [] without a history table."""
        if self.query(name, "SELECT to_regclass('migration_history')") == [(None,)]:
            return []
        return [
            (row[0], row[1], row[2])
            for row in self.query(
                name, "SELECT migration_name, success, error_message FROM migration_history ORDER BY id"
            )
        ]

    def migrated(self, name: str, count: int) -> bool:
        """Every one of ``count`` counted migrations applied exactly once and recorded once."""
        versions = {f"{v:03d}" for v in range(1, count + 1)}
        applied = [m for m, success, _ in self.history(name) if success]
        return self.side(name) == dict.fromkeys(versions, 1) and sorted(applied) == [
            f"{v}_m.sql" for v in sorted(versions)
        ]

    def untouched(self, name: str) -> bool:
        return self.history(name) == [] and self.side(name) == {}

    def advisory_locks(self) -> int:
        """Advisory locks held in any tenant database (pg_locks shows every database's)."""
        rows = self.query(
            "postgres",
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname LIKE %s",
            [self.pattern],
        )
        return int(rows[0][0])


def admin(cluster: Cluster, statement: sql.Composable) -> None:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def created(cluster: Cluster, count: int) -> Iterator[Tenants]:
    """``count`` tenant databases cloned from a template with the side table; dropped afterwards."""
    prefix = f"f{secrets.token_hex(4)}"
    template = f"{prefix}_tpl"
    names = [f"{prefix}_{n:03d}" for n in range(1, count + 1)]
    admin(cluster, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
    try:
        with psycopg.connect(cluster.url(template), autocommit=True) as conn:
            conn.execute(SIDE)
        admin(cluster, sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(template)))
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
                )
        yield Tenants(cluster, prefix, names)
    finally:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(template)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(template)))
