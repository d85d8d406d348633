"""fleet: target sources, rollout (parallel, canary, on-error), shards, exit codes, signals.

Behaviour tests run against 50 or more real tenant databases (``tests/tenants.py``); every
runner output is scanned for the server password by the session (``conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import config
from runner.errors import ConfigError
from runner.lock import derive_key
from runner.targets import from_rows, parse_file, shard_of
from tests.conftest import Database, Result, parse_events
from tests.pgcluster import Cluster
from tests.tenants import POISON, POISON_CHECK, Background, Tenants, counted, created

TENANTS = 50


@pytest.fixture
def tenants(pg: Cluster) -> Iterator[Tenants]:
    with created(pg, TENANTS) as made:
        yield made


def fleet(db: Database, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
    return db.run("fleet", "--json", *args, env=env, timeout=timeout)


def summary(result: Result) -> dict[str, Any]:
    return dict(json.loads(result.stdout))


def statuses(result: Result) -> dict[str, str]:
    return {t["target"]: t["status"] for t in summary(result)["targets"]}


# --- target sources, without a database -----------------------------------------------------


def test_target_file_format(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; a first word with = or :// is a whole connection string; else a name."""
    path = tmp_path / "targets.txt"
    path.write_text(
        "# tenants of eu-1\n"
        "\n"
        "postgresql://app:s3cret-1@db1:5432/tenant_a\n"
        "   host=db2 dbname=tenant_b password='pw x#1'\n"
        "billing postgresql://app@db3/app?sslmode=require\n"
        "eu-2\thost=db4 dbname=app\n"
    )
    found = parse_file(path, frozenset(), {})
    assert [(t.name, t.database, t.origin) for t in found] == [
        ("tenant_a", "tenant_a", "targets.txt:3"),
        ("tenant_b", "tenant_b", "targets.txt:4"),
        ("billing", "app", "targets.txt:5"),
        ("eu-2", "app", "targets.txt:6"),
    ]
    assert found[1].url == "host=db2 dbname=tenant_b password='pw x#1'"
    assert "s3cret-1" not in repr(found)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a host=x dbname=a\nb host=y\na host=z\n", "targets.txt:3: the target name 'a' is taken by targets.txt:1"),
        ("tenant_a\n", "targets.txt:1: the target 'tenant_a' has no connection string after its name"),
        ("x postgresql://u:hunter-22@h:notaport/d\n", "targets.txt:1: --targets: port='notaport' is not a valid port"),
        ("host=h password=hunter-22 port=5432 'unterminated\n", "targets.txt:1: --targets: libpq cannot parse it"),
        (None, "--targets: cannot read"),
    ],
)
def test_a_bad_target_file_is_exit_2_naming_the_line_never_the_password(
    db: Database, tmp_path: Path, text: str | None, message: str
) -> None:
    """A duplicate name, a name alone, a string libpq cannot parse, no file: exit 2 naming the line, no password."""
    path = tmp_path / "targets.txt"
    if text is not None:
        path.write_text(text)
    db.write("001_a.sql", "SELECT 1;\n")
    result = db.run("fleet", "--targets", str(path))
    assert result.code == 2, result.stderr
    assert message in result.one("run_failed")["error"]
    assert "hunter-22" not in result.stdout + result.stderr


def test_registry_rows_need_a_name_and_a_url() -> None:
    """Query rows are (name, url); a NULL name means the database name; a NULL url or a third column is exit 2."""
    found = from_rows(["name", "url"], [("eu-1", "host=a dbname=app"), (None, "host=b dbname=t_7")], frozenset(), {})
    assert [(t.name, t.database) for t in found] == [("eu-1", "app"), ("t_7", "t_7")]
    with pytest.raises(ConfigError, match=r"row 2: the url is NULL, not text"):
        from_rows(["name", "url"], [("a", "host=a"), ("b", None)], frozenset(), {})
    with pytest.raises(ConfigError, match=r"must be \(name, url\); it returned the columns \['a', 'b', 'c'\]"):
        from_rows(["a", "b", "c"], [], frozenset(), {})
    with pytest.raises(ConfigError, match=r"row 1: the target name 'eu\\n1' is empty or not printable"):
        from_rows(["name", "url"], [("eu\n1", "host=a")], frozenset(), {})


