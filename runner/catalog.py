"""Catalog and statistics queries, about a running backend and about a whole database.

About a backend: who blocks it, what it waits on, how far it is, which locks it holds. About
a database: its fingerprint, for ``verify``. About a server: the databases a fleet may migrate;
and a fleet's own query of its tenant registry, run read-only.

Invariants:
- Read-only queries on a runner-owned connection; the backend ones are about another
  backend (the work connection's pid) and name every object ``pg_catalog.``.
- ``fingerprint`` covers every user object ``verify`` compares (tables and partitions,
  columns with types, defaults and nullability, constraints, indexes with definitions and
  validity, functions, triggers, views, extensions, sequences, enum labels) and each table's
  exact row count.
- Lock reports read ``pg_locks`` rows of ``locktype = 'relation'`` only (a relation-extension
  lock is not a lock on the table).
- ``progress`` reads PostgreSQL's progress views (``pg_stat_progress_create_index``,
  ``_cluster``, ``_copy``, ``_vacuum``, ``_analyze``; PostgreSQL 14 and later) and reports the
  phase and, where the server counts units of work, the percentage done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[tuple[Any, ...]]
BLOCKERS_SQL = """
SELECT a.pid, a.application_name, a.state, (pg_catalog.now() - a.xact_start)::text AS xact_age,
       pg_catalog.left(a.query, 120)
FROM pg_catalog.pg_stat_activity a WHERE a.pid = ANY (pg_catalog.pg_blocking_pids(%s))
"""
RELATION_HOLDERS_SQL = """
SELECT DISTINCT a.pid, a.application_name, a.state, l.mode, pg_catalog.left(a.query, 120)
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.relation = pg_catalog.to_regclass(%s) AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
"""
ACTIVITY_SQL = """
SELECT a.wait_event_type, a.wait_event,
       (SELECT l.mode || ' on ' || coalesce(l.relation::pg_catalog.regclass::text, l.locktype)
        FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1)
FROM pg_catalog.pg_stat_activity a WHERE a.pid = %s
"""
# (view, phase, units done, units in all) per kind of work PostgreSQL reports progress for.
PROGRESS_VIEWS = (
    ("create_index", "phase", "blocks_done", "blocks_total"),
    ("cluster", "phase", "heap_blks_scanned", "heap_blks_total"),
    ("copy", "command || ' ' || type", "bytes_processed", "bytes_total"),
    ("vacuum", "phase", "heap_blks_scanned", "heap_blks_total"),
    ("analyze", "phase", "sample_blks_scanned", "sample_blks_total"),
)
PROGRESS_SQL = " UNION ALL ".join(
    f"SELECT '{view}', ({phase})::text, {done}::int8, {total}::int8 FROM pg_catalog.pg_stat_progress_{view} "
    "WHERE pid = %(pid)s"
    for view, phase, done, total in PROGRESS_VIEWS
)


# Templates, databases that refuse connections and invalid ones (an interrupted DROP DATABASE
# leaves datconnlimit = -2) cannot be migrated.
DATABASES_LIKE_SQL = """
SELECT datname FROM pg_catalog.pg_database
WHERE datname LIKE %s AND NOT datistemplate AND datallowconn AND datconnlimit <> -2 ORDER BY datname
"""


@dataclass(frozen=True)
class Progress:
    """What PostgreSQL reports about long work of a backend: the command, its phase, how far."""

    command: str
    phase: str
    done: int | None
    total: int | None

    @property
    def percent(self) -> float | None:
        if not self.total or self.done is None:
            return None
        return round(100.0 * self.done / self.total, 1)


def blockers(conn: Conn, pid: int) -> list[dict[str, object]]:
    """Sessions that block backend ``pid`` (pg_blocking_pids x pg_stat_activity)."""
    fields = ("pid", "application_name", "state", "xact_age", "query")
    return [dict(zip(fields, row, strict=True)) for row in conn.execute(BLOCKERS_SQL, [pid]).fetchall()]


def relation_holders(conn: Conn, relation: str) -> list[dict[str, object]]:
    """Other sessions holding a lock on ``relation`` (a quoted, qualified name)."""
    fields = ("pid", "application_name", "state", "mode", "query")
    return [dict(zip(fields, row, strict=True)) for row in conn.execute(RELATION_HOLDERS_SQL, [relation]).fetchall()]


def waiting_on(conn: Conn, pid: int) -> str | None:
    """What backend ``pid`` waits on, or None while it runs.

    For example ``Lock:relation (AccessExclusiveLock on public.t)`` or ``IO:DataFileRead``.
    """
    row = conn.execute(ACTIVITY_SQL, [pid]).fetchone()
    if row is None or row[0] is None:
        return None
    return f"{row[0]}:{row[1]}" + (f" ({row[2]})" if row[2] else "")


def progress(conn: Conn, pid: int) -> Progress | None:
    """The progress PostgreSQL reports for backend ``pid``, if any."""
    row = conn.execute(PROGRESS_SQL, {"pid": pid}).fetchone()
    return None if row is None else Progress(str(row[0]), str(row[1]), row[2], row[3])


USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
FINGERPRINT_QUERIES = {
    "relations": f"""SELECT n.nspname, c.relname, c.relkind::text, c.relispartition,
        pg_get_expr(c.relpartbound, c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": f"""SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": f"""SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS}""",
    "indexes": f"""SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS}""",
    "functions": f"""SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
        md5(pg_get_functiondef(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER_SCHEMAS} AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""",
    "triggers": f"""SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND NOT t.tgisinternal""",
    "views": f"""SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS} AND c.relkind IN ('v', 'm')""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "sequences": """SELECT schemaname, sequencename, data_type::text, increment_by, min_value, max_value, cycle
        FROM pg_sequences""",
    "enums": "SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid",
}
TABLES_SQL = f"""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {USER_SCHEMAS} AND c.relkind = 'r'"""
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
TABLE_KINDS = "c.relkind IN ('r', 'p', 'm')"  # tables, partitioned tables, materialized views
# Runs after BEGIN and before COMMIT of a transactional migration: at the end every lock it took
# is still held, and the difference of the backend's pending statistics counts the rows written
# by any statement, DO blocks included.
RELATION_LOCKS = f"""FROM pg_catalog.pg_locks l
    JOIN pg_catalog.pg_class c ON c.oid = l.relation JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.granted AND {TABLE_KINDS} AND {USER_SCHEMAS}"""
