"""AMQP 1.0 inbound poison fails alone (issue 14): a message aiobus cannot decode is settled
and reported, the link lives on, and the good messages behind it are delivered and acked.

The poison is sent by another client (proton's BlockingConnection, in a thread): a creation
time of 10^15 ms (milliseconds written where seconds were meant: now read as no timestamp)
and an amqp-value body of lists nested 100 levels deep (over aiobus's 64: rejected).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import proton
import proton.utils
import pytest

import aiobus
import aiobus.amqp1
from aiobus.amqp1 import queue_address
from aiobus.events import Event
from aiobus.transports import amqp10_codec as codec
from tests.helpers import unique

pytestmark = pytest.mark.rabbitmq

FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "connect_timeout": 15, "close_timeout": 3}
GOOD = [b"good-1", b"good-2", b"good-3"]


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _send_raw(url: str, address: str, messages: list[proton.Message]) -> None:
    """Send as another client would: proton's own blocking API, not aiobus."""
    connection = proton.utils.BlockingConnection(
        url.replace("amqp1://", "amqp://"), allowed_mechs="PLAIN", allow_insecure_mechs=True
    )
    try:
        sender = connection.create_sender(address)
        for message in messages:
            sender.send(message)  # waits for the broker's accepted
    finally:
        connection.close()


async def _declare(rabbitmq: Any, queue_type: str) -> tuple[str, str]:
    """A queue that dead-letters what is rejected into a queue of its own."""
    name = unique(f"poison-{queue_type}")
    dead = f"{name}-dead"
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(dead, durable=True)
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": queue_type,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
    return name, dead


async def _dead_lettered(
    rabbitmq: Any, dead: str, timeout: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    """The one message dead-lettered into ``dead`` (waits for it); none may follow."""
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(dead)
        async with asyncio.timeout(timeout), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                break
        remaining = await channel.declare_queue(dead, passive=True)
        assert remaining.declaration_result.message_count == 0
    return message


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_poison_message_is_rejected_and_the_link_lives_on(
    rabbitmq: Any, queue_type: str
) -> None:
    q, dead = await _declare(rabbitmq, queue_type)
    address = queue_address(q)
    future = proton.Message(body=b"future", inferred=True)
    future.creation_time = 10**15 / 1000  # 10^15 ms: year ~33658, out of datetime's range
    deep = proton.Message(body=_nested(100))
    goods = [proton.Message(body=body, inferred=True) for body in GOOD]
    await asyncio.to_thread(_send_raw, rabbitmq.amqp1_url, address, [future, deep, *goods])

    seen: list[Event] = []
    undecodable = asyncio.Event()
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        events = bus.events()

        async def watch() -> None:
            async for event in events:
                seen.append(event)
                if event.kind == "delivery_undecodable":
                    undecodable.set()

        watcher = asyncio.create_task(watch())
        try:
            async with bus.subscribe(address) as sub:
                first = await sub.get(timeout=10)
                assert first.body == b"future"
                assert first.timestamp is None  # out of range: absent, not a crash
                await first.ack()
                for body in GOOD:
                    msg = await sub.get(timeout=10)
                    assert msg.body == body
                    # What RabbitMQ delivers is read by the fast path (kept for its speed).
                    assert codec.decode_fast(msg.raw.data)["body"] == body
                    assert not msg.redelivered and msg.delivery_count == 0
                    await msg.ack()
                async with asyncio.timeout(10):
                    await undecodable.wait()
        finally:
            await events.aclose()
            await watcher

    kinds = [event.kind for event in seen]
    assert "link_lost" not in kinds, seen
    [report] = [event for event in seen if event.kind == "delivery_undecodable"]
    assert address in report.reason and "rejected" in report.reason
    assert "deeper than 64 levels" in report.reason
    assert report.error is not None

    # Rejected: the broker dead-lettered it once; nothing is left in the queue.
    dead_letter = await _dead_lettered(rabbitmq, dead)
    assert dead_letter.body.startswith(b"\x00\x53\x77\xd0")  # the nested amqp-value
    headers = dead_letter.headers
    assert headers["x-first-death-reason"] == "rejected"
    deaths = headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1
    death = deaths[0]
    assert isinstance(death, dict) and death["count"] == 1  # delivered once, not redelivered
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        left = await channel.declare_queue(q, passive=True)
        assert left.declaration_result.message_count == 0
