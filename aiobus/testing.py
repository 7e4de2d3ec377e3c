"""Test helpers for users' own tests: a fresh in-process broker per test, with fault controls.

Enable with ``pytest_plugins = ["aiobus.testing"]`` in your ``conftest.py``, then::

    async def test_order_flow(memory_broker):
        async with aiobus.connect(memory_broker.url()) as bus:
            ...
            memory_broker.kill_links()        # the link dies now; aiobus reconnects

For real brokers, ``FaultProxy`` sits between aiobus and the broker and cuts, stalls
(black-holes), slows or refuses connections on command.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from .faultproxy import FaultProxy
from .memory_broker import MemoryBroker

__all__ = ["FaultProxy", "MemoryBroker", "fresh_memory_broker", "memory_broker"]

_names = itertools.count(1)


def fresh_memory_broker() -> MemoryBroker:
    """A broker no other test can reach (a unique name)."""
    return MemoryBroker.get(f"test-{next(_names)}")


@pytest.fixture
def memory_broker() -> Iterator[MemoryBroker]:
    broker = fresh_memory_broker()
    try:
        yield broker
    finally:
        MemoryBroker.drop(broker.name)
