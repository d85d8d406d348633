"""``fleet``: many databases migrated in one run, each exactly as ``migrate`` migrates one.

Steps, each an invariant:
1. The files are read, checksummed and parsed once (``migrate.Parsed``) before anything
   connects: a file problem is exit 3 for the whole fleet. Then the targets
   (``targets.load``; a bad list is exit 2) and this process's shard of them
   (``targets.shard``).
2. Each target runs ``migrate.migrate`` in a worker thread with its own settings (its URL, and
   every password of the fleet to redact), its own connections, advisory lock and history
   table: every guarantee of ``migrate`` holds per target. Its log lines carry ``target``;
   its metrics are its own Pushgateway group (``database`` = the target's name).
3. At most ``--parallel`` targets run at once, in list order. The first ``--canary`` targets
   run before any other; unless every one of them ends done, no other starts (``skipped``).
4. A failing target never stops another one mid-migration. With ``--on-error stop`` no target
   starts after a failure: the failing worker stops the queue before it logs its end, and a
   worker takes a target and logs ``target_started`` under the same lock. With ``continue``
   every target runs.
5. SIGTERM, SIGINT, SIGHUP or ``--deadline`` (raised in the main thread): no target starts any
   more and ``retry.request_stop`` interrupts the running ones, which clean up as ``migrate``
   does (cancel on the server, roll back, failure row, unlock; a migration the server
   committed counts as applied). The CLI's clean-up alarm bounds the wait for them.
6. Each target ends with one ``target_finished`` event, and the run with one summary on
   stdout (a table, or JSON) built from one small ``Outcome`` per target; the fleet's counts
   are pushed at the start, at most every ``PUSH_INTERVAL_S`` while targets end, and at the
   end. One exit code (``exit_code``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from runner import __version__, config, migrate, observe, retry, targets
from runner.config import Settings
from runner.errors import ExitCode, FleetIncomplete, Interrupted, RunnerError
from runner.observe import bind, logger
from runner.targets import Target

PUSH_INTERVAL_S = 2.0
RETRYABLE = frozenset({ExitCode.LOCK_TIMEOUT, ExitCode.DATABASE})  # a retry of the shard may finish these


class Status(StrEnum):
    """How a target ended (``skipped``: never started)."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Outcome:
    """What one target's run did; small, since a fleet keeps one per target until it ends."""

    target: str
    status: Status
    exit_code: int | None  # the code ``migrate`` would have exited with; None if it never started
    pending: int | None = None  # migrations pending when it started; None if it never planned
    applied: tuple[tuple[str, int], ...] = ()  # (file, duration in ms), in order
    duration_ms: int = 0
    lock_wait_ms: int = 0
    error: str | None = None  # redacted

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "pending": self.pending,
            "applied": [{"migration": name, "duration_ms": ms} for name, ms in self.applied],
            "duration_ms": self.duration_ms,
            "lock_wait_ms": self.lock_wait_ms,
            "error": self.error,
        }


def exit_code(outcomes: list[Outcome], interrupted: Interrupted | None) -> ExitCode:
    """The run's one exit code.

    The signal's (129/130/143) if interrupted; 0 if every target is done; ``FLEET_FAILED``
    (7) if a target failed in a way a retry repeats (a migration failed, a refusal: anything
    but exit 4 or 5); else ``FLEET_RETRY`` (8): targets not done only because a lock was busy
    or a database unreachable, so retrying the shard may finish them.
    """
    if interrupted is not None:
        return interrupted.exit_code
    failed = {o.exit_code for o in outcomes if o.status is Status.FAILED}
    if failed - RETRYABLE:
        return ExitCode.FLEET_FAILED
    if any(o.status is not Status.DONE for o in outcomes):
        return ExitCode.FLEET_RETRY
    return ExitCode.OK


