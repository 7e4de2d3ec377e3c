"""pytest plugin: per-test time-outs (pytest-timeout's ``timeout``) that also end a test hung
on uvloop.

pytest-timeout's ``signal`` method fails a test by raising from its SIGALRM handler. On the
default loop that exception surfaces in the test. uvloop runs Python signal handlers inside its
own callbacks and only logs what they raise, so a test hung on uvloop would hang the whole run.
Here the alarm, when it finds an event loop running, cancels the test's task instead: the test
fails with a ``CancelledError`` naming the time-out, and its ``finally`` blocks and fixtures
still run. A test that ignores the cancellation gets its loop stopped ``GRACE`` seconds later,
and one that hangs even then ends the process after a stack dump: CI can never hang.
"""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import io
import os
import signal
import sys
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import pytest

__all__ = ["GRACE"]

#: Seconds between the escalation steps after a test's time-out.
GRACE = 10.0
#: Set on an item whose time-out fired: it fails even if its code swallowed the cancellation.
_TIMED_OUT = pytest.StashKey[str]()


class _Alarm:
    """The SIGALRM handler for one test; each alarm escalates one step and re-arms."""

    def __init__(self, item: pytest.Item, timeout: float) -> None:
        self.item = item
        self.message = f"Timeout (>{timeout:.1f}s) from pytest-timeout."
        self.steps = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        loop = _running_loop()
        if loop is None:
            pytest.fail(self.message)  # a synchronous test: raising here reaches it
        self.steps += 1
        signal.setitimer(signal.ITIMER_REAL, GRACE)
        # Threadsafe calls: they wake a loop blocked in its selector, as a signal does not.
        if self.steps == 1:
            self.item.stash[_TIMED_OUT] = self.message
            self._dump_tasks(loop)
            for task in _test_tasks(loop, self.item):
                loop.call_soon_threadsafe(task.cancel, self.message)
        elif self.steps == 2:
            loop.call_soon_threadsafe(loop.stop)
        else:
            self._give_up()

    def _dump_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        """Where every pending task waits: what hung (the cancellation may hide it)."""
        out = io.StringIO()
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=out)
        terminal = self.item.config.get_terminal_writer()
        terminal.sep("+", title=f"{self.item.nodeid}: {self.message} Pending tasks")
        terminal.write(out.getvalue())
        terminal.sep("+", title="Timeout")

    def _give_up(self) -> None:
        capture = self.item.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # so the dump reaches the terminal
        stderr = sys.__stderr__
        if stderr is not None:
            print(
                f"\n{self.item.nodeid}: {self.message} It ignored cancellation and a stopped "
                "loop; ending the run.",
                file=stderr,
                flush=True,
            )
            faulthandler.dump_traceback(file=stderr, all_threads=True)
        os._exit(1)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _test_tasks(loop: asyncio.AbstractEventLoop, item: pytest.Item) -> list[asyncio.Task[Any]]:
    """The task running the test function, or every pending task if it is not found (the
    time-out hit an async fixture, or a wrapped test)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    function = inspect.unwrap(getattr(item, "obj", None))
    code = getattr(function, "__code__", None)
    own = [task for task in pending if getattr(task.get_coro(), "cr_code", None) is code]
    return own or pending


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    # pytest-timeout's pytest_timeout_cancel_timer calls this at the end of the test.
    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, _Alarm(item, settings.timeout))
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
    None, pytest.TestReport, pytest.TestReport
]:
    report = yield
    message = item.stash.get(_TIMED_OUT, None)
    if message is not None and report.when == "call" and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{message} The test swallowed the cancellation and then passed."
    return report
