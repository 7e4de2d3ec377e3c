"""One bounded FIFO for several concurrent readers: the buffer of subscriptions and event streams.

A ``Mailbox`` hands each item to exactly one reader, in the order it was pushed. Any number of
tasks may wait in ``get()`` at once; every one of them is woken when the mailbox is closed or
failed. Waiting is cancellation-safe the way ``asyncio.Queue`` is: a push only wakes a reader,
and the reader takes the item itself once it runs, so an item is never carried by a future's
result and a reader cancelled while it waits cannot lose one. A reader that was woken but is
cancelled before it runs passes its wake-up on to the next waiting reader.

Ending:

- ``close()``: readers are handed what is left, then ``get()`` raises ``StopAsyncIteration``.
- ``fail(error)``: the same, but once empty ``get()`` raises ``error`` (every time, for every
  reader). Items buffered before the failure are still handed out first: they arrived before
  the failure and may still be settled.

After either, ``push()`` takes nothing more (it returns False): a reader that has seen the
end must never be handed an item after it.

Capacity: with ``overflow="keep"`` (a subscription) the mailbox never drops anything; ``room``
tells the producer how much more it should push (its credit or prefetch keeps the surplus at
the broker), and a push past ``capacity`` is still kept. With ``overflow="drop_oldest"`` (an
event stream) a push into a full mailbox drops the oldest item and counts it; the next reader
is then handed ``notice(count, next_item)`` before the items that follow the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from .errors import ConfigError

T = TypeVar("T")

Overflow = Literal["keep", "drop_oldest"]


class Mailbox(Generic[T]):
    """A FIFO of ``T`` for several concurrent readers (see the module docstring)."""

    __slots__ = (
        "_closed",
        "_drop_oldest",
        "_ended",
        "_error",
        "_items",
        "_notice",
        "_on_space",
        "_paused",
        "_readers",
        "_unreported",
        "capacity",
        "dropped",
    )

    def __init__(
        self,
        capacity: int,
        *,
        overflow: Overflow = "keep",
        notice: Callable[[int, T], T] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"a buffer's capacity must be a positive int, got {capacity!r}")
        if overflow not in ("keep", "drop_oldest"):
            raise ConfigError(f"overflow must be 'keep' or 'drop_oldest', got {overflow!r}")
        self.capacity = capacity
        #: Items dropped by ``overflow="drop_oldest"`` since the mailbox was made.
        self.dropped = 0
        self._items: deque[T] = deque()
        self._readers: deque[asyncio.Future[None]] = deque()
        self._drop_oldest = overflow == "drop_oldest"
        self._notice = notice
        self._unreported = 0  # dropped since the last notice was handed out (if any is given)
        self._on_space: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._ended = False  # closed or failed: one flag for the hot path
        self._paused = False

    # -- the producer's side ------------------------------------------------------------------

    def push(self, item: T) -> bool:
        """Append ``item`` and wake one waiting reader; False (and nothing kept) once ended."""
        if self._ended:
            return False
        items = self._items
        if self._drop_oldest and len(items) >= self.capacity:
            items.popleft()
            self.dropped += 1
            if self._notice is not None:
                self._unreported += 1
        items.append(item)
        readers = self._readers
        if readers:
            # The first waiter, inline (this runs once per delivery); one a cancelled reader
            # left behind is passed over by ``_wake_one``.
            waiter = readers.popleft()
            if waiter.done():
                self._wake_one()
            else:
                waiter.set_result(None)
        return True

    @property
    def room(self) -> int:
        """How many more items the producer should push: 0 while paused or full."""
        if self._paused:
            return 0
        room = self.capacity - len(self._items)
        return room if room > 0 else 0  # no max(): this runs once per delivery

    @property
    def buffered(self) -> int:
        return len(self._items)

    def pause(self) -> None:
        """``room`` reads 0 from now on; what is buffered can still be read."""
        self._paused = True

    @property
    def paused(self) -> bool:
        return self._paused

    def on_space(self, callback: Callable[[], None] | None) -> None:
        """Called after each item a reader takes (a paused producer resumes from here)."""
        self._on_space = callback

    def drop_if(self, predicate: Callable[[T], bool]) -> int:
        """Remove the buffered items ``predicate`` picks; returns how many. Linear: for rare
        events (a lost link), not the hot path."""
        items = self._items
        kept = [item for item in items if not predicate(item)]
        removed = len(items) - len(kept)
        if removed:
            # In place: a waiting get() holds this very deque.
            items.clear()
            items.extend(kept)
            if not items:
                self._unreported = 0  # the gap has nothing after it to report before
        return removed

    def clear(self) -> int:
        """Remove every buffered item; returns how many."""
        return self.drop_if(lambda _: True)

    # -- ending -------------------------------------------------------------------------------

    def close(self) -> None:
        """Readers get what is left, then ``StopAsyncIteration``. Idempotent; no effect after
        ``fail``."""
        self._closed = self._ended = True
        self._wake_all()

    def fail(self, error: BaseException) -> None:
        """Readers get what is left, then ``error``. The first failure wins; no effect after
        ``close``."""
        if not self._ended:
            self._error = error
            self._ended = True
        self._wake_all()

    @property
    def waiting(self) -> int:
        """Readers waiting in ``get()`` for an item (for diagnostics and tests)."""
        return sum(1 for waiter in self._readers if not waiter.done())

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def ended(self) -> bool:
        """Closed or failed: it takes nothing more."""
        return self._ended

    # -- the readers' side --------------------------------------------------------------------

    async def get(self) -> T:
        """The next item; waits while empty. ``StopAsyncIteration`` once closed and empty, the
        error once failed and empty."""
        items = self._items
        while not items:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            # Inline, not a helper coroutine: one frame less on every wait.
            waiter = asyncio.get_running_loop().create_future()
            self._readers.append(waiter)
            try:
                await waiter
            except BaseException:
                self._stop_waiting(waiter)
                raise
        if self._unreported:
            return self._report_gap()
        item = items.popleft()
        callback = self._on_space
        if callback is not None:
            callback()
        return item

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> T:
        return await self.get()

    def _report_gap(self) -> T:
        # The gap comes first; the item after it stays for the next take. No wake-up is owed
        # to anyone: the dropped item's own push woke a reader, and this is its take.
        dropped, self._unreported = self._unreported, 0
        assert self._notice is not None  # only counted when there is a notice to give
        return self._notice(dropped, self._items[0])

    def _stop_waiting(self, waiter: asyncio.Future[None]) -> None:
        """A waiting reader is leaving (cancelled, timed out): out of the line, or, if it was
        already woken for an item it will not take now, pass the wake-up on."""
        if not waiter.done() or waiter.cancelled():
            waiter.cancel()
            # Linear, on cancellation only; a push may already have passed over it.
            with contextlib.suppress(ValueError):
                self._readers.remove(waiter)
        elif self._items and self._readers:
            self._wake_one()

    def _wake_one(self) -> None:
        readers = self._readers
        while readers:
            waiter = readers.popleft()
            if not waiter.done():  # a cancelled reader's waiter may still be queued
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        readers = self._readers
        while readers:
            waiter = readers.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:
        state = "failed" if self._error is not None else ("closed" if self._closed else "open")
        return (
            f"<Mailbox {state} buffered={len(self._items)}/{self.capacity} "
            f"waiting={self.waiting} dropped={self.dropped}>"
        )
