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
import gc
import os
import stat
from pathlib import Path
from typing import NamedTuple

from runner.config import Settings
from runner.discover import MIGRATION_NAME
from runner.errors import ConfigError, Problem, ValidationError
from runner.lint import configuration, cparser, share
from runner.lint.engine import Finding, Linter, structure
from runner.lint.report import FORMATS, render
from runner.lint.rules import RULES

DIRECTORY_PROBLEMS = {"name", "duplicate", "gap"}
__all__ = ["RULES", "Finding", "Linter", "Target", "add_arguments", "command", "lint_paths"]


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
    files = targets(args.files) if args.files else directory(settings.migrations_dir, linter)
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


class Target(NamedTuple):
    """A file to lint: its name as given (or as found below a directory) and its size in bytes.

    The size is what lint's work on the file is taken to be (0 if it cannot be stat'ed:
    reading it reports why). The name becomes a ``Path`` only in the process that lints it.
    """

    name: str
    size: int


def lint_all(files: list[Target], severities: dict[str, str]) -> list[Finding]:
    """Every file's findings, in the order given.

    From ``PARALLEL_FROM`` files on, and with more than one CPU, this process and one forked
    child share the files (``share``), as squawk lints on two threads; the child inherits
    the loaded parser, so it starts at once. A directory's ``NNN_name.sql`` files stay
    together and in order in one job (column types carry over between them; the directory
    is normalised as ``Path`` would, so no two names of one directory are split); any other
    file is a job of its own. Jobs go out largest first (bytes), at most ``share.MAX_JOBS``
    of them (the smallest grouped), so the two processes finish at about the same time.
    """
    units: dict[str | int, list[int]] = {}
    for index, target in enumerate(files):
        head, tail = os.path.split(target.name)
        units.setdefault(os.path.normpath(head) if MIGRATION_NAME.match(tail) else index, []).append(index)
    if len(files) < PARALLEL_FROM or len(units) < 2 or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return lint_group(files, severities)
    largest_first = sorted(units.values(), key=lambda unit: -sum(files[i].size for i in unit))
    count = min(len(largest_first), share.MAX_JOBS)
    jobs = [
        sorted(
            i
            for unit in largest_first[len(largest_first) * k // count : len(largest_first) * (k + 1) // count]
            for i in unit
        )
        for k in range(count)
    ]

    def encode(found: list[list[Finding]]) -> list[list[tuple[str, str, str, int, str, str]]]:
        """Plain tuples: marshal takes no subclass of tuple."""
        return [[(f.rule, f.severity, f.file, f.line, f.message, f.hint) for f in each] for each in found]

    def decode(rows: list[list[tuple[str, str, str, int, str, str]]]) -> list[list[Finding]]:
        return [[Finding._make(row) for row in each] for each in rows]

    results = share.share(count, lambda job: lint_each([files[i] for i in jobs[job]], severities), encode, decode)
    by_file: list[list[Finding]] = [[] for _ in files]
    for job, result in zip(jobs, results, strict=True):
        for index, found in zip(job, result, strict=True):
            by_file[index] = found
    return [finding for found in by_file for finding in found]


def lint_each(files: list[Target], severities: dict[str, str]) -> list[list[Finding]]:
    """Each file's findings, in the order given, by one ``Linter`` (column types carry over)."""
    linter = Linter(severities)
    return [linter.lint(Path(target.name)) for target in files]


def lint_group(files: list[Target], severities: dict[str, str]) -> list[Finding]:
    return [finding for found in lint_each(files, severities) for finding in found]


def targets(names: list[str]) -> list[Target]:
    """Files as given; a directory stands for the ``*.sql`` files below it, in path order."""
    found: list[Target] = []
    for name in names:
        try:
            status = os.stat(name)  # noqa: PTH116 - one call per argument, no Path: the workers make those
        except FileNotFoundError:
            if not Path(name).is_symlink():
                raise ConfigError(f"lint: {name}: no such file or directory") from None
            found.append(Target(name, 0))  # a dangling link: reading it reports the problem
            continue
        except OSError:
            found.append(Target(name, 0))  # unreadable: reading it reports why
            continue
        if stat.S_ISDIR(status.st_mode):
            found += [target for path in sorted(Path(name).rglob("*.sql")) if (target := regular(path))]
        else:
            found.append(Target(name, status.st_size))
    return found


def regular(path: Path) -> Target | None:
    """The file at ``path`` as a target, if it is a regular file (after links)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return Target(str(path), status.st_size) if stat.S_ISREG(status.st_mode) else None


def directory(migrations_dir: Path, linter: Linter) -> list[Target]:
    """The migrations directory's ``*.sql`` files in version order; naming problems become findings."""
    from runner.discover import discover  # noqa: PLC0415

    try:
        paths = [m.path for m in discover(migrations_dir)]
    except ValidationError as exc:
        for problem in exc.problems:  # the directory's own; each file's come when it is linted
            if problem.kind in DIRECTORY_PROBLEMS:
                shown = str(migrations_dir / problem.file) if problem.file else str(migrations_dir)
                linter.findings += linter.select([structure(problem)], None, shown, [])
        files = [p for p in migrations_dir.iterdir() if p.name.endswith(".sql") and not p.name.startswith(".")]
        paths = sorted(files, key=lambda p: (int(m.group(1)) if (m := MIGRATION_NAME.match(p.name)) else 0, p.name))
    return [regular(path) or Target(str(path), 0) for path in paths]
