"""Subscription.pause(): the inflow stops, what is buffered can still be read."""

from __future__ import annotations

import asyncio

import aiobus
from aiobus.memory_broker import MemoryBroker


async def test_a_paused_subscription_takes_nothing_more(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q", prefetch=3) as sub:
            await asyncio.gather(*(bus.publish("k", str(i)) for i in range(10)))
            first = await sub.get(timeout=5)
            await first.ack()  # room for one more: the broker sends it
            assert sub.room == 0
            sub.pause()
            assert sub.paused
            assert sub.buffered == 3
            got = [first.text()]
            for _ in range(3):  # the buffered ones are still there
                msg = await sub.get(timeout=5)
                got.append(msg.text())
                await msg.ack()
            assert got == ["0", "1", "2", "3"]
            assert sub.room == 0  # still nothing more, though the buffer is empty
            assert len(memory_broker.queues["q"].messages) == 6


async def test_a_paused_no_ack_subscription_is_not_refilled(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        async with bus.subscribe("k", queue="q", prefetch=2, no_ack=True) as sub:
            await asyncio.gather(*(bus.publish("k", str(i)) for i in range(5)))
            sub.pause()
            assert [(await sub.get(timeout=5)).text() for _ in range(2)] == ["0", "1"]
            assert len(memory_broker.queues["q"].messages) == 3
