"""Structured logging (structlog) and Prometheus metrics. A leaf but for ``console`` (a leaf too).

Invariants:
- One event per line on stderr (results alone go to stdout): JSON unless stderr is a terminal
  (or as configured), with an
  ISO-8601 UTC ``timestamp``, ``level``, a stable snake_case ``event`` and the process's
  ``run_id``; ``bind`` adds fields (``database``) to every later line.
- The ``scrub`` callable given to ``configure`` (or later to ``rescrub``) is applied to every
  string value, nested or not, before rendering: no password reaches a log line.
- Metrics describe one run (``RUN``; a fleet has one ``RunMetrics`` per target) and are
  delivered by ``push`` (push-add to a Pushgateway, grouping key ``job`` and ``database``, no
  instance label), ``serve`` and ``finish``. A fleet's own counts (``FleetMetrics``) go to the
  group ``job`` and ``shard``. A failed delivery is logged and never changes the exit code;
  pushes time out after a few seconds.
- prometheus_client is imported only when metrics are delivered (start-up cost).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypedDict, Unpack

import structlog

from runner import console

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
RUN_ID = os.urandom(8).hex()
LIVE = False  # console format at a terminal: progress is a live line, refreshed often
SCRUB: list[Callable[[str], str]] = [lambda text: text]  # [the scrub of every event], set by configure/rescrub


def _scrub_value(value: object, scrub: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v, scrub) for v in value]
    if isinstance(value, BaseException):
        return scrub(str(value))
    return value


def scrubber(scrub: Callable[[str], str]) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    """A structlog processor applying ``scrub`` to every value of the event."""

    def processor(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = _scrub_value(value, scrub)
        return event

    return processor


def configure(*, fmt: str | None, level: str, scrub: Callable[[str], str], stream: TextIO | None = None) -> None:
    """Set up structlog once per process; see the module docstring."""
    global LIVE  # noqa: PLW0603 - one logging set-up per process, like structlog's own
    out = stream or sys.stderr
    terminal = out.isatty()
    json = fmt == "json" or (fmt is None and not terminal)
    renderer: Any = structlog.processors.JSONRenderer()
    factory: Any = structlog.PrintLoggerFactory(file=out)
    if not json:
        renderer = console.Renderer(colour=terminal and not os.environ.get("NO_COLOR"))
        factory = console.WriterFactory(console.Writer(out, live=terminal))
    LIVE = terminal and not json
    rescrub(scrub)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrubber(lambda text: SCRUB[0](text)),  # noqa: PLW0108 - late: rescrub replaces SCRUB[0]
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=RUN_ID)


def rescrub(scrub: Callable[[str], str]) -> None:
    """Scrub every later event with ``scrub`` (a fleet learns its targets' passwords after start-up)."""
    SCRUB[0] = scrub


def bind(**fields: object) -> None:
    """Add ``fields`` to every later event of this run."""
    structlog.contextvars.bind_contextvars(**fields)


def logger() -> Any:
    return structlog.get_logger()


def live() -> bool:
    """Whether progress is shown as a live line at a terminal (else as periodic events)."""
    return LIVE


@dataclass
class RunMetrics:
    """The Prometheus view of one run of one database (``RUN``, or a fleet's target). Timestamps, not ages.

    ``families(only)`` renders the current state; a value that is not known yet (the outcome
    before the end, a success time after a failure) is left out rather than exported as 0, so
    a push-add can never overwrite the last success time with a failure.
    """

    job: str = "migration-runner"
    database: str = "unknown"
    runner_version: str = "unknown"
    lock_wait_started: float = 0.0
    lock_wait_s: float = 0.0
    applied: int = 0
    pending: int | None = None
    durations_s: dict[str, float] = field(default_factory=dict)
    finished_at: float | None = None
    succeeded: bool | None = None
    run_duration_s: float | None = None
    exit_code: int | None = None
    running_since: float = 0.0  # Unix time the migration in flight started; 0 when none runs
    running_ratio: float | None = None  # its progress as PostgreSQL reports it, 0..1
    batch_rows_done: float | None = None  # the batched data file in flight (or last done): rows covered
    batch_rows_per_second: float | None = None
    batch_remaining_seconds: float | None = None

    def families(self, only: frozenset[str] | None = None) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - loaded only to export

        values: dict[str, float | None] = {
            "last_success_timestamp_seconds": self.finished_at if self.succeeded else None,
            "last_failure_timestamp_seconds": self.finished_at if self.succeeded is False else None,
            "last_run_duration_seconds": self.run_duration_s,
            "lock_wait_seconds": self.lock_wait_s,
            "lock_wait_started_timestamp_seconds": self.lock_wait_started,
            "migrations_applied": float(self.applied),
            "migrations_pending": None if self.pending is None else float(self.pending),
            "last_exit_code": None if self.exit_code is None else float(self.exit_code),
            "running_migration_started_timestamp_seconds": self.running_since,
            "running_migration_progress_ratio": self.running_ratio,
            "batch_rows_done": self.batch_rows_done,
            "batch_rows_per_second": self.batch_rows_per_second,
            "batch_remaining_seconds": self.batch_remaining_seconds,
        }
        families = []
        for name, value in values.items():
            if value is not None and (only is None or name in only):
                families.append(GaugeMetricFamily(f"{PREFIX}{name}", METRIC_HELP[name], value=value))
        if self.durations_s and (only is None or "migration_duration_seconds" in only):
            durations = GaugeMetricFamily(
                f"{PREFIX}migration_duration_seconds", METRIC_HELP["migration_duration_seconds"], labels=["version"]
            )
            for version, seconds in sorted(self.durations_s.items()):
                durations.add_metric([version], seconds)
            families.append(durations)
        info = GaugeMetricFamily(f"{PREFIX}info", "Runner build information.", labels=["runner_version"])
        info.add_metric([self.runner_version], 1.0)
        families.append(info)
        return families


PREFIX = "migration_runner_"
METRIC_HELP = {
    "last_success_timestamp_seconds": "Unix time the last successful run finished.",
    "last_failure_timestamp_seconds": "Unix time the last failed run finished.",
    "last_run_duration_seconds": "Wall time of the last run.",
    "lock_wait_seconds": "Seconds the last run waited for the advisory lock.",
    "lock_wait_started_timestamp_seconds": "Unix time a runner started waiting for the lock; 0 when not waiting.",
    "migrations_applied": "Migrations applied by the last run.",
    "migrations_pending": "Migrations pending when the last run started.",
    "migration_duration_seconds": "Duration of each migration applied by the last run that applied any.",
    "last_exit_code": "Exit code of the last run.",
    "running_migration_started_timestamp_seconds": "Unix time the migration in flight started; 0 when none runs.",
    "running_migration_progress_ratio": "Progress of the migration in flight as PostgreSQL reports it (0 to 1).",
    "fleet_targets": "Targets of this shard in the current or last fleet run.",
    "fleet_targets_ok": "Targets of this shard done (everything applied) in the current or last fleet run.",
    "fleet_targets_failed": "Targets of this shard that failed or were interrupted in the current or last fleet run.",
    "fleet_targets_skipped": "Targets of this shard not started (canary failed, --on-error stop, interrupted).",
    "fleet_run_started_timestamp_seconds": "Unix time the current or last fleet run of this shard started.",
    "fleet_last_run_timestamp_seconds": "Unix time the last fleet run of this shard ended.",
    "fleet_last_exit_code": "Exit code of the last fleet run of this shard.",
    "batch_rows_done": "Rows of its table the batched data file in flight (or last run) has covered.",
    "batch_rows_per_second": "Rows per second the batched data file in flight covers, over this run.",
    "batch_remaining_seconds": "Estimated seconds until the batched data file in flight is done.",
}
PROGRESS_FAMILIES = frozenset({"running_migration_started_timestamp_seconds", "running_migration_progress_ratio"})
BATCH_FAMILIES = frozenset({"batch_rows_done", "batch_rows_per_second", "batch_remaining_seconds"})
LOCK_WAIT_FAMILIES = frozenset({"lock_wait_started_timestamp_seconds"})


class _Collector:
    def __init__(self, metrics: RunMetrics | FleetMetrics, only: frozenset[str] | None) -> None:
        self.metrics, self.only = metrics, only

    def collect(self) -> Iterator[Any]:
        yield from self.metrics.families(self.only)


@dataclass
class Delivery:
    """Where metrics go: any of a Pushgateway, a scrape port, a textfile. All optional."""

    pushgateway_url: str | None = None
    push_timeout_s: float = 3.0
    metrics_port: int | None = None
    metrics_linger_s: float = 0.0
    metrics_file: str | None = None


RUN = RunMetrics()  # this process's run; a fleet has one ``RunMetrics`` per target
DELIVERY = Delivery()


def registry(run: RunMetrics | FleetMetrics, only: frozenset[str] | None = None) -> Any:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(run, only))
    return reg