@dataclass(frozen=True)
class Summary:
    """The run of one shard: one outcome per target, in list order."""

    shard: int
    shards: int
    outcomes: tuple[Outcome, ...]
    duration_ms: int
    exit_code: ExitCode

    def counts(self) -> dict[str, int]:
        found = {status.value: 0 for status in Status}
        for outcome in self.outcomes:
            found[outcome.status.value] += 1
        return {"targets": len(self.outcomes), **found}

    def applied(self) -> int:
        return sum(len(o.applied) for o in self.outcomes)

    def as_dict(self) -> dict[str, object]:
        return {
            "shard": self.shard,
            "shards": self.shards,
            "exit_code": int(self.exit_code),
            "duration_ms": self.duration_ms,
            "counts": self.counts(),
            "migrations_applied": self.applied(),
            "targets": [o.as_dict() for o in self.outcomes],
        }

    def line(self) -> str:
        counts = self.counts()
        told = ", ".join(f"{counts[status.value]} {status.value}" for status in Status)
        return (
            f"shard {self.shard} of {self.shards}: {counts['targets']} targets: {told}; "
            f"{self.applied()} migrations applied in {self.duration_ms / 1000:.1f} s (exit {int(self.exit_code)})"
        )

    def table(self) -> str:
        """Targets that are not done first (the ones to look at), then the others, each in list order."""
        order = (Status.FAILED, Status.INTERRUPTED, Status.SKIPPED, Status.DONE)
        rows = sorted(self.outcomes, key=lambda o: order.index(o.status))
        width = min(40, max([6, *(len(o.target) for o in rows)]))
        lines = [f"{'TARGET':<{width}} {'STATUS':<11} {'PENDING':>7} {'APPLIED':>7} {'MS':>8}  ERROR"]
        for o in rows:
            pending = "-" if o.pending is None else str(o.pending)
            error = (o.error or "").strip().split("\n", 1)[0][:160]
            lines.append(
                f"{o.target[:width]:<{width}} {o.status.value:<11} {pending:>7} {len(o.applied):>7} "
                f"{o.duration_ms:>8}  {error}".rstrip()
            )
        return "\n".join([*lines, self.line()])


class Rollout:
    """One shard's run: the queue of targets, the workers, and what has ended (all under ``lock``)."""

    def __init__(self, settings: Settings, files: migrate.Parsed, secrets: frozenset[str], shard: list[Target]) -> None:
        assert settings.fleet is not None
        self.settings, self.options, self.files, self.secrets = settings, settings.fleet, files, secrets
        self.shard = shard
        self.lock = threading.Lock()
        self.queue: deque[Target] = deque()
        self.outcomes: dict[str, Outcome] = {}
        self.stop_reason: str | None = None
        self.interrupted: Interrupted | None = None
        self.changed = threading.Event()
        self.threads: list[threading.Thread] = []
        self.metrics = observe.FleetMetrics(
            job=settings.metrics_job, shard=self.options.shard_index, targets=len(shard), started_at=time.time()
        )
        self.started = time.monotonic()

    def run(self) -> Summary:
        """Canary, then the rest; see the module docstring. Returns the summary (interrupted or not)."""
        canary, rest = self.shard[: self.options.canary], self.shard[self.options.canary :]
        try:
            observe.push_fleet(self.metrics, "fleet_started")
            if canary:
                self.run_phase(canary)
                failed = [t.name for t in canary if self.outcomes[t.name].status is not Status.DONE]
                if failed:
                    self.stop(f"canary failed: {', '.join(failed)}")
            if rest and self.stop_reason is None:
                self.run_phase(rest)
        except Interrupted as exc:
            self.interrupted = exc
            self.stop(f"interrupted: {exc.reason}")
            retry.request_stop(exc.reason, exc.exit_code)
            self.wait()
        outcomes = [
            self.outcomes.get(t.name) or Outcome(t.name, Status.SKIPPED, None, error=self.stop_reason)
            for t in self.shard
        ]
        summary = Summary(
            self.options.shard_index,
            self.options.shards,
            tuple(outcomes),
            round((time.monotonic() - self.started) * 1000),
            exit_code(outcomes, self.interrupted),
        )
        self.count(outcomes)
        self.metrics.finished_at, self.metrics.exit_code = time.time(), int(summary.exit_code)
        observe.push_fleet(self.metrics, "fleet_finished")
        return summary

    def stop(self, reason: str) -> None:
        """Start no further target; the first reason is the one reported."""
        with self.lock:
            self.stop_reason = self.stop_reason or reason
            self.queue.clear()

    def run_phase(self, phase: list[Target]) -> None:
        """Run ``phase`` on up to ``--parallel`` workers and wait for them."""
        self.queue.extend(phase)
        context = contextvars.copy_context()
        self.threads = [
            threading.Thread(target=self.work, args=(context,), name=f"fleet-{n}", daemon=True)
            for n in range(min(self.options.parallel, len(phase)))
        ]
        for thread in self.threads:
            thread.start()
        self.wait()

    def wait(self) -> None:
        """Until every worker ended; pushes the counts at most every ``PUSH_INTERVAL_S`` meanwhile."""
        pushed, dirty = time.monotonic(), False
        while any(thread.is_alive() for thread in self.threads):
            if self.changed.wait(0.25):
                self.changed.clear()
                dirty = True
            if dirty and time.monotonic() - pushed >= PUSH_INTERVAL_S:
                with self.lock:
                    self.count(list(self.outcomes.values()))
                observe.push_fleet(self.metrics, "fleet_progress")
                pushed, dirty = time.monotonic(), False

    def count(self, outcomes: list[Outcome]) -> None:
        statuses = [o.status for o in outcomes]
        self.metrics.ok = statuses.count(Status.DONE)
        self.metrics.failed = statuses.count(Status.FAILED) + statuses.count(Status.INTERRUPTED)
        self.metrics.skipped = statuses.count(Status.SKIPPED)

    def work(self, main: contextvars.Context) -> None:
        """A worker: take targets until none is left or the run stops; each in a copy of the main context."""
        while True:
            with self.lock:
                if not self.queue or self.stop_reason is not None:
                    return
                target = self.queue.popleft()
                context = main.copy()
                context.run(self.start, target)
            outcome = context.run(self.migrate_one, target)
            with self.lock:
                self.outcomes[target.name] = outcome
            self.changed.set()

    @staticmethod
    def start(target: Target) -> None:
        bind(target=target.name, database=target.database)
        logger().info("target_started", origin=target.origin)

    def migrate_one(self, target: Target) -> Outcome:
        """``migrate`` one target; every error ends in its outcome, never in the thread."""
        log = logger()
        settings = dataclasses.replace(
            self.settings, database_url=target.url, database_label=target.name, secrets=self.secrets
        )
        run = observe.RunMetrics(job=settings.metrics_job, database=target.name, runner_version=__version__)
        report = migrate.Report(
            on_lock_wait=functools.partial(observe.lock_wait_started, run=run),
            on_lock_acquired=functools.partial(observe.lock_acquired, run=run),
            on_progress=functools.partial(observe.progress, run=run),
            on_batch_progress=functools.partial(observe.batch_progress, run=run),
        )
        started = time.monotonic()
        status, code, error = Status.DONE, ExitCode.OK, None
        try:
            migrate.migrate(settings, report, self.files)
        except Interrupted as exc:
            status, code, error = Status.INTERRUPTED, exc.exit_code, f"interrupted: {exc.reason}"
        except RunnerError as exc:
            status, code, error = Status.FAILED, exc.exit_code, str(exc)
        except Exception as exc:  # noqa: BLE001 - no input may end in a traceback, in any thread
            status, code, error = Status.FAILED, ExitCode.MIGRATION_FAILED, f"{type(exc).__name__}: {exc}"
        duration_s = time.monotonic() - started
        if status is Status.FAILED and self.options.on_error == "stop":
            self.stop(f"--on-error stop: {target.name} failed")
        observe.outcome(run, exit_code=int(code), run_duration_s=duration_s, **report.totals())
        outcome = Outcome(
            target.name,
            status,
            int(code),
            report.pending,
            tuple((m.name, ms) for m, ms in report.applied),
            round(duration_s * 1000),
            round(report.lock_wait_s * 1000),
            None if error is None else config.redact(error, self.secrets),
        )
        level = {Status.DONE: log.info, Status.INTERRUPTED: log.warning}.get(status, log.error)
        level(
            "target_finished",
            status=status.value,
            exit_code=int(code),
            pending=report.pending,
            applied=len(report.applied),
            duration_ms=outcome.duration_ms,
            lock_wait_ms=outcome.lock_wait_ms,
            error=outcome.error,
        )
        return outcome


