"""AMQP 0-9-1 on RabbitMQ 4: aiobus next to aio-pika and raw aiormq, same broker, same run.

Confirmed persistent publishes of 256-byte bodies to a durable queue, and consuming them with
a manual ack each (prefetch 1,000). Rounds are interleaved so machine noise hits every form.

    python -m benchmarks amqp091 [--count 50000] [--rounds 3] [--url amqp://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aio_pika
import aiormq
from pamqp import commands as spec

import aiobus

from .table import Row, print_table, rate

BODY = b"x" * 256
QUEUE = "aiobus-bench"
CHUNK = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="broker (default: a private RabbitMQ 4)")


@contextlib.contextmanager
def broker(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.harness.rabbitmq import RabbitMQNode

    node = RabbitMQNode()
    node.start()
    try:
        yield node.amqp_url
    finally:
        node.close()


async def reset_queue(url: str) -> None:
    conn = await aiormq.connect(url)
    try:
        channel = await conn.channel()
        await channel.queue_declare(QUEUE, durable=True)
        await channel.queue_purge(QUEUE)
    finally:
        await conn.close()


def props() -> spec.Basic.Properties:
    return spec.Basic.Properties(delivery_mode=2)


async def aiormq_gather(url: str, count: int) -> None:
    conn = await aiormq.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        for start in range(0, count, CHUNK):
            await asyncio.gather(
                *(
                    channel.basic_publish(BODY, routing_key=QUEUE, properties=props())
                    for _ in range(min(CHUNK, count - start))
                )
            )
    finally:
        await conn.close()


async def aio_pika_gather(url: str, count: int) -> None:
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        for start in range(0, count, CHUNK):
            await asyncio.gather(
                *(
                    exchange.publish(aio_pika.Message(BODY, delivery_mode=2), QUEUE)
                    for _ in range(min(CHUNK, count - start))
                )
            )


async def aio_pika_await_each(url: str, count: int) -> None:
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        for _ in range(count):
            await exchange.publish(aio_pika.Message(BODY, delivery_mode=2), QUEUE)


async def aiobus_pipelined(url: str, count: int) -> None:
    async with aiobus.connect(url, max_buffered=count + 1) as bus:
        await asyncio.gather(*[bus.publish(QUEUE, BODY, exchange="") for _ in range(count)])


async def aiobus_many_tasks(url: str, count: int, tasks: int = 256) -> None:
    """What users write: many tasks, each a plain ``await bus.publish(...)``."""
    async with aiobus.connect(url) as bus:
        per_task = count // tasks

        async def publisher() -> None:
            for _ in range(per_task):
                await bus.publish(QUEUE, BODY, exchange="")

        await asyncio.gather(*(publisher() for _ in range(tasks)))


async def aio_pika_consume(url: str, count: int) -> None:
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(QUEUE, durable=True)
        seen = 0
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                seen += 1
                if seen == count:
                    break


async def aiobus_consume(url: str, count: int) -> None:
    async with aiobus.connect(url) as bus:
        async with bus.subscribe("", queue=QUEUE, prefetch=1000) as sub:
            seen = 0
            async for msg in sub:
                await msg.ack()
                seen += 1
                if seen == count:
                    break


async def run(args: argparse.Namespace) -> None:
    count = args.count or 50_000
    slow_count = max(1000, count // 10)
    rows = {
        "aiormq gather 1,000 (raw)": Row("aiormq gather 1,000 (raw)", "msg/s"),
        "aio-pika gather 1,000": Row("aio-pika gather 1,000", "msg/s"),
        "aio-pika await each": Row("aio-pika await each", "msg/s"),
        "aiobus pipelined": Row("aiobus pipelined", "msg/s"),
        "aiobus 256 tasks, await each": Row("aiobus 256 tasks, await each", "msg/s"),
        "aio-pika consume + ack": Row("aio-pika consume + ack", "msg/s"),
        "aiobus consume + ack": Row("aiobus consume + ack", "msg/s"),
    }
    publishers: list[tuple[str, Callable[[str, int], Awaitable[Any]], int]] = [
        ("aiormq gather 1,000 (raw)", aiormq_gather, count),
        ("aio-pika gather 1,000", aio_pika_gather, count),
        ("aio-pika await each", aio_pika_await_each, slow_count),
        ("aiobus pipelined", aiobus_pipelined, count),
        ("aiobus 256 tasks, await each", aiobus_many_tasks, count),
    ]
    consumers: list[tuple[str, Callable[[str, int], Awaitable[Any]]]] = [
        ("aio-pika consume + ack", aio_pika_consume),
        ("aiobus consume + ack", aiobus_consume),
    ]
    with broker(args.url) as url:
        for _ in range(args.rounds):
            for name, form, n in publishers:
                await reset_queue(url)
                rows[name].samples.append(await rate(n, lambda f=form, n=n: f(url, n)))
            for name, form in consumers:
                await reset_queue(url)
                await aiormq_gather(url, count)
                rows[name].samples.append(await rate(count, lambda f=form: f(url, count)))
            await reset_queue(url)
    print_table(
        f"AMQP 0-9-1, RabbitMQ 4, confirmed persistent 256-byte messages, {count:,} per run "
        f"({slow_count:,} for await-each), {args.rounds} interleaved rounds",
        list(rows.values()),
        {
            "aio-pika gather 1,000": "aiormq gather 1,000 (raw)",
            "aio-pika await each": "aiormq gather 1,000 (raw)",
            "aiobus pipelined": "aiormq gather 1,000 (raw)",
            "aiobus 256 tasks, await each": "aiormq gather 1,000 (raw)",
            "aiobus consume + ack": "aio-pika consume + ack",
        },
    )
