"""``lint``: static checks of migration files on PostgreSQL's own parse trees (SQL and PL/pgSQL). No database.

Invariants:
- Every finding has a rule id from ``rules.RULES``, a severity, the file as given, the line
  of the statement and a fix hint true for this runner. ``error`` findings make ``lint`` exit
  3; ``warning`` findings do not; a bad flag or configuration exits 2.
- ``lint`` imports neither psycopg nor the executor: the parser, the rules and the reporter.
- ``add_arguments`` and ``command`` are the CLI's contract with this package.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import operator
import os
import stat
from pathlib import Path

from runner.config import Settings
from runner.discover import MIGRATION_NAME
from runner.errors import ConfigError, Problem, ValidationError
from runner.lint import configuration, cparser, share
from runner.lint.engine import Finding, Linter, structure
from runner.lint.report import FORMATS, render
from runner.lint.rules import RULES

DIRECTORY_PROBLEMS = {"name", "duplicate", "gap"}
__all__ = ["RULES", "Finding", "Linter", "add_arguments", "command", "lint_paths"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lint`` command's own arguments (besides ``--migrations-dir`` and logging)."""
    parser.add_argument(
        "files", nargs="*", metavar="PATH", help="files or directories (*.sql inside) to lint (default: the directory)"
    )
    parser.add_argument("--format", choices=FORMATS, default="human", help="report format (default human)")
    parser.add_argument(
        "--select",
        action="append",
        metavar="RULES",
        help="run only these rules: ids, squawk names, families, default or ALL (comma-separated; repeatable)",
    )
    parser.add_argument("--ignore", action="append", metavar="RULES", help="skip these rules (as --select)")
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: the nearest pyproject.toml or migration-runner-lint.toml)",
    )


def lint_paths(paths: list[Path], severities: dict[str, str] | None = None) -> list[Finding]:
    """Lint the given files in order (the default rule set unless ``severities`` says otherwise)."""
    linter = Linter(severities or configuration.severities({}, "defaults", select=None, ignore=None))
    for path in paths:
        linter.lint(path)
    return linter.findings


def command(settings: Settings, args: argparse.Namespace) -> None:
    """``lint``: print the report to stdout; ``ValidationError`` (exit 3) on an error finding."""
    cparser.load()
    source = args.config or configuration.find(Path.cwd())
    table = configuration.read(source) if source else {}
    severities = configuration.severities(
        table,
        str(source or "configuration"),
        select=configuration.split(args.select),
        ignore=configuration.split(args.ignore),
    )
    linter = Linter(severities)
    files = targets([Path(name) for name in args.files]) if args.files else directory(settings.migrations_dir, linter)
    gc.disable()  # lint's trees and findings hold no cycles: reference counting frees them, collecting walks them
    try:
        linter.findings += lint_all(files, severities)
    finally:
        gc.enable()
    print(render(linter.findings, len(files), args.format))
    errors = sum(f.severity == "error" for f in linter.findings)
    if errors:  # the report above names each one; the exception only sets the exit code
        raise ValidationError([Problem("lint", f"{errors} error finding(s)")])


PARALLEL_FROM = 200  # files; below that, forking costs more than it saves


def lint_all(files: list[Path], severities: dict[str, str]) -> list[Finding]:
    """Every file's findings, in the order given.

    From ``PARALLEL_FROM`` files on, and with more than one CPU, this process and one forked
    child share the files (``share``), as squawk lints on two threads; the child inherits
    the loaded parser, so it starts at once. A directory's ``NNN_name.sql`` files stay
    together and in order in one job (column types carry over between them); any other file
    is a job of its own. Jobs go out largest first (bytes), at most ``share.MAX_JOBS`` of
    them (the smallest grouped), so the two processes finish at about the same time.
    """
    units: dict[Path | int, list[int]] = {}
    for index, path in enumerate(files):
        units.setdefault(path.parent if MIGRATION_NAME.match(path.name) else index, []).append(index)
    if len(files) < PARALLEL_FROM or len(units) < 2 or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return lint_group(files, severities)
    size = [weight(path) for path in files]
    largest_first = sorted(units.values(), key=lambda unit: -sum(size[i] for i in unit))
    count = min(len(largest_first), share.MAX_JOBS)
    jobs = [
        sorted(
            i
            for unit in largest_first[len(largest_first) * k // count : len(largest_first) * (k + 1) // count]
            for i in unit
        )
        for k in range(count)
    ]

    row = operator.attrgetter(*(field.name for field in dataclasses.fields(Finding)))  # Finding(*row) rebuilds it

    def encode(found: list[Finding]) -> list[tuple[str, str, str, int, str, str]]:
        return [row(f) for f in found]

    def decode(rows: list[tuple[str, str, str, int, str, str]]) -> list[Finding]:
        return [Finding(*row) for row in rows]

    results = share.share(count, lambda job: lint_group([files[i] for i in jobs[job]], severities), encode, decode)
    order = {str(path): index for index, path in enumerate(files)}
    return sorted((finding for result in results for finding in result), key=lambda f: order.get(f.file, 0))


def weight(path: Path) -> int:
    """A file's size in bytes, what lint's work on it is taken to be (0 if it cannot be read)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def lint_group(files: list[Path], severities: dict[str, str]) -> list[Finding]:
    linter = Linter(severities)
    for path in files:
        linter.lint(path)
    return linter.findings


def targets(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for the ``*.sql`` files below it, in path order."""
    found: list[Path] = []
    for path in paths:
        try:
            directory = stat.S_ISDIR(path.stat().st_mode)  # one system call: most arguments are files
        except FileNotFoundError:
            if not path.is_symlink():
                raise ConfigError(f"lint: {path}: no such file or directory") from None
            directory = False  # a dangling link: reading it reports the problem
        except OSError:
            directory = False  # unreadable: reading it reports why
        if directory:
            found += sorted(p for p in path.rglob("*.sql") if p.is_file())
        else:
            found.append(path)
    return found


def directory(migrations_dir: Path, linter: Linter) -> list[Path]:
    """The migrations directory's ``*.sql`` files in version order; naming problems become findings."""
    from runner.discover import discover  # noqa: PLC0415

    try:
        return [m.path for m in discover(migrations_dir)]
    except ValidationError as exc:
        for problem in exc.problems:  # the directory's own; each file's come when it is linted
            if problem.kind in DIRECTORY_PROBLEMS:
                shown = str(migrations_dir / problem.file) if problem.file else str(migrations_dir)
                linter.findings += linter.select([structure(problem)], None, shown, [])
    files = [p for p in migrations_dir.iterdir() if p.name.endswith(".sql") and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (int(m.group(1)) if (m := MIGRATION_NAME.match(p.name)) else 0, p.name))
