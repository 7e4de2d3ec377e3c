"""Pure logic behind bounded redelivery and dead letters that land: what a queue's deliveries
say about its delivery count, the dead-letter backoff, and one warning per failure burst."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiobus
from aiobus import DeadLetter, Delivery, Service
from aiobus.amqp import Queue
from aiobus.memory_broker import MemoryBroker
from aiobus.service.counting import (
    QueueCounting,
    declared_counting,
    quorum_delivery_limit,
)
from aiobus.service.deadletters import Backoff, FailureBursts, is_retryable, queue_for


class _Consumer:
    """Deliveries here are never settled: the consumer only has to exist."""

    alive = True


def delivery(count: int | None, redelivered: bool) -> Delivery:
    return Delivery(
        _Consumer(),  # type: ignore[arg-type]
        "t",
        b"",
        delivery_count=count,
        redelivered=redelivered,
    )


# What each broker's deliveries of one message nacked twice look like (seen on RabbitMQ 4.0.5
# with aiobus's adapters): (delivery_count, redelivered) per delivery.
OBSERVED = {
    "0-9-1 classic": [(1, False), (None, True), (None, True)],
    "0-9-1 quorum": [(1, False), (2, True), (3, True)],
    "AMQP 1.0 classic": [(0, False), (0, True), (0, True)],
    "AMQP 1.0 quorum": [(0, False), (1, True), (2, True)],
    "memory": [(1, False), (2, True), (3, True)],
}
COUNTS = {
    "0-9-1 classic": False,
    "0-9-1 quorum": True,
    "AMQP 1.0 classic": False,
    "AMQP 1.0 quorum": True,
    "memory": True,
}


@pytest.mark.parametrize("broker", list(OBSERVED))
def test_the_deliveries_tell_whether_the_queue_counts(broker: str) -> None:
    counting = QueueCounting(None)
    numbers = [counting.deliveries(delivery(c, r)) for c, r in OBSERVED[broker]]
    assert counting.counts is COUNTS[broker]
    if COUNTS[broker]:
        assert numbers == [1, 2, 3]  # the broker's own count
    else:
        assert numbers == [1, 2, 2]  # the floor: the service's attempt header does the rest


def test_a_first_delivery_proves_nothing() -> None:
    counting = QueueCounting(None)
    assert counting.deliveries(delivery(1, False)) == 1
    assert counting.deliveries(delivery(0, False)) == 1
    assert counting.counts is None


def test_a_replica_that_first_sees_a_redelivery_errs_on_the_safe_side() -> None:
    # AMQP 1.0 quorum, counted from 0, seen first as a redelivery: taken as not counting,
    # which makes its retries republished copies (bounded), never endless requeues.
    counting = QueueCounting(None)
    assert counting.deliveries(delivery(1, True)) == 2
    assert counting.counts is False


def test_a_declared_count_is_revised_by_an_uncounted_redelivery() -> None:
    counting = QueueCounting(True)
    assert counting.deliveries(delivery(None, True)) == 2
    assert counting.counts is False


@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 50)), st.booleans()), min_size=1
    ),
    st.sampled_from([None, True, False]),
)
def test_a_redelivery_is_never_below_attempt_two(
    seen: list[tuple[int | None, bool]], declared: bool | None
) -> None:
    counting = QueueCounting(declared)
    for count, redelivered in seen:
        number = counting.deliveries(delivery(count, redelivered))
        assert number >= (2 if redelivered else 1)
        if redelivered and (count is None or count < 1):
            assert counting.counts is False  # redelivered without a count going up


def test_what_is_known_before_the_first_delivery() -> None:
    quorum = Queue("orders", queue_type="quorum")
    by_argument = Queue("orders", arguments={"x-queue-type": "quorum"})
    classic = Queue("orders")
    assert declared_counting("amqp091", object(), "orders", [quorum]) is True
    assert declared_counting("amqp091", object(), "orders", [by_argument]) is True
    assert declared_counting("amqp091", object(), "orders", [classic]) is None
    assert declared_counting("amqp091", object(), "other", [quorum]) is None
    assert declared_counting("amqp091", object(), None, [quorum]) is None
    assert declared_counting("memory", object(), None, []) is True

    class Knows:
        counts_deliveries = False

    # What a subscription says of its queue wins (the AMQP adapters, once they know it).
    assert declared_counting("amqp091", Knows(), "orders", [quorum]) is False


def test_quorum_delivery_limits() -> None:
    assert quorum_delivery_limit(Queue("q", queue_type="quorum")) == 20
    limited = Queue("q", queue_type="quorum", arguments={"x-delivery-limit": 5})
    assert quorum_delivery_limit(limited) == 5
    unlimited = Queue("q", queue_type="quorum", arguments={"x-delivery-limit": -1})
    assert quorum_delivery_limit(unlimited) is None
    assert quorum_delivery_limit(Queue("q")) is None


@given(st.floats(0.001, 10), st.floats(10, 100), st.integers(1, 40))
def test_the_backoff_is_full_jitter_under_a_growing_capped_ceiling(
    initial: float, maximum: float, tries: int
) -> None:
    backoff = Backoff(initial, maximum)
    for n in range(tries):
        assert 0 <= backoff.next_delay() <= min(maximum, initial * 2.0**n)


def test_one_warning_per_failure_burst(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiobus.service")
    bursts = FailureBursts()
    for _ in range(5):
        bursts.failed("dead", "job", aiobus.Unroutable("no route"))
    bursts.landed("dead")
    bursts.failed("dead", "job", aiobus.Unroutable("no route"))
    levels = [r.levelno for r in caplog.records]
    assert levels.count(logging.WARNING) == 2  # two bursts
    assert levels.count(logging.INFO) == 1  # "land again"
    assert bursts.failures("dead") == 1


def test_which_publish_failures_are_tried_again() -> None:
    assert is_retryable(aiobus.Unroutable("no route"))
    assert is_retryable(aiobus.PublishTimeout("slow"))
    assert not is_retryable(aiobus.InvalidMessage("bad header"))
    assert not is_retryable(aiobus.ConnectionClosed("gone"))
    assert not is_retryable(TypeError("bug"))


def test_dead_letter_queue_names() -> None:
    assert queue_for("aiobus-dead-{topic}", "orders.dead") == "aiobus-dead-orders_dead"
    assert queue_for("all-dead", "orders.dead") == "all-dead"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dead_letter_queue": ""}, "dead_letter_queue"),
        ({"dead_letter_backoff": (0, 1)}, "dead_letter_backoff"),
        ({"dead_letter_backoff": (5, 1)}, "dead_letter_backoff"),
        ({"dead_letter_backoff": 1}, "dead_letter_backoff"),
        ({"declare_dead_letter_queue": "yes"}, "declare_dead_letter_queue"),
    ],
)
async def test_dead_letter_options_are_checked(
    memory_broker: MemoryBroker, options: dict[str, Any], match: str
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        with pytest.raises(aiobus.ConfigError, match=match):
            Service(bus, **options)


async def test_stopping_ends_the_backoff_and_gives_the_message_back_unacked(
    memory_broker: MemoryBroker, acks: list[Delivery]
) -> None:
    async with aiobus.connect(memory_broker.url()) as bus:
        failing = asyncio.Event()

        class Watch(aiobus.Middleware):
            async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Any:
                try:
                    return await call_next(call)
                finally:
                    if call.kind == "dead_letter":
                        failing.set()

        # A backoff far longer than the test: only the drain can end it.
        svc = Service(
            bus,
            middleware=[Watch()],
            dead_letter_queue=None,
            dead_letter_backoff=(3600, 3600),
        )

        @svc.subscriber("jobs", queue="work", on_error=DeadLetter("nowhere"))
        async def job(body: bytes) -> None:
            raise RuntimeError("always")

        async with svc.serving(drain_timeout=30):
            await bus.publish("jobs", b"x")
            async with asyncio.timeout(5):
                await failing.wait()
        assert not [d for d in acks if d.topic == "jobs"]  # never acked
        assert svc.stats("job").dead_lettered == 0
        # Given back to the broker: it waits in the queue for the next run.
        assert len(memory_broker.queues["work"].messages) == 1
