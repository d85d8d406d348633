"""Command line: argparse subcommands; maps exceptions to the documented exit codes.

Invariants:
- Each subcommand accepts exactly the options of ``config.OPTIONS`` that it uses (as a flag
  or as its ``RUNNER_*`` variable); any other flag is a usage error (exit 2).
- Results (tables, JSON, the path ``new`` wrote) go to stdout, log events to stderr.
- No input ends in a traceback: an unexpected exception is logged as ``run_failed``.
- SIGTERM, SIGINT and SIGHUP (and ``--deadline``, via SIGALRM) raise ``Interrupted`` once; psycopg
  then cancels the running statement on the server, the migration rolls back, its failure
  row is written, the lock is released, and the process exits 143 or 130.
- Every run ends with one ``run_finished`` event carrying its ``exit_code``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from runner import __version__, config, console
from runner.errors import ConfigError, ExitCode, Interrupted, Problem, RunnerError, ValidationError

if TYPE_CHECKING:
    from runner.migrate import Report

COMMANDS = {
    "migrate": "apply pending migrations under the advisory lock (the default job)",
    "status": "show applied / pending / failed / changed / unknown migrations",
    "validate": "check files and ordering (and checksums when a database is given); changes nothing",
    "new": "write the next-numbered migration file from the template",
    "baseline": "mark 001..VERSION applied without running them (adopt a hand-migrated database)",
    "repair": "accept changed checksums and deliberate renames, clear failed rows; each change logged",
    "wait": "wait until every migration in the directory is applied (init containers)",
    "lint": "static checks of migration files (idempotency, lock safety, two-phase changes); no database",
    "verify": "apply every migration twice in a scratch database and prove the second pass changes nothing",
    "rehearse": "copy a database (pg_dump) into a scratch database and apply the pending migrations there",
    "fleet": "migrate many databases (from a file, a registry query or a name pattern): parallel, canary, shards",
}
DESCRIPTIONS = {
    "fleet": "Each target is migrated exactly as migrate does it (its own advisory lock, history "
    "table and guarantees). Targets: --targets FILE (a line is [NAME] URL; blank lines and # "
    "comments are ignored; the name defaults to the database name), --targets-query SQL (rows "
    "(name, url), run read-only on the database URL's database), or --targets-match PATTERN "
    "(the server's databases LIKE PATTERN, templates excluded). A target's shard is the first 8 "
    "bytes of SHA-256 of its name modulo --shards. Summary on stdout; one target_finished event "
    "per target on stderr.",
}
EPILOG = """exit codes: 0 done or nothing to do, 1 a migration failed, 2 usage or configuration error,
3 validation failed, 4 lock not acquired in time, 5 database unreachable or unusable,
6 wait timed out, 7 fleet: a target failed (a retry would fail again), 8 fleet: targets not done only
because a lock was busy or a database unreachable (retry), 129/130/143 interrupted by
SIGHUP/SIGINT/SIGTERM (or --deadline)."""


def add_options(command: argparse.ArgumentParser, name: str) -> None:
    """Attach the options ``name`` uses (``config.OPTIONS``) and its own arguments."""
    for option in config.OPTIONS:
        if name not in option.commands:
            continue
        variables = ", ".join(option.env)
        default = f"; default {option.default}" if option.default else ""
        if option.flag_only_value:
            command.add_argument(
                f"--{option.name}", action="store_true", default=None, help=f"{option.help} [{variables}]"
            )
        else:
            command.add_argument(f"--{option.name}", help=f"{option.help} [{variables}{default}]")
    if name in {"status", "fleet"}:
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
    elif name == "new":
        command.add_argument("name", help="description in lower_snake_case")
    elif name == "lint":
        from runner import lint  # noqa: PLC0415 - only lint needs the rules

        lint.add_arguments(command)
    elif name == "baseline":
        command.add_argument("baseline_version", metavar="VERSION", type=int, help="last version to mark")
    elif name == "repair":
        command.add_argument("files", nargs="*", metavar="FILE", help="repair only these migration files")
        command.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; each command gets only the options it uses (``--help`` per command).

    Only ``selected`` gets a sub-parser (every command does if None, so ``--help`` and a
    misspelled command list them all): each costs argparse's translation and terminal
    look-ups, milliseconds at every pod start and every ``lint`` run.
    """
    parser = argparse.ArgumentParser(
        prog="migration-runner",
        formatter_class=Formatter,
        epilog=EPILOG,
        description="Apply NNN_description.sql migrations to PostgreSQL, in order, exactly once, "
        "under an advisory lock, each in its own transaction with its history row. "
        "Results go to stdout, logs to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"migration-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if selected not in {None, name}:
            continue
        description = f"{help_text}. {DESCRIPTIONS[name]}" if name in DESCRIPTIONS else help_text
        command = sub.add_parser(
            name, help=help_text, description=description, epilog=EPILOG, formatter_class=Formatter
        )
        add_options(command, name)
    return parser


class Formatter(argparse.HelpFormatter):
    """argparse's help layout, sized as argparse sizes it but without importing ``shutil``.

    argparse makes a formatter for every ``add_argument`` (to check it), and its default one
    imports ``shutil`` for the terminal width: with it zlib, bz2 and lzma, milliseconds of
    every run that prints no help.
    """

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, terminal_columns() - 2 if width is None else width)


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS`` if a positive number, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


