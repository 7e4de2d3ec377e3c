"""A model-based test of the core on memory://: random sequences of publishes with deadlines,
cancels, link kills, refused and accepted connections, held and released confirms, nacks,
subscriptions with several readers, leaving, and a final close (graceful or cancelled).

After every step:
- every publish future is settled by its deadline + 50 ms, and its outcome is one the model
  allows for what happened to it (confirmed; nacked only while nacks were armed; timed out
  only at its deadline; ``LinkLost`` only with outage "fail" and an outage while it was
  unsettled; ``ConnectionClosed`` only once the connection closes; cancelled only if cancelled);
- whenever the broker takes connections and nothing is held, the link comes back and every open
  subscription is attached again; every publish is then confirmed;
- every delivery reaches exactly one reader of its subscription.
At the end: no task, future or link is left, and every event stream has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiobus
from aiobus.attachment import SubscriptionState
from aiobus.events import Event, State
from aiobus.memory_broker import MemoryBroker
from aiobus.publishing import Confirm

_names = itertools.count(1)
SLACK = 0.05


@dataclass
class Published:
    future: aiobus.PublishFuture
    deadline: float
    outage: str
    cancelled: bool = False
    nack_possible: bool = False
    outage_seen: bool = False


@dataclass
class Sub:
    sub: aiobus.Subscription
    readers: list[asyncio.Task[None]]
    seen: list[aiobus.Delivery] = field(default_factory=list)


class CoreMachine(RuleBasedStateMachine):
    new_loop: Callable[[], asyncio.AbstractEventLoop] = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        super().__init__()
        self.loop = self.new_loop()
        self.loop.set_debug(True)
        self.broker = MemoryBroker.get(f"model-{next(_names)}")
        self.bus = aiobus.connect(
            self.broker.url(),
            backoff_initial=0.001,
            backoff_max=0.01,
            close_timeout=0.3,
            connect_timeout=5,
        )
        self.run(self.bus.__aenter__())
        self.events = self.bus.events()
        self.event_log: list[Event] = []
        self.event_reader = self.loop.create_task(self._read_events())
        self.published: list[Published] = []
        self.subs: list[Sub] = []
        self.refusing = False
        self.holding = False
        self.nacks_armed = 0
        self.closed = False
        self.n = 0

    # -- plumbing ----------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _read_events(self) -> None:
        async for event in self.events:
            self.event_log.append(event)

    async def _read(self, entry: Sub) -> None:
        try:
            async for msg in entry.sub:
                entry.seen.append(msg)
                if not msg.settled:
                    with contextlib.suppress(aiobus.StaleDelivery):
                        await msg.ack()
        except aiobus.ConnectionClosed:
            pass

    def _settle_window(self) -> None:
        """Run the loop once; timers already due fire, callbacks run."""
        self.run(asyncio.sleep(0))

    @property
    def healthy(self) -> bool:
        return not (self.refusing or self.holding or self.nacks_armed or self.closed)

    def _outage(self) -> None:
        for p in self.published:
            if not p.future.done():
                p.outage_seen = True

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(
        timeout=st.sampled_from([0.02, 0.1, 5.0]),
        outage=st.sampled_from(["retry", "fail"]),
        count=st.integers(1, 20),
    )
    def publish(self, timeout: float, outage: str, count: int) -> None:
        for _ in range(count):
            self.n += 1
            called = self.loop.time()  # the outbox's deadline is no earlier than this
            fut = self.bus.publish("m.k", str(self.n), timeout=timeout, outage=outage)
            self.published.append(
                Published(
                    fut,
                    called + timeout,
                    outage,
                    nack_possible=self.nacks_armed > 0,
                    # ``driver`` is None as soon as the link is dead, before the state says.
                    outage_seen=self.bus.driver is None,
                )
            )

    @precondition(lambda self: not self.closed)
    @rule(data=st.data())
    def cancel_a_publish(self, data: st.DataObject) -> None:
        # One draw whatever is pending (which depends on timing): replays stay consistent.
        pick = data.draw(st.integers(0, 10_000))
        pending = [p for p in self.published if not p.future.done()]
        if pending:
            p = pending[pick % len(pending)]
            p.cancelled = True
            p.future.cancel()

    @precondition(lambda self: not self.closed)
    @rule()
    def kill_links(self) -> None:
        self._outage()
        self.broker.kill_links()

    @precondition(lambda self: not self.closed)
    @rule(refuse=st.booleans())
    def refuse_connections(self, refuse: bool) -> None:
        self.refusing = refuse
        self.broker.refuse_connections(refuse)

    @precondition(lambda self: not self.closed)
    @rule(hold=st.booleans())
    def hold_confirms(self, hold: bool) -> None:
        self.holding = hold
        if hold:
            self.broker.hold_confirms()
        else:
            self.broker.release_confirms()

    @precondition(lambda self: not self.closed)
    @rule(count=st.integers(1, 3))
    def nack_next(self, count: int) -> None:
        self.nacks_armed += count
        self.broker.nack_next(count)
        for p in self.published:
            if not p.future.done():
                p.nack_possible = True

    @precondition(lambda self: not self.closed and len(self.subs) < 4)
    @rule(readers=st.integers(1, 3), shared=st.booleans())
    def subscribe(self, readers: int, shared: bool) -> None:
        sub = self.bus.subscribe("m.#", queue="m-work" if shared else None, prefetch=10)
        self.run(sub.__aenter__())
        entry = Sub(sub, [])
        entry.readers = [self.loop.create_task(self._read(entry)) for _ in range(readers)]
        self.subs.append(entry)

    @precondition(lambda self: not self.closed and bool(self.subs))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.subs))
        self.subs.remove(entry)
        self.run(entry.sub.__aexit__(None, None, None))
        self.run(asyncio.wait_for(asyncio.gather(*entry.readers), 2))

    @precondition(lambda self: not self.closed)
    @rule(seconds=st.sampled_from([0.001, 0.02, 0.06]))
    def advance(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @precondition(lambda self: not self.closed)
    @rule(cancelled=st.booleans())
    def close(self, cancelled: bool) -> None:
        self.closed = True
        if not cancelled:
            self.run(self.bus.close())
            return

        async def cancelled_close() -> None:
            closing = asyncio.create_task(self.bus.close())
            await asyncio.sleep(0)
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closing

        self.run(cancelled_close())

    @precondition(lambda self: self.closed)
    @rule()
    def nothing_is_taken_after_close(self) -> None:
        try:
            self.bus.publish("m.k", b"late")
        except aiobus.ConnectionClosed:
            pass
        else:
            raise AssertionError("a closed connection took a publish")

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def deadlines_are_kept_and_outcomes_are_allowed(self) -> None:
        now = self.loop.time()
        self._settle_window()
        for p in self.published:
            fut = p.future
            if p.deadline + SLACK <= now:
                assert fut.done(), f"publish {fut.message_id} passed its deadline unsettled"
            if not fut.done():
                continue
            if fut.cancelled():
                assert p.cancelled
                continue
            exc = fut.exception()
            if exc is None:
                assert isinstance(fut.result(), Confirm)
            elif isinstance(exc, aiobus.Nacked):
                assert p.nack_possible
            elif isinstance(exc, aiobus.PublishTimeout):
                assert now >= p.deadline or self.loop.time() >= p.deadline
            elif isinstance(exc, aiobus.LinkLost):
                assert p.outage == "fail" and p.outage_seen
            elif isinstance(exc, aiobus.ConnectionClosed):
                assert self.closed
            else:
                raise AssertionError(f"unexpected outcome {exc!r}")

    @invariant()
    def a_healthy_broker_brings_everything_back(self) -> None:
        if not self.healthy:
            return
        self.run(self.bus.wait_connected(timeout=2))
        # Restores finish within the same supervisor step that reports the link up.
        for entry in self.subs:
            assert entry.sub.state is SubscriptionState.ATTACHED, entry.sub
        pending = [p.future for p in self.published if not p.future.done()]
        if pending:
            self.run(asyncio.wait(pending, timeout=2))
            for fut in pending:
                assert fut.done()

    @invariant()
    def each_delivery_reaches_one_reader(self) -> None:
        for entry in self.subs:
            assert len({id(m) for m in entry.seen}) == len(entry.seen)

    @invariant()
    def nack_budget_follows_the_broker(self) -> None:
        self.nacks_armed = self.broker.nack_budget

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.run(self.bus.close())
            assert self.bus.state is State.CLOSED
            self.run(asyncio.wait_for(self.event_reader, 2))  # the event stream ended
            assert self.event_log and self.event_log[-1].state is State.CLOSED
            for entry in self.subs:
                self.run(asyncio.wait_for(asyncio.gather(*entry.readers), 2))
            for p in self.published:
                assert p.future.done()
                if not p.future.cancelled():
                    p.future.exception()
            left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            assert not left, left
            assert not self.broker.links
        finally:
            self.broker.refuse_connections(False)
            self.broker.release_confirms()
            MemoryBroker.drop(self.broker.name)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


class CoreMachineOnUvloop(CoreMachine):
    new_loop = staticmethod(uvloop.new_event_loop)


MODEL_SETTINGS = settings(
    max_examples=120,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreModel = CoreMachine.TestCase
TestCoreModel.settings = MODEL_SETTINGS
TestCoreModelOnUvloop = CoreMachineOnUvloop.TestCase
TestCoreModelOnUvloop.settings = MODEL_SETTINGS
