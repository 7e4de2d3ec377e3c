"""The outbox: every published message from the call until the broker settles it.

queued -> written (in flight) -> done. One deadline sweep covers every message (a timer per
message costs more than the rest of the outbox together), call order is kept across reconnects,
and the in-flight window is enforced here so adapters only write and report outcomes.

Bounded by construction: a message that is done (confirmed, failed, timed out, cancelled)
leaves every structure at once, in constant time, so the outbox never holds more than
``max_buffered`` unfinished messages plus the window's written ones (a written message keeps
its window slot until the broker answers or the link dies, since the broker still counts it).
Nothing per message scans: the deadline sweep visits only what expires, plus the one message
it stops at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import LinkLost, PublishTimeout

QUEUED = 0
WRITTEN = 1
DONE = 2


@dataclass(frozen=True, slots=True)
class Confirm:
    """What an awaited publish gives back once the broker has settled the message."""

    protocol: str
    message_id: str
    broker_id: Any
    """The broker's handle for the delivery (AMQP delivery tag, MQTT packet id), if any."""
    latency: float
    """Seconds from the ``publish()`` call to the broker's settlement."""


class Outgoing:
    """One message in the outbox. Adapters read its fields and keep their own handle in ``tag``."""

    __slots__ = (
        "body",
        "confirm",
        "content_type",
        "correlation_id",
        "created",
        "deadline",
        "exchange",
        "future",
        "headers",
        "mandatory",
        "message_id",
        "outage",
        "persistent",
        "priority",
        "qos",
        "reply_to",
        "retain",
        "sends",
        "seq",
        "state",
        "tag",
        "timer",
        "topic",
        "ttl",
        "wire",
    )

    def __init__(
        self,
        topic: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        message_id: str = "",
        correlation_id: str | None = None,
        reply_to: str | None = None,
        ttl: float | None = None,
        priority: int | None = None,
        qos: int | None = None,
        retain: bool = False,
        mandatory: bool | None = None,
        exchange: str | None = None,
        persistent: bool | None = None,
        confirm: bool = True,
        outage: str = "retry",
    ) -> None:
        self.topic = topic
        self.body = body
        self.headers = headers
        self.content_type = content_type
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.ttl = ttl
        self.priority = priority
        self.qos = qos
        self.retain = retain
        self.mandatory = mandatory
        self.exchange = exchange
        self.persistent = persistent
        self.confirm = confirm
        self.outage = outage
        self.seq = 0
        self.state = QUEUED
        self.sends = 0
        self.created = 0.0
        self.deadline = 0.0
        self.tag: Any = None
        #: Its own deadline timer, only when its deadline is earlier than a message published
        #: before it (a shorter per-publish timeout); every other one shares the sweep.
        self.timer: asyncio.TimerHandle | None = None
        #: The adapter's encoded form for the current link (``Link.encode``); rebuilt on
        #: every send, since it may depend on the link (channel, limits, DUP flag).
        self.wire: Any = None
        self.future: PublishFuture | None = None

    def __repr__(self) -> str:
        return f"<Outgoing #{self.seq} {self.topic!r} {len(self.body)} bytes state={self.state}>"


class PublishFuture(asyncio.Future[Confirm]):
    """Resolves with a ``Confirm`` on the broker's settlement, or fails with a ``PublishError``.

    Cancelling it withdraws the message if it has not been written yet (an adapter that holds
    written messages before the wire, as AMQP 1.0 does while it waits for link credit, gives
    them back: ``Link.withdraw``); once on the wire it cannot be unsent, and its outcome is
    dropped.
    """

    _message: Outgoing
    _outbox: Outbox

    @property
    def message_id(self) -> str:
        return self._message.message_id

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        message = self._message
        if message.state != DONE:
            if message.state == WRITTEN:
                self._outbox.withdraw_written(message)
            self._outbox.finish(message)
        return super().cancel(msg)


