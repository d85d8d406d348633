"""``flock /tmp/bench.lock python -m bench.lint.compare [--reps N]``: our lint against squawk on the corpus.

Method (also written into the results):
- The corpus is ``.cache/lint-corpus`` (``python -m bench.lint.corpus`` assembles it).
- squawk runs as ``squawk --reporter json --assume-in-transaction FILES...`` (every project of
  the corpus runs a file as one transaction, as this runner does); ours as ``migration-runner
  lint --select ALL --format json FILES...``, installed from this checkout as users install it
  (``.cache/bench-runner``, not editable), and the same checkout built with mypyc
  (``MIGRATION_RUNNER_MYPYC=1``, ``.cache/bench-runner-mypyc``; its report must equal the
  other's byte for byte). Each in one process over the whole corpus.
- Findings are compared per statement: a squawk violation belongs to the top-level statement
  whose lines hold it (our parser gives the statements); ours to the statement whose first
  line it reports (PL/pgSQL findings to the DO block or function around them).
- Per squawk rule family (squawk's rule and the rules of ours that cover it): statements
  flagged by both, only by squawk, only by us.
- Timing: wall time of the whole process, repetitions interleaved (squawk, ours, compiled, ...),
  median reported, and CPU time (squawk lints on two threads; ours forks two workers from 200
  files on); the single-file figure is the median over ``--reps`` runs of each tool on
  the bundled ``migrations/001_initial_schema.sql``.
- Crashes: our lint is also run file by file in this process; any exception is a crash.
  squawk's are its non-JSON outputs or exit codes other than 0/1.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from runner.discover import parse, read_migration
from runner.lint import Linter, configuration
from runner.lint.rules import ALIASES, RULES

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / ".cache" / "lint-corpus"
RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
SINGLE = REPO / "migrations" / "001_initial_schema.sql"
# squawk rules covered by more of ours than their alias says (squawk reports one rule for several cases).
EXTRA = {
    "constraint-missing-not-valid": {"constraint-builds-index"},
    "require-concurrent-index-creation": {"non-transactional-in-plpgsql"},
    "require-concurrent-index-deletion": {"non-transactional-in-plpgsql"},
}
# Where one rule of ours covers several of squawk's, the message says which case it is.
KIND = {
    "ban-drop-view": ("DROP VIEW", "DROP MATERIALIZED VIEW"),
    "ban-drop-function": ("DROP FUNCTION", "DROP PROCEDURE", "DROP AGGREGATE"),
    "ban-drop-type": ("DROP TYPE", "DROP DOMAIN", "DROP OPERATOR"),  # squawk files DROP OPERATOR here
    "ban-drop-sequence": ("DROP SEQUENCE",),
    "adding-foreign-key-constraint": ("FOREIGN", "REFERENCES"),
    "adding-serial-primary-key-field": ("PRIMARY KEY",),
    "disallowed-unique-constraint": ("UNIQUE",),
    "prefer-bigint-over-int": ("is integer", "is serial"),
    "prefer-bigint-over-smallint": ("is smallint", "is smallserial"),
    "transaction-nesting": ("transaction control",),
}
# Families the issue asks about: live risks, breaking changes, advice.
LISTED = (
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    "require-concurrent-reindex",
    "constraint-missing-not-valid",
    "adding-foreign-key-constraint",
    "disallowed-unique-constraint",
    "adding-serial-primary-key-field",
    "adding-field-with-default",
    "adding-required-field",
    "adding-not-nullable-field",
    "changing-column-type",
    "identifier-too-long",
    "ban-alter-identity",
    "ban-drop-column",
    "ban-drop-table",
    "ban-drop-view",
    "ban-drop-constraint",
    "ban-drop-not-null",
    "ban-drop-default",
    "ban-drop-function",
    "ban-drop-type",
    "ban-drop-sequence",
    "ban-drop-schema",
    "renaming-column",
    "renaming-table",
    "renaming-object",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-text-field",
    "prefer-timestamp-tz",
    "prefer-identity",
    "ban-char-field",
)


def ours(rule: str) -> set[str]:
    return set(ALIASES.get(rule, ())) | EXTRA.get(rule, set())


def natural(path: Path) -> list[object]:
    """Version order within a directory (pgstac.0.9 before pgstac.0.10), as each project applies them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def files() -> list[Path]:
    return sorted((p for p in CORPUS.rglob("*") if p.is_file()), key=natural)


