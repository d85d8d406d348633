"""Share a list of jobs between this process and one forked child: lint's two CPUs.

Invariants:
- The job numbers are written into a pipe before the fork, 4 bytes each, in the order given
  (callers give the costliest first, so the last jobs are small); both processes take the
  next number when free, so they finish within one small job of each other. A read of 4
  bytes is whole: the pipe holds every number before anyone reads, and the kernel serialises
  readers. ``MAX_JOBS`` numbers fill one page, the least a Linux pipe holds (pipe(7)), so
  writing them all before anyone reads never blocks.
- The parent works too (no idle coordinator, no pool to start). The child inherits everything
  loaded, sends ``(job, encode(result))`` pairs through a second pipe with ``marshal`` (plain
  values: tuples, lists, strings, numbers), which the parent ``decode``s; the parent's own
  results are never encoded. The child leaves with ``os._exit``: no clean-up of the parent's
  state, no flush of inherited stdio buffers.
- The child is always reaped. An exception in the child, a child that dies (a signal, a short
  read) or results that do not load is a ``WorkerError`` in the parent naming what
  happened; an exception in the parent kills the child first. The parent waits for the child
  only while it works (lint has no timeout either).
"""

from __future__ import annotations

import marshal
import os
import signal
from collections.abc import Callable
from typing import NoReturn, TypeVar

from runner.discover import read_all

Result = TypeVar("Result")
Plain = TypeVar("Plain")
MAX_JOBS = 1024  # 4-byte numbers in a 4 KiB page: a pipe's capacity once the user's pipe quota is spent
WIDTH = 4


class WorkerError(Exception):
    """The forked worker failed; the message says how."""


def share(
    jobs: int, work: Callable[[int], Result], encode: Callable[[Result], Plain], decode: Callable[[Plain], Result]
) -> list[Result]:
    """``[work(0), ..., work(jobs - 1)]``, computed by this process and one forked child.

    The child's results cross the pipe as ``encode(result)`` (a value ``marshal`` takes) and
    come back as ``decode`` of that.
    """
    if not 0 < jobs <= MAX_JOBS:
        raise ValueError(f"share: {jobs} jobs (1 to {MAX_JOBS})")
    queue_out, queue_in = os.pipe()
    os.write(queue_in, b"".join(job.to_bytes(WIDTH, "little") for job in range(jobs)))  # one page at most
    os.close(queue_in)  # readers see the end once every number is taken
    results_out, results_in = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(queue_out, results_out, results_in, lambda job: encode(work(job)))
    os.close(results_in)
    done: dict[int, Result] = {}
    try:
        done.update(_take(queue_out, work))
        payload = read_all(results_out)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(queue_out)
        os.close(results_out)
        _, status = os.waitpid(pid, 0)
    theirs: list[tuple[int, Plain]] | str = _load(payload, status)
    if isinstance(theirs, str):
        raise WorkerError(f"lint worker failed: {theirs}")
    done.update((job, decode(plain)) for job, plain in theirs)
    if len(done) != jobs:
        raise WorkerError(f"lint worker: {jobs - len(done)} of {jobs} jobs got no result")
    return [done[job] for job in range(jobs)]


def _take(queue: int, work: Callable[[int], Result]) -> list[tuple[int, Result]]:
    """Run jobs from the queue until it is empty."""
    results: list[tuple[int, Result]] = []
    while number := os.read(queue, WIDTH):
        if len(number) != WIDTH:
            raise WorkerError(f"lint worker: a job number of {len(number)} bytes")
        job = int.from_bytes(number, "little")
        results.append((job, work(job)))
    return results


def _child(queue: int, results_out: int, results_in: int, work: Callable[[int], Plain]) -> NoReturn:
    """The child's whole life: take jobs, send what they gave (or why it failed), exit."""
    code = 0
    os.close(results_out)
    try:
        payload = marshal.dumps(_take(queue, work))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, as text
        code = 1
        payload = marshal.dumps(f"{type(exc).__name__}: {exc}")
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(results_in, view) :]
    finally:
        os._exit(code)


def _load(payload: bytes, status: int) -> list[tuple[int, Plain]] | str:
    """The child's results, or (text) why there are none."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    try:
        value: list[tuple[int, Plain]] | str = marshal.loads(payload)  # noqa: S302 - our own child's bytes
    except (EOFError, ValueError, TypeError) as exc:  # a truncated payload: the child failed
        return f"exit status {os.waitstatus_to_exitcode(status)}, unreadable results ({type(exc).__name__})"
    return value
