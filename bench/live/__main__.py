"""``python -m bench.live``: the token monitor's traffic while a data change runs, side by side.

Cases: baseline (traffic only); (a) a one-statement backfill; (b) the same backfill as a
batched data file (``-- runner: batch``); old 004 (copies every trade under ACCESS EXCLUSIVE,
from git 0d66cbe) and new 004 (attaches the table as a partition). Every case runs in one invocation, one after the
other, on its own copy of the same database.

Method (also written under the results table):
- One PostgreSQL 18 server (tests/pgcluster.py), its data directory on tmpfs (/dev/shm) with
  fsync, synchronous_commit and full_page_writes on: every change is WAL-logged as in
  production, and a flush costs what tmpfs costs. shared_buffers 1GB, max_wal_size 2GB.
- A template database: 001-003 applied with the runner (``migrate --target 3``), then
  ``bench.sample_data.load_large`` (deterministic, generated in SQL), VACUUM ANALYZE. Each case
  runs on a copy (CREATE DATABASE ... STRATEGY FILE_COPY) that is dropped afterwards.
- Traffic: pgbench from the same build, at a fixed rate (-R) with prepared statements and a log
  line per transaction (-l), three scripts as the monitor does: insert a trade (ON CONFLICT DO
  NOTHING, weight 4), update a token's latest price (weight 4), read a token's latest 50 trades
  (weight 2); the token is drawn uniformly.
- The latency of a transaction is what pgbench logs with -R: from the moment it was due (its
  scheduled start) until its statement finished, schedule lag included, as the monitor sees
  an event wait.
- Each case: traffic starts; after the warm-up the operation starts (``migration-runner
  migrate`` applying the case's file); traffic goes on for the tail after it ends, then
  pgbench is stopped (the last fraction of a second of its log may be lost; it lies in the
  tail). Statistics cover the transactions due while the operation ran; for the baseline, a
  window of the same traffic with no operation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench import sample_data
from tests.pgcluster import REPO, Cluster, ensure_binaries

HERE = Path(__file__).resolve().parent
RESULTS = REPO / "bench" / "results"
MIGRATIONS = REPO / "migrations"
OLD_004_COMMIT = "0d66cbe"
SCRIPTS = (
    ("insert_trade.sql", 4, "insert a trade"),
    ("update_token.sql", 4, "update a token"),
    ("read_recent.sql", 2, "read trades"),
)
WRITES = {0, 1}  # script numbers of the writing scripts
SERVER_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "'1GB'",
    "max_wal_size": "'2GB'",
    "maintenance_work_mem": "'256MB'",
}


@dataclass
class Case:
    """One measured situation: ``setup`` files are applied before traffic, ``operation`` during it."""

    key: str
    title: str
    setup: list[tuple[str, str]] = field(default_factory=list)  # (file name, SQL)
    operation: tuple[str, str] | None = None
    rows: Callable[[psycopg.Connection[tuple[object, ...]]], int] | None = None  # rows the operation wrote


@dataclass
class Outcome:
    """What a case measured."""

    case: Case
    samples: list[tuple[float, float, int]]  # (due, latency ms, script) of the window's transactions
    all_samples: list[tuple[float, float, int]]
    window: tuple[float, float]
    failed: int
    aborted: int
    op_seconds: float = 0.0
    work_seconds: float = 0.0  # the operation's own time: the runner's duration_ms, or op_seconds
    rows: int = 0
    note: str = ""


def old_004() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "show", f"{OLD_004_COMMIT}:migrations/004_partition_trades_table.sql"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def filled_tokens(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT count(*) FROM tokens_unified WHERE latest_market_cap_sol IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def cases() -> dict[str, Case]:
    add_column = ("004_add_token_market_cap_sol.sql", (HERE / "add_column.sql").read_text())
    return {
        "baseline": Case("baseline", "baseline (traffic only)"),
        "a": Case(
            "a",
            "(a) one-statement backfill",
            [add_column],
            ("005_backfill_token_market_cap_sol.sql", (HERE / "backfill_one_statement.sql").read_text()),
            filled_tokens,
        ),
        "b": Case(
            "b",
            "(b) batched backfill",
            [add_column],
            ("005_backfill_token_market_cap_sol.sql", (HERE / "backfill_batch.sql").read_text()),
            filled_tokens,
        ),
        "old004": Case("old004", f"(c) old 004 ({OLD_004_COMMIT})", [], ("004_partition_trades_table.sql", old_004())),
        "new004": Case(
            "new004",
            "(c) new 004",
            [],
            ("004_partition_trades_table.sql", (MIGRATIONS / "004_partition_trades_table.sql").read_text()),
        ),
    }


class Bench:
    """The server, the template database and the traffic generator."""

    def __init__(self, cluster: Cluster, work: Path, args: argparse.Namespace) -> None:
        self.cluster, self.work, self.args = cluster, work, args
        self.bindir = ensure_binaries(cluster.major)
        self.counter = 0
        self.data_note = ""

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(sql)

    def runner(self, db: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.cluster.url(db),
            "MIGRATIONS_DIR": str(directory),
            "RUNNER_LOG_FORMAT": "json",
        }
        return subprocess.run(
            [sys.executable, "-m", "runner", *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
        )

    def migrations_dir(self, name: str, extra: list[tuple[str, str]]) -> Path:
        directory = self.work / name
        directory.mkdir()
        for path in sorted(MIGRATIONS.glob("00[1-3]_*.sql")):
            shutil.copy(path, directory / path.name)
        for file_name, text in extra:
            (directory / file_name).write_text(text)
        return directory

    def template(self) -> None:
        self.admin('CREATE DATABASE "live_template"')
        directory = self.migrations_dir("template", [])
        done = self.runner("live_template", directory, "migrate", "--target", "3")
        if done.returncode != 0:
            raise SystemExit(f"migrate --target 3 failed:\n{done.stdout}{done.stderr}")
        started = time.monotonic()
        with psycopg.connect(self.cluster.url("live_template")) as conn:
            sample_data.load_large(conn, tokens=self.args.tokens, trades=self.args.trades)
        with psycopg.connect(self.cluster.url("live_template"), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
        self.data_note = (
            f"{self.args.trades:,} trades and {self.args.tokens:,} tokens, {size[0] if size else '?'} on disk;"
            f" loaded in {time.monotonic() - started:.0f} s"
        )
        print(f"template: {self.data_note}", file=sys.stderr)

    def copy(self) -> str:
        self.counter += 1
        name = f"live_{self.counter}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "live_template" STRATEGY FILE_COPY')
        return name

    def traffic(self, db: str, prefix: Path) -> subprocess.Popen[str]:
        args = self.args
        argv = [
            str(self.bindir / "pgbench"),
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.cluster.port),
            "-U",
            "postgres",
            "-c",
            str(args.clients),
            "-j",
            str(args.threads),
            "-R",
            str(args.rate),
            "-T",
            "36000",
            "-M",
            "prepared",
            "-l",
            f"--log-prefix={prefix}",
            "-D",
            f"tokens={args.tokens}",
        ]
        for script, weight, _ in SCRIPTS:
            argv += ["-f", f"{HERE / script}@{weight}"]
        env = {**os.environ, "PGPASSWORD": self.cluster.password}
        return subprocess.Popen(
            [*argv, db], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.work
        )

    def run_case(self, case: Case) -> Outcome:
        print(f"case {case.title}", file=sys.stderr)
        db = self.copy()
        try:
            directory = self.migrations_dir(f"case-{case.key}", case.setup)
            if case.setup:
                done = self.runner(db, directory, "migrate")
                if done.returncode != 0:
                    raise SystemExit(f"{case.key} set-up failed:\n{done.stdout}{done.stderr}")
            load_before = os.getloadavg()[0]
            prefix = self.work / f"pgbench-{case.key}"
            pgbench = self.traffic(db, prefix)
            time.sleep(self.args.warmup)
            note, work = "", 0.0
            start = time.time()
            if case.operation is None:
                time.sleep(self.args.baseline)
            else:
                (directory / case.operation[0]).write_text(case.operation[1])
                done = self.runner(db, directory, "migrate", "--log-level", "debug")
                note, work = runner_note(done)
            end = time.time()
            op_seconds = end - start
            time.sleep(self.args.tail)
            pgbench.send_signal(signal.SIGTERM)  # not SIGINT: a background job inherits it ignored
            _, stderr = pgbench.communicate(timeout=60)
            aborted = stderr.count("aborted")
            if aborted:
                print(f"  ! pgbench: {stderr[-600:]}", file=sys.stderr)
            all_samples, failed = read_logs(prefix)
            window = [s for s in all_samples if start <= s[0] <= end]
            note = f"{note}; " if note else ""
            note += f"machine load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
            outcome = Outcome(case, window, all_samples, (start, end), failed, aborted, op_seconds, work or op_seconds)
            outcome.note = note
            with psycopg.connect(self.cluster.url(db), autocommit=True) as conn:
                if case.rows is not None:
                    outcome.rows = case.rows(conn)
                if case.key.endswith("004"):
                    outcome.note += "; " + rows_kept(conn, self.args.trades)
            return outcome
        finally:
            self.admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def runner_note(done: subprocess.CompletedProcess[str]) -> tuple[str, float]:
    """A note on the runner's run, and the applied migration's own duration in seconds."""
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]  # logs go to stderr
    retries = sum(1 for e in events if e.get("event") == "ddl_lock_retry")
    if done.returncode != 0:
        failed = next((e for e in events if e.get("event") == "run_failed"), {})
        raise SystemExit(f"the operation failed (exit {done.returncode}): {failed.get('error', done.stderr[-500:])}")
    applied = sum(e["duration_ms"] for e in events if e.get("event") == "migration_applied") / 1000
    note = f"runner exit 0, {retries} lock-timeout retries, migration {applied:.1f} s"
    batches = [e for e in events if e.get("event") == "batch_committed"]
    if batches:
        sizes = [e["rows_done"] - b["rows_done"] for b, e in zip([{"rows_done": 0}, *batches], batches, strict=False)]
        throttled = sum(1 for e in events if e.get("event") == "batch_throttled")
        note += (
            f"; {len(batches)} batches of {min(sizes[:-1] or sizes):,} to {max(sizes):,} keys (median"
            f" {statistics.median(sizes):,.0f}), longest {max(e['duration_ms'] for e in batches):.0f} ms,"
            f" median {statistics.median(e['duration_ms'] for e in batches):.0f} ms, {throttled} throttled"
        )
    return note, applied


def rows_kept(conn: psycopg.Connection[tuple[object, ...]], trades: int) -> str:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE user_address = 'bench-app'), "
        "(SELECT relkind::text FROM pg_class WHERE oid = 'trades_unified'::regclass) FROM trades_unified"
    ).fetchone()
    assert row is not None
    total, app, kind = row
    kept = "every row kept" if total == trades + app else f"ROWS LOST: {total} != {trades} + {app}"
    return f"{kept} ({trades:,} + {app:,} inserted by the traffic), trades_unified relkind {kind}"


def read_logs(prefix: Path) -> tuple[list[tuple[float, float, int]], int]:
    """(due time, latency ms, script) per logged transaction, and the count of failed ones."""
    samples, failed = [], 0
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) < 7:
                continue  # the line cut off by the interruption
            if not fields[2].isdigit():
                failed += 1
                continue
            latency_us = int(fields[2])  # with -R pgbench measures from the scheduled start: the lag is in it
            finished = int(fields[4]) + int(fields[5]) / 1e6
            samples.append((finished - latency_us / 1e6, latency_us / 1000, int(fields[3])))
    samples.sort()
    return samples, failed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def row(outcome: Outcome, baseline: Outcome | None) -> str:
    latencies = [s[1] for s in outcome.samples]
    writes = [s[1] for s in outcome.samples if s[2] in WRITES]
    p99 = percentile(latencies, 0.99)
    ratio = f"{p99 / percentile([s[1] for s in baseline.samples], 0.99):.1f}x" if baseline else ""
    throughput = f"{outcome.rows / outcome.work_seconds:,.0f} rows/s ({outcome.rows:,} rows)" if outcome.rows else ""
    return (
        f"| {outcome.case.title} | {outcome.op_seconds:.1f} | {len(latencies):,} | {percentile(latencies, 0.5):.1f}"
        f" | {p99:.1f} | {ratio} | {max(latencies, default=0):.0f} | {max(writes, default=0):.0f}"
        f" | {outcome.failed + outcome.aborted} | {throughput} |"
    )


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - a bench extra, imported only to draw

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(outcomes), 1, figsize=(11, 2.6 * len(outcomes)), sharey=True, squeeze=False)
    colours = ("tab:blue", "tab:orange", "tab:green")
    for ax, outcome in zip(axes[:, 0], outcomes, strict=True):
        start, end = outcome.window
        for script, (_, _, label) in enumerate(SCRIPTS):
            points = [(s[0] - start, s[1]) for s in outcome.all_samples if s[2] == script]
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=2, color=colours[script], label=label)
        ax.axvspan(0, end - start, color="grey", alpha=0.15, label="operation running")
        ax.axhline(1000, color="red", linewidth=0.8, linestyle="--", label="1 s")
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        latencies = [s[1] for s in outcome.samples]
        ax.set_title(
            f"{outcome.case.title}: p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies, default=0):.0f} ms",
            fontsize=10,
            loc="left",
        )
    axes[-1, 0].set_xlabel("seconds since the operation started (baseline: since the measured window started)")
    axes[0, 0].legend(loc="upper right", fontsize=8, markerscale=4, ncols=5)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(bench: Bench, outcomes: list[Outcome], png: Path) -> str:
    args = bench.args
    psql = subprocess.run([str(bench.bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    baseline = next((o for o in outcomes if o.case.key == "baseline"), None)
    lines = [
        f"# Online data changes against live traffic, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        (
            f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
            f" GiB, {platform.platform()}. Server: {psql.stdout.strip()}, data directory on tmpfs."
        ),
        f"Data: {bench.data_note}.",
        (
            f"Traffic: pgbench -R {args.rate} -c {args.clients} -j {args.threads} -M prepared; warm-up"
            f" {args.warmup:g} s, tail {args.tail:g} s, baseline window {args.baseline:g} s."
        ),
        f"Command: `{' '.join(['flock /tmp/bench.lock .venv/bin/python -m bench.live', *sys.argv[1:]])}`",
        "",
        (
            "| case | operation s | app transactions | p50 ms | p99 ms | p99 / baseline | max ms | max write ms"
            " | failed | operation throughput |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(outcome, baseline) for outcome in outcomes]
    lines += ["", f"![application latency over time]({png.name})", ""]
    notes = [f"- {o.case.title}: {o.note.lstrip('; ')}" for o in outcomes if o.note]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += [
        "## Method and caveats",
        "",
        __doc__.split("Method (also written under the results table):")[1].strip(),
        (
            "- p50/p99/max: over the application's transactions due while the operation ran; max write: the"
            " longest insert or token update among them; failed: transactions pgbench logged as failed plus"
            " aborted clients. operation s: wall time from starting the runner to its exit; throughput: rows"
            " written per second of the migration's own duration (the runner's duration_ms, for a batched file"
            " from its first batch to its last, pauses included)."
        ),
        (
            "- One shared 2-core machine: other engineers' test suites may run meanwhile (the load averages in"
            " the notes show it); compare the cases within one run, not absolute numbers across runs."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=5_000_000, help="trades in the database (default 5,000,000)")
    parser.add_argument("--tokens", type=int, default=500_000, help="tokens in the database (default 500,000)")
    parser.add_argument("--rate", type=int, default=200, help="application transactions per second (default 200)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of traffic before the operation")
    parser.add_argument("--tail", type=float, default=5, help="seconds of traffic after the operation")
    parser.add_argument("--baseline", type=float, default=30, help="seconds of the baseline window")
    parser.add_argument(
        "--cases",
        default="baseline,a,b,old004,new004",
        help="comma-separated, in order (default: all)",
    )
    parser.add_argument("--base", default="/dev/shm", help="parent directory of the data directory (default tmpfs)")
    args = parser.parse_args()
    known = cases()
    chosen = [known[key] for key in args.cases.split(",")]
    cluster = Cluster(major=18, base=args.base if Path(args.base).is_dir() else None, settings=SERVER_SETTINGS)
    cluster.start()
    outcomes = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(cluster, Path(tmp), args)
            bench.template()
            outcomes = [bench.run_case(case) for case in chosen]
            RESULTS.mkdir(exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
            png = RESULTS / "live-latest.png"
            plot(outcomes, png)
            text = report(bench, outcomes, png)
    finally:
        cluster.stop()
    (RESULTS / f"live-{stamp}.md").write_text(text)
    (RESULTS / "live-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