def test_shard_assignment_is_a_stable_hash_of_the_name() -> None:
    """sha256(name)[:8] mod N: the same in every process, independent of order, unmoved by new targets."""
    names = [f"tenant_{n:04d}" for n in range(1000)]
    assert shard_of("tenant_0001", 4) == int.from_bytes(hashlib.sha256(b"tenant_0001").digest()[:8]) % 4
    before = {name: shard_of(name, 8) for name in names}
    after = {name: shard_of(name, 8) for name in [*names, "tenant_new_1", "tenant_new_2"]}
    assert all(after[name] == before[name] for name in names)
    sizes = [list(before.values()).count(index) for index in range(8)]
    assert min(sizes) > 90, sizes  # about 125 each


def test_fleet_options_are_checked() -> None:
    """Exactly one target source; the shard index is required with --shards > 1 and must be in range."""
    base = {"migrations_dir": "m"}

    def load(**flags: object) -> config.Settings:
        return config.load("fleet", {**base, **flags}, {})

    with pytest.raises(ConfigError, match=r"give exactly one of --targets, --targets-query, --targets-match$"):
        load()
    with pytest.raises(ConfigError, match=r"\(given: --targets, --targets-match\)"):
        load(targets="t.txt", targets_match="x%")
    with pytest.raises(ConfigError, match="--shards 3: say which shard this is"):
        load(targets="t.txt", shards="3")
    with pytest.raises(ConfigError, match=r"--shard-index: 3 is outside 0\.\.2"):
        load(targets="t.txt", shards="3", shard_index="3")
    with pytest.raises(ConfigError, match="--on-error: 'halt' is not stop or continue"):
        load(targets="t.txt", on_error="halt")
    with pytest.raises(ConfigError, match=r"--parallel: 0 is outside 1\.\.128"):
        load(targets="t.txt", parallel="0")
    indexed = config.load("fleet", {"targets": "t.txt", "shards": "3"}, {"JOB_COMPLETION_INDEX": "2"})
    assert indexed.fleet is not None
    assert (indexed.fleet.shards, indexed.fleet.shard_index, indexed.fleet.parallel) == (3, 2, 4)


def test_fleet_takes_only_its_own_options(db: Database) -> None:
    """fleet --help lists the target and rollout options; a foreign option, or a fleet option elsewhere, is exit 2."""
    text = db.run("fleet", "--help").stdout
    for option in ("--targets", "--targets-query", "--targets-match", "--parallel", "--canary", "--on-error"):
        assert option in text
    assert "--shard-index" in text
    assert "JOB_COMPLETION_INDEX" in text
    for args in (("fleet", "--targets", "x", "--metrics-port", "1"), ("migrate", "--parallel", "2")):
        result = db.run(*args)
        assert result.code == 2, args
        assert "unrecognized arguments" in result.stderr


# --- the three sources, against real databases ----------------------------------------------


def test_a_targets_file_migrates_fifty_tenants_and_never_prints_a_password(
    db: Database, tenants: Tenants, tmp_path: Path
) -> None:
    """--targets FILE with names, URLs and key=value lines: every tenant migrated once; no password anywhere."""
    counted(db.migrations, 3)
    path = tmp_path / "targets.txt"
    lines = ["# the tenants"]
    for n, name in enumerate(tenants.names):
        if n % 3 == 0:  # a bare URL: the name is the database name
            lines.append(tenants.url(name))
        elif n % 3 == 1:
            lines.append(
                f"{name} host=127.0.0.1 port={db.cluster.port} user=postgres password={db.cluster.password} dbname={name}"
            )
        else:
            lines.append(f"{name}\t{tenants.url(name)}")
    path.write_text("\n".join(lines) + "\n")
    result = fleet(db, "--targets", str(path), "--parallel", "8", env=db.env(DATABASE_URL=""))
    assert result.code == 0, result.stderr[-2000:]
    report = summary(result)
    assert report["counts"] == {"targets": 50, "done": 50, "failed": 0, "interrupted": 0, "skipped": 0}
    assert report["migrations_applied"] == 150
    assert [t["target"] for t in report["targets"]] == tenants.names
    assert all(tenants.migrated(name, 3) for name in tenants.names)
    finished = result.named("target_finished")
    assert sorted(e["target"] for e in finished) == tenants.names
    assert {e["database"] for e in finished} == set(tenants.names)
    assert db.cluster.password not in result.stdout + result.stderr
    again = fleet(db, "--targets", str(path), env=db.env(DATABASE_URL=""))
    assert again.code == 0
    assert summary(again)["migrations_applied"] == 0


