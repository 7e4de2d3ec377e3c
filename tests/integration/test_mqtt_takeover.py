"""Two connections with one client id: on MQTT 5 the broker ends the older one with
DISCONNECT 0x8E (session taken over); that connection ends with ``SessionTakenOver`` and an
event instead of taking the session back (which would start a tug of war). MQTT 3.1.1 has no
reason code: the broker just closes the older connection, which reconnects as after any lost
link, and then takes the session back in turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from aiobus.events import State
from tests.conformance.test_poison_publish import link_losses
from tests.helpers import unique

FAST = {"backoff_initial": 0.01, "backoff_max": 0.3}


async def taken_over(mqtt_url: str) -> None:
    client_id = f"twin-{unique()}"
    topic = f"twin/{unique()}"
    async with aiobus.connect(mqtt_url, protocol=5, client_id=client_id, **FAST) as first:
        async with first.events() as events:
            async with (
                aiobus.connect(mqtt_url, protocol=5, client_id=client_id, **FAST) as second,
                link_losses(second) as second_lost,
            ):
                kinds: dict[str, aiobus.Event] = {}
                async with asyncio.timeout(15):
                    async for event in events:
                        kinds.setdefault(event.kind, event)
                        if event.state is State.CLOSED:
                            break
                # The second connection keeps the session: it works, and nothing takes the
                # session from it (the first connection is closed for good).
                async with second.subscribe(topic, qos=1) as sub:
                    for i in range(5):
                        await second.publish(topic, str(i), qos=1)
                        got = await sub.get(timeout=10)
                        await got.ack()
                        assert got.text() == str(i)
                assert second.state is State.CONNECTED
                assert second_lost == []
            event = kinds["session_taken_over"]
            assert isinstance(event.error, aiobus.SessionTakenOver)
            assert client_id in event.reason and "took over the session" in event.reason
            assert isinstance(kinds["link_lost"].error, aiobus.SessionTakenOver)
            assert "attempt_failed" not in kinds  # no reconnect was tried
            with pytest.raises(aiobus.SessionTakenOver):
                await first.wait_connected(timeout=5)
            with pytest.raises(aiobus.ConnectionClosed, match="took over the session"):
                first.publish(topic, b"after", qos=1)
            assert isinstance(first.last_error, aiobus.SessionTakenOver)


@pytest.mark.rabbitmq
async def test_rabbitmq_session_taken_over_ends_the_older_connection(rabbitmq: Any) -> None:
    await taken_over(rabbitmq.mqtt_url)


async def plain_close_and_reconnect(url: str, protocol: int) -> None:
    client_id = f"twin-{unique()}"
    async with aiobus.connect(url, protocol=protocol, client_id=client_id, **FAST) as first:
        async with first.events() as events:
            async with (
                aiobus.connect(url, protocol=protocol, client_id=client_id, **FAST) as second,
                second.events() as second_events,
            ):
                async with asyncio.timeout(15):
                    async for event in events:
                        if event.kind == "link_lost":
                            assert not isinstance(event.error, aiobus.SessionTakenOver)
                            break
                    async for event in second_events:  # the first one took it back
                        if event.kind == "link_lost":
                            break
                    await first.wait_connected()
                assert first.state is not State.CLOSED


@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_mosquitto_takeover_is_a_plain_close_and_the_connections_take_turns(
    mosquitto: Any, protocol: int
) -> None:
    """What a broker that gives no reason allows: MQTT 3.1.1 has no DISCONNECT from the
    broker, and Mosquitto 2.0.11 sends none on MQTT 5 either (it closes the socket). That is
    a lost link like any other: the older connection reconnects, takes the session back, and
    the broker closes the newer one; the two take turns, bounded by their backoff. No typed
    error is possible without the reason (docs/mqtt.md, Sessions)."""
    await plain_close_and_reconnect(mosquitto.url, protocol)


@pytest.mark.rabbitmq
async def test_rabbitmq_mqtt311_takeover_is_a_plain_close(rabbitmq: Any) -> None:
    await plain_close_and_reconnect(rabbitmq.mqtt_url, 4)
