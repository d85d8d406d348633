"""A fingerprint of a database's schema, for "did running it again change anything?".

Covers tables and partitions (columns with types, defaults and nullability), constraints,
indexes with definitions and validity, functions and procedures, triggers, views, extensions
and sequences, in the schemas a migration can touch (everything but pg_catalog,
information_schema and pg_toast).
"""

from __future__ import annotations

from typing import Any

USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
QUERIES = {
    "relations": f"""SELECT n.nspname, c.relname, c.relkind, c.relispartition,
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
    "functions": f"""SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), md5(pg_get_functiondef(p.oid))
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


def fingerprint(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Sorted catalog rows per kind of object."""
    return {kind: sorted(conn.execute(query).fetchall(), key=repr) for kind, query in QUERIES.items()}


def difference(before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """Human lines: '+ kind row' for what appeared, '- kind row' for what vanished."""
    lines = []
    for kind in QUERIES:
        old, new = set(before[kind]), set(after[kind])
        lines += [f"- {kind} {row}" for row in sorted(old - new, key=repr)]
        lines += [f"+ {kind} {row}" for row in sorted(new - old, key=repr)]
    return lines
