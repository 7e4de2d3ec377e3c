"""Subscriptions: buffering, settlement, re-attachment, staleness, through the memory broker."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from aiobus.memory_broker import MemoryBroker
from tests.helpers import through_outage


async def test_every_subscriber_gets_a_copy_without_a_queue_name(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("a.*") as one, bus.subscribe("a.#") as two:
            await bus.publish("a.b", b"x")
            assert (await one.get(timeout=5)).topic == "a.b"
            assert (await two.get(timeout=5)).topic == "a.b"
        assert not memory_broker.queues  # private queues are gone on exit


async def test_a_named_queue_is_shared_and_stays(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with (
            bus.subscribe("jobs", queue="work", prefetch=1) as w1,
            bus.subscribe("jobs", queue="work", prefetch=1) as w2,
        ):
            await asyncio.gather(*(bus.publish("jobs", str(i)) for i in range(4)))
            a, b = await w1.get(timeout=5), await w2.get(timeout=5)
            assert {a.text(), b.text()} == {"0", "1"}  # round robin between the two
            await a.ack()
            await b.ack()
            c, d = await w1.get(timeout=5), await w2.get(timeout=5)
            assert {c.text(), d.text()} == {"2", "3"}
            await c.ack()
            await d.ack()
        await bus.publish("jobs", b"later")
    assert len(memory_broker.queues["work"].messages) == 1


async def test_buffer_never_holds_more_than_prefetch(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q", prefetch=5) as sub:
            await asyncio.gather(*(bus.publish("k", b"x") for _ in range(20)))
            assert sub.room == 0
            assert len(memory_broker.queues["q"].messages) == 15  # the rest stays on the broker
            msg = await sub.get(timeout=5)
            assert sub.room == 1  # taken, not settled: the broker must not send more
            assert len(memory_broker.queues["q"].messages) == 15
            await msg.ack()
            assert sub.room == 0
            assert len(memory_broker.queues["q"].messages) == 14


async def test_no_ack_consumer_is_paced_by_the_local_buffer(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q", prefetch=3, no_ack=True) as sub:
            await asyncio.gather(*(bus.publish("k", str(i)) for i in range(10)))
            assert len(memory_broker.queues["q"].messages) == 7
            got = [(await sub.get(timeout=5)).text() for _ in range(10)]
            assert got == [str(i) for i in range(10)]


async def test_nack_requeues_with_redelivered_and_count(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q") as sub:
            await bus.publish("k", b"x")
            first = await sub.get(timeout=5)
            assert not first.redelivered and first.delivery_count == 1
            await first.nack(requeue=True)
            again = await sub.get(timeout=5)
            assert again.redelivered and again.delivery_count == 2
            await again.reject()
            assert memory_broker.dead_lettered[-1][1] == "rejected"
            with pytest.raises(aiobus.AlreadySettled):
                await again.ack()


async def test_process_acks_on_success_and_nacks_on_error(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q") as sub:
            await bus.publish("k", b"x")
            msg = await sub.get(timeout=5)
            with pytest.raises(RuntimeError, match="handler failed"):
                async with msg.process():
                    raise RuntimeError("handler failed")
            again = await sub.get(timeout=5)
            assert again.redelivered
            async with again.process():
                pass
            assert again.settled
            assert not memory_broker.queues["q"].messages


async def test_subscription_is_reattached_and_the_same_loop_continues(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("k", queue="q") as named, bus.subscribe("k") as private:
            await bus.publish("k", b"before")
            first = await named.get(timeout=5)
            assert first.body == b"before"
            await first.ack()
            assert (await private.get(timeout=5)).body == b"before"
            await through_outage(bus, memory_broker.kill_links)
            assert named.live and private.live
            await bus.publish("k", b"after")
            after = await named.get(timeout=5)
            assert after.body == b"after"
            await after.ack()
            assert (await private.get(timeout=5)).body == b"after"


async def test_unacked_delivery_comes_again_after_link_death(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("k", queue="q") as sub:
            await bus.publish("k", b"x")
            old = await sub.get(timeout=5)
            await through_outage(bus, memory_broker.kill_links)
            with pytest.raises(aiobus.StaleDelivery, match="link that has since died"):
                await old.ack()
            again = await sub.get(timeout=5)
            assert again.body == b"x" and again.redelivered
            await again.ack()


async def test_buffered_deliveries_from_a_dead_link_are_not_handed_out(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("k", queue="q", prefetch=10) as sub:
            await asyncio.gather(*(bus.publish("k", str(i)) for i in range(3)))
            await through_outage(bus, memory_broker.kill_links)
            got = [await sub.get(timeout=5) for _ in range(3)]
            assert [m.text() for m in got] == ["0", "1", "2"]
            assert all(m.redelivered for m in got)  # the broker's copies, not stale ones
            for m in got:
                await m.ack()
            assert sub.room == 10


async def test_mqtt_routing_mode(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url("mqtt")) as bus:
        async with bus.subscribe("sensors/+/temp") as sub, bus.subscribe("sensors/#") as every:
            await bus.publish("sensors/kitchen/temp", b"21", qos=1)
            await bus.publish("sensors/kitchen/humidity", b"40")
            msg = await sub.get(timeout=5)
            assert msg.topic == "sensors/kitchen/temp" and msg.qos == 1
            assert [(await every.get(timeout=5)).topic for _ in range(2)] == [
                "sensors/kitchen/temp",
                "sensors/kitchen/humidity",
            ]
        with pytest.raises(aiobus.InvalidTopic):
            bus.publish("sensors/+", b"x")
        with pytest.raises(aiobus.InvalidTopic):
            bus.subscribe("a/#/b")


async def test_retained_message_reaches_a_late_subscriber(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url("mqtt")) as bus:
        await bus.publish("status/dev1", b"online", retain=True)
        async with bus.subscribe("status/+") as sub:
            msg = await sub.get(timeout=5)
            assert msg.body == b"online" and msg.retain


async def test_subscribe_rejects_bad_options(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        with pytest.raises(aiobus.ConfigError, match="prefetch must be a positive int"):
            bus.subscribe("k", prefetch=0)
        with pytest.raises(aiobus.ConfigError, match="unknown subscribe options"):
            bus.subscribe("k", colour="blue")
        with pytest.raises(aiobus.InvalidTopic):
            bus.subscribe("a*.b")


async def test_iteration_ends_with_connection_closed_when_the_connection_closes(
    memory_broker: MemoryBroker,
) -> None:
    bus = aiobus.connect(memory_broker.url())
    async with bus:
        sub = bus.subscribe("k")
        await sub.__aenter__()
    with pytest.raises(aiobus.ConnectionClosed):
        await sub.get(timeout=1)


async def test_a_consumer_the_broker_ends_is_reattached_and_reported(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q") as sub, bus.events() as events:
            memory_broker.delete_queue(memory_broker.queues["q"])
            async with asyncio.timeout(5):
                event = await anext(e async for e in events if e.kind.startswith("subscription"))
            assert event.kind == "subscription_reattached"
            assert "queue 'q' was deleted" in event.reason
            assert sub.live and "q" in memory_broker.queues  # declared again on re-attach
            await bus.publish("k", b"after")
            assert (await sub.get(timeout=5)).body == b"after"


async def test_a_consumer_ended_again_on_the_same_link_fails_loudly(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q") as sub, bus.events() as events:
            memory_broker.delete_queue(memory_broker.queues["q"])
            async with asyncio.timeout(5):
                await anext(e async for e in events if e.kind == "subscription_reattached")
            memory_broker.delete_queue(memory_broker.queues["q"])
            async with asyncio.timeout(5):
                failed = await anext(e async for e in events if e.kind == "subscription_failed")
            assert "was deleted" in failed.reason
            with pytest.raises(aiobus.SubscriptionError, match="was deleted"):
                await sub.get(timeout=5)
            assert bus.is_connected  # the rest of the connection is untouched
