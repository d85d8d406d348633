"""``python -m bench.dashboard``: a picture of the Grafana dashboard's panels after a real fleet run.

There is no Grafana here, so the panels' own queries (``helm/migration-runner/files/
grafana-dashboard.json``, with ``$job`` chosen) are evaluated by a real Prometheus that scraped
a real Pushgateway during the scenario of ``tests/test_fleet_observe.py``: two shards of one
fleet over 52 tenant databases, one tenant broken (its 002 fails), one waiting for its
advisory lock for a few seconds. Each panel is drawn with matplotlib in the panel's own form
(time series over the run, tables, bars); the picture goes to
``bench/results/fleet-dashboard.png``.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import Database
from tests.pgcluster import REPO, Cluster
from tests.services import http_get, prometheus, pushgateway
from tests.tenants import created, dashboard_run

DASHBOARD = REPO / "helm" / "migration-runner" / "files" / "grafana-dashboard.json"
PICTURE = REPO / "bench" / "results" / "fleet-dashboard.png"


def api(prom: str, path: str, **params: object) -> list[dict[str, Any]]:
    body = json.loads(http_get(f"{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}"))
    return list(body["data"]["result"])


def main() -> int:
    job = f"tenants-{secrets.token_hex(2)}"
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    cluster = Cluster(major=18).start()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            created(cluster, 52) as tenants,
            pushgateway() as gateway,
            prometheus(gateway, Path(tmp)) as prom,
        ):
            control = "fleet_control"
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {control}")
            migrations = Path(tmp) / "migrations"
            migrations.mkdir()
            while not api(prom, "query", query='up{job="pushgateway"} == 1'):
                time.sleep(0.5)  # Prometheus hands new targets to its scrapers only every 5 s
            run = dashboard_run(
                Database(cluster, control, migrations),
                tenants,
                gateway,
                job,
                lambda _waited: time.sleep(6),
                sleep_s={2: 1.0, 3: 1.0},
            )
            time.sleep(4)  # the last scrapes
            start, end = run.started - 3, time.time()
            results = {}
            for panel in panels:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$job", job)
                    if target.get("range", True) and not target.get("instant"):
                        found = api(prom, "query_range", query=expr, start=start, end=end, step=0.25)
                    else:
                        found = api(prom, "query", query=expr, time=end)
                    results[(panel["title"], target["refId"])] = found
    finally:
        cluster.stop()
    draw(panels, results, start, run.broken, run.waited)
    print(PICTURE)
    return 0


def draw(
    panels: list[dict[str, Any]],
    results: dict[tuple[str, str], list[dict[str, Any]]],
    start: float,
    broken: str,
    waited: str,
) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - a bench extra, imported only to draw

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    def values(title: str, ref: str) -> list[tuple[dict[str, str], float]]:
        return [(r["metric"], float(r["value"][1])) for r in results[(title, ref)]]

    fig, axes = plt.subplots(3, 4, figsize=(18, 11))
    grid = iter(axes.flat)
    for panel in panels:
        title, kind = panel["title"], panel["type"]
        ax = next(grid)
        ax.set_title(title, fontsize=10, loc="left")
        refs = [t["refId"] for t in panel["targets"]]
        if kind == "timeseries":
            for ref, target in zip(refs, panel["targets"], strict=True):
                for series in results[(title, ref)]:
                    xs = [float(t) - start for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    legend = (
                        target["legendFormat"]
                        .replace("{{job}}", "")
                        .replace("{{database}}", series["metric"].get("database", ""))
                    )
                    ax.plot(xs, ys, label=legend.strip() or ref, drawstyle="steps-post")
            ax.set_xlabel("seconds into the run")
            ax.legend(fontsize=8)
        elif kind == "stat":
            ((_, number),) = values(title, "A")
            text = time.strftime("%H:%M:%S UTC", time.gmtime(number / 1000)) if number > 1e11 else f"{number:.0f}"
            ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=28, color="tab:red" if text == "1" else "black")
            ax.axis("off")
        elif kind in {"bargauge", "barchart"}:
            for offset, ref in enumerate(refs):
                rows = sorted(values(title, ref), key=lambda row: row[0].get("version", "") or -row[1])
                names = [m.get("database") or m.get("version", "") for m, _ in rows]
                positions = [i + offset * 0.4 for i in range(len(rows))]
                ax.barh(positions, [v for _, v in rows], height=0.4, label={"A": "longest", "B": "median"}.get(ref))
                ax.set_yticks(range(len(rows)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("seconds")
            if len(refs) > 1:
                ax.legend(fontsize=8)
        else:
            draw_table(ax, panel, values, start)
    for ax in grid:
        ax.axis("off")
    fig.suptitle(
        f"Grafana dashboard panels (their PromQL, from a real Prometheus) after two fleet shards over 52 tenants;"
        f" broken: {broken}, waited for its lock: {waited}",
        fontsize=11,
    )
    fig.tight_layout()
    PICTURE.parent.mkdir(exist_ok=True)
    fig.savefig(PICTURE, dpi=70)


def draw_table(ax: Any, panel: dict[str, Any], values: Any, start: float) -> None:
    """A table panel: one row per label set (shard or database), one column per query, named as the panel names it."""
    refs = [t["refId"] for t in panel["targets"]]
    names = next(t["options"]["renameByName"] for t in panel["transformations"] if t["id"] == "organize")
    rows: dict[str, dict[str, str]] = {}
    for ref in refs:
        for metric, number in values(panel["title"], ref):
            key = metric.get("database") or f"shard {metric.get('shard')}"
            shown = f"+{number / 1000 - start:.1f} s" if number > 1e11 else f"{number:g}"
            rows.setdefault(key, {})[ref] = shown
    ordered = sorted(rows.items(), key=lambda item: item[1].get("A", ""))[:12]
    cells = [[key, *(row.get(ref, "") for ref in refs)] for key, row in ordered]
    ax.axis("off")
    if cells:
        labels = ["", *(names.get(f"Value #{ref}", ref) for ref in refs)]
        table = ax.table(cellText=cells, colLabels=labels, loc="upper left", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
    ax.text(0, -0.05, f"{len(rows)} rows (times: seconds into the run)", transform=ax.transAxes, fontsize=7)


if __name__ == "__main__":
    sys.exit(main())
