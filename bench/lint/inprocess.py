"""``python -m bench.lint.inprocess [--reps N]``: lint the corpus in this process, one file after another.

No fork, no start-up, no report: the work per file alone, as a profiler or an instruction
counter sees it. Prints the best CPU time of ``--reps`` runs. Instruction counts do not move
with the machine's load (a shared machine's wall times move by a third between runs):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/lint.cg .venv/bin/python -m bench.lint.inprocess --reps 1
    callgrind_annotate --inclusive=yes /tmp/lint.cg | head -60
"""

from __future__ import annotations

import argparse
import gc
import time

from bench.lint.compare import files
from runner.lint import configuration, cparser, lint_group, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cparser.load()
    corpus = targets([str(path) for path in files()])
    severities = configuration.severities({}, "bench", select=["ALL"], ignore=None)
    gc.disable()  # as the lint command runs
    best = float("inf")
    for _ in range(args.reps):
        started = time.process_time()
        found = lint_group(corpus, severities)
        best = min(best, time.process_time() - started)
    print(f"{len(corpus)} files, {len(found)} findings, best CPU {best:.3f} s of {args.reps}")


if __name__ == "__main__":
    main()
