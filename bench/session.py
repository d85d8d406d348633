"""``python -m bench.session [--reps N]``: what the clean-session model costs, and what memory holds.

Side by side in one run, interleaved round-robin, against one PostgreSQL 18 on tmpfs:
- per migration: 200 two-statement migrations (W2's files) applied by release 0.1.0 (from
  this repository's git history, commit ``9be90ba``) and by this checkout, each installed
  into its own virtual environment under ``.cache/``; the difference of the medians divided
  by 200 is the per-migration cost of the session reset, the pinned lexing settings and the
  guarded history write;
- memory: one migration whose diagnostic ``SELECT`` returns 3,000,000 rows (about 300 MB of
  text), peak RSS of each process (``os.wait4``), against the chart's 128 MiB limit.

Writes ``bench/results/session-<UTC time>.md`` and ``bench/results/session-latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import psycopg

from bench.__main__ import STATEMENT, Sample, run, venv
from tests.pgcluster import REPO, Cluster

RELEASE_0_1_0 = "9be90ba"
MIGRATIONS = 200
ROWS = 3_000_000
LIMIT_MIB = 128
RESULTS = REPO / "bench" / "results"


def release_tree(target: Path) -> Path:
    """Release 0.1.0's sources (``git archive``), as a directory pip can install."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", RELEASE_0_1_0], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions per runner (default 7)")
    args = parser.parse_args()
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    cluster = Cluster(major=18, base=base).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            runners = {
                "0.1.0": venv("bench-runner-0.1.0", str(release_tree(work / "release"))) / "migration-runner",
                "this": venv("bench-runner", str(REPO)) / "migration-runner",
            }
            many, big = work / "many", work / "big"
            many.mkdir()
            big.mkdir()
            for i in range(1, MIGRATIONS + 1):
                (many / f"{i:03d}_m.sql").write_text(STATEMENT.format(n=f"{i:03d}"))
            (big / "001_diagnostic.sql").write_text(
                f"SELECT g, repeat('x', 90) AS pad FROM generate_series(1, {ROWS}) g;\n"
            )
            env = {**os.environ, "PGPASSWORD": cluster.password, "RUNNER_LOG_FORMAT": "json"}
            samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)
            counter = 0
            for rep in range(args.reps):
                print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr)
                for workload, directory in (("per-migration", many), ("3M-row SELECT", big)):
                    for name, binary in runners.items():
                        counter += 1
                        db = f"s{counter}"
                        with psycopg.connect(cluster.url(), autocommit=True) as conn:
                            conn.execute(f'CREATE DATABASE "{db}"')
                        url = f"postgresql://postgres@127.0.0.1:{cluster.port}/{db}"
                        argv = [str(binary), "migrate", "--migrations-dir", str(directory), "--database-url", url]
                        samples[(workload, name)].append(run(argv, env))
                        with psycopg.connect(cluster.url(), autocommit=True) as conn:
                            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            report = render(samples, args.reps)
    finally:
        cluster.stop()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    for name in (f"session-{stamp}.md", "session-latest.md"):
        (RESULTS / name).write_text(report)
    print(report)
    return 0


def render(samples: dict[tuple[str, str], list[Sample]], reps: int) -> str:
    def median(workload: str, runner: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[(workload, runner)])

    def ok(workload: str, runner: str) -> str:
        found = samples[(workload, runner)]
        return f"{sum(s.ok for s in found)}/{len(found)}"

    old, new = (median("per-migration", r, "wall") for r in ("0.1.0", "this"))
    per = (new - old) / MIGRATIONS * 1000
    lines = [
        f"# Session model: cost per migration and memory ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        (
            f"`python -m bench.session --reps {reps}`: PostgreSQL 18 on tmpfs, fsync off; medians of {reps}"
            " interleaved repetitions; the same server, files and machine for both runners."
        ),
        "",
        "| workload | runner | wall ms (median) | per migration ms | CPU ms | peak RSS MiB | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in ("per-migration", "3M-row SELECT"):
        for runner in ("0.1.0", "this"):
            wall = median(workload, runner, "wall")
            each = f"{wall / MIGRATIONS * 1000:.2f}" if workload == "per-migration" else "-"
            lines.append(
                f"| {workload} | {runner} | {wall * 1000:.0f} | {each} | {median(workload, runner, 'cpu') * 1000:.0f}"
                f" | {median(workload, runner, 'rss_kib') / 1024:.1f} | {ok(workload, runner)} |"
            )
    rss_new = median("3M-row SELECT", "this", "rss_kib") / 1024
    lines += [
        "",
        (
            f"- The clean session costs {per:+.3f} ms per migration ({new / old:.2f}x of 0.1.0's wall time over"
            f" {MIGRATIONS} migrations): the reset (DISCARD ALL but the advisory unlock) and the session values travel"
            " in the migration's one message, so no round trip is added."
        ),
        (
            f"- A migration returning {ROWS:,} rows: peak RSS {rss_new:.1f} MiB with this runner"
            f" ({'under' if rss_new < LIMIT_MIB else 'OVER'} the chart's {LIMIT_MIB} MiB limit): rows arrive in"
            " chunks of 256 and are counted, never decoded or kept."
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
