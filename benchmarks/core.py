"""The core's own ceiling on memory://: what aiobus costs per message before any broker.

Compared in the same run with the cheapest thing that could stand in for a confirm: plain
futures, each with a deadline timer, resolved and gathered.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc

import aiobus
from aiobus.memory_broker import MemoryBroker

from .table import Row, print_table, rate

BODY = b"x" * 256


async def plain_futures(count: int) -> None:
    """The floor: a future plus a timer each, resolved a loop turn later, gathered."""
    loop = asyncio.get_running_loop()
    futures = []
    for _ in range(count):
        fut = loop.create_future()
        timer = loop.call_at(loop.time() + 30, lambda: None)
        futures.append((fut, timer))
    for fut, timer in futures:
        timer.cancel()
        fut.set_result(None)
    await asyncio.gather(*(f for f, _ in futures))


async def confirmed_publishes(url: str, count: int) -> None:
    async with aiobus.connect(url, max_buffered=count + 1) as bus:
        await asyncio.gather(*[bus.publish("bench.k", BODY) for _ in range(count)])


async def publish_to_receive(url: str, count: int) -> None:
    async with aiobus.connect(url, max_buffered=count + 1) as bus:
        async with bus.subscribe("bench.k", prefetch=1000) as sub:

            async def consume() -> None:
                n = 0
                async for msg in sub:
                    await msg.ack()
                    n += 1
                    if n == count:
                        return

            consumer = asyncio.create_task(consume())
            await asyncio.gather(*[bus.publish("bench.k", BODY) for _ in range(count)])
            await consumer


async def peak_memory_in_flight(url: str, count: int) -> float:
    """MiB allocated by aiobus while ``count`` messages wait for their confirms."""
    broker = MemoryBroker.get(url.removeprefix("memory://"))
    async with aiobus.connect(url, max_buffered=count + 1, max_in_flight=count) as bus:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        broker.hold_confirms()
        futures = [bus.publish("bench.k", BODY) for _ in range(count)]
        await broker.until(lambda: broker.published == count, timeout=60)
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        broker.release_confirms()
        await asyncio.gather(*futures)
    return peak / (1024 * 1024)


async def run(args: argparse.Namespace) -> None:
    count = args.count or 100_000
    rounds = args.rounds
    floor = Row("plain futures + timer (floor)", "futures/s")
    pub = Row("aiobus confirmed publish", "msg/s")
    e2e = Row("aiobus publish -> receive + ack", "msg/s")
    for i in range(rounds):
        name = f"bench-{i}"
        url = f"memory://{name}"
        floor.samples.append(await rate(count, lambda: plain_futures(count)))
        pub.samples.append(await rate(count, lambda u=url: confirmed_publishes(u, count)))
        e2e.samples.append(await rate(count, lambda u=url: publish_to_receive(u, count)))
        MemoryBroker.drop(name)
    print_table(
        f"core on memory:// — {count:,} pipelined 256-byte messages, {rounds} rounds",
        [floor, pub, e2e],
        {
            "aiobus confirmed publish": "plain futures + timer (floor)",
            "aiobus publish -> receive + ack": "plain futures + timer (floor)",
        },
    )
    mib = await peak_memory_in_flight("memory://bench-mem", count)
    MemoryBroker.drop("bench-mem")
    print(
        f"peak memory with {count:,} messages in flight: {mib:.1f} MiB "
        f"({mib * 1024 * 1024 / count:.0f} bytes per message, tracemalloc)"
    )