INSPECT = f"""SELECT 'lock', n.nspname || '.' || c.relname, l.mode {RELATION_LOCKS}
    AND l.pid = pg_catalog.pg_backend_pid()
    UNION ALL
    SELECT 'rows', NULL, coalesce(pg_catalog.sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::text
    FROM pg_catalog.pg_stat_xact_user_tables""".replace("%%", "%")
LOCKS_OF_PID = f"""SELECT n.nspname || '.' || c.relname, l.mode {RELATION_LOCKS} AND l.pid = %s"""

Fingerprint = dict[str, list[tuple[Any, ...]]]


def fingerprint(conn: Conn) -> Fingerprint:
    """Sorted catalog rows per kind of object, plus each table's exact row count."""
    found = {kind: sorted(conn.execute(query).fetchall(), key=repr) for kind, query in FINGERPRINT_QUERIES.items()}
    counts = []
    for schema, name in conn.execute(TABLES_SQL).fetchall():
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()
        counts.append((schema, name, row[0] if row else None))
    found["row_counts"] = sorted(counts)
    return found


def contents(conn: Conn, table: tuple[str, ...]) -> str:
    """A digest of every row of ``table`` (as written: ``(schema, name)`` or ``(name,)``, resolved by ``conn``)."""
    query = sql.SQL(
        "SELECT pg_catalog.md5(coalesce(pg_catalog.string_agg(t::pg_catalog.text, E'\\n'"
        " ORDER BY t::pg_catalog.text), '')) FROM {} AS t"
    ).format(sql.Identifier(*table))
    row = conn.execute(query).fetchone()
    return str(row[0]) if row else ""


def difference(before: Fingerprint, after: Fingerprint) -> list[str]:
    """'- kind row' for what vanished and '+ kind row' for what appeared."""
    lines = []
    for kind in before:
        old, new = set(before[kind]), set(after[kind])
        lines += [f"- {kind} {row}" for row in sorted(old - new, key=repr)]
        lines += [f"+ {kind} {row}" for row in sorted(new - old, key=repr)]
    return lines


def databases_like(conn: Conn, pattern: str) -> list[str]:
    """Names of the server's databases ``LIKE pattern`` that accept connections, templates excluded."""
    return [name for (name,) in conn.execute(DATABASES_LIKE_SQL, [pattern]).fetchall()]


def read_only_rows(conn: Conn, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``query``, run in a READ ONLY transaction (it cannot write)."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        cursor = conn.execute(query.encode())
        if cursor.description is None:
            return [], []
        return [column.name for column in cursor.description], cursor.fetchall()
