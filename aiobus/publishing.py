"""The outbox: every published message from the call until the broker settles it.

queued -> written (in flight) -> done. One deadline sweep covers every message (a timer per
message costs more than the rest of the outbox together), call order is kept across reconnects,
and the in-flight window is enforced here so adapters only write and report outcomes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
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
        "topic",
        "ttl",
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
        self.future: PublishFuture | None = None

    def __repr__(self) -> str:
        return f"<Outgoing #{self.seq} {self.topic!r} {len(self.body)} bytes state={self.state}>"


class PublishFuture(asyncio.Future[Confirm]):
    """Resolves with a ``Confirm`` on the broker's settlement, or fails with a ``PublishError``.

    Cancelling it withdraws the message if it has not been written yet; once written it cannot
    be unsent, and its outcome is dropped.
    """

    _message: Outgoing | None
    _outbox: Outbox | None

    @property
    def message_id(self) -> str:
        return self._message.message_id if self._message is not None else ""

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        message, outbox = self._message, self._outbox
        if message is not None and outbox is not None and message.state != DONE:
            outbox.finish(message)
        return super().cancel(msg)


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: str, max_buffered: int) -> None:
        self._loop = loop
        self.protocol = protocol
        self.max_buffered = max_buffered
        self.queue: deque[Outgoing] = deque()
        self.in_flight: dict[int, Outgoing] = {}
        self.pending = 0
        """Messages not yet done: counted against ``max_buffered``."""
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self._flush_waiters: list[asyncio.Future[None]] = []
        # Deadlines: in call order they almost always rise (one default timeout), so a deque
        # holds them; the rare shorter per-publish timeout goes to a heap.
        self._by_deadline: deque[Outgoing] = deque()
        self._early: list[tuple[float, int, Outgoing]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    # -- entering -------------------------------------------------------------------------

    def add(self, msg: Outgoing, timeout: float) -> PublishFuture:
        loop = self._loop
        self._seq += 1
        msg.seq = self._seq
        now = loop.time()
        msg.created = now
        deadline = msg.deadline = now + timeout
        fut = PublishFuture(loop=loop)
        fut._message = msg
        fut._outbox = self
        msg.future = fut
        self.queue.append(msg)
        self.pending += 1

        by_deadline = self._by_deadline
        while by_deadline and by_deadline[0].state == DONE:
            by_deadline.popleft()
        if not by_deadline or deadline >= by_deadline[-1].deadline:
            by_deadline.append(msg)
        else:
            heapq.heappush(self._early, (deadline, msg.seq, msg))
        if self._timer is None or deadline < self._timer_when:
            self._arm(deadline)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return fut

    # -- the pump's side ------------------------------------------------------------------

    def take(self, room: int) -> list[Outgoing]:
        """Up to ``room`` queued messages, marked written, in call order."""
        batch: list[Outgoing] = []
        queue = self.queue
        in_flight = self.in_flight
        while room > 0 and queue:
            msg = queue.popleft()
            if msg.state != QUEUED:
                continue
            msg.state = WRITTEN
            msg.sends += 1
            in_flight[msg.seq] = msg
            batch.append(msg)
            room -= 1
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
        """The broker refused a written message (nack, return, reject)."""
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
        """Mark done exactly once; a written message keeps its window slot until settled."""
        msg.state = DONE
        self.pending -= 1
        if not self.pending and self._flush_waiters:
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
        self._timer = None
        now = self._loop.time()
        by_deadline, early = self._by_deadline, self._early
        expired: list[Outgoing] = []
        while by_deadline and (by_deadline[0].state == DONE or by_deadline[0].deadline <= now):
            msg = by_deadline.popleft()
            if msg.state != DONE:
                expired.append(msg)
        while early and (early[0][2].state == DONE or early[0][0] <= now):
            msg = heapq.heappop(early)[2]
            if msg.state != DONE:
                expired.append(msg)
        for msg in expired:
            what = "waiting to be sent" if msg.state == QUEUED else "waiting for the broker"
            self._fail(
                msg, PublishTimeout(f"message {msg.message_id} still {what} at its deadline")
            )
        nxt = min(
            by_deadline[0].deadline if by_deadline else float("inf"),
            early[0][0] if early else float("inf"),
        )
        if nxt != float("inf"):
            self._arm(nxt)

    # -- link life ------------------------------------------------------------------------

    def link_lost(self) -> None:
        """In-flight messages: re-sent first, in order, on the next link, or failed by policy."""
        resend = []
        for msg in self.in_flight.values():
            if msg.state == DONE:
                continue
            if msg.outage == "fail":
                self._fail(msg, LinkLost(maybe_delivered=True))
            else:
                msg.state = QUEUED
                resend.append(msg)
        self.in_flight.clear()
        self.queue.extendleft(reversed(resend))
        self._fail_queued_by_policy()

    def fail_unsent(self, msg: Outgoing) -> None:
        """Fail one message that was never written: its policy does not wait out an outage."""
        if msg.state == QUEUED:
            self._fail(msg, LinkLost(maybe_delivered=False))

    def _fail_queued_by_policy(self) -> None:
        """During an outage, messages whose policy is "fail" do not wait for the next link."""
        for msg in self.queue:
            if msg.state == QUEUED and msg.outage == "fail":
                self._fail(msg, LinkLost(maybe_delivered=False))

    def fail_all(self, exc_factory: Any) -> None:
        for msg in list(self.in_flight.values()) + list(self.queue):
            if msg.state != DONE:
                self._fail(msg, exc_factory(msg))
        self.in_flight.clear()
        self.queue.clear()
        self._by_deadline.clear()
        self._early.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    async def flush(self) -> None:
        if not self.pending:
            return
        waiter = self._loop.create_future()
        self._flush_waiters.append(waiter)
        await waiter
