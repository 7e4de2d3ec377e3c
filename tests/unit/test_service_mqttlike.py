"""The service layer where the protocol has no nack, no headers, no delivery count and no
correlation id (MQTT 3.1.1), with a memory-broker double that enforces exactly that."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

import aiobus
from aiobus import DeadLetter, Delivery, Requeue, Retry, Service
from aiobus.connection import Connection
from aiobus.errors import ConfigError
from aiobus.memory_broker import MemoryBroker
from aiobus.publishing import Outgoing
from aiobus.transports.base import (
    CancelReason,
    Capabilities,
    Consumer,
    DeliverySink,
    SubscriptionSpec,
)
from aiobus.transports.memory import MemoryLink
from aiobus.url import Settings, parse
from tests.helpers import Attempts


class _Mqtt311Sink:
    """Strips what MQTT 3.1.1 cannot carry before the application sees a delivery."""

    def __init__(self, sink: DeliverySink) -> None:
        self._sink = sink
        self.capacity = sink.capacity

    def push(self, delivery: Delivery) -> None:
        delivery.headers = {}
        delivery.delivery_count = None
        delivery.content_type = None
        delivery.message_id = None
        delivery.correlation_id = None
        delivery.reply_to = None
        self._sink.push(delivery)

    @property
    def room(self) -> int:
        return self._sink.room

    def on_space(self, callback: Callable[[], None] | None) -> None:
        self._sink.on_space(callback)


class Mqtt311Link(MemoryLink):
    protocol: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(
        nack=False,
        unroutable=False,
        headers=False,
        priority=False,
        ttl=False,
        retain=True,
        qos=True,
        shared_queue=True,
        delivery_count=False,
        correlation=False,
    )

    @classmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        super().check_publish(settings, msg)
        if msg.headers:
            raise ConfigError("MQTT 3.1.1 has no headers")
        if msg.correlation_id is not None or msg.reply_to is not None:
            raise ConfigError("MQTT 3.1.1 has no correlation id or response topic")
        if msg.content_type is not None:
            raise ConfigError("MQTT 3.1.1 has no content type")

    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        consumer = await super().attach(spec, _Mqtt311Sink(sink))
        consumer.can_nack = False  # type: ignore[misc]  # MQTT has no negative acknowledgement
        cancel = consumer.cancel

        async def cancel_like_mqtt(*, reason: CancelReason = "leave") -> None:
            # A clean MQTT session cannot give back what a consumer holds when it goes.
            consumer.unacked.clear()
            await cancel(reason=reason)

        consumer.cancel = cancel_like_mqtt  # type: ignore[method-assign]
        return consumer


@pytest.fixture
async def bus(memory_broker: MemoryBroker) -> AsyncIterator[Connection]:
    async with Connection(parse(memory_broker.url("mqtt")), link_cls=Mqtt311Link) as connection:
        yield connection


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Delivery]]:
    seen: list[tuple[str, Delivery]] = []
    ack, nack = Delivery.ack, Delivery.nack

    async def spy_ack(self: Delivery) -> None:
        seen.append(("ack", self))
        await ack(self)

    async def spy_nack(self: Delivery, requeue: bool = True) -> None:
        seen.append(("nack", self))
        await nack(self, requeue)

    monkeypatch.setattr(Delivery, "ack", spy_ack)
    monkeypatch.setattr(Delivery, "nack", spy_nack)
    return seen


async def declare(bus: Connection, pattern: str, queue: str) -> None:
    async with bus.subscribe(pattern, queue=queue):
        pass


async def test_fails_twice_then_succeeds_by_republishing_never_nacking(
    bus: Connection, memory_broker: MemoryBroker, settled: list[tuple[str, Delivery]]
) -> None:
    svc = Service(bus)
    done = asyncio.Event()
    recorder = Attempts()
    attempts = recorder.seen
    svc.use(recorder)

    @svc.subscriber("jobs/new", queue="work", on_error=Requeue(dead_letter=DeadLetter("dead")))
    async def job(body: bytes, msg: Delivery) -> None:
        assert body == b'{"id":1}'  # the envelope is the service's business only
        assert msg.topic == "jobs/new"
        if len(attempts) < 3:
            raise RuntimeError("flaky")
        done.set()

    async with svc.serving():
        await bus.publish("jobs/new", {"id": 1}, content_type=None)
        async with asyncio.timeout(5):
            await done.wait()
    assert attempts == [1, 2, 3]  # counted by the envelope's attempt, not by the broker
    assert [kind for kind, _ in settled] == ["ack", "ack", "ack"]  # never a nack
    stats = svc.stats("job")
    assert (stats.retried, stats.succeeded, stats.dead_lettered) == (2, 1, 0)
    assert not memory_broker.queues["work"].messages
    assert not memory_broker.queues["work-aiobus-retry"].messages


async def test_always_failing_ends_on_the_dead_letter_topic_with_the_reason(
    bus: Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus, dead_letter_topic="dead/jobs")

    @svc.subscriber("jobs/new", queue="work", on_error=Retry(max_attempts=2, delay=0.001))
    async def job(body: bytes) -> None:
        raise LookupError("no such customer")

    async with bus.subscribe("dead/jobs") as dead, svc.serving():
        await bus.publish("jobs/new", b"payload", content_type=None)
        letter = await dead.get(timeout=5)
        await letter.ack()
    meta = svc.carrier.unwrap(letter)
    assert letter.body == b"payload"
    assert meta["x-aiobus-reason"] == "gave up after 2 attempt(s) (LookupError: no such customer)"
    assert meta["x-aiobus-topic"] == "jobs/new"
    assert svc.stats("job").dead_lettered == 1


async def test_a_failed_republish_leaves_the_message_unacked_never_silently_acked(
    bus: Connection, memory_broker: MemoryBroker, settled: list[tuple[str, Delivery]]
) -> None:
    svc = Service(bus, dead_letter_topic="dead")
    failed = asyncio.Event()

    class Seen(aiobus.Middleware):
        async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Any:
            try:
                return await call_next(call)
            except aiobus.Nacked:
                failed.set()
                raise

    svc.use(Seen())

    @svc.subscriber("jobs/new", queue="work")
    async def job(body: bytes) -> None:
        raise RuntimeError("x")

    await declare(bus, "jobs/new", "work")
    await bus.publish("jobs/new", b"x")
    memory_broker.nack_next(1)  # the retry copy is refused
    async with svc.serving():
        async with asyncio.timeout(5):
            await failed.wait()
        consumer = memory_broker.queues["work"].consumers[0]
        assert len(consumer.unacked) == 1  # still the broker's: a reconnect brings it back
    assert settled == []  # never acked by the service


async def test_no_reject_means_a_dead_letter_topic_is_required(bus: Connection) -> None:
    svc = Service(bus)

    async def job(body: bytes) -> None:
        pass

    with pytest.raises(aiobus.ConfigError, match="has no reject"):
        svc.add_subscriber(job, "jobs", on_error=Requeue())
    with pytest.raises(aiobus.ConfigError, match="has no reject"):
        svc.add_subscriber(job, "jobs", on_error=DeadLetter())
    svc.add_subscriber(job, "jobs", on_error=DeadLetter("dead"))  # fine with a topic
    svc.add_subscriber(job, "jobs", ack="first", name="fire-and-forget")  # nothing to reject


async def test_prefetch_one_cannot_share_with_a_retry_queue(bus: Connection) -> None:
    svc = Service(bus, dead_letter_topic="dead")

    async def job(body: bytes) -> None:
        pass

    with pytest.raises(aiobus.ConfigError, match="prefetch must be >= 2"):
        svc.add_subscriber(job, "jobs", prefetch=1)


async def test_request_reply_is_not_supported_without_a_correlation_id(bus: Connection) -> None:
    svc = Service(bus)
    async with svc.serving():
        with pytest.raises(aiobus.NotSupported, match="correlation id"):
            await svc.request("rpc/add", b"x", timeout=1)


async def test_shutdown_under_load_loses_nothing_where_nothing_can_be_given_back(
    bus: Connection, memory_broker: MemoryBroker
) -> None:
    total = 60
    handled: list[int] = []
    busy = asyncio.Event()
    gate = asyncio.Event()
    stop = asyncio.Event()
    svc = Service(bus, dead_letter_topic="dead", drain_timeout=5)

    @svc.subscriber("jobs", queue="work", concurrency=3, prefetch=10)
    async def job(body: str) -> None:
        if len(handled) >= 10:
            busy.set()
            await gate.wait()
        handled.append(int(body))

    async def run() -> None:
        async with svc.serving():
            await stop.wait()

    await declare(bus, "jobs", "work")
    await asyncio.gather(*(bus.publish("jobs", str(i)) for i in range(total)))
    task = asyncio.create_task(run())
    async with asyncio.timeout(5):
        await busy.wait()
    stop.set()
    gate.set()
    async with asyncio.timeout(10):
        await task
    left = [int(s.body) for s in memory_broker.queues["work"].messages]
    assert len(set(handled)) == len(handled)
    # What the subscription held when the drain began was handled, not dropped.
    assert sorted(handled + left) == list(range(total))


async def test_publishing_a_dataclass_sends_no_content_type_where_none_is_carried(
    bus: Connection,
) -> None:
    import dataclasses

    @dataclasses.dataclass
    class Point:
        x: int

    svc = Service(bus)
    async with bus.subscribe("points") as sub:
        await svc.publish("points", Point(1))  # the double refuses an explicit content type
        assert (await sub.get(timeout=5)).body == b'{"x":1}'


async def test_the_retry_queue_shares_the_prefetch(
    bus: Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus, dead_letter_topic="dead")
    gate = asyncio.Event()
    full = asyncio.Event()
    seen = 0
    failed: set[str] = set()

    @svc.subscriber("jobs", queue="work", concurrency=20, prefetch=10)
    async def job(body: str) -> None:
        nonlocal seen
        seen += 1
        if body.startswith("fail") and body not in failed:
            failed.add(body)
            raise RuntimeError("once")  # republished once, to the retry queue
        if seen >= 10:
            full.set()
        await gate.wait()

    def unacked() -> int:
        return sum(len(c.unacked) for q in memory_broker.queues.values() for c in q.consumers)

    async with svc.serving():
        for i in range(5):
            await bus.publish("jobs", f"fail {i}")
        for i in range(30):
            await bus.publish("jobs", f"ok {i}")
        async with asyncio.timeout(5):
            await full.wait()
        # main queue 8 + retry queue 2: never more unacked than prefetch=10 in all
        assert unacked() <= 10
        assert svc.stats("job").in_progress <= 10
        gate.set()