class Outbox:
    """Every unfinished message is in exactly one of two structures, both dicts keyed by its
    sequence number: ``queue`` (waiting to be written) or ``in_flight`` (written, until the
    broker answers or the link dies; a written message that timed out keeps its slot there,
    since the broker still counts it). Removal is a hash lookup; nothing is ever scanned per
    message. Sequence numbers rise in call order, so the queue is taken from a cursor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: str, max_buffered: int) -> None:
        self._loop = loop
        self.protocol = protocol
        self.max_buffered = max_buffered
        #: Unfinished messages waiting to be written. Sent in sequence order from
        #: ``_cursor`` (no queued message has a lower sequence number), which is call order
        #: with re-sends after a reconnect first, since they were called first.
        self.queue: dict[int, Outgoing] = {}
        self._cursor = 1
        #: Written messages, in the order they were written (ascending sequence numbers).
        self.in_flight: dict[int, Outgoing] = {}
        self.pending = 0
        """Messages not yet done: counted against ``max_buffered``."""
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self._flush_waiters: list[asyncio.Future[None]] = []
        # Deadlines: in call order they almost always rise (one default timeout). A message
        # whose deadline is not earlier than every one before it is "swept": then deadline
        # order is sequence order, so the next to expire is the first unfinished swept one in
        # ``in_flight``, else at the queue's cursor, and one timer serves them all. The rare
        # earlier one (a shorter per-publish timeout) gets a timer of its own.
        self._last_deadline = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        #: The smallest size limit a broker stated on this connection (in a refusal, or
        #: where its protocol announces one).
        self.size_limit: int | None = None
        #: The live link's ``Link.withdraw`` (set by the pump, cleared when the link is
        #: lost): takes back a written message the adapter still holds unsent.
        self.withdraw: Callable[[Outgoing], bool] | None = None

    def learn_size_limit(self, limit: int) -> None:
        if self.size_limit is None or limit < self.size_limit:
            self.size_limit = limit

    def entries(self) -> int:
        """How many messages the outbox references: at most ``max_buffered`` unfinished plus
        the window's written ones (the bound tests check this after every operation)."""
        return len(self.queue) + len(self.in_flight)

    # -- entering -------------------------------------------------------------------------

    def add(self, msg: Outgoing, timeout: float) -> PublishFuture:
        loop = self._loop
        self._seq += 1
        seq = msg.seq = self._seq
        now = loop.time()
        msg.created = now
        deadline = msg.deadline = now + timeout
        fut = PublishFuture(loop=loop)
        fut._message = msg
        fut._outbox = self
        msg.future = fut
        self.queue[seq] = msg
        self.pending += 1
        if deadline >= self._last_deadline:
            self._last_deadline = deadline
            # The sweep may be armed for a later deadline of a message that finished since.
            if self._timer is None or deadline < self._timer_when:
                self._arm(deadline)
        else:
            msg.timer = loop.call_at(deadline, self._expire, msg)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return fut

    # -- the pump's side ------------------------------------------------------------------

    def take(self, room: int) -> list[Outgoing]:
        """Up to ``room`` queued messages, marked written, in send order."""
        batch: list[Outgoing] = []
        queue = self.queue
        in_flight = self.in_flight
        pop = queue.pop
        seq, top = self._cursor, self._seq
        while room > 0 and queue and seq <= top:
            msg = pop(seq, None)
            seq += 1
            if msg is None:
                continue  # finished while queued, or written already
            msg.state = WRITTEN
            msg.sends += 1
            in_flight[msg.seq] = msg
            batch.append(msg)
            room -= 1
        self._cursor = seq
        return batch

    async def wait_for_work(self) -> None:
        """Until something is queued or window room frees up; the pump re-checks after."""
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- outcomes -------------------------------------------------------------------------

    def settle(self, msg: Outgoing, broker_id: Any = None) -> None:
        if self.in_flight.pop(msg.seq, None) is None:
            return
        self._wake()
        if msg.state == DONE:
            return
        self.finish(msg)
        fut = msg.future
        if fut is not None and not fut.done():
            fut.set_result(
                Confirm(self.protocol, msg.message_id, broker_id, self._loop.time() - msg.created)
            )

    def fail(self, msg: Outgoing, exc: BaseException) -> None:
        """The broker refused a written message (nack, return, reject), or it could not be
        encoded: it fails alone and leaves the window."""
        if self.in_flight.pop(msg.seq, None) is None:
            return
        self._wake()
        if msg.state != DONE:
            self._fail(msg, exc)

    def _fail(self, msg: Outgoing, exc: BaseException) -> None:
        self.finish(msg)
        fut = msg.future
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def finish(self, msg: Outgoing) -> None:
        """Mark done exactly once and drop it from the queue at once (a written message
        keeps its window slot until settled)."""
        if msg.state == QUEUED:
            del self.queue[msg.seq]
        msg.state = DONE
        timer = msg.timer
        if timer is not None:
            timer.cancel()
            msg.timer = None
        self.pending -= 1
        if not self.pending:
            self._last_deadline = float("-inf")
            if self._flush_waiters:
                for waiter in self._flush_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._flush_waiters.clear()

    # -- deadlines ------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Time out every swept message whose deadline has passed, in one pass: the written
        ones first (their sequence numbers are all lower), then the queue from its cursor;
        then arm for the next one."""
        self._timer = None
        now = self._loop.time()
        expired: list[Outgoing] = []
        nxt: float | None = None
        for msg in self.in_flight.values():
            if msg.state == DONE or msg.timer is not None:
                continue
            if msg.deadline > now:
                nxt = msg.deadline
                break
            expired.append(msg)
        if nxt is None:
            queue = self.queue
            seq, top = self._cursor, self._seq
            while seq <= top:
                queued = queue.get(seq)
                if queued is None:
                    if seq == self._cursor:
                        self._cursor = seq + 1  # nothing below it is queued any more
                elif queued.timer is None:
                    if queued.deadline > now:
                        nxt = queued.deadline
                        break
                    expired.append(queued)
                seq += 1
        for msg in expired:
            self._time_out(msg)
        if nxt is not None:
            self._arm(nxt)

    def _expire(self, msg: Outgoing) -> None:
        msg.timer = None
        if msg.state != DONE:
            self._time_out(msg)

    def _time_out(self, msg: Outgoing) -> None:
        if msg.state == QUEUED:
            what, maybe_delivered = "waiting to be sent", False
        elif self.withdraw_written(msg):
            what, maybe_delivered = "waiting for the link to take it (withdrawn)", False
        else:
            what, maybe_delivered = "waiting for the broker", True
        self._fail(
            msg,
            PublishTimeout(
                f"message {msg.message_id} still {what} at its deadline",
                maybe_delivered=maybe_delivered,
            ),
        )

    def withdraw_written(self, msg: Outgoing) -> bool:
        """Take back a written message that the link still holds unsent (``Link.withdraw``):
        it leaves the window, never to be sent. False where it may be on the wire."""
        withdraw = self.withdraw
        if withdraw is None or not withdraw(msg):
            return False
        del self.in_flight[msg.seq]
        self._wake()
        return True

    # -- link life ------------------------------------------------------------------------

    def link_lost(self) -> None:
        """In-flight messages: re-sent first, in order, on the next link, or failed by policy."""
        self.withdraw = None
        queue = self.queue
        for msg in self.in_flight.values():
            if msg.state == DONE:
                continue
            if msg.outage == "fail":
                self._fail(msg, LinkLost(maybe_delivered=True))
            else:
                msg.state = QUEUED
                queue[msg.seq] = msg
                if msg.seq < self._cursor:
                    self._cursor = msg.seq
        self.in_flight.clear()
        self._fail_queued_by_policy()

    def fail_unsent(self, msg: Outgoing) -> None:
        """Fail one message that was never written: its policy does not wait out an outage."""
        if msg.state == QUEUED:
            self._fail(msg, LinkLost(maybe_delivered=False))

    def _fail_queued_by_policy(self) -> None:
        """During an outage, messages whose policy is "fail" do not wait for the next link."""
        for msg in [m for m in self.queue.values() if m.outage == "fail"]:
            self._fail(msg, LinkLost(maybe_delivered=False))

    def fail_all(self, exc_factory: Any) -> None:
        for msg in [*self.in_flight.values(), *self.queue.values()]:
            if msg.state != DONE:
                self._fail(msg, exc_factory(msg))
        self.in_flight.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    async def flush(self) -> None:
        if not self.pending:
            return
        waiter = self._loop.create_future()
        self._flush_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._flush_waiters:
                self._flush_waiters.remove(waiter)
