"""The plan: discovered files x recorded history -> what to do. Pure: no I/O, no database.

``make_plan`` is the one answer to "what would ``migrate`` do, and would it refuse": ``migrate``
applies ``pending`` unless ``blocking_problems`` is non-empty; ``status`` shows the same plan;
``wait`` is ready only when there is nothing pending and nothing blocking.

Invariants of ``make_plan``:
- A version is a version: history rows and files are matched by version number. A successful
  row recorded under another file name than the file of that version is ``renamed`` (the
  file is neither applied nor pending: migrate refuses until ``repair`` accepts the rename).
- ``pending`` holds, in version order, every discovered file with no successful history row
  of its version (failed rows are retried), cut at ``target``; it never holds an applied file.
- ``changed`` holds every applied file whose recorded checksum differs from the file's.
- ``adopted`` holds applied files recorded with no checksum (a seed-format table, ``psql -f``
  by hand): their checksum is to be filled in, not compared.
- ``out_of_order`` holds pending files numbered below the highest applied version.
- ``unknown`` holds successful history rows with no file of their version (the database is
  ahead of us).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.discover import Migration, version_of
from runner.errors import Problem


@dataclass(frozen=True)
class AppliedRow:
    """One history row."""

    name: str
    checksum: str | None
    success: bool
    error_message: str | None = None
    applied_at: datetime.datetime | None = None
    applied_by: str | None = None
    execution_time_ms: int | None = None
    runner_version: str | None = None

    @property
    def version(self) -> int | None:
        return version_of(self.name)


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
    renamed: tuple[tuple[Migration, AppliedRow], ...]
    rows: dict[str, AppliedRow]  # every history row by name

    def blocking_problems(self, *, strict: bool) -> list[Problem]:
        """Why ``migrate`` would refuse (exit 3) before applying anything; empty if it would not."""
        problems = [
            Problem("changed", "checksum changed since it was applied (run `repair` to accept it)", m.name)
            for m in self.changed
        ]
        problems += [
            Problem(
                "renamed",
                f"version {m.label} is recorded as applied under another name, {row.name}: a version is "
                f"never reused (run `repair {m.name}` if the file was deliberately renamed)",
                m.name,
            )
            for m, row in self.renamed
        ]
        problems += [
            Problem("out-of-order", "pending but numbered below the highest applied migration", m.name)
            for m in self.out_of_order
        ]
        if strict:
            problems += [
                Problem("unknown", "applied in the database but no such file (--strict)", row.name)
                for row in self.unknown
            ]
        return problems


def make_plan(discovered: Sequence[Migration], rows: Iterable[AppliedRow], target: int | None = None) -> Plan:
    """Compare files with history; see the module docstring for what each field holds."""
    by_name = {row.name: row for row in rows}
    successes = [row for row in by_name.values() if row.success]
    applied_by_version: dict[int, AppliedRow] = {}
    for row in sorted(successes, key=lambda row: row.name):
        version = row.version
        if version is not None:
            applied_by_version.setdefault(version, by_name.get(row.name, row))
    files_by_version = {m.version: m for m in discovered}
    applied: list[Migration] = []
    not_applied: list[Migration] = []
    renamed: list[tuple[Migration, AppliedRow]] = []
    for m in discovered:
        exact = by_name.get(m.name)
        other = applied_by_version.get(m.version)
        if exact is not None and exact.success:
            applied.append(m)
        elif other is not None:
            renamed.append((m, other))
        else:
            not_applied.append(m)
    renamed_rows = {row.name for _, row in renamed}
    unknown = [
        row
        for row in successes
        if row.name not in renamed_rows
        and (row.version is None or files_by_version.get(row.version) is None)
        and row.name not in {m.name for m in discovered}
    ]
    highest = max(applied_by_version, default=0)
    return Plan(
        pending=tuple(m for m in not_applied if target is None or m.version <= target),
        applied=tuple(applied),
        changed=tuple(m for m in applied if by_name[m.name].checksum not in (None, m.checksum)),
        adopted=tuple(m for m in applied if by_name[m.name].checksum is None),
        failed=tuple(row for row in by_name.values() if not row.success),
        out_of_order=tuple(m for m in not_applied if m.version < highest),
        unknown=tuple(sorted(unknown, key=lambda row: row.name)),
        renamed=tuple(renamed),
        rows=by_name,
    )
