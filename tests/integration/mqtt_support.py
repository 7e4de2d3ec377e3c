"""What the MQTT integration tests share."""

from __future__ import annotations

import aiobus
from aiobus.transports.mqtt import MqttLink


def link_of(bus: aiobus.Connection) -> MqttLink:
    """The live MQTT link under a connection (to inspect the wire state in a test)."""
    link = bus._link
    assert isinstance(link, MqttLink)
    return link