def push(run: RunMetrics, phase: str, only: frozenset[str] | None = None) -> None:
    """Push-add ``run``'s metrics (or ``only`` those) to its Pushgateway group; never raises."""
    _pushadd(run.job, {"database": run.database}, run, phase, only)


def _pushadd(
    job: str, grouping_key: dict[str, str], metrics: RunMetrics | FleetMetrics, phase: str, only: frozenset[str] | None
) -> None:
    if not DELIVERY.pushgateway_url:
        return
    from prometheus_client import pushadd_to_gateway  # noqa: PLC0415

    try:
        pushadd_to_gateway(
            DELIVERY.pushgateway_url,
            job=job,
            grouping_key=grouping_key,
            registry=registry(metrics, only),
            timeout=DELIVERY.push_timeout_s,
        )
    except Exception as exc:  # noqa: BLE001 - a monitoring outage must never fail a migration
        logger().warning("metrics_push_failed", phase=phase, error=str(exc))


@dataclass
class FleetMetrics:
    """The Prometheus view of one fleet run of one shard: its targets counted by outcome.

    Pushed to the group ``job`` and ``shard`` (never ``database``: a fleet is not one database).
    ``failed`` counts interrupted targets too (their databases pushed a failure); the last
    run's end and exit code are left out until it ends, so a run in flight keeps the last ones.
    """

    job: str
    shard: int
    targets: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    started_at: float = 0.0
    finished_at: float | None = None
    exit_code: int | None = None

    def families(self, only: frozenset[str] | None = None) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - loaded only to export

        values: dict[str, float | None] = {
            "fleet_targets": float(self.targets),
            "fleet_targets_ok": float(self.ok),
            "fleet_targets_failed": float(self.failed),
            "fleet_targets_skipped": float(self.skipped),
            "fleet_run_started_timestamp_seconds": self.started_at,
            "fleet_last_run_timestamp_seconds": self.finished_at,
            "fleet_last_exit_code": None if self.exit_code is None else float(self.exit_code),
        }
        return [
            GaugeMetricFamily(f"{PREFIX}{name}", METRIC_HELP[name], value=value)
            for name, value in values.items()
            if value is not None and (only is None or name in only)
        ]


