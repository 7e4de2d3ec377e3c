"""AMQP 1.0 limits on the private RabbitMQ 4 node: per-address senders are bounded (counted by
the broker), the max-message-size it announces on attach is kept, and what ``delivery_count``
reports after ``modified`` on each queue type."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
import aiobus.amqp1
from aiobus.amqp1 import exchange_address, queue_address
from tests.helpers import unique
from tests.integration.test_amqp10_rabbitmq import FAST, declare
from tests.integration.test_amqp10_senders import active_sessions

pytestmark = pytest.mark.rabbitmq

RABBITMQ_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # RabbitMQ 4's default max_message_size


async def broker_sessions(rabbitmq: Any, bus: aiobus.Connection) -> int:
    """The sessions RabbitMQ counts on this client's connection (its ``channels``)."""
    link: Any = bus._link
    port = link._sock.get_extra_info("sockname")[1]
    table = await asyncio.to_thread(rabbitmq.ctl, "list_connections", "name", "channels")
    for line in table.splitlines():
        name, _, channels = line.rpartition("\t")
        if name.startswith(f"127.0.0.1:{port} "):
            return int(channels)
    raise AssertionError(f"no connection from port {port} in {table!r}")


async def test_a_thousand_addresses_end_with_at_most_64_sessions(rabbitmq: Any) -> None:
    key = unique("many")
    async with aiobus.amqp1.connect(
        rabbitmq.amqp1_url, anonymous_relay="never", timeout=60, **FAST
    ) as bus:
        link: Any = bus._link
        most = 0

        def sample(_: object) -> None:
            nonlocal most
            most = max(most, link.sessions, active_sessions(bus))

        futures = []
        for i in range(1000):
            fut = bus.publish(exchange_address("amq.direct", f"{key}-{i}"), b"x", mandatory=False)
            fut.add_done_callback(sample)
            futures.append(fut)
        await asyncio.gather(*futures)
        assert most <= 64
        assert len(link._pool.open) <= 64
        assert await broker_sessions(rabbitmq, bus) <= 64
        # Still usable, in order, for the first addresses again.
        await bus.publish(exchange_address("amq.direct", f"{key}-0"), b"x", mandatory=False)


async def test_the_max_message_size_rabbitmq_announces_is_kept(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("size"))
    # aiobus's own limit set above the broker's: the broker's is the one that counts.
    async with aiobus.amqp1.connect(
        rabbitmq.amqp1_url, max_message_size=64 * 1024 * 1024, **FAST
    ) as bus:
        await bus.publish(queue_address(q), b"attached")
        with pytest.raises(aiobus.MessageTooLarge) as info:
            bus.publish(queue_address(q), bytes(RABBITMQ_MAX_MESSAGE_SIZE + 1))
        assert info.value.limit == RABBITMQ_MAX_MESSAGE_SIZE
        assert f"maximum of {RABBITMQ_MAX_MESSAGE_SIZE} bytes" in str(info.value)
        # Its body fits, the encoded message does not: it fails alone, never sent.
        with pytest.raises(aiobus.MessageTooLarge) as encoded:
            await bus.publish(queue_address(q), bytes(RABBITMQ_MAX_MESSAGE_SIZE - 10))
        assert encoded.value.limit == RABBITMQ_MAX_MESSAGE_SIZE
        await bus.publish(queue_address(q), b"after")
        async with bus.subscribe(queue_address(q)) as sub:
            got = [await sub.get(timeout=10) for _ in range(2)]
            assert [m.body for m in got] == [b"attached", b"after"]
            for msg in got:
                await msg.ack()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_delivery_count_after_modified_by_queue_type(rabbitmq: Any, queue_type: str) -> None:
    """Quorum queues count each ``modified`` (delivery-failed) redelivery in the header's
    delivery-count and not a ``released`` one; classic queues keep no count (it stays 0) and
    show a redelivery by ``first-acquirer`` false only."""
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    q = await declare(rabbitmq, unique(queue_type), **arguments)
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        await bus.publish(queue_address(q), b"x")
        async with bus.subscribe(queue_address(q)) as sub:
            seen = []
            for _ in range(3):
                msg = await sub.get(timeout=10)
                seen.append((msg.redelivered, msg.delivery_count))
                await msg.nack(requeue=True)
            msg = await sub.get(timeout=10)
            seen.append((msg.redelivered, msg.delivery_count))
            await aiobus.amqp1.release(msg)
            msg = await sub.get(timeout=10)
            seen.append((msg.redelivered, msg.delivery_count))
            await msg.ack()
    if queue_type == "quorum":
        assert seen == [(False, 0), (True, 1), (True, 2), (True, 3), (True, 3)]
    else:
        assert seen == [(False, 0), (True, 0), (True, 0), (True, 0), (True, 0)]