def test_targets_query_reads_a_tenant_registry_read_only(db: Database, tenants: Tenants) -> None:
    """--targets-query rows (name, url) on the control database, read-only; a bad query is exit 2."""
    counted(db.migrations, 2)
    db.query("CREATE TABLE registry (tenant text, url text, active bool)")
    with db.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO registry VALUES (%s, %s, %s)",
            [(f"t-{n}", tenants.url(name), n % 5 != 0) for n, name in enumerate(tenants.names)],
        )
    result = fleet(db, "--targets-query", "SELECT tenant, url FROM registry WHERE active ORDER BY tenant")
    assert result.code == 0, result.stderr[-2000:]
    active = {name for n, name in enumerate(tenants.names) if n % 5 != 0}
    assert summary(result)["counts"]["done"] == len(active) == 40
    assert all(tenants.migrated(name, 2) for name in active)
    assert all(tenants.untouched(name) for name in set(tenants.names) - active)
    origins = {e["target"]: e["origin"] for e in result.named("target_started")}
    assert origins["t-1"] == "--targets-query row 1"
    for query, message in (
        ("DELETE FROM registry RETURNING tenant, url", "SQLSTATE 25006"),
        ("SELECT tenant FROM registry", "must be (name, url)"),
        ("SELECT nope FROM registry", "SQLSTATE 42703"),
        ("SELECT tenant, url FROM registry WHERE false", "the target source lists no database"),
    ):
        refused = db.run("fleet", "--targets-query", query)
        assert refused.code == 2, query
        assert message in refused.one("run_failed")["error"]
    assert db.query("SELECT count(*) FROM registry") == [(50,)]
    unreachable = db.run(
        "fleet", "--targets-query", "SELECT 1, 2", "--connect-timeout", "1s", env=db.env(DATABASE_URL=db.url + "_gone")
    )
    assert unreachable.code == 5
    lost = db.run("fleet", "--targets-query", "SELECT 'a', pg_terminate_backend(pg_backend_pid())::text")
    assert lost.code == 5
    assert "--targets-query: " in lost.one("run_failed")["error"]


