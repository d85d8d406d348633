"""``flock /tmp/bench.lock python -m bench.lint.abtest REV [--reps N]``: lint of this checkout against lint of REV, beside squawk.

One step's speed-up, measured side by side: the runner of git revision ``REV`` and the runner of
this checkout, each installed (not editable) in its own virtual environment under ``.cache``,
and squawk, lint the corpus (``python -m bench.lint.corpus``) in turn, repetitions
interleaved, as ``bench.lint.compare`` runs them. Prints the best and median wall time of each
and their ratios to squawk's; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

from bench.lint.compare import BIN, REPO, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    from bench.__main__ import venv  # noqa: PLC0415 - loads psycopg, as compare's timing does

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{args.rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as source:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
        theirs = venv(f"bench-runner-{commit}", source)
    ours = venv("bench-runner", str(REPO))
    lint = ["lint", "--select", "ALL", "--format", "json"]
    tools = {
        "squawk": [str(BIN / "squawk"), "--reporter", "json", "--assume-in-transaction"],
        commit: [str(theirs / "migration-runner"), *lint],
        "this checkout": [str(ours / "migration-runner"), *lint],
    }
    names = [str(path) for path in files()]
    walls: dict[str, list[float]] = {tool: [] for tool in tools}
    for _ in range(args.reps):
        for tool, argv in tools.items():
            started = time.perf_counter()
            subprocess.run([*argv, *names], stdout=subprocess.DEVNULL, check=False)
            walls[tool].append(time.perf_counter() - started)
    best, median = min(walls["squawk"]), statistics.median(walls["squawk"])
    print(f"{len(names)} files, {args.reps} runs each, interleaved")
    for tool, times in walls.items():
        print(
            f"{tool:>14}: best {min(times):.3f} s, median {statistics.median(times):.3f} s;"
            f" against squawk {min(times) / best:.2f}x best, {statistics.median(times) / median:.2f}x median"
        )


if __name__ == "__main__":
    main()
