"""Session state belongs to the connection (``Link.new_connection_state``, held by the core),
not to a module-level registry keyed by the settings object: two connections made from one
``Settings`` never share a session, and nothing is left behind when a connection goes."""

from __future__ import annotations

import gc
from typing import Any

import pytest

import aiobus
from aiobus.transports.mqtt_session import Session
from aiobus.url import parse
from tests.conformance.test_poison_publish import link_losses
from tests.helpers import unique
from tests.integration.mqtt_support import link_of, session_of

pytestmark = pytest.mark.mosquitto


async def test_two_connections_from_one_settings_object_have_their_own_sessions(
    mosquitto: Any,
) -> None:
    settings = parse(mosquitto.url, protocol=5)
    topic = f"own/{unique()}"
    async with aiobus.Connection(settings) as one, aiobus.Connection(settings) as two:
        async with link_losses(one) as lost_one, link_losses(two) as lost_two:
            assert one.client_id != two.client_id  # generated per connection
            assert session_of(one) is not session_of(two)
            assert link_of(one).session is session_of(one)
            async with two.subscribe(topic, qos=1) as sub:
                for i in range(5):
                    await one.publish(topic, str(i), qos=1)
                    got = await sub.get(timeout=10)
                    await got.ack()
            # One client id each: the broker never took a session from the other.
            assert lost_one == [] and lost_two == []


def sessions_alive() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Session))


async def test_the_session_goes_with_the_connection(mosquitto: Any) -> None:
    before = sessions_alive()
    settings = parse(mosquitto.url, protocol=5)  # outlives the connection, as a config does
    bus = aiobus.Connection(settings)
    async with bus:
        await bus.publish(f"own/{unique()}", b"x", qos=1)
        assert sessions_alive() == before + 1
    del bus
    assert sessions_alive() == before
    assert settings.options is not None