def test_targets_match_takes_the_servers_databases_but_templates_and_closed_ones(
    db: Database, tenants: Tenants
) -> None:
    """--targets-match PATTERN: every matching database gets the control URL with its dbname; templates and
    databases refusing connections are left out."""
    counted(db.migrations, 2)
    closed = f"{tenants.prefix}_closed"
    with psycopg.connect(db.cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{closed}" ALLOW_CONNECTIONS false')
    try:
        result = fleet(db, "--targets-match", tenants.pattern, "--parallel", "8")
        assert result.code == 0, result.stderr[-2000:]
        assert [t["target"] for t in summary(result)["targets"]] == tenants.names  # sorted; no _tpl, no _closed
        assert all(tenants.migrated(name, 2) for name in tenants.names)
        nothing = db.run("fleet", "--targets-match", "no\\_such\\_%")
        assert nothing.code == 2
        assert "lists no database" in nothing.one("run_failed")["error"]
    finally:
        with psycopg.connect(db.cluster.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{closed}"')


# --- rollout --------------------------------------------------------------------------------


def most_running(result: Result) -> int:
    """The most targets running at once, from the order of target_started / target_finished events."""
    running = most = 0
    for event in result.events:
        running += {"target_started": 1, "target_finished": -1}.get(event["event"], 0)
        most = max(most, running)
    return most


def test_parallel_runs_that_many_targets_at_once_and_no_more(db: Database, tenants: Tenants) -> None:
    """--parallel 8: eight targets run at once, never nine."""
    counted(db.migrations, 2, sleep_s={2: 0.2})
    result = fleet(db, "--targets-match", tenants.pattern, "--parallel", "8")
    assert result.code == 0, result.stderr[-2000:]
    assert most_running(result) == 8


def test_a_failed_canary_stops_the_fleet_before_the_rest(db: Database, tenants: Tenants) -> None:
    """--canary 3 with the second canary broken: the other canaries finish, no other target starts, exit 7."""
    counted(db.migrations, 3)
    tenants.query(tenants.names[1], POISON)
    result = fleet(db, "--targets-match", tenants.pattern, "--canary", "3", "--parallel", "8", "--on-error", "continue")
    assert result.code == 7, result.stderr[-2000:]
    report = summary(result)
    assert report["counts"] == {"targets": 50, "done": 2, "failed": 1, "interrupted": 0, "skipped": 47}
    broken = report["targets"][1]
    assert (broken["status"], broken["exit_code"], broken["pending"]) == ("failed", 1, 3)
    assert [m["migration"] for m in broken["applied"]] == ["001_m.sql"]
    assert "poisoned tenant" in broken["error"]
    skipped = report["targets"][3]
    assert (skipped["status"], skipped["error"]) == ("skipped", f"canary failed: {tenants.names[1]}")
    assert sorted(e["target"] for e in result.named("target_started")) == tenants.names[:3]
    assert all(tenants.untouched(name) for name in tenants.names[3:])
    assert tenants.migrated(tenants.names[0], 3)


def test_canaries_finish_before_any_other_target_starts(db: Database, tenants: Tenants) -> None:
    """--canary 5 --parallel 8: the first five run together, and end before the sixth starts."""
    counted(db.migrations, 2, sleep_s={2: 0.2})
    result = fleet(db, "--targets-match", tenants.pattern, "--canary", "5", "--parallel", "8")
    assert result.code == 0, result.stderr[-2000:]
    order = [(e["event"], e["target"]) for e in result.events if e["event"] in {"target_started", "target_finished"}]
    canaries = set(tenants.names[:5])
    last_canary_end = max(i for i, (event, name) in enumerate(order) if event == "target_finished" and name in canaries)
    first_other = min(i for i, (event, name) in enumerate(order) if event == "target_started" and name not in canaries)
    assert last_canary_end < first_other
    assert {name for event, name in order[:5]} == canaries
    assert all(event == "target_started" for event, _ in order[:5])


def test_continue_leaves_the_others_done_and_names_the_broken_tenant(db: Database, tenants: Tenants) -> None:
    """--on-error continue with one broken tenant: 49 done, the broken one failed in the summary and the log, exit 7."""
    counted(db.migrations, 3)
    broken = tenants.names[20]
    tenants.query(broken, POISON)
    result = fleet(db, "--targets-match", tenants.pattern, "--on-error", "continue", "--parallel", "8")
    assert result.code == 7
    report = summary(result)
    assert report["counts"] == {"targets": 50, "done": 49, "failed": 1, "interrupted": 0, "skipped": 0}
    assert statuses(result)[broken] == "failed"
    assert all(tenants.migrated(name, 3) for name in tenants.names if name != broken)
    assert tenants.history(broken)[-1][:2] == ("002_m.sql", False)
    (failed,) = [e for e in result.named("target_finished") if e["status"] != "done"]
    assert (failed["target"], failed["level"], failed["exit_code"]) == (broken, "error", 1)
    assert "poisoned tenant" in failed["error"]
    assert result.one("run_failed")["error"].startswith("shard 0 of 1: 50 targets: 49 done, 1 failed")
    table = db.run("fleet", "--targets-match", tenants.pattern, "--on-error", "continue")
    assert table.code == 7
    first_row = table.stdout.splitlines()[1]
    assert first_row.startswith(broken)
    assert "failed" in first_row
    assert "poisoned tenant" in first_row


def test_stop_lets_running_targets_finish_and_starts_no_new_one(db: Database, tenants: Tenants) -> None:
    """--on-error stop (the default): after a failure no target starts; the ones running finish done."""
    counted(db.migrations, 3, sleep_s={3: 0.3})
    broken = tenants.names[9]
    tenants.query(broken, POISON)
    result = fleet(db, "--targets-match", tenants.pattern, "--parallel", "4")
    assert result.code == 7
    failure_at = result.events.index(next(e for e in result.named("target_finished") if e["target"] == broken))
    assert not [e for e in result.events[failure_at:] if e["event"] == "target_started"]
    started = {e["target"] for e in result.named("target_started")}
    report = statuses(result)
    assert {report[name] for name in started - {broken}} == {"done"}
    skipped = [name for name in tenants.names if report[name] == "skipped"]
    assert len(skipped) >= 50 - 9 - 4
    assert all(tenants.untouched(name) for name in skipped)
    assert all(tenants.migrated(name, 3) for name in started - {broken})


def test_only_busy_locks_and_unreachable_databases_make_exit_8(db: Database, tenants: Tenants, tmp_path: Path) -> None:
    """A lock not acquired (4) or a database unreachable (5) is exit 8, retryable; add a failed migration: exit 7."""
    counted(db.migrations, 2)
    path = tenants.targets_file(tmp_path / "targets.txt")
    with path.open("a") as extra:
        extra.write(f"gone {db.cluster.url(tenants.prefix + '_gone')}\n")
    busy = tenants.names[5]
    args = ("--targets", str(path), "--on-error", "continue", "--lock-wait-timeout", "1s", "--connect-timeout", "1s")
    with psycopg.connect(tenants.url(busy), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [derive_key(busy, "public.migration_history")])
        result = fleet(db, *args)
        assert result.code == 8, result.stderr[-2000:]
        codes = {t["target"]: t["exit_code"] for t in summary(result)["targets"] if t["status"] != "done"}
        assert codes == {busy: 4, "gone": 5}
        assert tenants.untouched(busy)
        tenants.query(tenants.names[7], POISON)
        db.write("003_check.sql", POISON_CHECK)
        again = fleet(db, *args)
        assert again.code == 7
        assert statuses(again)[tenants.names[7]] == "failed"


def test_a_file_problem_is_exit_3_before_any_target_connects(db: Database, tenants: Tenants) -> None:
    """A syntax error in any file stops the fleet before it touches a target."""
    counted(db.migrations, 2)
    db.write("003_bad.sql", "CREATE TABLE (;\n")
    result = fleet(db, "--targets-match", tenants.pattern)
    assert result.code == 3
    assert not result.named("target_started")
    assert all(tenants.untouched(name) for name in tenants.names)


# --- shards ---------------------------------------------------------------------------------


def test_two_shards_in_two_processes_take_every_target_exactly_once(db: Database, tenants: Tenants) -> None:
    """--shards 2 with JOB_COMPLETION_INDEX 0 and 1, at the same time: each target in exactly one shard, as shard_of says."""
    counted(db.migrations, 3)
    procs = [
        Background(
            db,
            "fleet",
            "--json",
            "--targets-match",
            tenants.pattern,
            "--shards",
            "2",
            env=db.env(JOB_COMPLETION_INDEX=str(index)),
        )
        for index in (0, 1)
    ]
    results = [proc.finish() for proc in procs]
    assert [result.code for result in results] == [0, 0], results[0].stderr[-2000:]
    taken = [set(statuses(result)) for result in results]
    assert taken[0] & taken[1] == set()
    assert taken[0] | taken[1] == set(tenants.names)
    for index in (0, 1):
        assert summary(results[index])["shard"] == index
        assert taken[index] == {name for name in tenants.names if shard_of(name, 2) == index}
    assert all(tenants.migrated(name, 3) for name in tenants.names)
    out_of_range = db.run(
        "fleet", "--targets-match", tenants.pattern, "--shards", "2", env=db.env(JOB_COMPLETION_INDEX="2")
    )
    assert out_of_range.code == 2
    assert "--shard-index: 2 is outside 0..1" in out_of_range.stderr
    assert db.run("fleet", "--targets-match", tenants.pattern, "--shards", "2").code == 2


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_a_rerun_migrates_every_target_once(db: Database, tenants: Tenants) -> None:
    """Seeded SIGKILLs of a whole fleet run, or of one of two shards, then reruns: every tenant fully
    migrated, each migration applied and recorded exactly once."""
    counted(db.migrations, 5, sleep_s=dict.fromkeys(range(1, 6), 0.03))
    rng = random.Random(16)
    args = ("fleet", "--targets-match", tenants.pattern, "--parallel", "8")
    for round_ in range(8):
        if round_ % 2 == 0:
            procs = [Background(db, *args)]
        else:
            procs = [Background(db, *args, "--shards", "2", env=db.env(JOB_COMPLETION_INDEX=str(i))) for i in (0, 1)]
        victim = rng.choice(procs)
        time.sleep(rng.uniform(0.3, 2.5))
        victim.proc.kill()
        for proc in procs:
            proc.finish(timeout=120)
    final = fleet(db, "--targets-match", tenants.pattern, "--parallel", "8")
    assert final.code == 0, final.stderr[-3000:]
    assert all(tenants.migrated(name, 5) for name in tenants.names)
    for name in tenants.names:
        tables = tenants.query(
            name, "SELECT count(*)::int FROM pg_class WHERE relname LIKE 't\\_0%%' AND relkind = 'r'"
        )
        assert tables == [(5,)]


def test_sigterm_interrupts_running_targets_skips_the_rest_and_exits_143(db: Database, tenants: Tenants) -> None:
    """SIGTERM mid-fleet: running targets cancel, roll back and record the interruption, no new one starts,
    the summary is printed, no lock is left, exit 143 within seconds."""
    counted(db.migrations, 3, sleep_s={2: 30})
    proc = Background(db, "fleet", "--json", "--targets-match", tenants.pattern, "--parallel", "8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sleeping = tenants.query(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND state = 'active'"
            " AND strpos(query, 'pg_sleep(30)') > 0",
            [tenants.pattern],
        )
        if sleeping == [(8,)]:
            break
        time.sleep(0.1)
    sent = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    result = proc.finish(timeout=30)
    assert result.code == 143, result.stderr[-2000:]
    assert time.monotonic() - sent < 5
    report = summary(result)
    assert report["exit_code"] == 143
    assert report["counts"] == {"targets": 50, "done": 0, "failed": 0, "interrupted": 8, "skipped": 42}
    interrupted = [t for t in report["targets"] if t["status"] == "interrupted"]
    assert {(t["exit_code"], t["error"]) for t in interrupted} == {(143, "interrupted: SIGTERM")}
    assert all([m["migration"] for m in t["applied"]] == ["001_m.sql"] for t in interrupted)
    for t in interrupted:
        assert tenants.history(t["target"])[-1] == ("002_m.sql", False, "interrupted: SIGTERM")
        assert tenants.side(t["target"]) == {"001": 1}
    assert {t["error"] for t in report["targets"] if t["status"] == "skipped"} == {"interrupted: SIGTERM"}
    assert tenants.advisory_locks() == 0
    assert result.events[-1]["event"] == "run_finished"
    assert result.events[-1]["exit_code"] == 143
    assert result.one("migration_aborted")["reason"] == "SIGTERM"


def test_deadline_ends_a_fleet_like_sigterm(db: Database, tenants: Tenants) -> None:
    """--deadline 2s: the running targets are interrupted, the summary printed, exit 143."""
    counted(db.migrations, 2, sleep_s={2: 30})
    started = time.monotonic()
    result = fleet(db, "--targets-match", tenants.pattern, "--parallel", "4", "--deadline", "2s")
    assert result.code == 143
    assert time.monotonic() - started < 15
    report = summary(result)
    assert report["counts"]["interrupted"] == 4
    assert {t["error"] for t in report["targets"] if t["status"] != "done"} == {"interrupted: deadline of 2s reached"}
    assert tenants.advisory_locks() == 0


def test_summary_goes_to_stdout_and_logs_to_stderr(db: Database, tenants: Tenants) -> None:
    """stdout holds the summary alone (JSON parses); every log event is on stderr, one line per event in the
    console format too, whichever thread wrote it."""
    counted(db.migrations, 1)
    result = fleet(db, "--targets-match", tenants.pattern)
    assert result.code == 0
    assert summary(result)["counts"]["done"] == 50
    assert not parse_events(result.stdout)
    assert len([e for e in parse_events(result.stderr) if e["event"] == "target_finished"]) == 50
    console = db.run("fleet", "--targets-match", tenants.pattern, "--parallel", "8", "--log-format", "console")
    assert console.code == 0
    ends = [line for line in console.stderr.splitlines() if " target " in line and " done: " in line]
    assert len(ends) == 50
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d target \S+ done: 0 applied in \d+ ms .*", line) for line in ends)
    assert console.stdout.splitlines()[-1].startswith("shard 0 of 1: 50 targets: 50 done, 0 failed")
