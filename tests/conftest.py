"""Test-wide set-up: broker fixtures, the memory broker fixture, and CI's no-skip rule."""

from __future__ import annotations

import os

import pytest

from aiobus import Delivery

pytest_plugins = ["tests.harness.fixtures", "aiobus.testing"]


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