def command(settings: Settings, *, as_json: bool) -> None:
    """``migration-runner fleet``: the steps of the module docstring; raises for a non-zero exit."""
    import json  # noqa: PLC0415 - start-up cost paid by fleet only

    options = settings.fleet
    assert options is not None
    files = migrate.Parsed.read(settings)
    listed = targets.load(settings)
    shard = targets.shard(listed, options.shards, options.shard_index)
    secrets = settings.secrets | targets.secrets(listed)
    observe.rescrub(functools.partial(config.redact, secrets=secrets))
    observe.DELIVERY = observe.Delivery(pushgateway_url=settings.pushgateway_url)
    log = logger()
    log.info(
        "fleet_started",
        targets=len(shard),
        listed=len(listed),
        shard=options.shard_index,
        shards=options.shards,
        parallel=options.parallel,
        canary=options.canary,
        on_error=options.on_error,
        migrations=len(files.migrations),
    )
    rollout = Rollout(settings, files, secrets, shard)
    summary = rollout.run()
    print(json.dumps(summary.as_dict(), indent=2) if as_json else summary.table())
    not_done = [o.target for o in summary.outcomes if o.status is not Status.DONE]
    log.info(
        "fleet_finished",
        exit_code=int(summary.exit_code),
        **summary.counts(),
        migrations_applied=summary.applied(),
        not_done=not_done[:20],
        duration_ms=summary.duration_ms,
    )
    if rollout.interrupted is not None:
        raise rollout.interrupted
    if summary.exit_code:
        raise FleetIncomplete(summary.line(), summary.exit_code)
