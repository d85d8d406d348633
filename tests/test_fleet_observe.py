"""Fleet observability: a Pushgateway group per target, the fleet's counts per shard, the fleet alerts
in a real Prometheus, and every panel of the Grafana dashboard against it (promtool: test_observe.py)."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.targets import shard_of
from tests.conftest import Database
from tests.pgcluster import REPO, Cluster
from tests.services import alerts, http_get, prometheus, pushgateway, query, scrape
from tests.tenants import POISON, DashboardRun, Tenants, counted, created, dashboard_run

DASHBOARD = REPO / "helm" / "migration-runner" / "files" / "grafana-dashboard.json"
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Series = dict[frozenset[tuple[str, str]], float]


def pushed(page: dict[str, float], name: str) -> Series:
    """The samples of ``migration_runner_<name>`` in a scraped page, by label set (empty labels left out)."""
    found: Series = {}
    for key, value in page.items():
        metric, _, labels = key.partition("{")
        if metric == f"migration_runner_{name}":
            found[frozenset((k, v) for k, v in LABEL.findall(labels) if v)] = value
    return found


def of(job: str, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"job": job, **labels}.items())


def test_each_target_pushes_its_own_group_and_the_fleet_its_counts(db: Database, pg: Cluster) -> None:
    """--pushgateway-url: one group per target database (a success or a failure each), and the fleet's counts
    in the group job/shard: targets, ok, failed, skipped, start, end, exit code. No pod label, no password."""
    counted(db.migrations, 3)
    with created(pg, 50) as tenants, pushgateway() as gateway:
        broken = tenants.names[20]
        tenants.query(broken, POISON)
        before = time.time()
        args = ("fleet", "--targets-match", tenants.pattern, "--on-error", "continue", "--pushgateway-url", gateway)
        result = db.run(*args, "--parallel", "8")
        after = time.time()
        assert result.code == 7
        page = scrape(gateway + "/metrics")
        job = "migration-runner"
        success = pushed(page, "last_success_timestamp_seconds")
        assert set(success) == {of(job, database=name) for name in tenants.names if name != broken}
        assert all(before <= value <= after for value in success.values())
        assert pushed(page, "last_failure_timestamp_seconds").keys() == {of(job, database=broken)}
        assert pushed(page, "last_exit_code") == {
            of(job, database=name): float(name == broken) for name in tenants.names
        }
        assert pushed(page, "migrations_applied")[of(job, database=broken)] == 1
        assert pushed(page, "migrations_pending")[of(job, database=broken)] == 3
        assert set(pushed(page, "migration_duration_seconds")) >= {
            of(job, database=tenants.names[0], version=v) for v in ("001", "002", "003")
        }
        shard = of(job, shard="0")
        fleet = {name: pushed(page, f"fleet_{name}") for name in ("targets", "targets_ok", "targets_failed")}
        assert fleet == {"targets": {shard: 50}, "targets_ok": {shard: 49}, "targets_failed": {shard: 1}}
        assert pushed(page, "fleet_targets_skipped") == {shard: 0}
        assert pushed(page, "fleet_last_exit_code") == {shard: 7}
        started = pushed(page, "fleet_run_started_timestamp_seconds")[shard]
        assert before <= started <= pushed(page, "fleet_last_run_timestamp_seconds")[shard] <= after
        assert not [
            key for key in page if key.startswith("migration_runner") and ("pod=" in key or 'instance=""' not in key)
        ]
        assert pg.password not in http_get(gateway + "/metrics")


def test_the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    """Schema 39 or later, a ${datasource} variable used by every panel and query, a job filter on every metric."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "migration-runner"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["job"]["allValue"] == ".*"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["description"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            metrics = re.findall(r"migration_runner_\w+(.?)", target["expr"])
            assert metrics
            assert all(brace == "{" for brace in metrics), target["expr"]
            assert target["expr"].count('{job=~"$job"}') == len(metrics), target["expr"]


def evaluate(prom: str, expr: str, job: str) -> Series:
    """A panel query as Grafana would send it with ``job`` chosen, evaluated now."""
    return {
        frozenset((k, v) for k, v in row["metric"].items() if k != "__name__"): float(row["value"][1])
        for row in query(prom, expr.replace("$job", job))
    }


def panel_queries() -> dict[tuple[str, str], str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        (panel["title"], target["refId"]): target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    }


