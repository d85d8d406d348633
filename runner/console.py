"""The console log format, for people at a terminal. A leaf: imports nothing from ``runner``.

Invariants:
- One short line per event: the time (HH:MM:SS, UTC), a level tag only when it matters,
  what happened in words for the runner's main events, then the remaining fields as
  ``key=value``. Context every line would repeat (run id, database, runner version, full
  checksum, timestamp) is left out or shortened.
- Errors stand out: an ``ERROR`` tag and the error text on a line of its own.
- Structures print readably: a dict as ``k=v, k=v``, a list as items separated by ``; ``,
  never a Python ``repr``.
- Colour (ANSI) only when asked for, which the caller does only for a terminal and never
  when ``NO_COLOR`` is set. Only ASCII is written, whatever the terminal's encoding.
- ``migration_progress`` and ``batch_progress`` at a terminal are a live line, rewritten in
  place until the next event.
- ``SafeStream`` never raises on a closed or full output; it remembers what was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

HIDDEN = {"timestamp", "level", "event", "run_id", "database", "runner_version"}
QUIET = {"attempt": 1, "attempts": 1, "rows": 0, "blockers": [], "failed_before": [], "holders": []}  # said when not so
RED, YELLOW, GREEN, DIM, BOLD, RESET = "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[2m", "\x1b[1m", "\x1b[0m"
BAR_WIDTH = 20
LIVE_EVENTS = {"migration_progress", "batch_progress"}


@dataclass(frozen=True)
class Line:
    """A rendered event: its text, and whether it is a live line to be overwritten."""

    text: str
    transient: bool = False


def value(item: object) -> str:
    """A field value as people read it."""
    if isinstance(item, Mapping):
        return ", ".join(f"{k}={value(v)}" for k, v in item.items() if v is not None)
    if isinstance(item, list | tuple):
        return "; ".join(value(v) for v in item) or "-"
    if isinstance(item, float):
        return f"{item:g}"
    return str(item)


def _ms(event: Mapping[str, Any], key: str) -> str:
    number = event.get(key)
    if not isinstance(number, int | float):
        return ""
    return f"{number / 1000:.1f} s" if number >= 10000 else f"{number:.0f} ms"


def _bar(percent: object) -> str:
    if not isinstance(percent, int | float):
        return ""
    done = round(BAR_WIDTH * min(100.0, max(0.0, percent)) / 100)
    return f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] {percent:.0f}%"


# What the main events say, in words; the keys a phrase uses are not repeated after it.
PHRASES: dict[str, tuple[Callable[[Mapping[str, Any]], str], set[str]]] = {
    "run_started": (
        lambda e: f"{e.get('command')} started (runner {e.get('runner_version')}, database {e.get('database')})",
        {"command"},
    ),
    "plan_ready": (lambda e: f"plan: {e.get('pending')} pending, {e.get('applied')} applied", {"pending", "applied"}),
    "migration_started": (lambda e: f"applying {e.get('migration')}", {"migration", "version", "checksum"}),
    "migration_applied": (
        lambda e: f"applied  {e.get('migration')}  {_ms(e, 'duration_ms')}  sha {str(e.get('checksum'))[:12]}",
        {"migration", "version", "checksum", "duration_ms"},
    ),
    "migration_failed": (
        lambda e: f"FAILED   {e.get('migration')}" + (f" at line {e['line']}" if e.get("line") else ""),
        {"migration", "version", "checksum", "line"},
    ),
    "migration_progress": (
        lambda e: " ".join(
            part
            for part in (
                f"running  {e.get('migration')}  {_ms(e, 'elapsed_ms')}",
                _bar(e.get("percent")),
                e.get("phase"),
            )
            if part
        ),
        {"migration", "version", "checksum", "elapsed_ms", "percent", "phase"},
    ),
    "lock_acquired": (lambda e: f"lock acquired after {_ms(e, 'lock_wait_ms')}", {"lock_wait_ms", "lock_key"}),
    "lock_released": (lambda _e: "lock released", {"lock_key", "released"}),
    "history_table_ready": (lambda e: f"history table {e.get('table')} ready", {"table"}),
    "target_finished": (
        lambda e: f"target {e.get('target')} {e.get('status')}: {e.get('applied')} applied in {_ms(e, 'duration_ms')}",
        {"target", "status", "applied", "duration_ms"},
    ),
    "batch_progress": (
        lambda e: (
            f"batches  {e.get('migration')}  {e.get('rows_done', 0):,} rows  {e.get('rows_per_s', 0):,} rows/s"
            + (f"  {e['remaining_s']:.0f} s left" if isinstance(e.get("remaining_s"), int | float) else "")
            + f"  {_bar(e.get('percent'))}"
        ).rstrip(),
        {"migration", "version", "rows_done", "rows_per_s", "remaining_s", "percent"},
    ),
    "run_finished": (
        lambda e: f"{e.get('command')} finished: exit {e.get('exit_code')} after {_ms(e, 'duration_ms')}",
        {"command", "exit_code", "duration_ms"},
    ),
}


class Renderer:
    """The last structlog processor of the console format: an event -> a ``Line`` (as structlog's args)."""

    def __init__(self, *, colour: bool) -> None:
        self.colour = colour

    def paint(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.colour else text

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> tuple[tuple[Line], dict[str, Any]]:
        name = str(event.get("event", ""))
        level = str(event.get("level", "info"))
        phrase, used = PHRASES.get(name, (lambda e: str(e.get("event")), set()))
        head = phrase(event)
        if name == "migration_applied":
            head = self.paint(head, GREEN)
        fields = {
            k: v
            for k, v in event.items()
            if k not in HIDDEN | used and v is not None and k != "error" and not (k in QUIET and QUIET[k] == v)
        }
        if isinstance(fields.get("checksum"), str):
            fields["checksum"] = fields["checksum"][:12]
        when = str(event.get("timestamp", ""))[11:19]
        tag = {"error": self.paint("ERROR ", RED + BOLD), "warning": self.paint("WARN ", YELLOW)}.get(level, "")
        text = f"{self.paint(when, DIM)} {tag}{head}"
        if fields:
            text += "  " + " ".join(f"{key}={value(item)}" for key, item in fields.items())
        if event.get("error") is not None:
            text += "\n    " + self.paint(value(event["error"]), RED if level == "error" else YELLOW)
        line = Line(text.encode("ascii", "replace").decode(), transient=name in LIVE_EVENTS)
        return (line,), {}


class Writer:
    """Writes ``Line`` values: a live line is rewritten in place, cleared before the next event.

    One line at a time, whichever thread logs it (a fleet's workers).
    """

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        import shutil  # noqa: PLC0415 - lint, which never writes a live line, starts without it
        import threading  # noqa: PLC0415

        self.stream, self.live = stream, live
        self.showing = False
        self.width = shutil.get_terminal_size((100, 24)).columns - 1  # a live line must not wrap
        self.lock = threading.Lock()  # a fleet's workers log from several threads

    def msg(self, line: Line | str) -> None:
        if not isinstance(line, Line):
            line = Line(str(line))
        with self.lock:
            clear = "\r\x1b[K" if self.showing else ""
            if line.transient and self.live:
                self.stream.write(f"{clear}{_clip(line.text.splitlines()[0], self.width)}")
                self.showing = True
            else:
                self.stream.write(f"{clear}{line.text}\n")
                self.showing = False
            self.stream.flush()

    debug = info = warning = error = critical = msg


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` visible characters (ANSI colour codes take no room)."""
    shown, out, index = 0, [], 0
    while index < len(text) and shown < width:
        if text.startswith("\x1b[", index):
            end = text.index("m", index) + 1
            out.append(text[index:end])
            index = end
            continue
        out.append(text[index])
        shown += 1
        index += 1
    return "".join(out) + (RESET if "\x1b[" in text else "")


class SafeStream:
    """A text stream that never raises on write: a closed pipe or a full disk is remembered.

    The runner must finish its clean-up (roll back, unlock) and exit with its code whatever
    happens to its output; ``lost`` tells the caller that something was not written.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
            except (OSError, ValueError):
                self.lost = True
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.lost = True

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False


class WriterFactory:
    """A structlog logger factory handing out one ``Writer``."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def __call__(self, *_args: object) -> Writer:
        return self.writer
