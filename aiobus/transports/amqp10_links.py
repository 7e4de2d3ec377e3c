"""The links inside one AMQP 1.0 connection: senders with their credit queue and outcomes,
receivers with settlement-driven credit, and the consumer the core settles deliveries through."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

import proton
from proton import Disposition

from ..errors import InvalidMessage, MessageTooLarge, Nacked, Unroutable
from ..message import Delivery
from . import amqp10_codec as codec
from .base import CancelReason, Consumer, DeliverySink, LinkHooks, SubscriptionSpec

if TYPE_CHECKING:
    from ..publishing import Outgoing
    from .amqp10 import Amqp10Link

ACCEPTED = Disposition.ACCEPTED
REJECTED = Disposition.REJECTED
RELEASED = Disposition.RELEASED
MODIFIED = Disposition.MODIFIED
link_names = itertools.count(1)


def condition_text(cond: Any) -> tuple[str, str | None]:
    """(description, condition name) of a proton Condition, or a placeholder."""
    if cond is None:
        return "no reason given", None
    name = str(cond.name) if cond.name else None
    return (str(cond.description) if cond.description else (name or "no reason given")), name


class SenderState:
    """One proton sender, the messages waiting for its credit, and those awaiting outcomes.

    A message waiting here has ``tag`` set to this state; ``withdraw`` (its deadline, its
    cancellation) clears that and the message is skipped, never sent. A per-address sender
    belongs to a ``SenderPool`` (``pool``) and may wait there, not yet ``opened``, for a slot.
    """

    __slots__ = (
        "address",
        "attached",
        "closing",
        "error",
        "last_used",
        "link",
        "max_size",
        "pool",
        "queue",
        "retries",
        "sender",
        "session",
        "unsettled",
        "withdrawn",
    )

    def __init__(self, link: Amqp10Link, address: str | None, pool: Any = None) -> None:
        self.link = link
        self.address = address
        self.pool = pool
        self.session: Any = None
        self.sender: Any = None
        self.queue: deque[Outgoing] = deque()
        self.unsettled: dict[str, Outgoing] = {}
        self.retries: dict[int, int] = {}
        self.attached = False
        self.closing = False
        self.error: BaseException | None = None
        self.max_size = 0
        """The peer's ``max-message-size`` from its attach (0: none stated)."""
        self.last_used = 0.0
        self.withdrawn = 0
        """Withdrawn messages still in ``queue`` (skipped when reached)."""

    def open(self, session: Any = None) -> None:
        """Attach the sender, on ``session`` (one the pool reuses) or in a session of its
        own: RabbitMQ ends the whole session for a bad address, so one sender per session."""
        link = self.link
        if session is None:
            session = link.conn.session()
            session.open()
            link.sessions += 1
        self.session = session
        self.sender = session.sender(f"aiobus-send-{next(link_names)}")
        if self.address is not None:  # None: the anonymous terminus (each message says ``to``)
            self.sender.target.address = self.address
        self.sender.open()
        link._states[self.sender] = self

    def close(self) -> None:
        """Detach the sender (its session stays, for the pool to reuse); the peer's detach
        answers it (``closing``)."""
        self.closing = True
        self.sender.close()

    def hold(self, msg: Outgoing) -> None:
        """Queue ``msg`` until credit allows."""
        msg.tag = self
        self.queue.append(msg)

    def withdraw(self, msg: Outgoing) -> bool:
        """Drop a held message (its deadline passed, or it was cancelled): True if it was
        waiting here, never written. Skipped when reached; the queue is compacted once
        withdrawn messages are most of it, so it never grows with them."""
        if msg.tag is not self:
            return False
        msg.tag = None
        self.withdrawn += 1
        queue = self.queue
        if self.withdrawn > 16 and self.withdrawn * 2 > len(queue):
            self.queue = deque(m for m in queue if m.tag is self)
            self.withdrawn = 0
        return True

    @property
    def idle(self) -> bool:
        """Nothing queued (withdrawn messages aside) and nothing unsettled."""
        if self.unsettled:
            return False
        if self.withdrawn:
            queue = self.queue
            while queue and queue[0].tag is not self:
                queue.popleft()
                self.withdrawn -= 1
            if not queue:
                self.withdrawn = 0
        return not self.queue

    def pump(self) -> None:
        """Write queued messages within link credit: nothing is sent without credit."""
        queue = self.queue
        if not queue:
            return
        sender = self.sender
        if sender is None:
            return  # waiting in the pool for a slot
        credit = sender.credit
        if credit <= 0:
            return
        link = self.link
        unsettled = self.unsettled
        presettled = link.presettled
        address = self.address
        tags = link.tags
        durable_default = link.durable
        max_size = self.max_size
        while credit > 0 and queue:
            msg = queue.popleft()
            if msg.tag is not self:
                self.withdrawn -= 1  # withdrawn at its deadline or cancelled: never sent
                continue
            data, msg.wire = msg.wire, None  # encoded by ``Amqp10Link.encode``
            if not isinstance(data, bytes):
                # Not encoded for this sender (the guard: nothing unencoded reaches the wire,
                # and a message that cannot be encoded fails alone, before a delivery exists).
                try:
                    data = wire_message(msg, address is None, durable_default)
                except Exception as exc:
                    msg.tag = None
                    link.hooks.failed(msg, not_encodable(msg, exc))
                    continue
            if max_size and len(data) > max_size:
                msg.tag = None
                link.hooks.failed(msg, MessageTooLarge(len(data), max_size))
                continue
            credit -= 1
            tag = str(next(tags))
            dlv = sender.delivery(tag)
            sender.stream(data)
            sender.advance()
            msg.tag = tag
            if presettled or not msg.confirm:
                dlv.settle()
                link.written.append(msg)
            else:
                unsettled[tag] = msg

    def on_delivery(self, dlv: Any) -> None:
        if not dlv.updated:
            return
        msg = self.unsettled.pop(dlv.tag, None)
        state = dlv.remote_state
        dlv.settle()
        if msg is None:
            return
        hooks = self.link.hooks
        if state == ACCEPTED:
            hooks.settled(msg, msg.tag)
        elif state == REJECTED:
            reason, code = condition_text(dlv.remote.condition)
            # RabbitMQ 4 rejects an overflowing reject-publish queue with no error condition.
            hooks.failed(
                msg, Nacked(f"rejected by {msg.topic!r}: {reason}", code=code or "rejected")
            )
        elif state == RELEASED:
            if self.link.mandatory if msg.mandatory is None else msg.mandatory:
                hooks.failed(
                    msg,
                    Unroutable(
                        f"released by the broker: nothing routed {msg.topic!r}", code="released"
                    ),
                )
            else:
                hooks.settled(msg, msg.tag)
        elif state == MODIFIED:
            remote = dlv.remote
            tries = self.retries.pop(msg.seq, 0)
            if remote.undeliverable or tries >= self.link.modified_retries:
                hooks.failed(
                    msg,
                    Nacked(
                        f"modified (undeliverable={remote.undeliverable}) by {msg.topic!r}",
                        code="modified",
                    ),
                )
            else:
                # The broker asks for another try: the same link, at the end of its queue.
                self.retries[msg.seq] = tries + 1
                self.hold(msg)
                self.pump()
        else:
            hooks.failed(msg, Nacked(f"unexpected outcome {state!r}", code=str(state)))
        pool = self.pool
        if pool is not None and pool.parked and not self.unsettled:
            pool.unpark()  # this sender may have just become idle: an address waits for it

    def fail_all(self, error: BaseException) -> None:
        """The broker ended this sender (e.g. a missing target): its messages fail, typed."""
        self.error = error
        hooks = self.link.hooks
        for msg in list(self.unsettled.values()) + [m for m in self.queue if m.tag is self]:
            msg.tag = None
            hooks.failed(msg, error)
        self.unsettled.clear()
        self.queue.clear()
        self.withdrawn = 0


