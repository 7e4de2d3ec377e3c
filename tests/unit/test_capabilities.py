"""Capabilities may depend on the settings (MQTT 3.1.1 vs 5): the connection asks the adapter."""

from __future__ import annotations

from typing import ClassVar

import aiobus
from aiobus.connection import Connection
from aiobus.transports.base import Capabilities
from aiobus.transports.memory import MemoryLink
from aiobus.url import Settings, parse


class NoCorrelationLink(MemoryLink):
    seen: ClassVar[list[Settings]] = []

    @classmethod
    def capabilities_for(cls, settings: Settings) -> Capabilities:
        cls.seen.append(settings)
        return Capabilities(headers=False, correlation=False)


def test_default_capabilities_carry_correlation_and_topic_replies() -> None:
    caps = aiobus.connect("memory://caps").capabilities
    assert caps.correlation is True
    assert caps.reply == "topic"


def test_connection_asks_the_adapter_for_capabilities_per_settings() -> None:
    settings = parse("memory://caps")
    bus = Connection(settings, link_cls=NoCorrelationLink)
    assert NoCorrelationLink.seen == [settings]
    assert bus.capabilities.correlation is False
    assert bus.capabilities.headers is False
