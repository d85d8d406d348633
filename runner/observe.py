"""Structured logging (structlog). A leaf: imports nothing from ``runner``.

Invariants:
- One event per line on stdout: JSON unless stdout is a terminal (or as configured), with an
  ISO-8601 UTC ``timestamp``, ``level``, a stable snake_case ``event`` and the process's
  ``run_id``; ``bind`` adds fields (``database``) to every later line.
- The ``scrub`` callable given to ``configure`` is applied to every string value, nested or
  not, before rendering: no password reaches a log line.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
RUN_ID = uuid.uuid4().hex[:16]


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
    out = stream or sys.stdout
    json = fmt == "json" or (fmt is None and not out.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrubber(scrub),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=RUN_ID)


def bind(**fields: object) -> None:
    """Add ``fields`` to every later event of this run."""
    structlog.contextvars.bind_contextvars(**fields)


def logger() -> Any:
    return structlog.get_logger()