NAMED = re.compile(
    r"(?:alter\s+table|drop\s+\w+(?:\s+view)?|alter\s+\w+|rename\s+to)\s+(?:if\s+exists\s+)?(?:only\s+)?"
    r"(?:[\w\"]+\.)?\"?(\w+)",
    re.IGNORECASE,
)


CONSTRAINT = re.compile(r"drop\s+constraint\s+(?:if\s+exists\s+)?\"?(\w+)", re.IGNORECASE)


def created_in_file(path: Path, line: int) -> bool:
    """Whether the object the statement at ``line`` names is created somewhere in the same file."""
    text = path.read_text()
    statement = "\n".join(text.split("\n")[line - 1 : line + 3]).split(";")[0]
    match = CONSTRAINT.search(statement) or NAMED.search(statement)
    if not match:
        return False
    name = re.escape(match.group(1))
    create = rf"create\s+(?:or\s+replace\s+)?(?:unlogged\s+|temp\w*\s+)?\w+(?:\s+view)?\s+(?:if\s+not\s+exists\s+)?(?:[\w\"]+\.)?\"?{name}\b"
    added = rf"add\s+constraint\s+\"?{name}\b|rename\s+to\s+\"?{name}\b"
    return re.search(create + "|" + added, text, re.IGNORECASE) is not None


CPU: dict[str, list[float]] = collections.defaultdict(list)