def push_fleet(fleet: FleetMetrics, phase: str) -> None:
    """Push-add a fleet's counts to the group ``job``/``shard``; never raises."""
    _pushadd(fleet.job, {"shard": str(fleet.shard)}, fleet, phase, None)


def serve() -> None:
    """Serve this process's ``/metrics`` (``RUN``) for the rest of the process, if a port is configured."""
    if DELIVERY.metrics_port is not None:
        from prometheus_client import start_http_server  # noqa: PLC0415

        try:
            start_http_server(DELIVERY.metrics_port, registry=registry(RUN))
        except OSError as exc:
            logger().warning("metrics_serve_failed", port=DELIVERY.metrics_port, error=str(exc))
            return
        logger().info("metrics_serving", port=DELIVERY.metrics_port)


def lock_wait_started(unix_time: float, run: RunMetrics = RUN) -> None:
    """Record that this runner started waiting for the lock, and push it at once."""
    run.lock_wait_started = unix_time
    push(run, "lock_wait", LOCK_WAIT_FAMILIES)


def lock_acquired(waited_s: float, run: RunMetrics = RUN) -> None:
    """Record the wait; if a wait start was pushed, push that the wait is over."""
    run.lock_wait_s = waited_s
    if run.lock_wait_started:
        run.lock_wait_started = 0.0
        push(run, "lock_acquired", LOCK_WAIT_FAMILIES | {"lock_wait_seconds"})


def progress(running_since: float, ratio: float | None, run: RunMetrics = RUN) -> None:
    """Record the migration in flight (0: none) and its progress; push them if a gateway is set."""
    run.running_since, run.running_ratio = running_since, ratio
    push(run, "progress", PROGRESS_FAMILIES)


class Totals(TypedDict):
    """What a finished run reports to ``outcome``: applied, pending at the start, lock wait, seconds per version."""

    applied: int
    pending: int | None
    lock_wait_s: float
    durations_s: dict[str, float]


def outcome(run: RunMetrics, *, exit_code: int, run_duration_s: float, **totals: Unpack[Totals]) -> None:
    """Record a run's outcome and push it."""
    run.finished_at = time.time()
    run.succeeded = exit_code == 0
    run.exit_code = exit_code
    run.run_duration_s = run_duration_s
    run.lock_wait_started = 0.0
    run.running_since, run.running_ratio = 0.0, None
    run.applied, run.pending = totals["applied"], totals["pending"]
    run.lock_wait_s, run.durations_s = totals["lock_wait_s"], totals["durations_s"]
    push(run, "finished")


def batch_progress(rows_done: float, rate: float, remaining_s: float | None, run: RunMetrics = RUN) -> None:
    """Record a batched data file's progress (rows, rows per second, seconds left); push it if a gateway is set."""
    run.batch_rows_done, run.batch_rows_per_second, run.batch_remaining_seconds = rows_done, rate, remaining_s
    push(run, "batch_progress", BATCH_FAMILIES)


def finish(*, exit_code: int, run_duration_s: float, **totals: Unpack[Totals]) -> None:
    """Deliver the process's own outcome: push (``outcome`` of ``RUN``), textfile, linger for scrapes."""
    outcome(RUN, exit_code=exit_code, run_duration_s=run_duration_s, **totals)
    if DELIVERY.metrics_file:
        from prometheus_client import write_to_textfile  # noqa: PLC0415

        try:
            write_to_textfile(DELIVERY.metrics_file, registry(RUN))
        except OSError as exc:
            logger().warning("metrics_file_failed", path=DELIVERY.metrics_file, error=str(exc))
    if DELIVERY.metrics_port is not None and DELIVERY.metrics_linger_s > 0:
        time.sleep(DELIVERY.metrics_linger_s)
