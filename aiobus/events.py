"""Connection states and the event stream that reports them (and subscription failures)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .buffer import Mailbox


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
    (re-)attached and is not receiving (its iteration raises the error too),
    ``"dead_letter_unreceived"`` when a service finds no queue behind a dead-letter topic
    (its dead letters would be lost), ``"settle_lost"`` when ``process()`` handled a message
    whose link died before it could be acknowledged (``redelivered`` says whether the
    broker delivers it again),
    ``"delivery_undecodable"`` when a received message could not be decoded and was settled
    without reaching the application (AMQP 1.0: rejected by default, see its ``undecodable``
    option; MQTT: a topic that is not UTF-8, acknowledged; ``reason`` names the address or
    topic, the outcome and why, ``error`` is the decode error; the link and the messages
    behind it go on),
    ``"deliveries_dropped"`` when messages the broker does not keep (MQTT QoS 0) were dropped
    for a subscription whose buffer was full: once per burst, when the buffer is half empty
    again, ``dropped`` says how many (``Subscription.dropped`` counts them all),
    ``"session_taken_over"`` when an MQTT 5 broker ended the link because another
    connection took over the session (DISCONNECT 0x8E; ``error`` is ``SessionTakenOver``, and
    the connection ends instead of reconnecting),
    ``"inbound_too_large"`` when an MQTT broker sent a packet over ``max_receive_size``
    (``reason`` names its size and the limit; the link is closed at the packet's header and
    the connection reconnects), and
    ``"overflow"`` when this stream was read too slowly and dropped its oldest events:
    ``dropped`` says how many, and the overflow event comes where they were, before the
    events that follow (``state`` and ``time`` are those of the first event after the gap).
    """

    kind: str
    state: State
    reason: str = ""
    error: BaseException | None = field(default=None, compare=False)
    attempt: int = 0
    delay: float | None = None
    endpoint: str = ""
    time: float = 0.0
    dropped: int = 0
    redelivered: bool | None = None


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
    closes (or ``aclose()``). Use ``async with bus.events() as events`` to stop listening.

    Several tasks may read one stream: each event goes to one of them, and every one of them
    ends when the stream does. It keeps the last ``backlog`` unread events; older ones are
    dropped and reported by an ``overflow`` event in their place."""

    def __init__(self, hub: EventHub, backlog: int) -> None:
        self._hub = hub
        self._events: Mailbox[Event] = Mailbox(
            backlog, overflow="drop_oldest", notice=self._overflow_notice
        )

    @property
    def dropped(self) -> int:
        """Events this stream dropped (unread when more than ``backlog`` were waiting)."""
        return self._events.dropped

    def _overflow_notice(self, dropped: int, following: Event) -> Event:
        return Event(
            "overflow",
            following.state,
            reason=(
                f"{dropped} events were dropped: this stream keeps the last "
                f"{self._events.capacity} unread events; read it faster"
            ),
            time=following.time,
            dropped=dropped,
        )

    def _put(self, event: Event) -> None:
        self._events.push(event)

    def _end(self) -> None:
        self._events.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.get()

    async def aclose(self) -> None:
        self._hub.discard(self)
        self._end()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
