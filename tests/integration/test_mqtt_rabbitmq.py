"""The MQTT transport against RabbitMQ 4's MQTT and Web-MQTT plugins (MQTT 3.1.1 and 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from tests.helpers import through_outage
from tests.helpers import unique as uniq
from tests.integration.mqtt_support import link_of

pytestmark = pytest.mark.rabbitmq

FAST = {"backoff_initial": 0.01, "backoff_max": 0.5}


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


async def test_round_trip_and_wildcards(rabbitmq: Any, protocol: int) -> None:
    root = uniq()
    async with aiobus.connect(rabbitmq.mqtt_url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(f"{root}/+/temp") as plus, bus.subscribe(f"{root}/#") as rest:
            headers = {"tenant": "a"} if protocol == 5 else None
            await asyncio.gather(
                *(bus.publish(f"{root}/k/temp", str(i), headers=headers) for i in range(100))
            )
            await bus.publish(f"{root}/k/hum", b"h")

            async def take(sub: aiobus.Subscription, n: int) -> list[str]:
                got = []
                for _ in range(n):
                    msg = await sub.get(timeout=10)
                    got.append(msg.text())
                    if headers and msg.topic.endswith("temp"):
                        assert msg.headers.get("tenant") == "a"
                    await msg.ack()
                return got

            # Read both at once: RabbitMQ sends one copy for both filters (mqtt.prefetch 10
            # unacked), acknowledged once both subscriptions have acked it.
            first, second = await asyncio.gather(take(plus, 100), take(rest, 101))
            assert first == [str(i) for i in range(100)]
            assert second == [str(i) for i in range(100)] + ["h"]


async def test_mqtt5_capabilities_from_connack(rabbitmq: Any) -> None:
    async with aiobus.connect(rabbitmq.mqtt_url, protocol=5, **FAST) as bus:
        link = link_of(bus)
        # RabbitMQ 4: QoS 2 is not supported (Maximum QoS 1), nor shared subscriptions.
        assert link.session.max_qos == 1
        with pytest.raises(aiobus.ConfigError, match="QoS up to 1"):
            bus.publish(f"{uniq()}/q2", b"x", qos=2)
        with pytest.raises(aiobus.SubscriptionError, match="shared"):
            async with bus.subscribe(f"{uniq()}/x", queue="g"):
                pass
        # 0x10 "no matching subscribers" is a success.
        confirm = await bus.publish(f"{uniq()}/nobody", b"x", qos=1)
        assert confirm.broker_id is not None


async def test_websocket(rabbitmq: Any, protocol: int) -> None:
    topic = f"{uniq()}/ws"
    async with aiobus.connect(rabbitmq.mqtt_ws_url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(topic) as sub:
            await asyncio.gather(*(bus.publish(topic, b"w" * 200) for _ in range(20)))
            for _ in range(20):
                msg = await sub.get(timeout=10)
                assert msg.body == b"w" * 200
                await msg.ack()


async def test_tls(rabbitmq: Any) -> None:
    topic = f"{uniq()}/tls"
    async with aiobus.connect(
        rabbitmq.mqtts_url, protocol=5, ca_file=rabbitmq.ca_file, **FAST
    ) as bus:
        async with bus.subscribe(topic) as sub:
            await bus.publish(topic, b"s")
            assert (await sub.get(timeout=10)).body == b"s"


async def test_connections_closed_by_the_broker_come_back(rabbitmq: Any, protocol: int) -> None:
    topic = f"{uniq()}/back"
    async with aiobus.connect(rabbitmq.mqtt_url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(topic) as sub:
            await through_outage(
                bus, lambda: rabbitmq.ctl("close_all_connections", "aiobus test"), timeout=30
            )
            await bus.publish(topic, b"after")
            msg = await sub.get(timeout=10)
            assert msg.body == b"after"
            await msg.ack()


async def test_bad_password_is_an_authentication_error(rabbitmq: Any, protocol: int) -> None:
    url = rabbitmq.mqtt_url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(aiobus.AuthenticationError):
        async with aiobus.connect(url, protocol=protocol, **FAST):
            pass


async def test_mqtt_to_amqp_091_interop(rabbitmq: Any) -> None:
    """A message published over MQTT reaches an AMQP 0-9-1 subscriber on amq.topic: the MQTT
    topic a/b is the routing key a.b."""
    root = uniq().replace("-", "")
    async with (
        aiobus.connect(rabbitmq.amqp_url) as amqp,
        amqp.subscribe(f"{root}.*.temp") as sub,
        aiobus.connect(rabbitmq.mqtt_url, protocol=5, **FAST) as mqtt,
    ):
        await mqtt.publish(f"{root}/kitchen/temp", b"21.5")
        msg = await sub.get(timeout=10)
        assert msg.topic == f"{root}.kitchen.temp"
        assert msg.body == b"21.5"
        await msg.ack()


@pytest.mark.faults
async def test_broker_killed_mid_stream_loses_no_confirmed_message(rabbitmq: Any) -> None:
    """RabbitMQ confirms a QoS 1 publish once its queues have it (publisher confirms inside the
    plugin), so after SIGKILL and restart not one confirmed message may be missing."""
    topic = f"{uniq()}/kill"
    count = 2000
    sub_opts = dict(protocol=4, client_id=uniq("rk"), clean_session=False, **FAST)
    received: set[int] = set()
    changed = asyncio.Event()
    async with aiobus.connect(rabbitmq.mqtt_url, **sub_opts) as subscriber:
        async with subscriber.subscribe(topic, qos=1, prefetch=500) as sub:

            async def consume() -> None:
                async for msg in sub:
                    received.add(int(msg.text()))
                    changed.set()
                    await msg.ack()

            consumer = asyncio.create_task(consume())
            try:
                async with aiobus.connect(rabbitmq.mqtt_url, protocol=4, **FAST) as pub:
                    futures = [pub.publish(topic, str(i), timeout=60) for i in range(count)]
                    async with asyncio.timeout(20):
                        while len(received) < count // 4:
                            changed.clear()
                            await changed.wait()
                    rabbitmq.kill()
                    rabbitmq.start()
                    results = await asyncio.wait_for(
                        asyncio.gather(*futures, return_exceptions=True), 90
                    )
                confirmed = {i for i, r in enumerate(results) if isinstance(r, aiobus.Confirm)}
                failed = [r for r in results if not isinstance(r, aiobus.Confirm)]
                assert all(isinstance(r, aiobus.PublishError) for r in failed), failed[:3]
                assert len(confirmed) >= count // 4
                with pytest.raises(TimeoutError):  # ends when all arrived or after 30 s
                    async with asyncio.timeout(30):
                        while not confirmed <= received:
                            changed.clear()
                            await changed.wait()
                        raise TimeoutError
            finally:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
            lost = sorted(confirmed - received)
            assert not lost, f"lost {len(lost)} confirmed messages: {lost[:10]}"
