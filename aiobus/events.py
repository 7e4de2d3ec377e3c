"""Connection states and the event stream that reports them (and subscription failures)."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a connection, in order.

    ``kind`` is ``"state"`` for a state change (``state`` says which), ``"attempt_failed"`` for
    a connect attempt that failed (``error``, ``attempt``, and the ``delay`` before the next),
    ``"link_lost"`` when a live link dies (``error`` says why, ``delay`` is the wait before the
    next attempt), ``"subscription_reattached"`` when the broker ended one consumer and it was
    attached again, ``"subscription_failed"`` for a subscription that could not be
    (re-)attached and is not receiving (its iteration raises the error too).
    """

    kind: str
    state: State
    reason: str = ""
    error: BaseException | None = field(default=None, compare=False)
    attempt: int = 0
    delay: float | None = None
    endpoint: str = ""
    time: float = 0.0


class EventHub:
    """Fans events out to every ``events()`` stream; each keeps the last ``backlog``."""

    def __init__(self, backlog: int = 1000) -> None:
        self._streams: list[EventStream] = []
        self._backlog = backlog
        self._closed = False

    def emit(self, event: Event) -> None:
        for stream in self._streams:
            stream._put(event)

    def listen(self) -> EventStream:
        stream = EventStream(self, self._backlog)
        if self._closed:
            stream._end()
        else:
            self._streams.append(stream)
        return stream

    def discard(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        self._closed = True
        for stream in self._streams:
            stream._end()
        self._streams.clear()


class EventStream:
    """Async iterator of events from the moment ``events()`` was called until the connection
    closes (or ``aclose()``). Use ``async with bus.events() as events`` to stop listening."""

    def __init__(self, hub: EventHub, backlog: int) -> None:
        self._hub = hub
        self._events: deque[Event] = deque(maxlen=backlog)
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def _put(self, event: Event) -> None:
        self._events.append(event)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    async def aclose(self) -> None:
        self._hub.discard(self)
        self._end()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
