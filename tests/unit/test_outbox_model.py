"""The outbox as a state machine: random operations against a model, on a clock the test owns.

After every step: no message is referenced by the outbox once it is done (except a written one
holding its window slot), so the outbox never holds more than ``max_buffered + window``
entries; every future whose deadline has passed is settled; ``pending`` counts exactly the
unfinished messages.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiobus
from aiobus.errors import LinkLost, Nacked, PublishTimeout
from aiobus.events import State
from aiobus.memory_broker import MemoryBroker
from aiobus.publishing import DONE, QUEUED, WRITTEN, Outbox, Outgoing, PublishFuture
from tests.helpers import wait_for_state

MAX_BUFFERED = 8
WINDOW = 4


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = 1000.0
        self.loop.time = lambda: self.clock  # type: ignore[method-assign]
        self.outbox = Outbox(self.loop, "model", MAX_BUFFERED)
        self.futures: list[tuple[Outgoing, PublishFuture]] = []
        self.n = 0

    def teardown(self) -> None:
        self.outbox.fail_all(lambda m: aiobus.ConnectionClosed("end"))
        self._run_due()
        for _, fut in self.futures:
            if not fut.cancelled():
                fut.exception()
        self.loop.close()

    def _run_due(self) -> None:
        """One loop iteration: timers due at the test's clock fire, callbacks run."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def _written(self) -> list[Outgoing]:
        return [m for m in self.outbox.in_flight.values() if m.state == WRITTEN]

    @precondition(lambda self: self.outbox.pending < MAX_BUFFERED)
    @rule(timeout=st.sampled_from([1.0, 5.0, 30.0, 0.5]), outage=st.sampled_from(["retry", "fail"]))
    def publish(self, timeout: float, outage: str) -> None:
        self.n += 1
        msg = Outgoing("t", b"x", message_id=str(self.n), outage=outage)
        fut = self.outbox.add(msg, timeout)
        self.futures.append((msg, fut))

    @rule()
    def take(self) -> None:
        room = WINDOW - len(self.outbox.in_flight)
        if room > 0:
            self.outbox.take(room)

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        in_flight = list(self.outbox.in_flight.values())
        if in_flight:
            self.outbox.settle(data.draw(st.sampled_from(in_flight)))

    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        in_flight = list(self.outbox.in_flight.values())
        if in_flight:
            self.outbox.fail(data.draw(st.sampled_from(in_flight)), Nacked("model"))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.futures:
            _, fut = data.draw(st.sampled_from(self.futures))
            fut.cancel()

    @rule()
    def link_lost(self) -> None:
        self.outbox.link_lost()

    @rule(seconds=st.sampled_from([0.1, 0.6, 2.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock += seconds
        self._run_due()

    @invariant()
    def bounded(self) -> None:
        assert self.outbox.entries() <= MAX_BUFFERED + WINDOW
        assert len(self.outbox.in_flight) <= WINDOW

    @invariant()
    def done_messages_are_gone(self) -> None:
        for msg in self.outbox.queue.values():
            assert msg.state == QUEUED
        for msg in self.outbox.in_flight.values():
            assert msg.state in (WRITTEN, DONE)
        assert all(seq >= self.outbox._cursor for seq in self.outbox.queue)

    @invariant()
    def pending_counts_the_unfinished(self) -> None:
        unfinished = sum(1 for m, _ in self.futures if m.state != DONE)
        assert self.outbox.pending == unfinished
        assert all(fut.done() for m, fut in self.futures if m.state == DONE)
        assert not any(fut.done() for m, fut in self.futures if m.state != DONE)

    @invariant()
    def deadlines_are_kept(self) -> None:
        # Timers fire on the next loop iteration after the clock passes them.
        self._run_due()
        for msg, fut in self.futures:
            if msg.deadline <= self.clock:
                assert fut.done()
                if not fut.cancelled() and isinstance(fut.exception(), PublishTimeout):
                    assert msg.deadline <= self.clock

    @invariant()
    def fail_policy_never_waits_for_a_link(self) -> None:
        for _, fut in self.futures:
            if fut.done() and not fut.cancelled():
                exc = fut.exception()
                assert exc is None or isinstance(exc, (PublishTimeout, Nacked, LinkLost))


TestOutboxModel = OutboxMachine.TestCase
TestOutboxModel.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


async def test_forty_thousand_failed_publishes_keep_memory_flat(
    memory_broker: MemoryBroker,
) -> None:
    """Failed publishes during an outage leave the outbox at once: 40,000 of them with
    ``max_buffered=1000`` grow traced memory by less than 2 MiB, and the link's return does
    not walk dead entries."""
    async with aiobus.connect(
        memory_broker.url(), max_buffered=1000, outage="fail", backoff_initial=0.005
    ) as bus:
        async with bus.events() as events:
            memory_broker.refuse_connections()
            memory_broker.kill_links()
            await wait_for_state(events, State.RECONNECTING)
        outbox: Any = bus._outbox
        gc.collect()
        # Debug mode keeps a creation traceback per future: measure the outbox, not that.
        loop = asyncio.get_running_loop()
        loop.set_debug(False)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(40_000):
                fut = bus.publish("k", b"x" * 256)
                with pytest.raises(LinkLost):
                    fut.result()
                if i % 1000 == 0:
                    assert outbox.entries() <= 1000 + bus.options.max_in_flight
            del fut
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            loop.set_debug(True)
        assert outbox.entries() == 0
        assert grown < 2 * 1024 * 1024, f"outbox grew by {grown} bytes"
        memory_broker.refuse_connections(False)
        await bus.wait_connected(timeout=5)
        await bus.publish("k", b"after")
