"""The promises every transport keeps, written once against the public API."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from tests.conformance.conftest import Target
from tests.helpers import other_tasks, through_outage


async def test_publish_resolves_with_a_confirm(target: Target) -> None:
    async with aiobus.connect(target.url, **target.options) as bus:
        confirm = await bus.publish(target.topic(target.unique(), "c"), b"x", mandatory=False)
        assert isinstance(confirm, aiobus.Confirm)
        assert confirm.protocol == bus.protocol
        assert confirm.message_id
        assert confirm.latency >= 0


async def test_round_trip_keeps_body_and_properties(target: Target) -> None:
    topic = target.topic(target.unique(), "rt")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic) as sub:
            # can_headers: the protocol carries message properties at all (MQTT 3.1.1 has
            # none, and passing them there is a ConfigError at the call).
            props = target.can_headers
            headers = {"tenant": "a"} if props else None
            await bus.publish(
                topic,
                {"id": 1},
                headers=headers,
                correlation_id="c-1" if props else None,
                message_id="m-1",
            )
            msg = await sub.get(timeout=10)
            assert msg.topic == topic
            assert msg.json() == {"id": 1}
            if props:
                assert msg.message_id == "m-1"
                assert msg.correlation_id == "c-1"
                assert msg.headers.get("tenant") == "a"
            await msg.ack()


async def test_one_subscription_receives_in_publish_order(target: Target) -> None:
    topic = target.topic(target.unique(), "order")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic, prefetch=200) as sub:
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(1000)))
            got = []
            async with asyncio.timeout(20):
                async for msg in sub:
                    got.append(int(msg.text()))
                    await msg.ack()
                    if len(got) == 1000:
                        break
            assert got == list(range(1000))


async def test_wildcard_subscription_matches_one_level(target: Target) -> None:
    root = target.unique()
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, target.topic(root, target.wildcard_one(), "temp")) as sub:
            await bus.publish(target.topic(root, "kitchen", "humidity"), b"no", mandatory=False)
            await bus.publish(target.topic(root, "kitchen", "temp"), b"yes")
            msg = await sub.get(timeout=10)
            assert msg.body == b"yes"
            await msg.ack()


async def test_nack_requeues_or_is_not_supported(target: Target) -> None:
    topic = target.topic(target.unique(), "nack")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic, queue=target.unique("q")) as sub:
            await bus.publish(topic, b"x")
            msg = await sub.get(timeout=10)
            if not target.can_nack:
                with pytest.raises(aiobus.NotSupported):
                    await msg.nack()
                with pytest.raises(aiobus.NotSupported):
                    await msg.reject()
                await msg.ack()
                return
            await msg.nack(requeue=True)
            again = await sub.get(timeout=10)
            assert again.body == b"x" and again.redelivered
            await again.reject()


async def test_unroutable_is_reported_or_refused(target: Target) -> None:
    nowhere = target.topic(target.unique(), "nobody")
    async with aiobus.connect(target.url, **target.options) as bus:
        if target.can_unroutable:
            with pytest.raises(aiobus.Unroutable):
                await bus.publish(nowhere, b"x", mandatory=True)
        else:
            with pytest.raises(aiobus.ConfigError):
                bus.publish(nowhere, b"x", mandatory=True)


async def test_competing_consumers_share_a_queue(target: Target) -> None:
    topic = target.topic(target.unique(), "work")
    queue = target.unique("q")
    async with aiobus.connect(target.url, **target.options) as bus:
        if not target.can_share:
            with pytest.raises((aiobus.SubscriptionError, aiobus.NotSupported)):
                async with bus.subscribe(topic, queue=queue):
                    pass
            return
        async with (
            target.subscribe(bus, topic, queue=queue, prefetch=1) as a,
            target.subscribe(bus, topic, queue=queue, prefetch=1) as b,
        ):
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(2)))
            first, second = await a.get(timeout=10), await b.get(timeout=10)
            assert {first.text(), second.text()} == {"0", "1"}
            await first.ack()
            await second.ack()


async def test_bad_topic_is_refused_at_the_call(target: Target) -> None:
    async with aiobus.connect(target.url, **target.options) as bus:
        with pytest.raises(aiobus.InvalidTopic):
            bus.publish(target.topic("a", target.wildcard_one()), b"x")
        with pytest.raises(TypeError):
            bus.publish(target.topic("a"), 3.14)  # type: ignore[arg-type]


async def test_subscription_survives_a_killed_link(target: Target) -> None:
    topic = target.topic(target.unique(), "survive")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic, queue=target.unique("q")) as sub:
            await through_outage(bus, target.kill_link, timeout=20)
            await bus.publish(topic, b"after")
            msg = await sub.get(timeout=10)
            assert msg.body == b"after"
            await msg.ack()


async def test_settling_a_delivery_from_a_dead_link_is_stale(target: Target) -> None:
    topic = target.topic(target.unique(), "stale")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic, queue=target.unique("q")) as sub:
            await bus.publish(topic, b"x")
            msg = await sub.get(timeout=10)
            await through_outage(bus, target.kill_link, timeout=20)
            with pytest.raises(aiobus.StaleDelivery):
                await msg.ack()


async def test_nothing_outlives_the_connection(target: Target) -> None:
    topic = target.topic(target.unique(), "leak")
    async with (
        aiobus.connect(target.url, **target.options) as bus,
        target.subscribe(bus, topic) as sub,
    ):
        await bus.publish(topic, b"x")
        await (await sub.get(timeout=10)).ack()
    assert not other_tasks()
