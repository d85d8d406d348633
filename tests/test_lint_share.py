"""lint's two processes (runner.lint.share): every job once, in order; a failing, killed or abandoned worker is an error, never a hang or a zombie."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from runner.lint.share import MAX_JOBS, WorkerError, share


def gone(pid: int) -> bool:
    """Whether the process has exited and been reaped (so it is neither running nor a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(path: Path, seconds: float = 10.0) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} after {seconds} s"
        time.sleep(0.01)
    return path.read_text()


def test_both_processes_take_jobs_and_every_result_comes_back_in_order() -> None:
    """Whichever process is free takes the next job; results come back in job order; the child is reaped."""

    def work(job: int) -> tuple[int, int]:
        time.sleep(0.01)
        return job, os.getpid()

    results = share(40, work, list, lambda plain: (plain[0], plain[1], "decoded"))
    assert [job for job, *_ in results] == list(range(40))
    pids = {pid for _, pid, *_ in results}
    for _, pid, *decoded in results:  # only what crossed the pipe was encoded and decoded
        assert decoded == ([] if pid == os.getpid() else ["decoded"])
    assert os.getpid() in pids
    assert len(pids) == 2, "the forked child took no job"
    (child,) = pids - {os.getpid()}
    assert gone(child)


def test_job_counts_outside_what_the_queue_holds_are_refused() -> None:
    """The queue holds MAX_JOBS numbers (one page): more, or none, is a ValueError before any fork."""
    with pytest.raises(ValueError, match="jobs"):
        share(MAX_JOBS + 1, lambda job: job, int, int)
    with pytest.raises(ValueError, match="jobs"):
        share(0, lambda job: job, int, int)
    assert share(MAX_JOBS, lambda job: job, int, int) == list(range(MAX_JOBS))


def test_an_exception_in_the_child_is_an_error_naming_it() -> None:
    """The child's exception reaches the parent as a WorkerError with its type and message."""
    parent = os.getpid()

    def work(job: int) -> int:
        time.sleep(0.02)
        if os.getpid() != parent:
            raise RuntimeError("boom in the worker")
        return job

    with pytest.raises(WorkerError, match="RuntimeError: boom in the worker"):
        share(20, work, int, int)


def test_a_child_killed_by_a_signal_is_an_error_naming_the_signal() -> None:
    """A child that dies (SIGKILL: the OOM killer, say) leaves no results: a WorkerError, not a hang."""
    parent = os.getpid()

    def work(job: int) -> int:
        time.sleep(0.02)
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return job

    with pytest.raises(WorkerError, match="killed by signal SIGKILL"):
        share(20, work, int, int)


def test_an_exception_in_the_parent_kills_and_reaps_the_child(tmp_path: Path) -> None:
    """The parent's own failure (Ctrl-C, a bug) kills the working child at once and reaps it."""
    parent = os.getpid()
    marker = tmp_path / "child.pid"

    def work(job: int) -> int:
        if os.getpid() != parent:
            marker.write_text(str(os.getpid()))
            time.sleep(60)
            return job
        wait_for(marker)
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        share(2, work, int, int)
    assert time.monotonic() - started < 30, "the parent waited for the child's work"
    assert gone(int(marker.read_text()))
