"""The service layer's promises, on every transport.

What a protocol cannot do is asserted as its typed error by capability, never skipped:
request/reply without a correlation id (MQTT 3.1.1) is ``NotSupported``; dead-lettering
without a topic where the protocol has no reject (MQTT) is a ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import aiobus
from aiobus import DeadLetter, Delivery, Requeue, Retry, Service
from tests.conformance.conftest import Target
from tests.helpers import Attempts, other_tasks


def service_tasks() -> set[asyncio.Task[object]]:
    """Tasks running code of the service layer (an adapter may keep its own, e.g. a channel
    reader, for the connection's life: those are the connection's business)."""
    found = set()
    for task in other_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "aiobus/service/" in code.co_filename.replace("\\", "/"):
            found.add(task)
    return found


def service(target: Target, bus: aiobus.Connection, **options: Any) -> Service:
    """A Service that opens its subscriptions the way this target needs (AMQP 1.0 consumes
    from queues the test declares) and names its private topics as the target addresses."""
    if target.subscriber is not None:
        options.setdefault("subscribe", functools.partial(target.subscribe, bus))
        options.setdefault("address", target.topic)
    return Service(bus, **options)


async def nothing_left(target: Target, bus: aiobus.Connection, topic: str, queue: str) -> None:
    """A sentinel published now is the first thing the queue gives: nothing was left in it
    (and nothing unacknowledged came back to it)."""
    async with target.subscribe(bus, topic, queue=queue) as sub:
        await bus.publish(topic, b"sentinel")
        first = await sub.get(timeout=10)
        await first.ack()
        assert first.body == b"sentinel"


@pytest.mark.parametrize("policy", ["requeue", "retry"])
async def test_fails_twice_then_succeeds_is_retried_and_acked_once(
    target: Target, acks: list[Delivery], policy: str
) -> None:
    topic = target.topic(target.unique(), "jobs")
    queue = target.unique("q")
    dead = target.topic(target.unique(), "dead")
    async with aiobus.connect(target.url, **target.options) as bus:
        attempts = Attempts()
        svc = service(target, bus, middleware=[attempts], dead_letter_topic=dead)
        on_error = (
            Requeue(max_attempts=3) if policy == "requeue" else Retry(max_attempts=3, delay=0.01)
        )
        done = asyncio.Event()
        bodies: list[bytes] = []

        @svc.subscriber(topic, queue=queue, on_error=on_error)
        async def job(body: bytes) -> None:
            bodies.append(body)
            if len(bodies) < 3:
                raise RuntimeError("flaky")
            done.set()

        async with svc.serving():
            await bus.publish(topic, b"payload")
            async with asyncio.timeout(20):
                await done.wait()
        assert bodies == [b"payload"] * 3
        assert attempts.seen == [1, 2, 3]
        stats = svc.stats("job")
        assert (stats.succeeded, stats.failed, stats.dead_lettered) == (1, 2, 0)
        final = [d for d in acks if d.body == b"payload"]
        assert len(final) == stats.retried + 1  # each copy acked once; a requeue is no ack
        await nothing_left(target, bus, topic, queue)


async def test_always_failing_is_dead_lettered_after_the_bound_with_the_reason(
    target: Target,
) -> None:
    topic = target.topic(target.unique(), "jobs")
    queue = target.unique("q")
    dead = target.topic(target.unique(), "dead")
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus)
        calls = 0

        @svc.subscriber(
            topic, queue=queue, on_error=Requeue(max_attempts=3, dead_letter=DeadLetter(dead))
        )
        async def job(body: bytes) -> None:
            nonlocal calls
            calls += 1
            raise ValueError("bad sku 42")

        async with target.subscribe(bus, dead) as letters, svc.serving():
            await bus.publish(topic, b"poison")
            letter = await letters.get(timeout=20)
            await letter.ack()
        meta = svc.carrier.unwrap(letter)
        assert letter.body == b"poison"
        assert calls == 3
        assert meta["x-aiobus-reason"] == "gave up after 3 attempt(s) (ValueError: bad sku 42)"
        assert meta["x-aiobus-error-type"] == "ValueError"
        assert meta["x-aiobus-topic"] == topic
        assert svc.stats("job").dead_lettered == 1
        await nothing_left(target, bus, topic, queue)


async def test_dead_lettering_without_a_topic_needs_a_reject(target: Target) -> None:
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus)

        async def job(body: bytes) -> None:
            pass

        topic = target.topic(target.unique(), "jobs")
        if bus.capabilities.nack:
            svc.add_subscriber(job, topic, on_error=DeadLetter())
        else:
            with pytest.raises(aiobus.ConfigError, match="has no reject"):
                svc.add_subscriber(job, topic, on_error=DeadLetter())


async def test_request_reply_or_not_supported(target: Target) -> None:
    topic = target.topic(target.unique(), "rpc")
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus, dead_letter_topic=target.topic(target.unique(), "dead"))

        @svc.subscriber(topic, on_error=DeadLetter())
        async def add(body: dict[str, Any]) -> Any:
            if "fail" in body:
                raise LookupError("no such thing")
            return body["a"] + body["b"]

        async with svc.serving():
            if not bus.capabilities.correlation:
                with pytest.raises(aiobus.NotSupported):
                    await svc.request(topic, {"a": 1, "b": 2}, timeout=5)
                return
            assert await svc.request(topic, {"a": 1, "b": 2}, timeout=10) == 3
            with pytest.raises(aiobus.RemoteError) as info:
                await svc.request(topic, {"fail": True}, timeout=10)
            assert info.value.error_type == "LookupError"


async def test_a_request_nobody_answers_times_out(target: Target) -> None:
    topic = target.topic(target.unique(), "silent")
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus)
        async with target.subscribe(bus, topic) as silent, svc.serving():
            if not bus.capabilities.correlation:
                with pytest.raises(aiobus.NotSupported):
                    await svc.request(topic, b"x", timeout=1)
                return
            with pytest.raises(aiobus.RequestTimeout):
                await svc.request(topic, b"x", timeout=0.5)
            await (await silent.get(timeout=10)).ack()


async def test_shutdown_under_load_loses_nothing_and_leaves_nothing_unacked(
    target: Target,
) -> None:
    topic = target.topic(target.unique(), "load")
    queue = target.unique("q")
    total = 100
    handled: list[int] = []
    if not target.can_share:
        # The second run takes over the first one's queue: that needs a shared queue, and a
        # broker without one must say so with a typed error, not lose messages quietly.
        async with aiobus.connect(target.url, **target.options) as bus:
            svc = Service(bus, dead_letter_topic=target.topic("dead", "x"))

            @svc.subscriber(topic, queue=queue)
            async def unshared(body: str) -> None:
                pass

            with pytest.raises((aiobus.SubscriptionError, aiobus.NotSupported)):
                async with asyncio.timeout(20), svc.serving():
                    pass
        return
    async with aiobus.connect(target.url, **target.options) as bus:
        busy = asyncio.Event()
        gate = asyncio.Event()
        stop = asyncio.Event()
        svc = service(target, bus, drain_timeout=10, dead_letter_topic=target.topic("dead", "x"))

        @svc.subscriber(topic, queue=queue, concurrency=4, prefetch=10)
        async def job(body: str) -> None:
            if len(handled) >= 20:
                busy.set()
                await gate.wait()
            handled.append(int(body))

        started = asyncio.Event()

        async def run() -> None:
            async with svc.serving():
                started.set()
                await stop.wait()

        first = asyncio.create_task(run())
        async with asyncio.timeout(20):
            await started.wait()  # subscribed: MQTT keeps nothing for a group with no member
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(total)))
            await busy.wait()
        stop.set()
        gate.set()  # the drain lets handlers in progress finish: they are acked
        async with asyncio.timeout(30):
            await first
        assert len(set(handled)) == len(handled)  # nothing handled twice in the first run
        assert not service_tasks()

        # A second run takes the rest: every message handled, none lost.
        again = service(target, bus, dead_letter_topic=target.topic("dead", "x"))
        done = asyncio.Event()

        @again.subscriber(topic, queue=queue, concurrency=4, prefetch=10)
        async def rest(body: str) -> None:
            handled.append(int(body))
            if set(handled) == set(range(total)):
                done.set()

        if set(handled) != set(range(total)):
            async with again.serving():
                async with asyncio.timeout(30):
                    await done.wait()
        assert set(handled) == set(range(total))
        await nothing_left(target, bus, topic, queue)


async def test_no_task_outlives_serving(target: Target) -> None:
    topic = target.topic(target.unique(), "tasks")
    async with aiobus.connect(target.url, **target.options) as bus:
        svc = service(target, bus, dead_letter_topic=target.topic(target.unique(), "dead"))
        done = asyncio.Event()

        @svc.subscriber(
            topic,
            queue=target.unique("q"),
            key=lambda d: bytes(d.body[:1]),
            concurrency=2,
            on_error=Retry(delay=60, max_attempts=2),
        )
        async def job(body: bytes) -> None:
            if body == b"fail":
                raise RuntimeError("scheduled for later")
            done.set()

        async with svc.serving():
            await bus.publish(topic, b"fail")
            await bus.publish(topic, b"ok")
            async with asyncio.timeout(20):
                await done.wait()
        assert not service_tasks()
