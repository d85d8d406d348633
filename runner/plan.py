"""The plan: discovered files x recorded history -> what to do. Pure: no I/O, no database.

Invariants of ``make_plan``:
- ``pending`` holds, in version order, every discovered file with no successful history row
  (failed rows are retried), cut at ``target``; it never holds an applied file.
- ``changed`` holds every applied file whose recorded checksum differs from the file's.
- ``adopted`` holds applied files recorded with no checksum (a seed-format table, ``psql -f``
  by hand): their checksum is to be filled in, not compared.
- ``out_of_order`` holds pending files numbered below the highest applied version.
- ``unknown`` holds successful history rows with no file (the database is ahead of us).
- ``blocking_problems`` says what must stop ``migrate`` with exit 3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.discover import Migration

VERSION_PREFIX = re.compile(r"^(\d{3})_")


@dataclass(frozen=True)
class AppliedRow:
    """One history row, as far as planning cares."""

    name: str
    checksum: str | None
    success: bool
    error_message: str | None = None


@dataclass(frozen=True)
class Plan:
    """What ``migrate`` would do; see the module docstring for the invariants."""

    pending: tuple[Migration, ...]
    applied: tuple[Migration, ...]
    changed: tuple[Migration, ...]
    adopted: tuple[Migration, ...]
    failed: tuple[AppliedRow, ...]
    out_of_order: tuple[Migration, ...]
    unknown: tuple[AppliedRow, ...]

    def blocking_problems(self, *, strict: bool) -> list[str]:
        problems = [
            f"{m.name}: checksum changed since it was applied (run `repair` to accept it)" for m in self.changed
        ]
        problems += [f"{m.name}: pending but numbered below the highest applied migration" for m in self.out_of_order]
        if strict:
            problems += [f"{row.name}: applied in the database but no such file (--strict)" for row in self.unknown]
        return problems


def version_of(name: str) -> int | None:
    match = VERSION_PREFIX.match(name)
    return int(match.group(1)) if match else None


def make_plan(discovered: Sequence[Migration], rows: Iterable[AppliedRow], target: int | None = None) -> Plan:
    """Compare files with history; see the module docstring for what each field holds."""
    by_name = {row.name: row for row in rows}
    applied_rows = {name: row for name, row in by_name.items() if row.success}
    applied = [m for m in discovered if m.name in applied_rows]
    not_applied = [m for m in discovered if m.name not in applied_rows]
    known = {m.name for m in discovered}
    unknown = [row for row in applied_rows.values() if row.name not in known]
    highest = max((v for v in map(version_of, applied_rows) if v is not None), default=0)
    return Plan(
        pending=tuple(m for m in not_applied if target is None or m.version <= target),
        applied=tuple(applied),
        changed=tuple(m for m in applied if applied_rows[m.name].checksum not in (None, m.checksum)),
        adopted=tuple(m for m in applied if applied_rows[m.name].checksum is None),
        failed=tuple(row for row in by_name.values() if not row.success),
        out_of_order=tuple(m for m in not_applied if m.version < highest),
        unknown=tuple(sorted(unknown, key=lambda row: row.name)),
    )
