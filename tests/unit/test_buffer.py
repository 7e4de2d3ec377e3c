"""The one buffer of subscriptions and event streams: several readers, ending, cancellation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from aiobus.buffer import Mailbox
from aiobus.errors import ConfigError


class Broken(Exception):
    """What a test fails a mailbox with."""


async def _readers_waiting(mailbox: Mailbox[int], count: int) -> None:
    """Until ``count`` tasks wait in ``get()``: each turn of the loop lets one more get there."""
    for _ in range(count + 1):
        if mailbox.waiting == count:
            return
        await asyncio.sleep(0)  # one loop turn, not a timing guess: the condition decides
    assert mailbox.waiting == count


def _spawn_readers(mailbox: Mailbox[int], count: int) -> list[asyncio.Task[int]]:
    return [asyncio.create_task(mailbox.get()) for _ in range(count)]


# -- one reader ---------------------------------------------------------------------------------


async def test_items_come_out_in_the_order_they_went_in() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    for i in range(5):
        assert mailbox.push(i)
    assert [await mailbox.get() for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_room_capacity_buffered_and_pause() -> None:
    mailbox: Mailbox[int] = Mailbox(3)
    assert (mailbox.capacity, mailbox.room, mailbox.buffered) == (3, 3, 0)
    for i in range(4):  # a push past capacity is kept: the producer's credit is what bounds it
        mailbox.push(i)
    assert (mailbox.room, mailbox.buffered) == (0, 4)
    await mailbox.get()
    await mailbox.get()
    assert mailbox.room == 1
    mailbox.pause()
    assert mailbox.paused and mailbox.room == 0
    assert await mailbox.get() == 2  # what is buffered can still be read


async def test_on_space_is_called_after_each_take() -> None:
    mailbox: Mailbox[int] = Mailbox(3)
    rooms: list[int] = []
    mailbox.on_space(lambda: rooms.append(mailbox.room))
    mailbox.push(1)
    mailbox.push(2)
    await mailbox.get()
    await mailbox.get()
    assert rooms == [2, 3]
    mailbox.on_space(None)
    mailbox.push(3)
    await mailbox.get()
    assert rooms == [2, 3]


async def test_drop_if_removes_what_the_predicate_picks_and_keeps_the_order() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    for i in range(6):
        mailbox.push(i)
    assert mailbox.drop_if(lambda i: i % 2 == 0) == 3
    mailbox.close()
    assert [i async for i in mailbox] == [1, 3, 5]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "3"])
def test_a_bad_capacity_is_a_config_error(capacity: object) -> None:
    with pytest.raises(ConfigError, match="capacity must be a positive int"):
        Mailbox(capacity)  # type: ignore[arg-type]


def test_a_bad_overflow_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="overflow must be"):
        Mailbox(3, overflow="drop_newest")  # type: ignore[arg-type]


# -- ending ---------------------------------------------------------------------------------------


async def test_close_hands_out_what_is_left_then_ends_every_reader() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    mailbox.push(1)
    mailbox.close()
    assert not mailbox.push(2)  # nothing after the end
    assert await mailbox.get() == 1
    with pytest.raises(StopAsyncIteration):
        await mailbox.get()


async def test_close_wakes_every_waiting_reader() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    readers = _spawn_readers(mailbox, 3)
    await _readers_waiting(mailbox, 3)
    mailbox.close()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(o, StopAsyncIteration) for o in outcomes)


async def test_fail_wakes_every_waiting_reader_with_the_error() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    readers = _spawn_readers(mailbox, 3)
    await _readers_waiting(mailbox, 3)
    error = Broken("gone")
    mailbox.fail(error)
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert outcomes == [error, error, error]
    assert mailbox.error is error and mailbox.ended


async def test_fail_hands_out_what_was_buffered_first() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    mailbox.push(1)
    mailbox.fail(Broken("first"))
    mailbox.fail(Broken("second"))  # the first failure wins
    assert not mailbox.push(2)
    assert await mailbox.get() == 1
    with pytest.raises(Broken, match="first"):
        await mailbox.get()
    with pytest.raises(Broken, match="first"):  # every later get too
        await mailbox.get()


async def test_close_after_fail_keeps_the_error() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    mailbox.fail(Broken("why"))
    mailbox.close()
    with pytest.raises(Broken):
        await mailbox.get()


# -- several readers ------------------------------------------------------------------------------


async def test_each_item_goes_to_exactly_one_of_several_waiting_readers() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    readers = _spawn_readers(mailbox, 3)
    await _readers_waiting(mailbox, 3)
    for i in range(3):
        mailbox.push(i)
    assert sorted(await asyncio.gather(*readers)) == [0, 1, 2]
    assert mailbox.buffered == 0


async def test_a_woken_reader_that_is_cancelled_passes_the_item_on() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    first, second = _spawn_readers(mailbox, 2)
    await _readers_waiting(mailbox, 2)
    mailbox.push(7)  # wakes ``first``; it has not run yet
    first.cancel()
    assert await second == 7
    with pytest.raises(asyncio.CancelledError):
        await first
    assert mailbox.buffered == 0


async def test_a_reader_cancelled_while_waiting_takes_nothing() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    (reader,) = _spawn_readers(mailbox, 1)
    await _readers_waiting(mailbox, 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    mailbox.push(1)
    assert mailbox.waiting == 0  # the cancelled reader left the line
    assert await mailbox.get() == 1


async def test_a_get_that_times_out_loses_nothing() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout_at(loop.time()):  # already due: it times out while waiting
            await mailbox.get()
    mailbox.push(1)
    assert await mailbox.get() == 1


# -- drop-oldest overflow -------------------------------------------------------------------------


def _overflow_mailbox(capacity: int) -> Mailbox[int]:
    """Items are positive; the overflow notice for ``n`` dropped items is ``-n``."""
    return Mailbox(capacity, overflow="drop_oldest", notice=lambda dropped, _next: -dropped)


async def test_drop_oldest_reports_the_count_before_the_items_after_the_gap() -> None:
    mailbox = _overflow_mailbox(3)
    for i in range(1, 7):
        mailbox.push(i)
    assert mailbox.dropped == 3 and mailbox.buffered == 3
    mailbox.close()
    assert [i async for i in mailbox] == [-3, 4, 5, 6]


async def test_each_gap_is_reported_once_with_its_own_count() -> None:
    mailbox = _overflow_mailbox(2)
    taken: list[int] = []
    for i in range(1, 5):
        mailbox.push(i)
    taken += [await mailbox.get(), await mailbox.get()]
    for i in range(5, 7):  # 4 is still buffered: 6 pushes it out
        mailbox.push(i)
    mailbox.close()
    taken += [i async for i in mailbox]
    assert taken == [-2, 3, -1, 5, 6]
    assert mailbox.dropped == 3


async def test_on_space_is_not_called_for_an_overflow_notice() -> None:
    mailbox = _overflow_mailbox(1)
    calls: list[None] = []
    mailbox.on_space(lambda: calls.append(None))
    mailbox.push(1)
    mailbox.push(2)
    assert await mailbox.get() == -1
    assert not calls
    assert await mailbox.get() == 2
    assert len(calls) == 1


# -- every schedule: a model-based test -----------------------------------------------------------


class _Reader:
    """A task reading the mailbox in a loop; ``gate`` cleared makes it busy between items."""

    def __init__(self, machine: MailboxMachine, rid: int) -> None:
        self.rid = rid
        self.received: list[int] = []
        self.waiting = False
        self.outcome: str | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.task = machine.loop.create_task(self._run(machine.mailbox))

    async def _run(self, mailbox: Mailbox[int]) -> None:
        try:
            while True:
                await self.gate.wait()
                self.waiting = True
                try:
                    item = await mailbox.get()
                finally:
                    self.waiting = False
                self.received.append(item)  # the same step as the take: nothing in between
        except StopAsyncIteration:
            self.outcome = "closed"
        except Broken:
            self.outcome = "failed"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise


class MailboxMachine(RuleBasedStateMachine):
    """Random schedules of push / get / cancel / busy readers / drop / close / fail, with the
    loop stepped one turn at a time in between, checked after every step:

    - every item is accounted for: taken by exactly one reader, still buffered, or dropped;
    - each reader takes items in push order;
    - once the loop is quiet, no reader waits while an item is buffered;
    - once ended and drained, every reader that is not busy has ended.
    """

    capacity = 3
    overflow: str = "keep"

    readers = Bundle("readers")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.mailbox: Mailbox[int] = self.make_mailbox()
        self.all_readers: list[_Reader] = []
        self.accepted: list[int] = []
        self.dropped_by_predicate: list[int] = []
        self.next_item = 1
        self.ended = False

    def make_mailbox(self) -> Mailbox[int]:
        return Mailbox(self.capacity)

    # -- stepping the loop ----------------------------------------------------------------

    def turn(self) -> None:
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def snapshot(self) -> tuple[object, ...]:
        return (
            self.mailbox.buffered,
            tuple((len(r.received), r.waiting, r.task.done()) for r in self.all_readers),
        )

    def settle(self) -> None:
        """Turn the loop until nothing observable changes for several turns in a row."""
        last, stable = self.snapshot(), 0
        for _ in range(2000):
            self.turn()
            now = self.snapshot()
            stable = stable + 1 if now == last else 0
            last = now
            if stable >= 6:
                return
        raise AssertionError("the readers never came to rest")

    # -- rules ----------------------------------------------------------------------------

    # Two readers from the start: the schedules that lose wake-ups need several waiting.
    @initialize(target=readers)
    def first_reader(self) -> _Reader:
        return self.spawn_reader()

    @initialize(target=readers)
    def second_reader(self) -> _Reader:
        return self.spawn_reader()

    @precondition(lambda self: len(self.all_readers) < 5)
    @rule(target=readers)
    def spawn_reader(self) -> _Reader:
        reader = _Reader(self, len(self.all_readers))
        self.all_readers.append(reader)
        self.turn()  # it starts (and waits, if the mailbox is empty)
        return reader

    @rule(count=st.integers(1, 4))
    def push(self, count: int) -> None:
        for _ in range(count):
            item = self.next_item
            self.next_item += 1
            accepted = self.mailbox.push(item)
            assert accepted is not self.ended
            if accepted:
                self.accepted.append(item)

    @rule(turns=st.integers(1, 4))
    def step(self, turns: int) -> None:
        for _ in range(turns):
            self.turn()

    @rule(reader=consumes(readers))
    def cancel(self, reader: _Reader) -> None:
        reader.task.cancel()

    @rule(count=st.integers(1, 2), reader=consumes(readers), then_rest=st.booleans())
    def push_then_cancel(self, count: int, reader: _Reader, then_rest: bool) -> None:
        """In the same loop turn: the push may have woken exactly the reader cancelled. Any
        later push would hide a wake-up lost here, so look at once too."""
        self.push(count)
        self.cancel(reader)
        if then_rest:
            self.quiet()

    @rule(reader=consumes(readers), count=st.integers(1, 2), then_rest=st.booleans())
    def cancel_then_push(self, reader: _Reader, count: int, then_rest: bool) -> None:
        """In the same loop turn: the cancelled reader's waiter is still first in line when
        the push looks for someone to wake."""
        self.cancel(reader)
        self.push(count)
        if then_rest:
            self.quiet()

    @rule(reader=readers)
    def make_busy(self, reader: _Reader) -> None:
        reader.gate.clear()

    @rule(reader=readers)
    def make_idle(self, reader: _Reader) -> None:
        reader.gate.set()

    @rule()
    def drop_even_items(self) -> None:
        in_box = self.expected_buffer()
        dropped = self.mailbox.drop_if(lambda i: i > 0 and i % 2 == 0)
        picked = [i for i in in_box if i % 2 == 0]
        assert dropped == len(picked)
        self.dropped_by_predicate += picked

    @rule()
    def pause(self) -> None:
        self.mailbox.pause()

    # Not too soon: everything after the end only checks that it stays ended.
    @precondition(lambda self: not self.ended and len(self.accepted) >= 4)
    @rule(failure=st.booleans())
    def end(self, failure: bool) -> None:
        if failure:
            self.mailbox.fail(Broken("failed by the model"))
        else:
            self.mailbox.close()
        self.ended = True

    @rule()
    def quiet(self) -> None:
        self.settle()
        self.check_at_rest()

    # -- what must hold -------------------------------------------------------------------

    def taken(self) -> list[int]:
        return [i for r in self.all_readers for i in r.received if i > 0]

    def lost_to_overflow(self) -> int:
        return self.mailbox.dropped

    def expected_buffer(self) -> list[int]:
        gone = set(self.taken()) | set(self.dropped_by_predicate)
        return [i for i in self.accepted if i not in gone]

    @invariant()
    def each_item_is_taken_once_buffered_or_dropped(self) -> None:
        taken = self.taken()
        assert len(taken) == len(set(taken)), "an item reached two readers"
        assert set(taken) <= set(self.accepted)
        accounted = (
            len(taken)
            + self.mailbox.buffered
            + len(self.dropped_by_predicate)
            + self.lost_to_overflow()
        )
        assert accounted == len(self.accepted), "an item was lost"

    @invariant()
    def each_reader_takes_items_in_push_order(self) -> None:
        for reader in self.all_readers:
            items = [i for i in reader.received if i > 0]
            assert items == sorted(items)

    @invariant()
    def room_follows_the_buffer(self) -> None:
        expected = 0 if self.mailbox.paused else max(0, self.capacity - self.mailbox.buffered)
        assert self.mailbox.room == expected

    def check_at_rest(self) -> None:
        waiting = [r for r in self.all_readers if r.waiting and not r.task.done()]
        if waiting:
            assert self.mailbox.buffered == 0, "a reader sleeps while an item waits"
            assert not self.ended, "a reader was not woken by the end"
        if self.ended and self.mailbox.buffered == 0:
            for reader in self.all_readers:
                # A task cancelled before its first step never ran, so it set no outcome.
                if reader.gate.is_set() and not reader.task.cancelled():
                    assert reader.task.done(), "a reader did not end"
                    assert reader.outcome == ("failed" if self.mailbox.error else "closed")

    def teardown(self) -> None:
        try:
            self.settle()
            self.check_at_rest()  # before the end wakes everyone: no wake-up was lost
            if not self.ended:
                self.mailbox.close()
                self.ended = True
            self.settle()
            if not any(not r.task.done() for r in self.all_readers):
                self.spawn_reader()  # someone must drain what is left
            for reader in self.all_readers:
                reader.gate.set()
            self.settle()
            self.check_at_rest()
            assert self.mailbox.buffered == 0
            assert all(r.task.done() for r in self.all_readers)
            self.check_fully_drained()
        finally:
            for reader in self.all_readers:
                reader.task.cancel()
            pending = [r.task for r in self.all_readers]
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def check_fully_drained(self) -> None:
        assert sorted(self.taken() + self.dropped_by_predicate) == self.accepted


class OverflowMachine(MailboxMachine):
    """The same schedules on an event stream's mailbox: a full one drops its oldest item and
    the next reader is handed ``-count`` first; every dropped item is reported exactly once."""

    def make_mailbox(self) -> Mailbox[int]:
        return _overflow_mailbox(self.capacity)

    @rule()
    def drop_even_items(self) -> None:
        """Event streams never drop by predicate (and a gap they empty is not reported)."""

    def check_fully_drained(self) -> None:
        notices = [-i for r in self.all_readers for i in r.received if i < 0]
        assert sum(notices) == self.mailbox.dropped, "a gap was not reported, or twice"
        assert len(self.taken()) + self.mailbox.dropped == len(self.accepted)


_model_settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestMailboxModel = MailboxMachine.TestCase
TestMailboxModel.settings = _model_settings
TestOverflowModel = OverflowMachine.TestCase
TestOverflowModel.settings = _model_settings
