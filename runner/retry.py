"""The one retry policy: capped exponential backoff with jitter, bounded by attempts or a deadline.

Every retry loop of the runner (connecting, polling the advisory lock, a migration that hit
``lock_timeout``, ``wait``) asks ``next_pause`` and stops when it answers None, so every wait
ends by its deadline and says how long it sleeps; it sleeps with ``sleep``, which a stop
request (``request_stop``, from another thread: a fleet's signal handler) ends at once by
raising ``Interrupted`` in the sleeping thread. ``checkpoint`` does the same for loops that
poll (the executor's tick). Imports only ``errors``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from runner.errors import ExitCode, Interrupted

_STOP = threading.Event()
_STOPPED: list[Interrupted] = []  # the stop's reason and exit code, once requested


def request_stop(reason: str, exit_code: ExitCode) -> None:
    """Ask every waiting thread of this process to stop (raise ``Interrupted``) as soon as it can."""
    if not _STOP.is_set():
        _STOPPED.append(Interrupted(reason, exit_code))
        _STOP.set()


def checkpoint() -> None:
    """Raise ``Interrupted`` if a stop was requested."""
    if _STOP.is_set():
        first = _STOPPED[0]
        raise Interrupted(first.reason, first.exit_code)


def sleep(seconds: float) -> None:
    """Sleep ``seconds``, unless a stop is requested meanwhile: then raise ``Interrupted`` at once."""
    _STOP.wait(seconds)
    checkpoint()


@dataclass
class Retry:
    """Pauses of ``first``, ``first * 2``, ... capped at ``cap``.

    Each pause is scaled by a random factor drawn from ``jitter`` (so that waiters do not
    retry in step); none is left after ``attempts`` retries or past ``deadline`` (a
    ``time.monotonic()`` value), and no pause reaches past the deadline.
    """

    first: float
    cap: float
    jitter: tuple[float, float] = (1.0, 1.0)
    attempts: int | None = None
    deadline: float | None = None
    attempt: int = field(default=0, init=False)

    @classmethod
    def within(cls, seconds: float, first: float, cap: float, jitter: tuple[float, float] = (1.0, 1.0)) -> Retry:
        return cls(first, cap, jitter, deadline=time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def next_pause(self) -> float | None:
        """The pause before the next attempt, or None when no attempt is left."""
        if self.attempts is not None and self.attempt >= self.attempts:
            return None
        remaining = self.remaining()
        if remaining <= 0:
            return None
        self.attempt += 1
        pause = random.uniform(*self.jitter) * min(self.cap, self.first * 2.0 ** (self.attempt - 1))  # noqa: S311 - jitter
        return min(pause, remaining)