def median(values: list[float]) -> float:
    """Prometheus' quantile(0.5): linear interpolation between the closest ranks."""
    ordered = sorted(values)
    rank = 0.5 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def expected_panels(run: DashboardRun, tenants: Tenants, page: dict[str, float]) -> dict[tuple[str, str], Series]:
    """Every panel query's series after ``run``, from the scenario's facts and the Pushgateway's values."""
    job, broken, waited = run.job, run.broken, run.waited
    sizes = {index: sum(shard_of(name, 2) == index for name in tenants.names) for index in (0, 1)}
    broken_shard = shard_of(broken, 2)
    shards = {index: of(job, shard=str(index)) for index in (0, 1)}
    success = pushed(page, "last_success_timestamp_seconds")
    failure = pushed(page, "last_failure_timestamp_seconds")
    ended = pushed(page, "fleet_last_run_timestamp_seconds")
    durations: dict[str, list[float]] = {}
    for labels, seconds in pushed(page, "migration_duration_seconds").items():
        durations.setdefault(dict(labels)["version"], []).append(seconds)
    run_durations = pushed(page, "last_run_duration_seconds")
    slowest = sorted(run_durations.items(), key=lambda item: item[1], reverse=True)[:10]
    waits = pushed(page, "lock_wait_seconds")
    return {
        ("Fleet progress", "A"): {of(job): len(tenants.names) - 1},
        ("Fleet progress", "B"): {of(job): 1},
        ("Fleet progress", "C"): {of(job): 0},
        ("Fleet progress", "D"): {of(job): 0},
        ("Fleet shards", "A"): {shards[i]: sizes[i] for i in (0, 1)},
        ("Fleet shards", "B"): {shards[i]: sizes[i] - (i == broken_shard) for i in (0, 1)},
        ("Fleet shards", "C"): {shards[i]: float(i == broken_shard) for i in (0, 1)},
        ("Fleet shards", "D"): {shards[i]: 0 for i in (0, 1)},
        ("Fleet shards", "E"): {shards[i]: 7 if i == broken_shard else 0 for i in (0, 1)},
        ("Fleet shards", "F"): {labels: value * 1000 for labels, value in ended.items()},
        ("Databases left behind", "A"): {frozenset(): 1},
        ("Last fleet run", "A"): {of(job): max(ended.values()) * 1000},
        ("Databases whose last run failed", "A"): {of(job, database=broken): failure[of(job, database=broken)] * 1000},
        ("Databases whose last run failed", "B"): {of(job, database=broken): 1},
        ("Last success and failure per database", "A"): {labels: value * 1000 for labels, value in success.items()},
        ("Last success and failure per database", "B"): {labels: value * 1000 for labels, value in failure.items()},
        ("Migration duration per version", "A"): {frozenset({("version", v)}): max(s) for v, s in durations.items()},
        ("Migration duration per version", "B"): {frozenset({("version", v)}): median(s) for v, s in durations.items()},
        ("Slowest databases (last run)", "A"): dict(slowest),
        ("Lock waits over 1 s (last run)", "A"): {of(job, database=waited): waits[of(job, database=waited)]},
        ("Waiting for the lock now", "A"): {},
    }


def eventually(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "Prometheus did not catch up"
        time.sleep(0.5)


@pytest.mark.slow
def test_every_dashboard_panel_shows_its_series_after_real_fleet_runs(
    db: Database, pg: Cluster, tmp_path: Path
) -> None:
    """Two shards over 52 tenants, one broken and one waiting for its lock, push to a real Pushgateway scraped by
    a real Prometheus: each panel's query returns exactly the series it is meant to show, with their values."""
    job = f"fleet-{secrets.token_hex(3)}"
    queries = panel_queries()
    mid_run: dict[str, Series] = {}
    with created(pg, 52) as tenants, pushgateway() as gateway, prometheus(gateway, tmp_path) as prom:

        def while_waiting(waited: str) -> None:
            waiting = queries[("Waiting for the lock now", "A")]
            eventually(lambda: bool(evaluate(prom, waiting, job)))
            time.sleep(1.5)  # the wait passes a second: the lock-wait panel's threshold
            mid_run["waiting"] = evaluate(prom, waiting, job)
            mid_run["not finished"] = evaluate(prom, queries[("Fleet progress", "D")], job)

        run = dashboard_run(db, tenants, gateway, job, while_waiting)
        broken_shard = shard_of(run.broken, 2)
        assert [r.code for r in run.results] == [7 if i == broken_shard else 0 for i in (0, 1)]
        (seen,) = mid_run["waiting"].items()
        assert seen[0] == of(job, database=run.waited)
        assert 0 < seen[1] < run.ended - run.started
        assert mid_run["not finished"][of(job)] >= 1
        page = scrape(gateway + "/metrics")
        expected = expected_panels(run, tenants, page)
        assert set(expected) == set(queries)  # every query of every panel is checked, nothing else

        def caught_up() -> bool:
            return evaluate(prom, queries[("Fleet shards", "F")], job) == expected[("Fleet shards", "F")] and not (
                evaluate(prom, queries[("Waiting for the lock now", "A")], job)
            )

        eventually(caught_up)
        for key, expr in sorted(queries.items()):
            got = evaluate(prom, expr, job)
            want = expected[key]
            assert got.keys() == want.keys(), key
            assert all(got[labels] == pytest.approx(value, rel=1e-9) for labels, value in want.items()), key
        assert min(expected[("Lock waits over 1 s (last run)", "A")].values()) >= 1.5

        def firing(name: str) -> list[dict[str, Any]]:
            return [a["labels"] for a in alerts(prom) if a["labels"]["alertname"] == name]

        eventually(
            lambda: bool(firing("MigrationRunnerDatabaseLeftBehind") and firing("MigrationRunnerFleetIncomplete"))
        )
        assert [a["database"] for a in firing("MigrationRunnerDatabaseLeftBehind")] == [run.broken]
        assert [a["shard"] for a in firing("MigrationRunnerFleetIncomplete")] == [str(broken_shard)]