CLEANUP_GRACE_S = 10.0  # well inside Kubernetes' default 30 s termination grace period


def install_signal_handlers(deadline: float) -> None:
    """Raise ``Interrupted`` on the first SIGTERM/SIGINT/deadline; ignore later ones.

    The clean-up that follows (server-side cancel, rollback, failure row, unlock) gets
    ``CLEANUP_GRACE_S``: a connection to a black-holed peer could otherwise block it for ever.
    """
    fired = False

    def hard_exit(code: ExitCode) -> None:
        from runner import observe  # noqa: PLC0415 - loaded by now (main configured it)

        observe.logger().error("cleanup_timeout", grace_s=CLEANUP_GRACE_S, exit_code=int(code))
        os._exit(int(code))

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if signum == signal.SIGALRM:
            reason, code = f"deadline of {deadline:g}s reached", ExitCode.SIGTERM
        else:
            reason, code = signal.Signals(signum).name, ExitCode(128 + signum)
        signal.signal(signal.SIGALRM, lambda _signum, _frame: hard_exit(code))
        signal.setitimer(signal.ITIMER_REAL, CLEANUP_GRACE_S)
        raise Interrupted(reason, code)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, handler)
    if deadline > 0:
        signal.setitimer(signal.ITIMER_REAL, deadline)


def print_status(report: dict[str, object], as_json: bool) -> None:
    import json  # noqa: PLC0415 - start-up cost paid by status only

    if as_json:
        print(json.dumps(report, indent=2))
        return
    rows = report["migrations"]
    assert isinstance(rows, list)
    print(f"{'VERSION':<8} {'STATE':<12} {'APPLIED AT (UTC)':<19} {'BY':<12} {'MS':>7}  {'RUNNER':<8} MIGRATION")
    for row in rows:
        applied_at = (row["applied_at"] or "-")[:19].replace("T", " ")
        duration = "-" if row["duration_ms"] is None else str(row["duration_ms"])
        line = (
            f"{row['version'] or '-':<8} {row['state']:<12} {applied_at:<19} {(row['applied_by'] or '-')[:12]:<12} "
            f"{duration:>7}  {(row['runner_version'] or '-')[:8]:<8} {row['migration']}"
        )
        if row["recorded_as"]:
            line += f"  (recorded as {row['recorded_as']})"
        if row["error"]:
            line += f"\n{'':<8} error: {row['error'].strip().splitlines()[0][:160]}"
        if row["progress"]:
            line += f"\n{'':<8} {row['progress']}"
        print(line)
    counts = report["counts"]
    assert isinstance(counts, dict)
    print(", ".join(f"{count} {state}" for state, count in counts.items() if count or state in {"applied", "pending"}))
    refused = report["refused"]
    assert isinstance(refused, list)
    for problem in refused:
        print(f"migrate would refuse: {problem}")