def wire_message(msg: Outgoing, anonymous: bool, durable: bool) -> bytes:
    """The bare message's bytes: ``to`` is written only for the anonymous relay."""
    return codec.encode(
        to=msg.topic if anonymous else None,
        body=msg.body,
        message_id=msg.message_id,
        correlation_id=msg.correlation_id,
        reply_to=msg.reply_to,
        content_type=msg.content_type,
        headers=msg.headers,
        durable=durable if msg.persistent is None else msg.persistent,
        priority=msg.priority,
        ttl=msg.ttl,
    )


def not_encodable(msg: Outgoing, exc: Exception) -> InvalidMessage:
    if isinstance(exc, InvalidMessage):
        return exc
    error = InvalidMessage(
        f"message {msg.message_id} to {msg.topic!r} cannot be sent over AMQP 1.0: "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


class ReceiverState:
    __slots__ = ("attached", "consumer", "receiver", "session")

    def __init__(self, receiver: Any, session: Any, consumer: Amqp10Consumer) -> None:
        self.receiver = receiver
        self.session = session
        self.consumer = consumer
        self.attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_delivery(self, dlv: Any) -> None:
        if not dlv.readable or dlv.partial:
            return
        receiver = self.receiver
        data = receiver.recv(dlv.pending)
        receiver.advance()
        if self.consumer.cancelled:
            return  # detaching: left unsettled, the broker takes it back with the link
        self.consumer.deliver(dlv, data)


class Amqp1Raw:
    """``Delivery.raw`` on AMQP 1.0: proton's delivery, the message's bytes and the fields
    aiobus has no slot for (subject, annotations, durable, priority, ttl in ms)."""

    __slots__ = ("annotations", "data", "delivery", "durable", "priority", "subject", "ttl")

    def __init__(self, delivery: Any, data: bytes, fields: dict[str, Any]) -> None:
        self.delivery = delivery
        self.data = data
        self.subject: str | None = fields["subject"]
        self.annotations: dict[Any, Any] = fields["annotations"]
        self.durable: bool = fields["durable"]
        self.priority: int = fields["priority"]
        self.ttl: int | None = fields["ttl"]

    @property
    def message(self) -> proton.Message:
        """The whole message decoded by proton (made on demand: it costs)."""
        message = proton.Message()
        message.decode(self.data)
        return message


class Amqp10Consumer(Consumer):
    protocol: ClassVar[str] = "amqp10"

    def __init__(
        self, hooks: LinkHooks, link: Amqp10Link, spec: SubscriptionSpec, sink: DeliverySink
    ) -> None:
        super().__init__(hooks)
        self.link = link
        self.address = spec.pattern
        self.sink = sink
        self.no_ack = spec.no_ack
        self.prefetch = spec.prefetch
        self.state: ReceiverState | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tags = itertools.count(1)
        self.undecodable = link.opts.undecodable

    def deliver(self, dlv: Any, data: bytes) -> None:
        no_ack = self.no_ack
        if not no_ack and self.sink.room <= 0:
            # A paused subscription (or a broker sending past our credit): the local buffer
            # never grows past prefetch; the message goes back uncounted.
            dlv.update(RELEASED)
            dlv.settle()
            self.link.kick()
            return
        try:
            fields = codec.decode(data)
        except Exception as exc:  # whatever it is, this message alone fails, not the link
            self._undecodable(dlv, exc)
            return
        if no_ack:
            if not dlv.settled:  # the broker ignored our settle mode: accept it ourselves
                dlv.update(ACCEPTED)
            dlv.settle()
        count = fields["delivery_count"] or 0
        self.sink.push(
            Delivery(
                self,
                fields["to"] or self.address,
                fields["body"],
                tag=next(self._tags),
                headers=fields["headers"],
                content_type=fields["content_type"],
                message_id=fields["message_id"],
                correlation_id=fields["correlation_id"],
                reply_to=fields["reply_to"],
                timestamp=fields["timestamp"],
                redelivered=count > 0 or fields["first_acquirer"] is False,
                delivery_count=count,
                settled=no_ack,
                returns_on_loss=not no_ack,
                raw=Amqp1Raw(dlv, data, fields),
            )
        )

    def _undecodable(self, dlv: Any, exc: Exception) -> None:
        """Settle a message that cannot be decoded (the ``undecodable`` option's outcome) and
        report it: left unsettled, the broker would hand it to the next link first forever."""
        if isinstance(exc, codec.UndecodableMessage):
            reason = str(exc)
        else:
            reason = f"the decoder failed: {type(exc).__name__}: {exc}"
        outcome = self.undecodable
        if dlv.settled:
            settled = "dropped (it was sent pre-settled)"
        elif outcome == "release":
            dlv.update(RELEASED)
            settled = "released (back to the queue, not counted)"
        elif outcome == "modify":
            dlv.local.failed = True  # counted, and not for this link again
            dlv.local.undeliverable = True
            dlv.update(MODIFIED)
            settled = "modified (delivery-failed, undeliverable-here)"
        else:
            # The reason travels as the rejection's error, so the broker's dead-letter
            # headers (or its logs) say why.
            dlv.local.condition = proton.Condition("amqp:decode-error", reason[:1000])
            dlv.update(REJECTED)
            settled = "rejected"
        dlv.settle()
        state = self.state
        if state is not None and not self.cancelled and self.sink.room > 0:
            state.receiver.flow(1)  # its credit is not coming back through the buffer
        self.link.kick()
        self._hooks.notify(
            "delivery_undecodable",
            f"a message on {self.address!r} could not be decoded and was {settled}: {reason}",
            exc,
        )

    def _settle(self, delivery: Delivery, outcome: Any, *, failed: bool = False) -> None:
        raw = delivery.raw
        assert isinstance(raw, Amqp1Raw)
        dlv = raw.delivery
        if failed:
            dlv.local.failed = True
        dlv.update(outcome)
        dlv.settle()
        state = self.state
        # Credit follows settlement (at most prefetch unsettled), unless the subscription is
        # paused: then room reads 0 and the inflow stops.
        if state is not None and not self.cancelled and self.sink.room > 0:
            state.receiver.flow(1)
        self.link.kick()

    async def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, ACCEPTED)

    async def nack(self, delivery: Delivery, requeue: bool) -> None:
        if requeue:
            self._settle(delivery, MODIFIED, failed=True)  # the broker counts the redelivery
        else:
            self._settle(delivery, REJECTED)

    async def release(self, delivery: Delivery) -> None:
        """Back to the queue without counting a failed delivery (AMQP 1.0 ``released``)."""
        self._settle(delivery, RELEASED)

    def _space(self) -> None:
        """no_ack: the broker's deliveries are pre-settled, so credit follows the buffer."""
        state = self.state
        if state is not None and not self.cancelled and self._hooks.alive and self.sink.room > 0:
            state.receiver.flow(1)
            self.link.kick()

    async def cancel(self, *, reason: CancelReason = "leave") -> None:
        if self.cancelled:
            return
        self.cancelled = True
        state = self.state
        if state is None or not self._hooks.alive:
            return
        state.receiver.close()  # detach closed: unsettled deliveries return to the queue
        state.session.close()
        self.link.kick()
        if not self.closed.done():
            await asyncio.wait({self.closed, self.link.dead}, return_when=asyncio.FIRST_COMPLETED)
