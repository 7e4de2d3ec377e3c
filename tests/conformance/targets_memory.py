"""Conformance targets: the in-process broker in both routing modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aiobus.memory_broker import MemoryBroker
from aiobus.testing import fresh_memory_broker
from tests.conformance.conftest import Target


def _memory(topics: str) -> Callable[[pytest.FixtureRequest], Target]:
    def make(request: pytest.FixtureRequest) -> Target:
        broker = fresh_memory_broker()
        return Target(
            name=f"memory-{topics}",
            url=broker.url(topics),
            syntax=topics,
            can_nack=True,
            can_unroutable=True,
            can_headers=True,
            kill_link=broker.kill_links,
            options={"backoff_initial": 0.001},
            cleanup=lambda: MemoryBroker.drop(broker.name),
        )

    return make


TARGETS = {"memory-amqp": _memory("amqp"), "memory-mqtt": _memory("mqtt")}
