"""What the MQTT integration tests share."""

from __future__ import annotations

import aiobus
from aiobus.transports.mqtt import MqttLink
from aiobus.transports.mqtt_session import Session


def link_of(bus: aiobus.Connection) -> MqttLink:
    """The live MQTT link under a connection (to inspect the wire state in a test)."""
    link = bus._link
    assert isinstance(link, MqttLink)
    return link


def session_of(bus: aiobus.Connection) -> Session:
    """The connection's MQTT session state (``Connection.adapter_state``), link or not."""
    session = bus.adapter_state
    assert isinstance(session, Session)
    return session
