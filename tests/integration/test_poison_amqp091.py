"""AMQP 0-9-1: a message the codec or the broker refuses fails alone, on both publish paths.

The fast path writes frames into aiormq's channel; the slow path (``fast_publish=False``) goes
through aiormq's ``basic_publish`` in a task per message. A header the codec refuses is caught
at the call; one added after the call is found when the link encodes the message. A body over
the broker's ``max_message_size`` makes RabbitMQ close the publish channel with 406, naming the
limit but not the message: that message fails with ``MessageTooLarge``, the limit is checked at
the call from then on, and the others follow the outage policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import gc
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import aiobus
from aiobus.transports.amqp091 import Amqp091Link
from tests.conformance.test_poison_publish import link_losses
from tests.harness.rabbitmq import RabbitMQNode
from tests.helpers import unique

FAST = {"backoff_initial": 0.01, "backoff_max": 0.2}
REFUSED_BY_THE_CODEC = [
    uuid.uuid4(),
    {"a", "b"},
    datetime.date(2026, 12, 1),
    2**70,
    decimal.Decimal("1.2345678901"),
]
BROKER_LIMIT = 65_536


@pytest.fixture(scope="module")
def small_broker() -> Iterator[RabbitMQNode]:
    """A private node whose ``max_message_size`` is far below aiobus's own limit."""
    node = RabbitMQNode(extra_config=[f"max_message_size = {BROKER_LIMIT}"])
    node.start()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def no_unretrieved(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield
        gc.collect()
    never = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not never, never


async def drain(sub: aiobus.Subscription, end: str) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(30):
        async for msg in sub:
            # One read from a link that has died since cannot be acked: it comes again.
            with contextlib.suppress(aiobus.StaleDelivery):
                await msg.ack()
            if msg.text() == end:
                return seen
            seen.append(msg.text())
    raise AssertionError("unreachable")


@pytest.mark.parametrize("value", REFUSED_BY_THE_CODEC, ids=lambda v: type(v).__name__)
async def test_header_the_codec_refuses_fails_at_the_call(rabbitmq: Any, value: object) -> None:
    async with aiobus.connect(rabbitmq.amqp_url, **FAST) as bus:
        with pytest.raises(aiobus.InvalidMessage, match="cannot encode the headers"):
            bus.publish(unique("k"), b"x", headers={"h": value})
        assert bus.pending == 0


@pytest.mark.parametrize("value", REFUSED_BY_THE_CODEC, ids=lambda v: type(v).__name__)
async def test_header_refused_on_the_link_fails_alone_on_both_paths(
    rabbitmq: Any, publish_path: bool, value: object, no_unretrieved: None
) -> None:
    topic = unique("poison")
    async with aiobus.connect(rabbitmq.amqp_url, **FAST) as bus:
        async with bus.subscribe(topic) as sub, link_losses(bus) as lost:
            before = [bus.publish(topic, f"b{i}") for i in range(20)]
            headers: dict[str, Any] = {"ok": "1"}
            poison = bus.publish(topic, "poison", headers=headers)
            headers["bad"] = value  # after the call's check, before the link encodes it
            after = [bus.publish(topic, f"a{i}") for i in range(20)]
            async with asyncio.timeout(10):  # never the publish's own deadline
                with pytest.raises(aiobus.InvalidMessage) as refused:
                    await poison
                await asyncio.gather(*before, *after)
            assert isinstance(refused.value.__cause__, TypeError)
            await bus.publish(topic, "end")
            got = await drain(sub, "end")
            expected = [f"b{i}" for i in range(20)] + [f"a{i}" for i in range(20)]
            assert sorted(got) == sorted(expected)
        assert lost == []


async def test_body_over_the_brokers_limit_fails_alone_and_the_limit_is_learned(
    small_broker: RabbitMQNode, publish_path: bool, no_unretrieved: None
) -> None:
    topic = unique("big")
    big = b"x" * (BROKER_LIMIT + 1000)
    async with aiobus.connect(
        small_broker.amqp_url, max_message_size=10 * BROKER_LIMIT, **FAST
    ) as bus:
        # A named queue: a server-named one ends with the link the refusal closes.
        queue = unique("q")
        async with bus.subscribe(topic, queue=queue) as sub, link_losses(bus) as lost:
            before = [bus.publish(topic, f"b{i}") for i in range(20)]
            poison = bus.publish(topic, big)
            after = [bus.publish(topic, f"a{i}") for i in range(20)]
            async with asyncio.timeout(15):
                with pytest.raises(aiobus.MessageTooLarge) as refused:
                    await poison
                await asyncio.gather(*before, *after)  # outage "retry": re-sent on the next link
            assert (refused.value.size, refused.value.limit) == (len(big), BROKER_LIMIT)
            # The broker stated this limit: the error says it is the broker's.
            assert refused.value.option is None
            assert f"the broker's maximum of {BROKER_LIMIT} bytes" in str(refused.value)
            assert len(lost) == 1, "one link loss: the closed channel, never the same message again"
            # Learned: the next one over the limit is refused at the call, as the broker's.
            with pytest.raises(aiobus.MessageTooLarge, match="the broker's maximum"):
                bus.publish(topic, big)
            await bus.publish(topic, "end")
            got = await drain(sub, "end")
            # At least once: those in flight with the big one may arrive twice.
            assert set(got) == {f"b{i}" for i in range(20)} | {f"a{i}" for i in range(20)}
            assert "x" * 10 not in "".join(got)


async def test_body_over_the_brokers_limit_with_outage_fail(
    small_broker: RabbitMQNode, no_unretrieved: None
) -> None:
    topic = unique("big")
    big = b"x" * (BROKER_LIMIT + 1)
    async with aiobus.connect(
        small_broker.amqp_url, max_message_size=10 * BROKER_LIMIT, outage="fail", **FAST
    ) as bus:
        others = [bus.publish(topic, f"m{i}", mandatory=False) for i in range(20)]
        poison = bus.publish(topic, big, mandatory=False)
        async with asyncio.timeout(15):
            with pytest.raises(aiobus.MessageTooLarge):
                await poison
            outcomes = await asyncio.gather(*others, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, aiobus.LinkLost), outcome
                assert outcome.maybe_delivered is True
            else:
                assert isinstance(outcome, aiobus.Confirm)
        await bus.wait_connected(timeout=15)
        await bus.publish(topic, b"after", mandatory=False)


async def test_slow_path_codec_error_inside_the_publish_task_fails_alone(
    rabbitmq: Any, monkeypatch: pytest.MonkeyPatch, no_unretrieved: None
) -> None:
    """Should a refused property get past ``encode`` (its trial skipped here), aiormq raises
    inside the per-message task: that task sorts it as this message's failure, at once."""
    monkeypatch.setattr(Amqp091Link, "fast_publish", False)
    trusting = Amqp091Link.encode

    def without_trial(link: Amqp091Link, msg: Any) -> None:
        headers, msg.headers = msg.headers, None
        try:
            trusting(link, msg)
        finally:
            msg.headers = headers
        properties, mandatory = msg.wire
        properties.headers = headers
        msg.wire = (properties, mandatory)

    monkeypatch.setattr(Amqp091Link, "encode", without_trial)
    topic = unique("poison")
    async with aiobus.connect(rabbitmq.amqp_url, **FAST) as bus:
        async with link_losses(bus) as lost:
            headers: dict[str, Any] = {"ok": "1"}
            good = [bus.publish(topic, f"g{i}", mandatory=False) for i in range(10)]
            poison = bus.publish(topic, "poison", headers=headers, mandatory=False)
            headers["bad"] = uuid.uuid4()
            async with asyncio.timeout(10):
                with pytest.raises(aiobus.InvalidMessage, match="cannot be sent over AMQP 0-9-1"):
                    await poison
                await asyncio.gather(*good)
        assert lost == []
