"""The pure planner: table tests and property tests, no database."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.discover import Directives, Migration
from runner.plan import AppliedRow, make_plan


def migration(version: int, body: str = "") -> Migration:
    sql = body or f"SELECT {version};"
    return Migration(
        version,
        f"{version:03d}_m.sql",
        Path(f"{version:03d}_m.sql"),
        sql,
        hashlib.sha256(sql.encode()).hexdigest(),
        Directives(),
    )


def row(m: Migration, *, checksum: str | None = "same", success: bool = True) -> AppliedRow:
    return AppliedRow(m.name, m.checksum if checksum == "same" else checksum, success)


def test_fresh_database_plans_everything() -> None:
    """No history: every file is pending, in order."""
    files = [migration(v) for v in (1, 2, 3)]
    plan = make_plan(files, [])
    assert plan.pending == tuple(files)
    assert plan.blocking_problems(strict=True) == []


def test_failed_rows_are_retried() -> None:
    """A success=false row is pending again and listed as failed."""
    files = [migration(1), migration(2)]
    plan = make_plan(files, [row(files[0]), row(files[1], success=False)])
    assert plan.pending == (files[1],)
    assert [r.name for r in plan.failed] == ["002_m.sql"]


def test_changed_checksum_blocks() -> None:
    """An applied file with another checksum is changed and blocks."""
    files = [migration(1)]
    plan = make_plan(files, [row(files[0], checksum="0" * 64)])
    assert plan.changed == (files[0],)
    assert "001_m.sql: checksum changed" in str(plan.blocking_problems(strict=False)[0])


def test_null_checksum_is_adopted_not_changed() -> None:
    """A seed-format row without checksum is adopted."""
    files = [migration(1)]
    plan = make_plan(files, [row(files[0], checksum=None)])
    assert (plan.adopted, plan.changed, plan.pending) == ((files[0],), (), ())


def test_out_of_order_blocks() -> None:
    """A pending file below the highest applied version blocks."""
    files = [migration(1), migration(2)]
    plan = make_plan(files, [row(files[1])])
    assert plan.out_of_order == (files[0],)
    assert plan.blocking_problems(strict=False)


def test_unknown_rows_block_only_when_strict() -> None:
    """Applied rows with no file warn, and block with strict."""
    files = [migration(1)]
    plan = make_plan(files, [row(files[0]), AppliedRow("002_gone.sql", "x", True)])
    assert [r.name for r in plan.unknown] == ["002_gone.sql"]
    assert plan.blocking_problems(strict=False) == []
    assert plan.blocking_problems(strict=True)


def test_target_cuts_pending() -> None:
    """target=2 plans 001 and 002 only."""
    files = [migration(v) for v in (1, 2, 3)]
    assert [m.version for m in make_plan(files, [], target=2).pending] == [1, 2]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[Migration], list[AppliedRow]]:
    count = draw(st.integers(0, 30))
    files = [migration(v, draw(st.sampled_from(["", f"SELECT {v} + 1;"]))) for v in range(1, count + 1)]
    rows = []
    for m in files:
        state = draw(st.sampled_from(["none", "ok", "failed", "changed", "adopted"]))
        if state == "ok":
            rows.append(row(m))
        elif state == "failed":
            rows.append(row(m, success=False))
        elif state == "changed":
            rows.append(row(m, checksum="f" * 64))
        elif state == "adopted":
            rows.append(row(m, checksum=None))
    extra = draw(st.integers(0, 3))
    rows += [AppliedRow(f"{100 + i:03d}_gone.sql", "x", True) for i in range(extra)]
    return files, draw(st.permutations(rows))


@settings(max_examples=300, deadline=None)
@given(scenario(), st.one_of(st.none(), st.integers(0, 35)))
def test_plan_invariants(case: tuple[list[Migration], list[AppliedRow]], target: int | None) -> None:
    """Never plans an applied file, never reorders, reports every changed checksum and unknown row."""
    files, rows = case
    plan = make_plan(files, rows, target)
    succeeded = {r.name: r for r in rows if r.success}
    assert not any(m.name in succeeded for m in plan.pending)
    assert [m.version for m in plan.pending] == sorted(m.version for m in plan.pending)
    assert all(target is None or m.version <= target for m in plan.pending)
    expected_changed = {
        m.name for m in files if m.name in succeeded and succeeded[m.name].checksum not in (None, m.checksum)
    }
    assert {m.name for m in plan.changed} == expected_changed
    assert {r.name for r in plan.unknown} == set(succeeded) - {m.name for m in files}
    untouched = [m for m in files if m.name not in succeeded]
    assert plan.pending == tuple(m for m in untouched if target is None or m.version <= target)
    assert set(plan.applied) | set(untouched) == set(files)