def run(settings: config.Settings, args: argparse.Namespace, report: Report | None) -> None:
    """Run one command; raises ``RunnerError`` or ``Interrupted`` on failure."""
    command = settings.command
    if command == "fleet":
        from runner import fleet  # noqa: PLC0415 - only fleet needs threads and target sources

        fleet.command(settings, as_json=args.json)
        return
    from runner import commands, migrate  # noqa: PLC0415 - every other command needs the orchestrator

    if command not in {"validate", "new"}:
        config.require_database(settings)
    if command == "migrate":
        assert report is not None
        migrate.migrate(settings, report)
    elif command == "status":
        print_status(commands.status(settings), args.json)
    elif command == "validate":
        has_database = settings.database_url is not None or bool(os.environ.get("PGHOST"))
        found = commands.validate(settings, with_database=has_database)
        from runner import observe  # noqa: PLC0415 - loaded by now (main configured it)

        observe.logger().info("validated", migrations=len(found), checked_history=has_database)
    elif command == "new":
        import datetime  # noqa: PLC0415 - start-up cost paid by new only
        import getpass  # noqa: PLC0415

        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        author = os.environ.get("GIT_AUTHOR_NAME") or getpass.getuser()
        print(commands.new_file(settings, args.name, author, today))
    elif command == "baseline":
        commands.baseline(settings, args.baseline_version)
    elif command == "repair":
        commands.repair(settings, args.files, dry_run=args.dry_run)
    elif command == "wait":
        commands.wait(settings)
    elif command == "verify":
        run_verify(settings)
    elif command == "rehearse":
        run_rehearse(settings)


