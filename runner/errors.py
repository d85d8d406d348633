"""The exception tree and the exit-code table. A leaf: imports nothing from ``runner``.

Invariant: every error the runner raises on purpose is a ``RunnerError`` whose class fixes
its exit code; messages never contain a password (callers pass redacted text).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """The documented exit codes (README: "Exit codes")."""

    OK = 0
    MIGRATION_FAILED = 1
    USAGE = 2
    VALIDATION = 3
    LOCK_TIMEOUT = 4
    DATABASE = 5
    WAIT_TIMEOUT = 6
    FLEET_FAILED = 7
    FLEET_RETRY = 8
    SIGHUP = 129
    SIGINT = 130
    SIGTERM = 143


class RunnerError(Exception):
    """Base of every error the runner reports; ``exit_code`` says how the process ends."""

    exit_code: ExitCode = ExitCode.MIGRATION_FAILED


class ConfigError(RunnerError):
    """A flag, variable or secret file is missing or malformed."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Problem:
    """One rule broken at one place: ``kind`` names the rule (stable, for machines and lint).

    ``file`` is the file name as given (``None`` for a problem of the directory or the
    history), ``line`` is 1-based (``None`` when the problem has no line).
    """

    kind: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ":".join(part for part in (self.file, None if self.line is None else str(self.line)) if part)
        return f"{where}: {self.message}" if where else self.message


class ValidationError(RunnerError):
    """Migration files or their recorded history break a rule; nothing was applied."""

    exit_code = ExitCode.VALIDATION

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(map(str, self.problems)))


class LockTimeout(RunnerError):
    """The advisory lock (or a lock on the history table) was not acquired before the deadline."""

    exit_code = ExitCode.LOCK_TIMEOUT

    def __init__(self, message: str, waited_s: float) -> None:
        super().__init__(message)
        self.waited_s = waited_s


class DatabaseUnavailable(RunnerError):
    """The server cannot be reached or used (auth, missing database, privileges, read-only)."""

    exit_code = ExitCode.DATABASE


class WaitTimeout(RunnerError):
    """``wait`` gave up before every known migration was applied."""

    exit_code = ExitCode.WAIT_TIMEOUT


class FleetIncomplete(RunnerError):
    """A fleet run ended with targets not done.

    ``FLEET_FAILED`` if one failed in a way a retry repeats, else ``FLEET_RETRY`` (only lock
    timeouts and unreachable databases).
    """

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MigrationFailed(RunnerError):
    """One migration failed and was rolled back; ``applied`` lists what this run committed."""

    def __init__(
        self,
        migration: str,
        message: str,
        *,
        sqlstate: str | None,
        line: int | None,
        applied: tuple[str, ...] = (),
    ) -> None:
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"{migration}{where}: {message}")
        self.migration = migration
        self.message = message
        self.sqlstate = sqlstate
        self.line = line
        self.applied = applied


class DdlLockTimeout(MigrationFailed):
    """A statement waited longer than ``lock_timeout`` (SQLSTATE 55P03); worth a retry."""


class Interrupted(SystemExit):
    """SIGINT, SIGTERM or the run's own deadline.

    A ``SystemExit`` on purpose: psycopg cancels the running query on the server when a
    ``SystemExit`` or ``KeyboardInterrupt`` interrupts a wait.
    """

    def __init__(self, reason: str, exit_code: ExitCode) -> None:
        super().__init__(int(exit_code))
        self.reason = reason
        self.exit_code = exit_code