def compiled(name: str, source: Path) -> Path:
    """A virtual environment under .cache with ``source`` installed as ``setup.py`` compiles it (mypyc); its bin dir.

    Built with the mypy of this interpreter's environment, and built again only when a file of
    the package (``runner/``, ``setup.py``, ``pyproject.toml``) changed: a build takes a minute.
    """
    from bench.__main__ import CACHE, venv  # noqa: PLC0415 - loads psycopg: only the timing needs it

    parts = sorted([*(source / "runner").rglob("*.py"), source / "setup.py", source / "pyproject.toml"])
    digest = hashlib.sha256(b"".join(p.relative_to(source).as_posix().encode() + p.read_bytes() for p in parts))
    stamp = CACHE / name / "source.sha256"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return CACHE / name / "bin"
    stamp.unlink(missing_ok=True)
    # the pure build first: mypyc type-checks against the runtime dependencies it brings; setuptools
    # 70.1 builds wheels without the wheel package
    tools = venv(name, "setuptools>=70.1", f"mypy=={importlib.metadata.version('mypy')}", str(source))
    pip = [str(tools / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--no-build-isolation", "--no-deps", "--force-reinstall", str(source)],
        env={**os.environ, "MIGRATION_RUNNER_MYPYC": "1"},
        check=True,
    )
    stamp.write_text(digest.hexdigest())
    return tools


def timed(command: list[str], tool: str = "") -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one run; its CPU time (user + system, all threads) goes to ``CPU[tool]``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if tool:
        CPU[tool].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall, result


def statement_starts(path: Path) -> list[int]:
    """First line of each top-level statement (sorted), from our parser; [] if it does not parse."""
    migration, _ = read_migration(path.parent, path, 0)
    if migration is None:
        return []
    statements, _ = parse(migration)
    return [s.file_line for s in statements]


def key(starts: list[int], line: int) -> int:
    """The statement a line belongs to: the last statement starting at or before it."""
    index = bisect.bisect_right(starts, line) - 1
    return starts[index] if index >= 0 else line


def timing(
    names: list[str], reps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, subprocess.CompletedProcess[str]]]:
    """Wall times of squawk and both builds of ours, interleaved: corpus runs, one-file runs, last corpus run each."""
    squawk = [str(BIN / "squawk"), "--reporter", "json", "--assume-in-transaction"]
    from bench.__main__ import venv  # noqa: PLC0415 - loads psycopg: only the timing needs it, not bench.lint.inprocess

    lint = ["lint", "--select", "ALL", "--format", "json"]
    tools = {
        "squawk": squawk,
        "ours": [str(venv("bench-runner", str(REPO)) / "migration-runner"), *lint],
        "compiled": [str(compiled("bench-runner-mypyc", REPO) / "migration-runner"), *lint],
    }
    walls: dict[str, list[float]] = collections.defaultdict(list)
    single: dict[str, list[float]] = collections.defaultdict(list)
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    for _ in range(reps):
        for tool, argv in tools.items():
            wall, runs[tool] = timed([*argv, *names], tool)
            walls[tool].append(wall)
        for tool, argv in tools.items():
            single[tool].append(timed([*argv, str(SINGLE)])[0])
    if runs["compiled"].stdout != runs["ours"].stdout:
        sys.exit("the compiled build's report differs from the pure-Python build's")
    return walls, single, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    corpus = files()
    names = [str(p.relative_to(REPO)) for p in corpus]
    walls, single, runs = timing(names, args.reps)
    squawk_run, our_run = runs["squawk"], runs["ours"]
    their = json.loads(squawk_run.stdout)
    our = json.loads(our_run.stdout)
    crashes = []
    linter = Linter(configuration.severities({}, "bench", select=["ALL"], ignore=None))
    for path in corpus:
        try:
            linter.lint(path)
        except Exception as exc:
            crashes.append(f"{path}: {type(exc).__name__}: {exc}")
    squawk_crash = "" if squawk_run.returncode in {0, 1} else squawk_run.stderr[-500:]

    starts = {name: statement_starts(REPO / name) for name in names}
    flagged_by_them: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
    for violation in their:
        name = violation["file"]
        flagged_by_them[violation["rule_name"]].add((name, key(starts.get(name, []), violation["line"] + 1)))
    flagged_by_us: list[tuple[str, str, tuple[str, int]]] = []
    inside = collections.Counter()
    for finding in our:
        name, message = str(finding["file"]), str(finding["message"])
        if " (in " in message:
            inside[str(finding["rule"])] += 1
        flagged_by_us.append((str(finding["rule"]), message, (name, key(starts.get(name, []), int(finding["line"])))))
    rows = []
    disagreements = []
    for rule in sorted(set(flagged_by_them) | set(LISTED)):
        theirs = flagged_by_them.get(rule, set())
        mine = {
            where
            for ours_rule, message, where in flagged_by_us
            if ours_rule in ours(rule) and any(case in message for case in KIND.get(rule, ("",)))
        }
        both, only_them, only_us = theirs & mine, theirs - mine, mine - theirs
        coverage = f"{100 * len(both) / len(theirs):.0f} %" if theirs else "-"
        made_here = sum(created_in_file(REPO / f, line) for f, line in only_them)
        rows.append(
            (
                rule,
                ", ".join(sorted(ours(rule))) or "(none)",
                len(both),
                len(only_them),
                made_here,
                len(only_us),
                coverage,
                f"{100 * len(both) / rest:.0f} %" if (rest := len(both) + len(only_them) - made_here) else "-",
            )
        )
        disagreements += [("squawk only", rule, f, line) for f, line in sorted(only_them)]
        disagreements += [("ours only", rule, f, line) for f, line in sorted(only_us)]
    write(corpus, rows, disagreements, walls, single, crashes, squawk_crash, inside, our)


