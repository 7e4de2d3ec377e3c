"""Targets for the conformance suite: one per transport and broker.

Every test in this folder runs against every target. Where a protocol cannot do something, the
test asserts the typed ``NotSupported`` / ``ConfigError`` instead of skipping (CI fails on any
skip). Each transport lists its targets in its own ``targets_<protocol>.py`` module here, as a
``TARGETS`` dict of name -> factory(request) -> Target.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
    topic_prefix: str = ""
    """Put before every topic: where a protocol publishes to addresses (AMQP 1.0:
    ``/exchanges/amq.topic/``), ``topic()`` gives the whole address."""
    can_share: bool = True
    """Competing consumers on one named queue (``queue=``); where False, subscribing with
    ``queue=`` must fail with a typed error."""
    subscriber: Callable[..., AbstractAsyncContextManager[Any]] | None = None
    """``subscriber(bus, pattern, **options)`` for a protocol whose subscriptions need more
    than ``bus.subscribe`` (AMQP 1.0 consumes from a queue the test declares and binds)."""

    def topic(self, *words: str) -> str:
        sep = "." if self.syntax == "amqp" else "/"
        return self.topic_prefix + sep.join(words)

    def subscribe(self, bus: Any, pattern: str, **options: Any) -> AbstractAsyncContextManager[Any]:
        if self.subscriber is None:
            return bus.subscribe(pattern, **options)  # type: ignore[no-any-return]
        return self.subscriber(bus, pattern, **options)

    def wildcard_one(self) -> str:
        return "*" if self.syntax == "amqp" else "+"

    def unique(self, prefix: str = "t") -> str:
        return f"{prefix}{next(_unique)}x{uuid.uuid4().hex[:6]}"


TargetFactory = Callable[[pytest.FixtureRequest], Target]


def _collect_targets() -> dict[str, TargetFactory]:
    found: dict[str, TargetFactory] = {}
    here = str(Path(__file__).parent)
    for info in sorted(pkgutil.iter_modules([here]), key=lambda m: m.name):
        if info.name.startswith("targets_"):
            module = importlib.import_module(f"tests.conformance.{info.name}")
            found.update(module.TARGETS)
    return found


TARGETS = _collect_targets()


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    made = TARGETS[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()
