"""The service on RabbitMQ quorum queues (0-9-1): the broker's delivery count bounds a
``Requeue`` across replicas, and a bound the queue's delivery limit cuts short is warned of."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import aio_pika
import pytest

import aiobus
from aiobus import Delivery, Requeue, Service
from aiobus.amqp import Queue
from tests.helpers import Attempts


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _publish_anonymously(url: str, topic: str, body: bytes) -> None:
    """A foreign producer: no message id."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("amq.topic")
        await exchange.publish(aio_pika.Message(body), routing_key=topic, mandatory=True)


async def test_quorum_queue_requeues_are_bounded_by_the_broker_count_across_replicas(
    rabbitmq: Any,
) -> None:
    topic = f"{_name('t')}.jobs"
    queue = _name("quorum")
    dead = f"{_name('t')}.dead"
    topology = [Queue(queue, queue_type="quorum")]
    attempts = Attempts()
    calls = 0
    async with (
        aiobus.amqp.connect(rabbitmq.amqp_url, topology=topology) as first,
        aiobus.amqp.connect(rabbitmq.amqp_url, topology=topology) as second,
    ):
        services = []
        for bus in (first, second):
            svc = Service(bus, middleware=[attempts], dead_letter_topic=dead)

            # prefetch 1 is fine: a declared quorum queue counts, so no retry queue is needed
            @svc.subscriber(topic, queue=queue, prefetch=1, on_error=Requeue(max_attempts=4))
            async def job(msg: Delivery) -> None:
                nonlocal calls
                calls += 1
                raise ValueError("never works")

            services.append(svc)
        assert all(s.subscribers["job"].queue == queue for s in services)
        async with first.subscribe(dead) as letters:
            async with services[0].serving(), services[1].serving():
                await _publish_anonymously(rabbitmq.amqp_url, topic, b"poison")
                letter = await letters.get(timeout=30)
                await letter.ack()
            await first.publish(dead, b"sentinel")
            after = await letters.get(timeout=10)
            await after.ack()
    assert after.body == b"sentinel"
    assert calls == 4
    assert attempts.seen == [1, 2, 3, 4]
    assert sum(s.stats("job").requeued for s in services) == 3  # the broker kept the count
    assert sum(s.stats("job").retried for s in services) == 0
    assert letter.headers["x-aiobus-attempt"] == "4"


@pytest.mark.parametrize(
    ("arguments", "max_attempts", "warned"),
    [({}, 25, True), ({}, 20, False), ({"x-delivery-limit": 50}, 25, False)],
)
async def test_max_attempts_beyond_a_quorum_delivery_limit_is_warned_at_start(
    rabbitmq: Any,
    caplog: pytest.LogCaptureFixture,
    arguments: dict[str, Any],
    max_attempts: int,
    warned: bool,
) -> None:
    queue = _name("quorum")
    topology = [Queue(queue, queue_type="quorum", arguments=arguments)]
    async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=topology) as bus:
        svc = Service(bus, dead_letter_topic=f"{_name('t')}.dead")

        @svc.subscriber(f"{_name('t')}.jobs", queue=queue, on_error=Requeue(max_attempts))
        async def job(body: bytes) -> None:
            pass

        caplog.set_level(logging.WARNING, logger="aiobus.service")
        async with svc.serving():
            pass
    limits = [r for r in caplog.records if "delivery limit" in r.getMessage()]
    assert len(limits) == (1 if warned else 0)


async def test_an_existing_quorum_dead_letter_queue_is_bound_not_redeclared(
    rabbitmq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"{_name('t')}.dead"
    topic = f"{_name('t')}.jobs"
    mine = _name("my-dead")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url, topology=[Queue(mine, queue_type="quorum")]
    ) as bus:
        landed = asyncio.Event()

        class Landed(aiobus.Middleware):
            async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Any:
                confirm = await call_next(call)
                if call.kind == "dead_letter":
                    landed.set()
                return confirm

        # The dead-letter queue is yours, a quorum queue: a classic declaration would clash.
        svc = Service(bus, middleware=[Landed()], dead_letter_topic=dead, dead_letter_queue=mine)

        @svc.subscriber(topic, on_error=aiobus.DeadLetter(), name="picky")
        async def picky(body: bytes) -> None:
            raise LookupError("no")

        caplog.set_level(logging.WARNING, logger="aiobus.service")
        async with svc.serving():
            await bus.publish(topic, b"order")
            async with asyncio.timeout(20):
                await landed.wait()  # routed by the service's binding: nobody consumes yet
        async with bus.subscribe(dead, queue=mine) as kept:
            letter = await kept.get(timeout=20)
            await letter.ack()
    assert letter.body == b"order"
    assert letter.headers["x-aiobus-subscriber"] == "picky"
    refusals = ("could not declare dead-letter", "could not dead-letter", "nothing receives")
    assert not [r for r in caplog.records if any(t in r.getMessage() for t in refusals)]