def row(label: str, values: dict[str, float], unit: str) -> str:
    """A timing table row: squawk's figure, then each build of ours with its ratio to squawk's."""
    cells = [unit.format(values["squawk"])]
    for tool in ("ours", "compiled"):
        cells += [unit.format(values[tool]), f"{values[tool] / values['squawk']:.2f}x"]
    return f"| {label} | {' | '.join(cells)} |"


def write(
    corpus: list[Path],
    rows: list[tuple[str, str, int, int, int, int, str, str]],
    disagreements: list[tuple[str, str, str, int]],
    walls: dict[str, list[float]],
    single: dict[str, list[float]],
    crashes: list[str],
    squawk_crash: str,
    inside: collections.Counter[str],
    our: list[dict[str, object]],
) -> None:
    RESULTS.mkdir(exist_ok=True)
    projects = collections.Counter(p.relative_to(CORPUS).parts[0] for p in corpus)
    median = {tool: statistics.median(values) for tool, values in walls.items()}
    one = {tool: statistics.median(values) for tool, values in single.items()}
    lines = [
        f"# lint vs squawk on {len(corpus)} files of {len(projects)} projects ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z)",
        "",
        (
            f"Command: `flock /tmp/bench.lock {Path(sys.executable).name} -m bench.lint.compare --reps "
            f"{len(walls['ours'])}` (machine: {os.cpu_count()} cores, shared)."
        ),
        "",
        "## Timing (median of the runs, and the best run: the machine is shared)",
        "",
        "`ours`: pip's ordinary (pure-Python) build; `compiled`: the same source built with",
        "`MIGRATION_RUNNER_MYPYC=1` (setup.py: lint's modules compiled by mypyc). Both reports are",
        "checked byte for byte equal.",
        "",
        "| | squawk | ours | ratio | compiled | ratio |",
        "|---|---|---|---|---|---|",
        row("corpus, wall, best run", {tool: min(values) for tool, values in walls.items()}, "{:.3f} s"),
        row("one file, wall, best run", {tool: min(values) * 1000 for tool, values in single.items()}, "{:.0f} ms"),
        row("corpus, wall, median", median, "{:.3f} s"),
        row(
            "corpus, CPU (user+system, all threads)",
            {tool: statistics.median(values) for tool, values in CPU.items()},
            "{:.3f} s",
        ),
        row(f"one file ({SINGLE.name})", {tool: value * 1000 for tool, value in one.items()}, "{:.0f} ms"),
        "",
        *[f"All corpus runs, {tool} (s): " + ", ".join(f"{w:.3f}" for w in values) for tool, values in walls.items()],
        "",
        f"## Crashes: ours {len(crashes)}, squawk {'0' if not squawk_crash else 'yes'}",
        "",
        *[f"- {crash}" for crash in crashes],
        "",
        "## Coverage per squawk rule (statements flagged)",
        "",
        "`made here`: of the statements only squawk flags, those whose object (table, constraint, view,",
        "function) this same file creates, adds again or renames into place: new, replaced or swapped,",
        "so nothing of the running release is locked or broken (see README for the hand-checks).",
        "",
        "`coverage`: both / all squawk flags; `without made here`: both / (both + squawk only - made here).",
        "",
        "| squawk rule | our rules | both | squawk only | made here | ours only | coverage | without made here |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {' | '.join(map(str, r))} |" for r in rows],
        "",
        "## Our findings inside PL/pgSQL bodies (squawk does not look there)",
        "",
        *[f"- {rule}: {count}" for rule, count in inside.most_common()],
        "",
        "## Our findings per rule",
        "",
        *[
            f"- {rule} ({RULES[rule].severity}): {count}"
            for rule, count in collections.Counter(str(f["rule"]) for f in our).most_common()
        ],
        "",
        "## Projects",
        "",
        *[f"- {project}: {count} files" for project, count in sorted(projects.items())],
    ]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "disagreements.tsv").write_text(
        "who\tsquawk_rule\tfile\tstatement_line\n" + "".join(f"{w}\t{r}\t{f}\t{n}\n" for w, r, f, n in disagreements)
    )
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
