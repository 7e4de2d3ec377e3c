"""A message that cannot be sent fails alone, on every transport.

"Poison" is a message the protocol cannot carry as it is: a header value the codec refuses, a
property over the protocol's size for it, a content type the protocol cannot spell, a body over
the size limit. Each fails with ``InvalidMessage`` (at the call where the check can be made
there, otherwise through its future), the link never drops, and every other message published
before and after it is confirmed and received exactly once.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

import aiobus
from tests.conformance.conftest import Target

#: The connection's ``max_message_size`` here: a body over it is poison on every transport.
LIMIT = 4096
GOOD = 50  # good messages on each side of the poison


def poisons_at_the_call(protocol: str, can_headers: bool) -> list[dict[str, Any]]:
    """Messages this protocol refuses at ``publish()``, as keyword arguments."""
    found: list[dict[str, Any]] = [{"body": b"x" * (LIMIT + 1)}]
    if protocol == "amqp091":
        found += [
            {"headers": {"id": uuid.uuid4()}},
            {"headers": {"tags": {"a", "b"}}},
            {"headers": {"day": datetime.date(2026, 12, 1)}},
            {"headers": {"big": 2**70}},
            {"headers": {"price": decimal.Decimal("1.2345678901")}},
            {"headers": {"nested": [1, {"id": uuid.uuid4()}]}},
            {"correlation_id": "é" * 200},  # 200 characters, 400 bytes: over a short string
        ]
    elif protocol == "amqp10":
        found += [{"content_type": "tëxt/plain"}]
    elif protocol == "mqtt" and can_headers:
        found += [
            {"headers": {"big": "x" * 70_000}},
            {"headers": {"big": "é" * 40_000}},  # 40,000 characters, 80,000 bytes
            {"content_type": "x" * 70_000},
            {"correlation_id": "é" * 33_000},
            {"reply_to": "x" * 65_536},
        ]
    return found


def poisoned_after_the_call(protocol: str) -> Any:
    """A header value added after ``publish()`` returned, before the link encodes the message:
    where the protocol encodes at send (AMQP), only the link finds out. None where the message
    is encoded at the call (MQTT) or carried as objects (memory): it goes out as published."""
    if protocol == "amqp091":
        return uuid.uuid4()
    if protocol == "amqp10":
        return {"a", "b"}  # a set: no AMQP 1.0 type
    return None


@contextmanager
def no_unretrieved_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield
        gc.collect()  # a task's unretrieved exception is reported when the task is collected
    never = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not never, never[0].getMessage()


@asynccontextmanager
async def link_losses(bus: aiobus.Connection) -> AsyncIterator[list[aiobus.Event]]:
    """Every ``link_lost`` event while inside, collected as it happens."""
    lost: list[aiobus.Event] = []

    async def watch(events: aiobus.EventStream) -> None:
        async for event in events:
            if event.kind == "link_lost":
                lost.append(event)

    async with bus.events() as events:
        watcher = asyncio.create_task(watch(events))
        try:
            yield lost
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher


async def receive_exactly(sub: aiobus.Subscription, expected: set[str], end: str) -> None:
    """Read until the ``end`` marker; every expected body exactly once, nothing else."""
    seen: list[str] = []
    async with asyncio.timeout(30):
        async for msg in sub:
            await msg.ack()
            if msg.text() == end:
                break
            seen.append(msg.text())
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    assert set(seen) == expected


def connect(target: Target) -> aiobus.Connection:
    return aiobus.connect(target.url, max_message_size=LIMIT, **target.options)


async def test_poison_fails_alone_at_the_call(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    topic = target.topic(target.unique(), "poison")
    with no_unretrieved_exceptions(caplog):
        async with connect(target) as bus, target.subscribe(bus, topic) as sub:
            poisons = poisons_at_the_call(bus.protocol, target.can_headers)
            async with link_losses(bus) as lost:
                before = [bus.publish(topic, f"before-{i}") for i in range(GOOD)]
                for poison in poisons:
                    fields = dict(poison)
                    body = fields.pop("body", b"poison")
                    with pytest.raises(aiobus.InvalidMessage):
                        bus.publish(topic, body, **fields)
                after = [bus.publish(topic, f"after-{i}") for i in range(GOOD)]
                await asyncio.gather(*before, *after)
                await bus.publish(topic, "end")
                expected = {f"{side}-{i}" for side in ("before", "after") for i in range(GOOD)}
                await receive_exactly(sub, expected, "end")
            assert lost == []
            assert bus.pending == 0


async def test_poison_found_by_the_link_fails_alone(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    topic = target.topic(target.unique(), "poison")
    with no_unretrieved_exceptions(caplog):
        async with connect(target) as bus, target.subscribe(bus, topic) as sub:
            bad_value = poisoned_after_the_call(bus.protocol)
            headers = {"a": "1"} if target.can_headers else None
            async with link_losses(bus) as lost:
                before = [bus.publish(topic, f"before-{i}") for i in range(GOOD)]
                poison = bus.publish(topic, "poison", headers=headers)
                if bad_value is not None and headers is not None:
                    headers["bad"] = bad_value  # the pump has not taken it yet: no await since
                after = [bus.publish(topic, f"after-{i}") for i in range(GOOD)]
                await asyncio.gather(*before, *after)
                await bus.publish(topic, "end")
                expected = {f"{side}-{i}" for side in ("before", "after") for i in range(GOOD)}
                if bad_value is not None:
                    with pytest.raises(aiobus.InvalidMessage) as refused:
                        await poison
                    assert poison.message_id in str(refused.value)
                else:
                    await poison
                    expected.add("poison")
                await receive_exactly(sub, expected, "end")
            assert lost == []
            assert bus.pending == 0
