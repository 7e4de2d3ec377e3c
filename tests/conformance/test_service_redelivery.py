"""Bounded redelivery, dead letters that land, and metadata nobody else can forge: the service
layer's promises from issue 16, on every target.

Messages here come from a producer that sets no message id (as Go, Java and AMQP 1.0 clients
commonly do): on memory a message routed by the broker itself, on MQTT a publish without the
message-id user property, on RabbitMQ a plain aio-pika publish (aiormq stamps a random id on
it; the service's bound uses no message id, so that changes nothing). The attempt bound must hold
without one, and with two replicas sharing the queue (where the broker can share one).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import aio_pika
import pytest

import aiobus
from aiobus import DeadLetter, Delivery, Requeue, Service
from aiobus.memory_broker import MemoryBroker, Stored
from aiobus.service.deadletters import can_hold_queue, queue_for
from tests.conformance.conftest import Target
from tests.conformance.targets_amqp10 import PREFIX as AMQP10_PREFIX
from tests.helpers import Attempts

_FAST_BACKOFF = (0.02, 0.1)


def service(target: Target, bus: aiobus.Connection, **options: Any) -> Service:
    if target.subscriber is not None:
        options.setdefault("subscribe", functools.partial(target.subscribe, bus))
        options.setdefault("address", target.topic)
    return Service(bus, **options)


async def publish_anonymously(
    request: pytest.FixtureRequest,
    target: Target,
    bus: aiobus.Connection,
    topic: str,
    body: bytes,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish as a foreign producer would: no message id, nothing aiobus adds."""
    if bus.protocol == "memory":
        broker = MemoryBroker.get(bus.settings.path)
        assert broker.route(Stored(topic, body, headers=headers)) == 1
        return
    if bus.protocol in ("amqp091", "amqp10"):
        node = request.getfixturevalue("rabbitmq")
        connection = await aio_pika.connect(node.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("amq.topic")
            await exchange.publish(
                aio_pika.Message(body, headers=headers),
                routing_key=topic.removeprefix(AMQP10_PREFIX),
                mandatory=True,
            )
        return
    # MQTT: an empty message id is not sent (MQTT has no such field; aiobus's user property).
    await bus.publish(topic, body, headers=headers, message_id="")


class DeadLetterPublishes(aiobus.Middleware):
    """Counts the tries of dead-letter publishes and their outcomes."""

    def __init__(self) -> None:
        self.tries = 0
        self.landed = 0
        self.changed = asyncio.Event()

    async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Any:
        if call.kind != "dead_letter":
            return await call_next(call)
        self.tries += 1
        try:
            confirm = await call_next(call)
        finally:
            self.changed.set()
        self.landed += 1
        return confirm

    async def until(self, condition: Any, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def test_always_failing_is_dead_lettered_after_exactly_max_attempts_across_replicas(
    request: pytest.FixtureRequest, target: Target
) -> None:
    topic = target.topic(target.unique(), "jobs")
    queue = target.unique("q")
    dead = target.topic(target.unique(), "dead")
    replicas = 2 if target.can_share else 1  # else each would get its own copy
    attempts = Attempts()
    calls = 0
    ids: list[str | None] = []
    async with (
        aiobus.connect(target.url, **target.options) as first,
        aiobus.connect(target.url, **target.options) as second,
    ):
        services = []
        for bus in (first, second)[:replicas]:
            svc = service(target, bus, middleware=[attempts], dead_letter_topic=dead)

            @svc.subscriber(topic, queue=queue, on_error=Requeue(max_attempts=3), name="job")
            async def job(msg: Delivery) -> None:
                nonlocal calls
                calls += 1
                ids.append(msg.message_id)
                raise ValueError("never works")

            services.append(svc)
        async with target.subscribe(first, dead) as letters:
            async with services[0].serving():
                if replicas == 2:
                    async with services[1].serving():
                        await publish_anonymously(request, target, first, topic, b"poison")
                        letter = await letters.get(timeout=30)
                else:
                    await publish_anonymously(request, target, first, topic, b"poison")
                    letter = await letters.get(timeout=30)
                await letter.ack()
            # Nothing else was dead-lettered, and nothing is handled any more.
            await first.publish(dead, b"sentinel")
            after = await letters.get(timeout=10)
            await after.ack()
            assert after.body == b"sentinel"
    assert calls == 3
    assert attempts.seen == [1, 2, 3]
    if target.syntax == "mqtt" or target.name.startswith("memory"):
        # No message id on the wire. (Over AMQP, aiormq stamps one on every publish, so an
        # aio-pika producer cannot leave it out; the service counts without it all the same.)
        assert not ids[0]
    meta = services[0].carrier.unwrap(letter)
    assert letter.body == b"poison"
    assert meta["x-aiobus-attempt"] == "3"
    assert meta["x-aiobus-reason"] == "gave up after 3 attempt(s) (ValueError: never works)"
    assert meta["x-aiobus-first-error"] == "ValueError: never works"
    assert meta["x-aiobus-last-error"] == "ValueError: never works"
    assert meta["x-aiobus-subscriber"] == "job"
    assert sum(s.stats("job").dead_lettered for s in services) == 1


async def test_forged_service_metadata_has_no_effect(
    request: pytest.FixtureRequest, target: Target
) -> None:
    topic = target.topic(target.unique(), "jobs")
    elsewhere = target.topic(target.unique(), "elsewhere")
    queue = target.unique("q")
    dead = target.topic(target.unique(), "dead")
    forged_meta = {"x-aiobus-attempt": "99", "x-aiobus-topic": elsewhere}
    async with aiobus.connect(target.url, **target.options) as bus:
        if bus.capabilities.headers:
            body, headers = b"payload", dict(forged_meta)
        else:  # MQTT 3.1.1: the same metadata, as the service's own envelope would carry it
            body = b"aiobus-envelope/1\n" + json.dumps(forged_meta).encode() + b"\npayload"
            headers = None
        attempts = Attempts()
        svc = service(target, bus, middleware=[attempts], dead_letter_topic=dead)
        seen: list[tuple[str, bytes]] = []
        done = asyncio.Event()

        @svc.subscriber(topic, queue=queue, on_error=Requeue(max_attempts=2))
        async def job(msg: Delivery) -> None:
            seen.append((msg.topic, msg.body))
            if len(seen) == 1:
                raise RuntimeError("once")
            done.set()

        async with svc.serving():
            await publish_anonymously(request, target, bus, topic, body, headers)
            async with asyncio.timeout(30):
                await done.wait()
    # Attempt 1 and 2, not 100 (no dead letter), on the topic it was published to, with the
    # body as published: the forged metadata changed nothing.
    assert attempts.seen == [1, 2]
    topics = [t for t, _ in seen]
    assert elsewhere not in topics
    if not target.topic_prefix:  # AMQP 1.0 names the queue where a producer sets no `to`
        assert topics == [topic, topic]
    assert [b for _, b in seen] == [body, body]
    assert svc.stats("job").dead_lettered == 0


async def test_a_dead_letter_keeps_the_message_and_lands_in_a_queue_of_its_own(
    target: Target,
) -> None:
    topic = target.topic(target.unique(), "jobs")
    dead = target.topic(target.unique(), "dead")
    async with aiobus.connect(target.url, **target.options) as bus:
        publishes = DeadLetterPublishes()
        svc = service(target, bus, middleware=[publishes], dead_letter_topic=dead)

        @svc.subscriber(topic, on_error=DeadLetter(), name="picky")
        async def picky(body: bytes) -> None:
            raise LookupError("no such sku")

        holds = can_hold_queue(bus)
        headers = {"tenant": "t1"} if bus.capabilities.headers else None
        message_id = "order-7" if bus.capabilities.correlation else None
        if holds:
            # Nobody listens on the dead-letter topic: the queue the service declared keeps it.
            async with svc.serving():
                await bus.publish(topic, b"order", headers=headers, message_id=message_id)
                await publishes.until(lambda: publishes.landed == 1)
            name = queue_for("aiobus-dead-{topic}", dead)
            async with bus.subscribe(dead, queue=name) as kept:
                letter = await kept.get(timeout=10)
                await letter.ack()
        else:
            async with target.subscribe(bus, dead) as letters, svc.serving():
                await bus.publish(topic, b"order", headers=headers, message_id=message_id)
                letter = await letters.get(timeout=20)
                await letter.ack()
    meta = svc.carrier.unwrap(letter)
    assert letter.body == b"order"
    if headers is not None:
        assert letter.headers["tenant"] == "t1"
    if message_id is not None:
        assert letter.message_id == "order-7"
    assert meta["x-aiobus-attempt"] == "1"
    assert meta["x-aiobus-first-error"] == "LookupError: no such sku"
    assert meta["x-aiobus-last-error"] == "LookupError: no such sku"
    assert meta["x-aiobus-subscriber"] == "picky"
    assert meta["x-aiobus-topic"] == topic


async def test_an_unroutable_dead_letter_waits_with_backoff_then_lands(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    topic = target.topic(target.unique(), "jobs")
    dead = target.topic(target.unique(), "dead")
    async with aiobus.connect(target.url, **target.options) as bus:
        if not bus.capabilities.unroutable:
            # MQTT cannot tell a publish nobody receives: nothing to retry, nothing to detect.
            assert target.can_unroutable is False
            return
        publishes = DeadLetterPublishes()
        svc = service(
            target,
            bus,
            middleware=[publishes],
            dead_letter_topic=dead,
            dead_letter_queue=None,  # nothing behind the dead-letter topic
            dead_letter_backoff=_FAST_BACKOFF,
        )
        calls = 0

        @svc.subscriber(topic, on_error=DeadLetter(), name="doomed")
        async def doomed(body: bytes) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("doomed")

        caplog.set_level(logging.DEBUG, logger="aiobus.service")
        async with svc.serving():
            await bus.publish(topic, b"x")
            await publishes.until(lambda: publishes.tries >= 4)
            # The original waits unsettled: handled once, not redelivered in a hot loop.
            assert calls == 1
            assert publishes.landed == 0
            async with target.subscribe(bus, dead) as letters:
                letter = await letters.get(timeout=20)
                await letter.ack()
            await publishes.until(lambda: publishes.landed == 1)
        assert calls == 1
        assert svc.stats("doomed").dead_lettered == 1
        assert letter.body == b"x"
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "could not dead-letter" in r.getMessage()
    ]
    assert len(warnings) == 1  # one per failure burst, not one per try


async def test_serving_warns_once_when_nothing_receives_the_dead_letter_topic(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    dead = target.topic(target.unique(), "dead")
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus, dead_letter_topic=dead, declare_dead_letter_queue=False)

        @svc.subscriber(target.topic(target.unique(), "jobs"), on_error=DeadLetter())
        async def job(body: bytes) -> None:
            pass

        @svc.subscriber(target.topic(target.unique(), "more"), on_error=DeadLetter())
        async def more(body: bytes) -> None:
            pass

        caplog.set_level(logging.WARNING, logger="aiobus.service")
        async with svc.serving():
            pass
        checks = can_hold_queue(bus)
    missing = [r for r in caplog.records if "nothing receives the dead-letter" in r.getMessage()]
    # Where the service can check (AMQP 0-9-1 passive declare, memory), one WARNING per topic;
    # elsewhere it cannot tell and says nothing.
    assert len(missing) == (1 if checks else 0)
