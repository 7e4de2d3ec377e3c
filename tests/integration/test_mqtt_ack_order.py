"""PUBACKs in the order the application acks, not the order the messages arrived (a worker
pool finishes in any order): Mosquitto 2 and RabbitMQ 4 take them, and the broker considers
every one delivered. Checked on a persistent session: a message whose out-of-order PUBACK the
broker ignored would come again on the session's next connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from tests.conformance.test_poison_publish import link_losses
from tests.helpers import mqtt_persistent_session, unique

COUNT = 5


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("broker", ["mosquitto", "rabbitmq"])
async def test_acks_in_reverse_order_are_taken(
    broker: str, protocol: int, request: pytest.FixtureRequest
) -> None:
    server: Any = request.getfixturevalue(broker)
    url = server.url if broker == "mosquitto" else server.mqtt_url
    topic = f"order/{unique()}"
    options = mqtt_persistent_session(protocol, f"ack-order-{unique()}")
    async with aiobus.connect(url, **options) as bus, link_losses(bus) as lost:
        async with bus.subscribe(topic, qos=1) as sub:
            await asyncio.gather(*(bus.publish(topic, str(i), qos=1) for i in range(COUNT)))
            async with asyncio.timeout(10):
                held = [await sub.get() for _ in range(COUNT)]
            assert [m.text() for m in held] == [str(i) for i in range(COUNT)]
            for msg in reversed(held):  # newest first: every PUBACK out of arrival order
                await msg.ack()
            async with asyncio.timeout(10):
                await bus.publish(topic, "probe", qos=1)
                probe = await sub.get()
            assert probe.text() == "probe"
            await probe.ack()
        assert lost == []
    # The session's next connection: nothing acked comes again; only what follows.
    async with aiobus.connect(url, **options) as bus:
        async with bus.subscribe(topic, qos=1) as sub:
            await bus.publish(topic, "end", qos=1)
            async with asyncio.timeout(10):
                first = await sub.get()
            assert first.text() == "end", f"redelivered after an out-of-order ack: {first.text()}"
            await first.ack()
            await sub.unsubscribe()
