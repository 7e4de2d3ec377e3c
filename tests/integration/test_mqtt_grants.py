"""SUBACK grants are checked: a lower QoS than asked is a ``SubscriptionError`` naming the
filter and both QoS, unless the subscriber passed ``accept_downgrade=True``; the grant is
``Subscription.granted_qos``. Mosquitto 2 with ``max_qos 1`` and RabbitMQ 4 (which grants at
most QoS 1), MQTT 3.1.1 and 5."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import aiobus
from tests.harness.mosquitto import MosquittoBroker
from tests.harness.ports import LOOPBACK, free_port, wait_for_ports
from tests.helpers import unique


@pytest.fixture(scope="module")
def qos1_mosquitto() -> Iterator[str]:
    """The URL of a Mosquitto listener with ``max_qos 1`` (a listener setting: a listener of
    its own, since the harness's extra lines follow its TLS listener)."""
    port = free_port()
    broker = MosquittoBroker(extra_config=[f"listener {port} {LOOPBACK}", "max_qos 1"])
    broker.start()
    try:
        wait_for_ports(LOOPBACK, [port], 15)
        yield f"mqtt://{LOOPBACK}:{port}"
    finally:
        broker.close()


async def grants(url: str, protocol: int) -> None:
    topic = f"grant/{unique()}"
    async with aiobus.connect(url, protocol=protocol) as bus:
        with pytest.raises(aiobus.SubscriptionError) as refused:
            async with bus.subscribe(topic, qos=2):
                pass
        text = str(refused.value)
        assert repr(topic) in text and "granted QoS 1" in text and "QoS 2 asked" in text
        assert "accept_downgrade=True" in text
        async with bus.subscribe(topic, qos=2, accept_downgrade=True) as sub:
            assert sub.granted_qos == 1
            await bus.publish(topic, b"x", qos=1)
            got = await sub.get(timeout=10)
            await got.ack()
        async with bus.subscribe(f"{topic}/one", qos=1) as sub:
            assert sub.granted_qos == 1
        with pytest.raises(aiobus.ConfigError, match="accept_downgrade must be a bool"):
            bus.subscribe(topic, qos=2, accept_downgrade="yes")


@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_mosquitto_max_qos_1_grant_is_checked(qos1_mosquitto: str, protocol: int) -> None:
    await grants(qos1_mosquitto, protocol)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_rabbitmq_grants_at_most_qos_1(rabbitmq: Any, protocol: int) -> None:
    await grants(rabbitmq.mqtt_url, protocol)


@pytest.mark.mosquitto
async def test_a_full_grant_is_reported(mosquitto: Any) -> None:
    async with aiobus.connect(mosquitto.url, protocol=5) as bus:
        async with bus.subscribe(f"grant/{unique()}", qos=2) as sub:
            assert sub.granted_qos == 2
        assert sub.granted_qos is None  # left: not attached
