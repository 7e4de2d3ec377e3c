"""Targets for the conformance suite: one per transport and broker.

Every test in this folder runs against every target. Where a protocol cannot do something, the
test asserts the typed ``NotSupported`` / ``ConfigError`` instead of skipping (CI fails on any
skip). Adapter issues add their brokers to ``TARGETS``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aiobus.memory_broker import MemoryBroker
from aiobus.testing import fresh_memory_broker

_unique = itertools.count(1)


@dataclass
class Target:
    """How to reach one broker over one protocol, and what that protocol can do."""

    name: str
    url: str
    syntax: str
    """'amqp' (words split by '.') or 'mqtt' (levels split by '/')."""
    can_nack: bool
    can_unroutable: bool
    can_headers: bool
    kill_link: Callable[[], Any]
    """Kill the current link from the broker's side (the connection must reconnect)."""
    options: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] = lambda: None

    def topic(self, *words: str) -> str:
        sep = "." if self.syntax == "amqp" else "/"
        return sep.join(words)

    def wildcard_one(self) -> str:
        return "*" if self.syntax == "amqp" else "+"

    def unique(self, prefix: str = "t") -> str:
        return f"{prefix}{next(_unique)}x{uuid.uuid4().hex[:6]}"


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


TARGETS: dict[str, Callable[[pytest.FixtureRequest], Target]] = {
    "memory-amqp": _memory("amqp"),
    "memory-mqtt": _memory("mqtt"),
}


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    made = TARGETS[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()
