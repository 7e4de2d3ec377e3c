"""The supervisor: states, first-connect rules, credentials, backoff, failover, no leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

import aiobus
from aiobus.connection import Connection
from aiobus.errors import TransientConnectError
from aiobus.events import State
from aiobus.memory_broker import MemoryBroker
from aiobus.transports.base import Consumer, DeliverySink, Link, SubscriptionSpec
from aiobus.url import parse
from tests.helpers import other_tasks, through_outage, wait_for_state


async def test_states_in_order(memory_broker: MemoryBroker) -> None:
    bus = aiobus.connect(memory_broker.url(), backoff_initial=0.001)
    seen: list[State] = []
    async with bus:
        events = bus.events()
        await through_outage(bus, memory_broker.kill_links)
    async for event in events:
        if event.kind == "state":
            seen.append(event.state)
    assert seen == [State.RECONNECTING, State.CONNECTED, State.CLOSING, State.CLOSED]
    assert bus.state is State.CLOSED


async def test_link_lost_event_says_why(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.events() as events:
            memory_broker.kill_links("power cut")
            async with asyncio.timeout(5):
                event = await anext(e async for e in events if e.kind == "link_lost")
        assert "power cut" in event.reason
        assert event.delay is not None and 0 <= event.delay <= 0.001


async def test_wrong_credentials_fail_at_once_at_first_connect(memory_broker: MemoryBroker) -> None:
    memory_broker.require_credentials("app", "right")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiobus.AuthenticationError, match="refused the credentials"):
        async with aiobus.connect(memory_broker.url(), credentials=("app", "wrong")):
            pass
    assert loop.time() - started < 1  # permanent: not retried until connect_timeout
    assert not other_tasks()


async def test_refused_longer_than_connect_timeout_is_a_typed_error(
    memory_broker: MemoryBroker,
) -> None:
    memory_broker.refuse_connections()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiobus.ConnectTimeout, match=r"connect_timeout=0\.3") as err:
        async with aiobus.connect(memory_broker.url(), connect_timeout=0.3):
            pass
    assert isinstance(err.value.__cause__, aiobus.TransientConnectError)
    assert 0.29 <= loop.time() - started < 1.0
    assert memory_broker.connects == 0
    assert not other_tasks()


async def test_transient_refusals_are_retried_within_connect_timeout(
    memory_broker: MemoryBroker,
) -> None:
    calls = 0

    def credentials() -> tuple[str, str]:
        nonlocal calls
        calls += 1
        if calls == 3:
            memory_broker.refuse_connections(False)
        return ("u", "p")

    memory_broker.refuse_connections()
    async with aiobus.connect(memory_broker.url(), credentials=credentials) as bus:
        assert bus.is_connected
    assert calls == 3


async def test_credentials_callable_is_called_before_every_attempt(
    memory_broker: MemoryBroker,
) -> None:
    tokens: list[str] = []

    async def signed() -> aiobus.Credentials:
        token = f"token-{len(tokens)}"
        tokens.append(token)
        memory_broker.require_credentials("dev", token)  # the broker expects the newest token
        return aiobus.Credentials("dev", token)

    async with aiobus.connect(
        memory_broker.url(), credentials=signed, backoff_initial=0.001
    ) as bus:
        for _ in range(3):
            await through_outage(bus, memory_broker.kill_links)
    assert tokens == ["token-0", "token-1", "token-2", "token-3"]


async def test_credentials_that_start_failing_are_reported_while_retrying(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001, backoff_max=0.01) as bus:
        async with bus.events() as events:
            memory_broker.require_credentials("someone", "else")
            memory_broker.kill_links()
            failures = []
            async with asyncio.timeout(5):
                async for event in events:
                    if event.kind == "attempt_failed":
                        failures.append(event)
                        if len(failures) == 3:
                            break
            assert all(isinstance(f.error, aiobus.AuthenticationError) for f in failures)
            assert [f.attempt for f in failures] == [1, 2, 3]
            memory_broker.require_credentials(None)
            await wait_for_state(events, State.CONNECTED)


async def test_max_attempts_gives_up_and_fails_everything(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), max_attempts=3, backoff_initial=0.001) as bus:
        sub = bus.subscribe("k")
        await sub.__aenter__()
        memory_broker.refuse_connections()
        fut = bus.publish("k", b"x")
        async with bus.events() as events:
            memory_broker.kill_links()
            await wait_for_state(events, State.CLOSED)
        with pytest.raises(aiobus.ConnectionClosed, match="gave up after 3 failed attempts"):
            await fut
        with pytest.raises(aiobus.ConnectionClosed):
            await sub.get(timeout=1)
    assert not other_tasks()


async def test_no_task_outlives_the_connection_on_normal_exit(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url()) as bus, bus.subscribe("k") as sub:
        await bus.publish("k", b"x")
        await (await sub.get(timeout=5)).ack()
    assert not other_tasks()


async def test_no_task_outlives_the_connection_on_exception(memory_broker: MemoryBroker) -> None:
    with pytest.raises(ZeroDivisionError):
        async with aiobus.connect(memory_broker.url()) as bus, bus.subscribe("k"):
            bus.publish("k", b"x")
            1 / 0  # noqa: B018
    assert not other_tasks()
    assert not memory_broker.links


async def test_no_task_outlives_the_connection_on_cancellation(
    memory_broker: MemoryBroker,
) -> None:
    entered = asyncio.Event()

    async def user() -> None:
        async with aiobus.connect(memory_broker.url()) as bus, bus.subscribe("k") as sub:
            entered.set()
            async for _ in sub:
                pass

    task = asyncio.create_task(user())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not other_tasks()
    assert not memory_broker.links


async def test_cancelled_during_first_connect_leaves_nothing(memory_broker: MemoryBroker) -> None:
    memory_broker.refuse_connections()
    retrying = asyncio.Event()
    attempts = 0

    def credentials() -> tuple[str, str]:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            retrying.set()
        return ("u", "p")

    async def user() -> None:
        async with aiobus.connect(
            memory_broker.url(), credentials=credentials, backoff_initial=0.001
        ):
            pass

    task = asyncio.create_task(user())
    await asyncio.wait_for(retrying.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not other_tasks()


async def test_wait_connected_is_bounded_and_wakes_on_close(memory_broker: MemoryBroker) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        memory_broker.refuse_connections()
        memory_broker.kill_links()
        with pytest.raises(TimeoutError):
            await bus.wait_connected(timeout=0.05)
        waiter = asyncio.create_task(bus.wait_connected())
        await asyncio.sleep(0)
    with pytest.raises(aiobus.ConnectionClosed):
        await waiter


# -- host failover, checked with a link that records where it was sent -----------------------


class RecordingLink(Link):
    """Pure supervisor logic needs no wire: this link only records and fails on command."""

    protocol: ClassVar[str] = "recording"
    attempts: ClassVar[list[str]] = []
    refuse: ClassVar[set[str]] = set()
    live: ClassVar[list[RecordingLink]] = []

    @classmethod
    def check_publish(cls, settings: Any, msg: Any) -> None:
        pass

    async def open(self) -> None:
        where = str(self.endpoint)
        RecordingLink.attempts.append(where)
        if where in RecordingLink.refuse:
            raise TransientConnectError(f"{where} refused")
        RecordingLink.live.append(self)

    async def abort(self) -> None:
        # Every link ends here (a lost one is aborted, a closed one aborted after its close).
        if self in RecordingLink.live:
            RecordingLink.live.remove(self)

    async def close(self) -> None:
        pass

    async def publish(self, batch: Sequence[Any]) -> None:
        for msg in batch:
            self.hooks.settled(msg)

    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        raise NotImplementedError


async def test_each_reconnect_moves_to_the_next_host() -> None:
    RecordingLink.attempts.clear()
    RecordingLink.refuse = {"h2:5672"}
    settings = parse("amqp://u:p@h1,h2,h3:5673/", backoff_initial=0.001)
    async with Connection(settings, RecordingLink) as bus:
        assert RecordingLink.attempts == ["h1:5672"]
        for _ in range(2):
            await through_outage(bus, lambda: RecordingLink.live[0].hooks.lost(OSError("cut")))
    assert RecordingLink.attempts == ["h1:5672", "h2:5672", "h3:5673", "h1:5672"]
    assert not RecordingLink.live
