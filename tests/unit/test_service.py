"""The service layer on the memory broker: ack policies, retries, dead letters, concurrency,
ordering, drain. No sleeps: events, futures and bounded timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aiobus
from aiobus import DeadLetter, Delivery, Requeue, Retry, Service
from aiobus.memory_broker import MemoryBroker, MemoryQueue
from tests.helpers import Attempts, other_tasks, through_outage


@pytest.fixture
async def bus(memory_broker: MemoryBroker) -> AsyncIterator[aiobus.Connection]:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as connection:
        yield connection


async def declare(bus: aiobus.Connection, pattern: str, queue: str) -> None:
    """Make the named queue exist (and stay) before anything is published to it."""
    async with bus.subscribe(pattern, queue=queue):
        pass


def unacked(queue: MemoryQueue) -> int:
    return sum(len(c.unacked) for c in queue.consumers)


async def wait(event: asyncio.Event, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        await event.wait()


# -- retries and dead letters ----------------------------------------------------------------


async def test_fails_twice_then_succeeds_is_requeued_and_acked_once(
    bus: aiobus.Connection, memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    svc = Service(bus)
    seen: list[int | None] = []
    done = asyncio.Event()

    @svc.subscriber("jobs", queue="work", on_error=Requeue(max_attempts=3))
    async def job(body: bytes, msg: Delivery) -> None:
        seen.append(msg.delivery_count)
        if len(seen) < 3:
            raise RuntimeError("flaky")
        done.set()

    async with svc.serving():
        await bus.publish("jobs", b"x")
        await wait(done)
    assert seen == [1, 2, 3]  # the broker's delivery count bounds the attempts
    assert len(acks) == 1
    assert acks[0].delivery_count == 3
    stats = svc.stats("job")
    assert (stats.succeeded, stats.failed, stats.requeued, stats.dead_lettered) == (1, 2, 2, 0)
    queue = memory_broker.queues["work"]
    assert not queue.messages
    assert not memory_broker.dead_lettered


async def test_fails_twice_then_succeeds_with_delayed_retry(
    bus: aiobus.Connection, memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    svc = Service(bus)
    done = asyncio.Event()
    recorder = Attempts()
    attempts = recorder.seen
    svc.use(recorder)

    @svc.subscriber("jobs", queue="work", on_error=Retry(max_attempts=3, delay=0.01))
    async def job(body: str, msg: Delivery) -> None:
        assert body == "payload"
        assert msg.topic == "jobs"  # the original topic, also on the retry copies
        if len(attempts) < 3:
            raise RuntimeError("flaky")
        done.set()

    async with svc.serving():
        await bus.publish("jobs", "payload", headers={"tenant": "a"})
        await wait(done)
    assert attempts == [1, 2, 3]
    # Each delivery (the original and two republished copies) acked exactly once, the
    # original only after its copy was in the scheduler's hands.
    assert len(acks) == 3
    assert len({id(d) for d in acks}) == 3
    assert acks[-1].headers["tenant"] == "a"
    assert acks[-1].headers["x-aiobus-attempt"] == "2"
    stats = svc.stats("job")
    assert (stats.succeeded, stats.retried, stats.dead_lettered) == (1, 2, 0)
    assert not memory_broker.queues["work"].messages
    assert not memory_broker.queues["work-aiobus-retry"].messages


async def test_always_failing_is_dead_lettered_after_the_bound_with_the_reason(
    bus: aiobus.Connection, memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    svc = Service(bus)
    calls = 0

    @svc.subscriber(
        "jobs", queue="work", on_error=Requeue(max_attempts=3, dead_letter=DeadLetter("jobs.dead"))
    )
    async def job(body: bytes) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad sku 42")

    async with bus.subscribe("jobs.dead") as dead, svc.serving():
        await bus.publish("jobs", b"x", headers={"tenant": "a"}, message_id="m-1")
        letter = await dead.get(timeout=5)
        await letter.ack()
    assert calls == 3
    assert letter.body == b"x"
    assert letter.message_id == "m-1"
    assert letter.headers["tenant"] == "a"
    assert (
        letter.headers["x-aiobus-reason"] == "gave up after 3 attempt(s) (ValueError: bad sku 42)"
    )
    assert letter.headers["x-aiobus-error-type"] == "ValueError"
    assert letter.headers["x-aiobus-attempt"] == "3"
    assert letter.headers["x-aiobus-topic"] == "jobs"
    assert letter.headers["x-aiobus-subscriber"] == "job"
    stats = svc.stats("job")
    assert (stats.failed, stats.requeued, stats.dead_lettered, stats.succeeded) == (3, 2, 1, 0)
    assert [d.topic for d in acks].count("jobs") == 1  # the original, acked once
    assert not memory_broker.queues["work"].messages


async def test_without_a_topic_the_broker_rejects_into_its_dead_lettering(
    bus: aiobus.Connection, memory_broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = Service(bus)
    rejected = asyncio.Event()
    original = Delivery.reject

    async def reject(self: Delivery) -> None:
        await original(self)
        rejected.set()

    monkeypatch.setattr(Delivery, "reject", reject)

    @svc.subscriber("jobs", queue="work", on_error=Requeue(max_attempts=2))
    async def job(body: bytes) -> None:
        raise RuntimeError("nope")

    async with svc.serving():
        await bus.publish("jobs", b"x")
        await wait(rejected)
    ((stored, reason),) = memory_broker.dead_lettered
    assert stored.body == b"x"
    assert reason == "rejected"
    assert svc.stats("job").dead_lettered == 1


async def test_a_decode_failure_goes_down_the_error_path_without_retries(
    bus: aiobus.Connection,
) -> None:
    @dataclasses.dataclass
    class Order:
        id: int

    svc = Service(bus, dead_letter_topic="dead")
    called = 0

    async def take(order: Order) -> None:
        nonlocal called
        called += 1

    take.__annotations__["order"] = Order  # a local class: resolve it without a string
    svc.add_subscriber(take, "orders", queue="orders", on_error=Retry(max_attempts=5))

    async with bus.subscribe("dead") as dead, svc.serving():
        await bus.publish("orders", b'{"id": "not a number"}')
        letter = await dead.get(timeout=5)
        await letter.ack()
    assert called == 0
    assert letter.headers["x-aiobus-error-type"] == "DecodeError"
    assert letter.headers["x-aiobus-reason"].startswith(
        "not retryable (DecodeError: cannot decode the body into Order: body.id"
    )
    assert letter.headers["x-aiobus-attempt"] == "1"
    assert svc.stats("take").retried == 0


async def test_a_failed_dead_letter_publish_is_retried_while_the_original_waits_unacked(
    bus: aiobus.Connection, memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    svc = Service(bus, dead_letter_backoff=(0.01, 0.05))

    @svc.subscriber("jobs", queue="work", on_error=DeadLetter("dead"))
    async def job(body: bytes) -> None:
        raise RuntimeError("always")

    await declare(bus, "jobs", "work")
    async with bus.subscribe("dead") as dead:
        await bus.publish("jobs", b"x")  # before the broker starts refusing
        memory_broker.nack_next(1)  # the first dead-letter publish is refused
        async with svc.serving():
            letter = await dead.get(timeout=5)
            await letter.ack()
    # Refused once: the original stayed unsettled (not given back: that would be redelivered
    # at once, a hot loop) while the dead letter was published again after a backoff; only
    # once that was confirmed the original was acked. One handling, one copy, one ack.
    assert svc.stats("job").failed == 1
    assert svc.stats("job").dead_lettered == 1
    originals = [d for d in acks if d.topic == "jobs"]
    assert len(originals) == 1
    assert not originals[0].redelivered
    assert not memory_broker.queues["work"].messages


async def test_a_delayed_retry_does_not_hold_the_consumer(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus)
    good = asyncio.Event()
    handled: list[str] = []

    @svc.subscriber("jobs", queue="work", prefetch=2, on_error=Retry(max_attempts=3, delay=60))
    async def job(body: str) -> None:
        handled.append(body)
        if body == "bad":
            raise RuntimeError("later")
        if handled.count("good") == 10:
            good.set()

    async with svc.serving():
        await bus.publish("jobs", "bad")
        for _ in range(10):
            await bus.publish("jobs", "good")
        await wait(good)
        # The failed one waits in the service, acked: it holds no prefetch.
        assert svc.scheduler.waiting == 1
        assert unacked(memory_broker.queues["work"]) == 0
    # Graceful shutdown published the waiting copy at once, into the durable retry queue.
    (copy,) = memory_broker.queues["work-aiobus-retry"].messages
    assert copy.body == b"bad"
    assert copy.headers == {
        "x-aiobus-attempt": "1",
        "x-aiobus-topic": "jobs",
        "x-aiobus-first-error": "RuntimeError: later",
    }
    assert svc.scheduler.busy == 0


async def test_the_scheduler_is_bounded(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus, max_scheduled_retries=0)
    seen = asyncio.Event()
    attempts = 0

    @svc.subscriber(
        "jobs",
        queue="work",
        on_error=Retry(max_attempts=2, delay=60, dead_letter=DeadLetter("dead")),
    )
    async def job(body: bytes) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            seen.set()
        raise RuntimeError("x")

    async with bus.subscribe("dead") as dead, svc.serving():
        await bus.publish("jobs", b"x")
        await wait(seen)  # full scheduler: the copy went out at once instead of waiting
        await (await dead.get(timeout=5)).ack()
    assert svc.stats("job").dead_lettered == 1


# -- ack modes -------------------------------------------------------------------------------


async def test_ack_first_acks_before_the_handler_and_never_retries(
    bus: aiobus.Connection, memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    svc = Service(bus)
    done = asyncio.Event()
    settled_before: list[bool] = []

    @svc.subscriber("jobs", queue="work", ack="first")
    async def job(msg: Delivery) -> None:
        settled_before.append(msg.settled)
        done.set()
        raise RuntimeError("lost: at-most-once")

    async with svc.serving():
        await bus.publish("jobs", b"x")
        await wait(done)
    assert settled_before == [True]
    assert len(acks) == 1
    assert svc.stats("job").requeued == 0
    assert not memory_broker.queues["work"].messages
    with pytest.raises(aiobus.ConfigError, match="at-most-once"):
        svc.add_subscriber(job, "x", ack="first", on_error=Requeue(), name="other")


async def test_manual_ack(bus: aiobus.Connection, memory_broker: MemoryBroker) -> None:
    svc = Service(bus, dead_letter_topic="dead")
    done = asyncio.Event()

    @svc.subscriber("jobs", queue="work", ack="manual")
    async def job(body: str, msg: Delivery) -> None:
        if body == "ack":
            await msg.ack()
            done.set()
        # "forget": returns without settling

    async with bus.subscribe("dead") as dead, svc.serving():
        await bus.publish("jobs", "forget")
        await bus.publish("jobs", "ack")
        await wait(done)
        letter = await dead.get(timeout=5)  # forgotten three times (Requeue default), then
        await letter.ack()
    assert letter.body == b"forget"
    assert letter.headers["x-aiobus-error-type"] == "NotSettled"
    assert "returned without settling" in letter.headers["x-aiobus-reason"]
    assert not memory_broker.queues["work"].messages


# -- concurrency and ordering ----------------------------------------------------------------


async def test_concurrency_and_prefetch_bound_the_work_in_hand(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus)
    gate = asyncio.Event()
    full = asyncio.Event()
    done = asyncio.Event()
    active = peak = finished = 0

    @svc.subscriber("jobs", queue="work", concurrency=3, prefetch=5)
    async def job(body: bytes) -> None:
        nonlocal active, peak, finished
        active += 1
        peak = max(peak, active)
        if active == 3:
            full.set()
        await gate.wait()
        active -= 1
        finished += 1
        if finished == 20:
            done.set()

    async with svc.serving():
        await asyncio.gather(*(bus.publish("jobs", b"x") for _ in range(20)))
        await wait(full)
        queue = memory_broker.queues["work"]
        assert unacked(queue) == 5  # three in handlers, two buffered: never more
        assert len(queue.messages) == 15
        gate.set()
        await wait(done)
    assert peak == 3


async def test_same_key_in_order_different_keys_side_by_side(bus: aiobus.Connection) -> None:
    svc = Service(bus)
    a_gate = asyncio.Event()
    b_done = asyncio.Event()
    all_done = asyncio.Event()
    order: dict[str, list[int]] = {"a": [], "b": []}

    @svc.subscriber("jobs", queue="work", concurrency=4, key="k")
    async def job(body: dict[str, Any]) -> None:
        k, n = body["k"], body["n"]
        if k == "a" and n == 0:
            await a_gate.wait()  # holds key a only
        order[k].append(n)
        if len(order["b"]) == 5:
            b_done.set()
        if len(order["a"]) + len(order["b"]) == 10:
            all_done.set()

    async with svc.serving():
        for n in range(5):
            for k in "ab":
                await bus.publish("jobs", {"k": k, "n": n}, headers={"k": k})
        await wait(b_done)
        assert order["a"] == []  # a's later messages wait for a's first
        a_gate.set()
        await wait(all_done)
    assert order == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4]}


async def test_a_broken_key_function_fails_that_message_only(bus: aiobus.Connection) -> None:
    svc = Service(bus, dead_letter_topic="dead")
    done = asyncio.Event()

    def key(msg: Delivery) -> Any:
        return msg.headers["k"]  # KeyError without the header; a list is unhashable

    @svc.subscriber("jobs", queue="work", key=key, on_error=DeadLetter())
    async def job(body: bytes) -> None:
        done.set()

    async with bus.subscribe("dead") as dead, svc.serving():
        await bus.publish("jobs", b"no key")
        await bus.publish("jobs", b"unhashable", headers={"k": ["a list"]})
        await bus.publish("jobs", b"keyed", headers={"k": "1"})
        await wait(done)
        letters = [await dead.get(timeout=5) for _ in range(2)]
        for letter in letters:
            await letter.ack()
    assert [(d.body, d.headers["x-aiobus-error-type"]) for d in letters] == [
        (b"no key", "KeyError"),
        (b"unhashable", "TypeError"),
    ]


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_under_load_loses_nothing_and_leaves_nothing_unacked(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    total = 200
    handled: list[int] = []
    busy = asyncio.Event()
    gate = asyncio.Event()
    stop = asyncio.Event()

    def make() -> Service:
        svc = Service(bus, drain_timeout=5)

        @svc.subscriber("jobs", queue="work", concurrency=4, prefetch=10)
        async def job(body: str) -> None:
            if len(handled) >= 20:
                busy.set()
                await gate.wait()
            handled.append(int(body))

        return svc

    async def run(svc: Service) -> None:
        async with svc.serving():
            await stop.wait()

    before = other_tasks()
    await declare(bus, "jobs", "work")
    await asyncio.gather(*(bus.publish("jobs", str(i)) for i in range(total)))
    first = asyncio.create_task(run(make()))
    await wait(busy)
    stop.set()
    gate.set()  # the drain waits for handlers in progress: they finish and are acked
    async with asyncio.timeout(10):
        await first
    queue = memory_broker.queues["work"]
    assert not queue.consumers  # nothing unacknowledged: no consumer holds anything
    in_first = len(handled)
    assert in_first >= 20
    assert len(set(handled)) == in_first  # nothing handled twice
    left = sorted(int(s.body) for s in queue.messages)
    assert sorted(handled + left) == list(range(total))  # nothing lost
    # Run again: the rest is handled, and every message exactly once overall.
    busy.clear()
    stop.clear()
    done_all = asyncio.Event()

    svc = Service(bus)

    @svc.subscriber("jobs", queue="work", concurrency=4, prefetch=10)
    async def job(body: str) -> None:
        handled.append(int(body))
        if len(handled) == total:
            done_all.set()

    async with svc.serving():
        await wait(done_all)
    assert sorted(handled) == list(range(total))
    assert not queue.messages
    assert other_tasks() <= before


async def test_past_the_drain_timeout_handlers_are_cancelled_and_messages_go_back(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus, drain_timeout=0.05)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @svc.subscriber("jobs", queue="work")
    async def job(body: bytes) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # stuck
        except asyncio.CancelledError:
            cancelled.set()
            raise

    before = other_tasks()
    async with svc.serving():
        await bus.publish("jobs", b"x")
        await wait(started)
    assert cancelled.is_set()
    (back,) = memory_broker.queues["work"].messages
    assert back.body == b"x"
    assert back.redelivered
    assert other_tasks() <= before


async def test_no_task_outlives_serving(bus: aiobus.Connection) -> None:
    svc = Service(bus)
    done = asyncio.Event()

    @svc.subscriber(
        "jobs", queue="work", key="k", concurrency=2, on_error=Retry(delay=60, max_attempts=2)
    )
    async def job(body: str) -> str:
        if body == "fail":
            raise RuntimeError("scheduled for later")
        done.set()
        return "ok"

    before = other_tasks()
    async with svc.serving():
        await bus.publish("jobs", "fail", headers={"k": "1"})
        assert await svc.request("jobs", "hello", timeout=5, headers={"k": "2"}) == "ok"
        await wait(done)
        assert other_tasks() > before
    assert other_tasks() <= before


async def test_serve_runs_until_cancelled(bus: aiobus.Connection) -> None:
    svc = Service(bus)
    got = asyncio.Event()

    @svc.subscriber("jobs", queue="work")
    async def job(body: bytes) -> None:
        got.set()

    before = other_tasks()
    await declare(bus, "jobs", "work")
    await bus.publish("jobs", b"x")
    task = asyncio.create_task(svc.serve())
    await wait(got)
    assert svc.running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not svc.running
    assert other_tasks() <= before


async def test_serve_raises_when_its_connection_closes(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        svc = Service(bus)
        got = asyncio.Event()

        @svc.subscriber("jobs", queue="work")
        async def job(body: bytes) -> None:
            got.set()

        await declare(bus, "jobs", "work")
        await bus.publish("jobs", b"x")
        task = asyncio.create_task(svc.serve())
        await wait(got)
        await bus.close()
        with pytest.raises(aiobus.ConnectionClosed):
            async with asyncio.timeout(5):
                await task


async def test_a_killed_link_does_not_stop_the_service(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus)
    seen: list[bytes] = []
    first = asyncio.Event()
    release = asyncio.Event()
    done = asyncio.Event()

    @svc.subscriber("jobs", queue="work")
    async def job(body: bytes) -> None:
        seen.append(body)
        if len(seen) == 1:
            first.set()
            await release.wait()  # its ack will find the link dead (StaleDelivery)
        if body == b"after":
            done.set()

    async with svc.serving():
        await bus.publish("jobs", b"before")
        await wait(first)
        await through_outage(bus, memory_broker.kill_links)
        release.set()
        await bus.publish("jobs", b"after")
        await wait(done)
    assert seen.count(b"before") == 2  # the broker sent the unacked one again
    assert not memory_broker.queues["work"].messages


# -- registration ----------------------------------------------------------------------------


async def test_registration_errors_name_the_problem(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    async def handler(body: bytes) -> None:
        pass

    svc.add_subscriber(handler, "a.b")
    with pytest.raises(aiobus.ConfigError, match="already registered"):
        svc.add_subscriber(handler, "a.c")
    with pytest.raises(aiobus.ConfigError, match="ack must be one of"):
        svc.add_subscriber(handler, "a.c", name="x", ack="later")
    with pytest.raises(aiobus.ConfigError, match="concurrency"):
        svc.add_subscriber(handler, "a.c", name="x", concurrency=0)
    with pytest.raises(aiobus.ConfigError, match="prefetch must be >= 2"):
        svc.add_subscriber(handler, "a.c", name="x", prefetch=1, on_error=Retry())
    with pytest.raises(aiobus.ConfigError, match="on_error must be"):
        svc.add_subscriber(handler, "a.c", name="x", on_error="retry")  # type: ignore[arg-type]
    with pytest.raises(aiobus.InvalidTopic):
        svc.add_subscriber(handler, "a.b*", name="x")
    with pytest.raises(aiobus.ConfigError, match="unknown subscribe options"):
        svc.add_subscriber(handler, "a.c", name="x", colour="red")
    with pytest.raises(aiobus.ConfigError, match="key must be"):
        svc.add_subscriber(handler, "a.c", name="x", key=3)  # type: ignore[arg-type]
    with pytest.raises(aiobus.ConfigError, match="drain_timeout"):
        Service(bus, drain_timeout=0)
    with pytest.raises(TypeError, match="Connection"):
        Service("memory://x")  # type: ignore[arg-type]
    async with svc.serving():
        with pytest.raises(aiobus.ConfigError, match="before the service is serving"):
            svc.add_subscriber(handler, "a.d", name="late")
        with pytest.raises(aiobus.ConfigError, match="already serving"):
            async with svc.serving():
                pass
    # prefetch 1 is fine where the broker counts redeliveries (no retry queue needed)
    svc.add_subscriber(handler, "a.e", name="one", prefetch=1, on_error=Requeue())
