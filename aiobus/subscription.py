"""Subscription: an async context manager and async iterator of deliveries that outlives links.

The buffer is bounded by prefetch (credit, receive maximum): the broker keeps the surplus, so
nothing it considers delivered is ever dropped here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import ConnectionClosed

if TYPE_CHECKING:
    from .connection import Connection
    from .message import Delivery
    from .transports.base import Consumer, SubscriptionSpec


class Subscription:
    def __init__(self, connection: Connection, spec: SubscriptionSpec) -> None:
        self._connection = connection
        self.spec = spec
        self.capacity = spec.prefetch
        self._buffer: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._space_callback: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._paused = False
        self.consumer: Consumer | None = None

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    @property
    def live(self) -> bool:
        """True while attached on a live link; False during an outage or after a failure."""
        return self.consumer is not None and self.consumer.alive

    @property
    def error(self) -> BaseException | None:
        """Why re-attaching failed, if it did; iteration raises it too."""
        return self._error

    # -- the application's side -----------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        await self._connection._add_subscription(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._connection._remove_subscription(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        buffer = self._buffer
        while not buffer:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        delivery = buffer.popleft()
        callback = self._space_callback
        if callback is not None:
            callback()
        return delivery

    async def get(self, timeout: float | None = None) -> Delivery:
        """The next delivery, waiting at most ``timeout`` seconds (``TimeoutError``)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    # -- the consumer's side (DeliverySink) -----------------------------------------------

    def push(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def room(self) -> int:
        if self._paused:
            return 0
        return self.capacity - len(self._buffer)

    def pause(self) -> None:
        """Take nothing more: ``room`` reads 0 from now on, so the consumer leaves further
        messages with the broker (or unacknowledged in the link) while what is already
        buffered can still be read. For a graceful drain where the protocol cannot give a
        delivered message back (MQTT): stop the inflow, handle what is in hand, then leave."""
        self._paused = True

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def buffered(self) -> int:
        """Deliveries waiting in the local buffer (``capacity - room`` only while not paused)."""
        return len(self._buffer)

    def on_space(self, callback: Callable[[], None] | None) -> None:
        """Called after the application takes a delivery: a consumer paused on a full buffer
        (no-ack, MQTT) resumes reading from here."""
        self._space_callback = callback

    # -- the core's side ------------------------------------------------------------------

    def _link_lost(self) -> None:
        """Drop buffered deliveries the broker will send again; keep those it will not."""
        self.consumer = None
        self._space_callback = None
        if self._buffer:
            self._buffer = deque(d for d in self._buffer if not d.returns_on_loss)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _close(self, connection_closed: bool) -> None:
        self._closed = True
        self.consumer = None
        self._space_callback = None
        self._buffer.clear()
        if connection_closed and self._error is None:
            self._error = ConnectionClosed("the connection was closed")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __repr__(self) -> str:
        state = "live" if self.live else ("closed" if self._closed else "detached")
        return f"<Subscription {self.spec.pattern!r} {state} buffered={len(self._buffer)}>"