def run_lint(settings: config.Settings, args: argparse.Namespace) -> int:
    """``lint``: the report is the output; no log set-up, run events or signal handlers.

    Start-up time is the point (it runs on every save and in CI). Exit 3 on an error finding, 2
    on a usage or configuration problem (on stderr), 1 if lint itself fails; never a traceback.
    """
    from runner import lint  # noqa: PLC0415 - lint imports neither psycopg nor the executor

    try:
        lint.command(settings, args)
    except ValidationError:
        return int(ExitCode.VALIDATION)
    except RunnerError as exc:
        print(f"migration-runner: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - no input may end in a traceback
        print(f"migration-runner: lint failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(ExitCode.MIGRATION_FAILED)
    return int(ExitCode.OK)


def run_verify(settings: config.Settings) -> None:
    from runner import verify  # noqa: PLC0415 - only verify needs the scratch machinery

    findings, durations = verify.verify(settings, settings.scratch_url)
    if settings.report_format == "json":
        import json  # noqa: PLC0415

        print(json.dumps({"findings": findings, "duration_ms": durations}, indent=2))
    else:
        for name, duration in durations.items():
            print(f"{duration:>8} ms  {name}")
        ok = "verified: every migration is idempotent (the second pass changed nothing)"
        print("\n".join(findings) if findings else ok)
    if findings:
        raise ValidationError([Problem("verify", finding) for finding in findings])


def run_rehearse(settings: config.Settings) -> None:
    from runner import verify  # noqa: PLC0415

    if not settings.from_url:
        raise ConfigError("rehearse: --from-url (RUNNER_FROM_URL) is required")
    report = verify.rehearse(
        settings,
        settings.from_url,
        schema_only=settings.schema_only,
        scratch_url=settings.scratch_url,
        pg_bin=settings.pg_bin,
    )
    if settings.report_format == "json":
        import json  # noqa: PLC0415

        print(json.dumps([r.__dict__ for r in report], indent=2))
        return
    print(f"{'MIGRATION':<40} {'MS':>8} {'ROWS':>10}  LOCKS (strongest per relation)")
    for r in report:
        locks = ", ".join(f"{rel}={mode.removesuffix('Lock')}" for rel, mode in r.locks.items()) or "-"
        print(f"{r.migration:<40} {r.duration_ms:>8} {r.rows_touched:>10}  {locks}")
    if not report:
        print("nothing pending: the copy is already up to date")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    selected = next((word for word in arguments if word in COMMANDS), None)
    args = build_parser(selected).parse_args(arguments)
    command = args.command or "migrate"
    started = time.monotonic()
    try:
        settings = config.load(command, vars(args))
    except RunnerError as exc:
        print(f"migration-runner: {config.redact(str(exc))}", file=sys.stderr)
        return int(exc.exit_code)
    if command == "lint":
        return run_lint(settings, args)
    from runner import observe  # noqa: PLC0415 - lint, which runs on every save, does without structlog

    observe.configure(
        fmt=settings.log_format, level=settings.log_level, scrub=lambda text: config.redact(text, settings.secrets)
    )
    observe.bind(database=settings.database_label)
    log = observe.logger()
    install_signal_handlers(settings.deadline)
    exit_code = ExitCode.OK
    report = None
    try:
        log.info(
            "run_started", command=command, runner_version=__version__, migrations_dir=str(settings.migrations_dir)
        )
        if command == "migrate":
            from runner.migrate import Report  # noqa: PLC0415 - the orchestrator is loaded for migrate only

            report = Report(
                on_lock_wait=observe.lock_wait_started,
                on_lock_acquired=observe.lock_acquired,
                on_progress=observe.progress,
                on_batch_progress=observe.batch_progress,
            )
            configure_metrics(settings)
        run(settings, args, report)
    except Interrupted as exc:
        exit_code = exc.exit_code
        log.error("migration_aborted", reason=exc.reason)
    except (RunnerError, Exception) as exc:  # noqa: BLE001 - no input may end in a traceback
        exit_code = exc.exit_code if isinstance(exc, RunnerError) else ExitCode.MIGRATION_FAILED
        detail = {
            "sqlstate": getattr(exc, "sqlstate", None),
            "line": getattr(exc, "line", None),
            "migration": getattr(exc, "migration", None),
        }
        log.error(
            "run_failed",
            error=str(exc),
            error_type=type(exc).__name__,
            **{key: value for key, value in detail.items() if value is not None},
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
    duration_s = time.monotonic() - started
    fields = {}
    if report is not None:
        fields = {
            "applied": len(report.applied),
            "pending": report.pending,
            "lock_wait_ms": round(report.lock_wait_s * 1000),
        }
    log.info("run_finished", command=command, exit_code=int(exit_code), duration_ms=round(duration_s * 1000), **fields)
    if report is not None:
        observe.finish(exit_code=int(exit_code), run_duration_s=duration_s, **report.totals())
    return int(exit_code)


def entry() -> None:
    """The console script and ``python -m runner``: ``main``, then exit without teardown.

    When ``main`` returns, connections are closed, metrics delivered and only daemon threads
    remain; what is left is flushing output. Interpreter teardown (freeing every module and
    object) would add about 30 ms to every pod start, so the process ends with ``os._exit``.
    """
    out, err = console.SafeStream(sys.stdout), console.SafeStream(sys.stderr)
    sys.stdout, sys.stderr = out, err
    code = main()
    out.flush()
    err.flush()
    if out.lost:
        code = code or int(ExitCode.USAGE)  # the results were not written (closed pipe, full disk)
    os._exit(code)


def configure_metrics(settings: config.Settings) -> None:
    """Point ``observe`` at this run's job, database and delivery targets."""
    from runner import observe  # noqa: PLC0415 - loaded by now (main configured it)

    observe.RUN.runner_version = __version__
    observe.RUN.job = settings.metrics_job
    observe.RUN.database = settings.database_label
    observe.DELIVERY = observe.Delivery(
        pushgateway_url=settings.pushgateway_url,
        metrics_port=settings.metrics_port,
        metrics_linger_s=settings.metrics_linger,
        metrics_file=settings.metrics_file,
    )
    observe.serve()
