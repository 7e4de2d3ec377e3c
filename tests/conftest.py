"""Test-wide set-up: broker fixtures, the memory broker fixture, both event loops, and CI's
no-skip rule."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Iterator, Mapping

import pytest
import uvloop

from aiobus import Delivery

pytest_plugins = ["tests.harness.fixtures", "tests.harness.timeouts", "aiobus.testing"]

#: Every test that runs on an event loop runs once per loop here, the loop's name in its id
#: (``test_x[asyncio]``, ``test_x[uvloop]``). pytest-asyncio builds each test's loop with the
#: factory through ``asyncio.Runner``, which turns asyncio debug mode on for both loops
#: (``asyncio_debug`` in pyproject). Broker fixtures are synchronous and session-scoped, so
#: they are started once and shared by both loops. ``tests.harness.timeouts`` makes the
#: per-test time-out work on uvloop too (pytest-timeout's own alarm is swallowed there).
EVENT_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return EVENT_LOOPS


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> list[Delivery]:
    """Every delivery acked, in order (to prove "acked once")."""
    seen: list[Delivery] = []
    original = Delivery.ack

    async def ack(self: Delivery) -> None:
        seen.append(self)
        await original(self)

    monkeypatch.setattr(Delivery, "ack", ack)
    return seen


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI must never pass with tests silently skipped (a missing broker, say).
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        print(f"\nCI: {len(_skipped)} test(s) skipped, which CI does not allow:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = 1


#: What asyncio says when an outcome was lost: an exception nobody retrieved, a task
#: destroyed while still pending. Any of these during a test fails it.
LOST_OUTCOMES = ("exception was never retrieved", "Task was destroyed but it is pending")


class _LostOutcomes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(text in message for text in LOST_OUTCOMES):
            self.seen.append(message.splitlines()[0])


@pytest.fixture(autouse=True)
def no_lost_outcomes() -> Iterator[None]:
    """Fails a test in which asyncio reported an exception that was never retrieved or a
    task destroyed while pending. They are reported when the future is collected, so the
    garbage is collected at the test's end, while this handler still listens."""
    handler = _LostOutcomes()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    if handler.seen:
        pytest.fail("asyncio lost an outcome during this test: " + "; ".join(handler.seen))
