"""The connection's life at its edges, on memory:// (issue "Core II"): the state table, a
restore under churn, cancelled and black-holed closes, a give-up, ``process()`` across a
reconnect, and the health fields."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

import aiobus
from aiobus.attachment import ALLOWED, SubscriptionState
from aiobus.events import Event, State
from aiobus.lifecycle import TRANSITIONS, Trigger, next_state
from aiobus.memory_broker import MemoryBroker
from tests.helpers import other_tasks, through_outage, wait_for_state


def test_every_state_is_reachable_and_closed_is_final() -> None:
    reached = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)
    assert not [t for (source, t) in TRANSITIONS.items() if source[0] is State.CLOSED]
    # From every state but CLOSED, a close leads to CLOSING (and so to CLOSED).
    for state in set(State) - {State.CLOSED, State.CLOSING}:
        assert next_state(state, Trigger.CLOSE) is State.CLOSING
    with pytest.raises(AssertionError, match="cannot happen"):
        next_state(State.CLOSED, Trigger.LINK_UP)


def test_a_subscription_can_always_end() -> None:
    for state, allowed in ALLOWED.items():
        if state is not SubscriptionState.CLOSED:
            assert SubscriptionState.CLOSED in allowed or SubscriptionState.CLOSING in allowed


async def test_a_subscription_leaving_during_a_restore_skips_no_other(
    memory_broker: MemoryBroker,
) -> None:
    """Five subscriptions; the link dies and the restore is held after the first attach
    starts; two of them leave meanwhile. The other three are all attached again and
    receive, and the broker keeps no consumer for the two that left."""
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(bus.subscribe(f"k.{i}")) for i in range(5)]
            async with bus.events() as events:
                memory_broker.hold_attaches()
                memory_broker.kill_links()
                await memory_broker.until(lambda: memory_broker.attaches_waiting == 1)
                assert subs[0].state is SubscriptionState.ATTACHING
                await subs[0].__aexit__(None, None, None)  # leaves while being attached
                await subs[3].__aexit__(None, None, None)  # leaves while waiting its turn
                memory_broker.release_attaches()
                await wait_for_state(events, State.CONNECTED)
            staying = [subs[1], subs[2], subs[4]]
            assert [s.state for s in staying] == [SubscriptionState.ATTACHED] * 3
            assert subs[0].state is SubscriptionState.CLOSED
            assert subs[3].state is SubscriptionState.CLOSED
            for i in (1, 2, 4):
                await bus.publish(f"k.{i}", str(i))
            for sub, i in zip(staying, (1, 2, 4), strict=True):
                msg = await sub.get(timeout=2)
                assert msg.text() == str(i)
                await msg.ack()
            consumers = sum(len(q.consumers) for q in memory_broker.queues.values())
            assert consumers == 3
    assert not other_tasks()


async def test_a_subscription_entered_during_a_restore_is_attached(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("a") as first, bus.events() as events:
            memory_broker.hold_attaches()
            memory_broker.kill_links()
            await memory_broker.until(lambda: memory_broker.attaches_waiting == 1)
            entering = asyncio.create_task(bus.subscribe("b").__aenter__())
            memory_broker.release_attaches()
            await wait_for_state(events, State.CONNECTED)
            second = await entering
            assert first.state is second.state is SubscriptionState.ATTACHED
            await bus.publish("b", b"x")
            assert (await second.get(timeout=2)).body == b"x"
            await second.__aexit__(None, None, None)


async def test_an_attach_the_broker_never_answers_takes_one_attach_timeout(
    memory_broker: MemoryBroker,
) -> None:
    """The broker takes a subscription's attach and never answers: entering ``subscribe()``
    returns within ``attach_timeout``, the link is taken as dead (the reason names the
    option), and once the broker answers again the same subscription is attached and
    receives. Before, the caller waited forever."""
    bound = 0.2
    options = {"backoff_initial": 0.001, "backoff_max": 0.01, "attach_timeout": bound}
    async with aiobus.connect(memory_broker.url(), **options) as bus:
        async with bus.events() as events:
            memory_broker.hold_attaches()
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(5), AsyncExitStack() as stack:
                sub = await stack.enter_async_context(bus.subscribe("held"))
                assert loop.time() - started < bound + 1
                async for event in events:
                    if event.kind == "link_lost":
                        break
                assert "attach_timeout" in event.reason, event.reason
                assert sub.state is not SubscriptionState.ATTACHED
                memory_broker.release_attaches()
                await wait_for_state(events, State.CONNECTED)
                assert sub.state is SubscriptionState.ATTACHED
                await bus.publish("held", b"x")
                msg = await sub.get(timeout=2)
                assert msg.body == b"x"
                await msg.ack()
    assert not other_tasks()


def test_attach_timeout_must_be_positive() -> None:
    with pytest.raises(aiobus.ConfigError, match="attach_timeout"):
        aiobus.connect("memory://", attach_timeout=0)


async def test_a_cancelled_close_is_abortive_and_a_second_close_waits_for_it(
    memory_broker: MemoryBroker,
) -> None:
    bus = aiobus.connect(memory_broker.url(), close_timeout=30)
    await bus.__aenter__()
    memory_broker.hold_confirms()
    fut = bus.publish("k", b"x")
    async with bus.events() as events:
        first = asyncio.create_task(bus.close())
        await wait_for_state(events, State.CLOSING)
    second = asyncio.create_task(bus.close())
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # waited for the first, then returned
    assert bus.state is State.CLOSED
    with pytest.raises(aiobus.ConnectionClosed):
        await fut
    await bus.close()
    assert not other_tasks()
    memory_broker.release_confirms()


async def test_close_under_an_outer_timeout_leaves_nothing(memory_broker: MemoryBroker) -> None:
    memory_broker.hold_confirms()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            async with aiobus.connect(memory_broker.url(), close_timeout=30) as bus:
                async with bus.subscribe("k"):
                    bus.publish("k", b"x").add_done_callback(lambda f: f.exception())
                # leaving waits for the confirm: the outer timeout cancels the close
    assert bus.state is State.CLOSED
    assert not other_tasks()
    memory_broker.release_confirms()


async def test_close_takes_one_close_timeout_with_many_subscriptions(
    memory_broker: MemoryBroker,
) -> None:
    loop = asyncio.get_running_loop()
    async with aiobus.connect(memory_broker.url(), close_timeout=0.3) as bus:
        async with AsyncExitStack() as stack:
            for i in range(10):
                await stack.enter_async_context(bus.subscribe(f"k.{i}"))
            memory_broker.hold_confirms()
            bus.publish("k", b"x").add_done_callback(lambda f: f.exception())
            started = loop.time()
            await bus.close()
            took = loop.time() - started
    assert 0.25 < took < 0.4
    memory_broker.release_confirms()


async def test_a_give_up_ends_every_event_stream(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), max_attempts=2, backoff_initial=0.001) as bus:
        readers = [bus.events() for _ in range(3)]

        async def read_all(stream: aiobus.connection.EventStream) -> list[Event]:
            return [event async for event in stream]

        tasks = [asyncio.create_task(read_all(r)) for r in readers]
        memory_broker.refuse_connections()
        memory_broker.kill_links()
        async with asyncio.timeout(5):
            seen = await asyncio.gather(*tasks)
        for events in seen:
            assert events[-1].kind == "state" and events[-1].state is State.CLOSED
        assert bus.state is State.CLOSED
        with pytest.raises(aiobus.ConnectionClosed, match="gave up"):
            bus.publish("k", b"x")
    memory_broker.refuse_connections(False)
    assert not other_tasks()


async def test_process_does_not_raise_when_the_link_died_in_hand(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.subscribe("k", queue="work") as sub:
            await bus.publish("k", b"job")
            msg = await sub.get(timeout=2)
            async with bus.events() as events:
                async with msg.process():
                    await through_outage(bus, memory_broker.kill_links)
                async with asyncio.timeout(2):
                    async for event in events:
                        if event.kind == "settle_lost":
                            assert event.redelivered is True
                            break
            with pytest.raises(aiobus.StaleDelivery):
                await msg.ack()
            again = await sub.get(timeout=2)
            assert again.body == b"job" and again.redelivered
            await again.ack()


async def test_health_fields_follow_the_link(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        assert bus.connected_at is not None and bus.attempts == 0 and bus.last_error is None
        async with bus.events() as events:
            memory_broker.refuse_connections()
            memory_broker.kill_links()
            await wait_for_state(events, State.RECONNECTING)
            assert bus.connected_at is None
            async with asyncio.timeout(5):
                async for event in events:
                    if event.kind == "attempt_failed" and event.attempt == 2:
                        break
            assert bus.attempts >= 2
            assert isinstance(bus.last_error, aiobus.ConnectError)
            memory_broker.refuse_connections(False)
            await wait_for_state(events, State.CONNECTED)
        assert bus.attempts == 0 and bus.connected_at is not None
