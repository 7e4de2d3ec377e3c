"""The publish contract, proven through the in-process broker."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from aiobus.memory_broker import MemoryBroker
from tests.helpers import other_tasks, through_outage


async def test_ten_thousand_pipelined_publishes_keep_call_order(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("orders.#", queue="orders", prefetch=500) as sub:
            futures = [bus.publish(f"orders.{i % 7}", str(i)) for i in range(10_000)]
            confirms = await asyncio.gather(*futures)
            assert [c.message_id for c in confirms] == [f.message_id for f in futures]
            assert len({c.message_id for c in confirms}) == 10_000
            received = []
            async with asyncio.timeout(10):
                async for msg in sub:
                    received.append(int(msg.text()))
                    await msg.ack()
                    if len(received) == 10_000:
                        break
            assert received == list(range(10_000))


async def test_window_is_never_exceeded(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), max_in_flight=10) as bus:
        memory_broker.hold_confirms()
        futures = [bus.publish("k", b"x") for _ in range(35)]
        for written in (10, 20, 30):
            await memory_broker.until(lambda n=written: memory_broker.published == n)
            # Nothing more is settled, so nothing more may be written, however long we wait.
            for _ in range(50):
                await asyncio.sleep(0)
            assert memory_broker.published == written
            assert sum(f.done() for f in futures) == written - 10
            memory_broker.release_confirms()  # settles the 10 in flight...
            memory_broker.hold_confirms()  # ...and holds the next ones' outcomes again
        await memory_broker.until(lambda: memory_broker.published == 35)
        memory_broker.release_confirms()
        await asyncio.gather(*futures)


async def test_buffer_full_raises_at_the_call(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), max_buffered=5) as bus:
        with memory_broker.confirms_held():
            futures = [bus.publish("k", b"x") for _ in range(5)]
            with pytest.raises(aiobus.BufferFull, match="max_buffered=5"):
                bus.publish("k", b"x")
            assert bus.pending == 5
        await asyncio.gather(*futures)
        assert bus.pending == 0
        await bus.publish("k", b"x")  # room again


async def test_publish_times_out_during_an_outage(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.005) as bus:
        memory_broker.refuse_connections()
        memory_broker.kill_links()
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut = bus.publish("k", b"x", timeout=0.2)
        with pytest.raises(aiobus.PublishTimeout, match="waiting to be sent") as info:
            async with asyncio.timeout(2):
                await fut
        waited = loop.time() - started
        assert 0.19 <= waited < 0.5
        assert info.value.maybe_delivered is False  # never written
        memory_broker.refuse_connections(False)


async def test_in_flight_publish_times_out_when_no_confirm_comes(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        memory_broker.hold_confirms()
        with pytest.raises(aiobus.PublishTimeout, match="waiting for the broker") as info:
            await bus.publish("k", b"x", timeout=0.05)
        assert info.value.maybe_delivered is True  # written: the broker may have it
        memory_broker.release_confirms()


async def test_messages_in_flight_are_replayed_in_order_after_link_death(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("t", queue="q", prefetch=1000) as sub:
            memory_broker.hold_confirms()
            futures = [bus.publish("t", str(i)) for i in range(50)]
            await memory_broker.until(lambda: memory_broker.published == 50)
            await through_outage(bus, memory_broker.kill_links)
            memory_broker.release_confirms()
            confirms = await asyncio.gather(*futures)
            assert len(confirms) == 50
            seen: list[int] = []
            async with asyncio.timeout(5):
                async for msg in sub:
                    seen.append(int(msg.text()))
                    await msg.ack()
                    if set(seen) == set(range(50)):
                        break
            # At least once: the first copies were routed before the link died, the re-sent
            # ones after; each copy arrives, and every copy run is in call order.
            first_run = seen[: seen.index(49) + 1]
            assert first_run == list(range(50))
            assert memory_broker.published == 100


async def test_fail_policy_tells_written_from_never_sent(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), outage="fail", backoff_initial=0.001) as bus:
        memory_broker.hold_confirms()
        written = bus.publish("k", b"x")
        await memory_broker.until(lambda: memory_broker.published == 1)
        memory_broker.refuse_connections()
        memory_broker.kill_links()
        with pytest.raises(aiobus.LinkLost) as lost:
            await written
        assert lost.value.maybe_delivered is True
        never_sent = bus.publish("k", b"y")
        with pytest.raises(aiobus.LinkLost) as lost:
            await never_sent
        assert lost.value.maybe_delivered is False
        # Per publish, "retry" waits the outage out even on a "fail" connection.
        waits = bus.publish("k", b"z", outage="retry")
        memory_broker.refuse_connections(False)
        memory_broker.holding = False
        memory_broker.release_confirms()
        await asyncio.wait_for(waits, 5)


async def test_link_loss_is_noticed_at_once_not_at_the_deadline(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), outage="fail") as bus:
        memory_broker.hold_confirms()
        fut = bus.publish("k", b"x", timeout=60)
        await memory_broker.until(lambda: memory_broker.published == 1)
        memory_broker.kill_links()
        with pytest.raises(aiobus.LinkLost):
            async with asyncio.timeout(1):
                await fut
        memory_broker.release_confirms()


async def test_nack_and_unroutable_fail_the_future(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), mandatory=True) as bus:
        with pytest.raises(aiobus.Unroutable, match="no queue is bound to 'nowhere'"):
            await bus.publish("nowhere", b"x")
        assert (await bus.publish("nowhere", b"x", mandatory=False)).message_id
        async with bus.subscribe("k", queue="q"):
            memory_broker.nack_next(1)
            with pytest.raises(aiobus.Nacked):
                await bus.publish("k", b"x")
            await bus.publish("k", b"y")


async def test_cancelling_an_unsent_publish_withdraws_it(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("k", queue="q") as sub:
            memory_broker.refuse_connections()
            memory_broker.kill_links()
            withdrawn = bus.publish("k", b"withdrawn")
            kept = bus.publish("k", b"kept")
            assert withdrawn.cancel()
            assert bus.pending == 1
            memory_broker.refuse_connections(False)
            await asyncio.wait_for(kept, 5)
            msg = await sub.get(timeout=5)
            # Order is kept, so had the first been sent it would have come first.
            assert msg.body == b"kept"


async def test_cancel_through_wait_for_withdraws(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        memory_broker.refuse_connections()
        memory_broker.kill_links()
        fut = bus.publish("k", b"x")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fut, 0.01)
        assert fut.cancelled()
        assert bus.pending == 0
        memory_broker.refuse_connections(False)


async def test_flush_waits_for_every_outcome(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        futures = [bus.publish("k", b"x") for _ in range(100)]
        await bus.flush(timeout=5)
        assert all(f.done() for f in futures)
        assert bus.pending == 0


async def test_bad_input_raises_at_the_call(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), max_message_size=1000) as bus:
        with pytest.raises(TypeError, match="body must be bytes, str, dict or list, not int"):
            bus.publish("k", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="JSON cannot encode"):
            bus.publish("k", {"x": object()})
        with pytest.raises(aiobus.InvalidTopic):
            bus.publish("a.*", b"x")
        with pytest.raises(aiobus.ConfigError, match="qos is an MQTT option"):
            bus.publish("k", b"x", qos=1)
        with pytest.raises(aiobus.ConfigError, match="timeout must be a positive number"):
            bus.publish("k", b"x", timeout=0)
        with pytest.raises(aiobus.ConfigError, match="outage must be"):
            bus.publish("k", b"x", outage="maybe")
        with pytest.raises(aiobus.MessageTooLarge, match="1001 bytes") as too_large:
            bus.publish("k", b"x" * 1001)
        assert too_large.value.option == "max_message_size"
        assert "max_message_size option" in str(too_large.value)
        assert bus.pending == 0
    with pytest.raises(aiobus.ConnectionClosed):
        bus.publish("k", b"x")


async def test_bodies_are_encoded_by_type(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", prefetch=10) as sub:
            await bus.publish("k", b"raw")
            await bus.publish("k", "text")
            await bus.publish("k", {"a": [1, 2]})
            await bus.publish("k", b"{}", content_type="application/x-custom")
            got = [await sub.get(timeout=5) for _ in range(4)]
            assert got[0].body == b"raw" and got[0].content_type is None
            assert got[1].text() == "text" and got[1].content_type.startswith("text/plain")
            assert got[2].json() == {"a": [1, 2]} and got[2].content_type == "application/json"
            assert got[3].content_type == "application/x-custom"
            for msg in got:
                await msg.ack()


async def test_close_fails_what_is_unsettled_and_leaves_no_task(
    memory_broker: MemoryBroker,
) -> None:
    bus = aiobus.connect(memory_broker.url(), close_timeout=0.05)
    async with bus:
        memory_broker.hold_confirms()
        fut = bus.publish("k", b"x")
    with pytest.raises(aiobus.ConnectionClosed):
        await fut
    assert not other_tasks()
    memory_broker.release_confirms()
