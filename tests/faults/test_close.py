"""Closing and settling at the edges, on every protocol through a ``FaultProxy``: a close on a
black-holed link is bounded by one ``close_timeout``, a cancelled close still leaves nothing
behind, and ``process()`` survives a link that dies while a message is in hand."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from typing import Any

import pytest

import aiobus
from aiobus.events import Event, State
from aiobus.testing import FaultProxy
from tests.faults.targets import NetTarget
from tests.helpers import other_tasks, wait_for_state

CLOSE_TIMEOUT = 1.0


def subscription_options(net: NetTarget, i: int) -> dict[str, Any]:
    """Ten distinct subscriptions: MQTT filters must differ (one session holds a filter once);
    the AMQP targets consume one queue ten times."""
    options = dict(net.subscribe)
    if "qos" in options:
        options["pattern"] = f"{options['pattern']}/{i}"
    return options


async def test_leaving_nested_subscriptions_on_a_black_holed_link_takes_one_close_timeout(
    net: NetTarget, proxy: FaultProxy
) -> None:
    """The usual shape: ten subscriptions nested in ``async with connect()``, publishes in
    flight, the link black-holed; leaving all of it takes one ``close_timeout``."""
    loop = asyncio.get_running_loop()
    async with aiobus.connect(
        proxy.rewrite(net.url), close_timeout=CLOSE_TIMEOUT, heartbeat=30, **net.connect_options
    ) as bus:
        async with AsyncExitStack() as subs:
            for i in range(10):
                await subs.enter_async_context(bus.subscribe(**subscription_options(net, i)))
            proxy.blackhole()
            pending = [bus.publish(net.topic, b"x", **net.publish_options) for _ in range(5)]
            started = loop.time()
    took = loop.time() - started
    # The first leave waits close_timeout for the broker's answer to its cancel, then takes
    # the link as gone; the rest and the close cost only local work.
    assert took < CLOSE_TIMEOUT + 0.25, f"leaving took {took:.3f}s"
    assert bus.state is State.CLOSED
    for fut in pending:
        with pytest.raises((aiobus.ConnectionClosed, aiobus.LinkLost)):
            await fut
    assert not other_tasks()


async def test_close_on_a_black_holed_link_takes_one_close_timeout(
    net: NetTarget, proxy: FaultProxy
) -> None:
    """``close()`` itself with ten subscriptions open and publishes in flight: within
    ``close_timeout`` + 100 ms (the flush, every consumer cancel and the link's close share
    one deadline)."""
    loop = asyncio.get_running_loop()
    bus = aiobus.connect(
        proxy.rewrite(net.url), close_timeout=CLOSE_TIMEOUT, heartbeat=30, **net.connect_options
    )
    await bus.__aenter__()
    async with AsyncExitStack() as subs:
        for i in range(10):
            await subs.enter_async_context(bus.subscribe(**subscription_options(net, i)))
        proxy.blackhole()
        pending = [bus.publish(net.topic, b"x", **net.publish_options) for _ in range(5)]
        started = loop.time()
        await bus.close()
        took = loop.time() - started
        # The subscriptions leave after their connection closed: nothing to do then.
    assert took < CLOSE_TIMEOUT + 0.1, f"close took {took:.3f}s"
    assert bus.state is State.CLOSED
    for fut in pending:
        with pytest.raises(aiobus.ConnectionClosed):
            await fut
    assert not other_tasks()


async def test_a_cancelled_close_turns_abortive_and_leaves_nothing(
    net: NetTarget, proxy: FaultProxy
) -> None:
    loop = asyncio.get_running_loop()
    bus = aiobus.connect(
        proxy.rewrite(net.url), close_timeout=30, heartbeat=30, **net.connect_options
    )
    await bus.__aenter__()
    async with bus.subscribe(**subscription_options(net, 0)):
        proxy.blackhole()
        fut = bus.publish(net.topic, b"x", **net.publish_options)
        async with bus.events() as events:
            closing = asyncio.create_task(bus.close())
            await wait_for_state(events, State.CLOSING)
        started = loop.time()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        took = loop.time() - started
        assert bus.state is State.CLOSED
        assert took < 0.5, f"an aborted close took {took:.3f}s"
        with pytest.raises(aiobus.ConnectionClosed):
            await fut
        await bus.close()  # a second close: nothing left to do
    assert not other_tasks()


async def test_process_survives_a_link_that_dies_with_the_message_in_hand(
    net: NetTarget, proxy: FaultProxy
) -> None:
    body = uuid.uuid4().hex.encode()
    async with aiobus.connect(
        proxy.rewrite(net.url),
        backoff_initial=0.01,
        backoff_max=0.1,
        **net.connect_options,
    ) as bus:
        async with bus.subscribe(**net.subscribe) as sub:
            await bus.publish(net.topic, body, **net.publish_options)
            msg = await sub.get(timeout=10)
            assert msg.body == body
            lost: Event | None = None
            async with bus.events() as events:
                async with msg.process():
                    proxy.cut()
                    await wait_for_state(events, State.RECONNECTING)
                # The block succeeded: no StaleDelivery out of process(), an event instead.
                async with asyncio.timeout(5):
                    async for event in events:
                        if event.kind == "settle_lost":
                            lost = event
                            break
            assert lost is not None
            assert lost.redelivered is msg.returns_on_loss
            with pytest.raises(aiobus.StaleDelivery):
                await msg.ack()  # an explicit ack still says so
            if msg.returns_on_loss:
                again = await sub.get(timeout=10)
                assert again.body == body
                await again.ack()


async def test_a_give_up_ends_every_event_stream_and_fails_what_waits(
    net: NetTarget, proxy: FaultProxy
) -> None:
    async with aiobus.connect(
        proxy.rewrite(net.url),
        max_attempts=2,
        backoff_initial=0.01,
        backoff_max=0.05,
        **net.connect_options,
    ) as bus:
        async with bus.subscribe(**net.subscribe) as sub:
            streams = [bus.events() for _ in range(3)]

            async def read_all(stream: aiobus.connection.EventStream) -> list[Event]:
                return [event async for event in stream]

            readers = [asyncio.create_task(read_all(s)) for s in streams]
            getter = asyncio.create_task(sub.get())
            proxy.refuse()
            proxy.cut()
            async with asyncio.timeout(20):
                seen = await asyncio.gather(*readers)
            for events in seen:
                assert events[-1].state is State.CLOSED
            with pytest.raises(aiobus.ConnectionClosed, match="gave up after 2"):
                await getter
            with pytest.raises(aiobus.ConnectionClosed, match="gave up"):
                bus.publish(net.topic, b"late", **net.publish_options)
    assert not other_tasks()
