"""The receiving side of the MQTT link: consumers, shared filters, QoS 1 acknowledgement, and
what waits for a subscription whose buffer is full (its own QoS 1/2 messages, unacknowledged).
"""

from __future__ import annotations

import asyncio
import collections
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ..message import Delivery
from ..topics import TopicMatcher
from .base import CancelReason, Consumer, DeliverySink, LinkHooks, SubscriptionSpec
from .mqtt_session import keeps_subscription, persistent, retrieve

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessage

    from .mqtt import MqttLink


class Inbound:
    """One QoS 1 or 2 PUBLISH handed to one or more subscriptions. QoS 1: PUBACK when all have
    acked. QoS 2: PUBCOMP when it is in all of their buffers."""

    __slots__ = ("mid", "remaining")

    def __init__(self, mid: int, remaining: int) -> None:
        self.mid = mid
        self.remaining = remaining


class _NoAckNeeded(Consumer):
    """The settler of QoS 0 and QoS 2 deliveries: there is nothing to send (QoS 2 is completed
    with PUBCOMP once it is in the subscriptions' buffers), so ``ack()`` is a no-op that stays
    valid after the link died, instead of raising ``StaleDelivery`` for a message that needs
    no settlement."""

    protocol: ClassVar[str] = "mqtt"
    can_nack: ClassVar[bool] = False

    def __init__(self) -> None:
        self.cancelled = False

    @property
    def alive(self) -> bool:
        return True

    async def ack(self, delivery: Delivery) -> None:
        pass

    async def nack(self, delivery: Delivery, requeue: bool) -> None:  # pragma: no cover
        raise AssertionError("MQTT has no nack; Delivery.nack raises NotSupported first")

    async def cancel(self, *, reason: CancelReason = "leave") -> None:
        pass


NO_ACK_NEEDED = _NoAckNeeded()

#: A delivery's MQTT 5 fields: headers, content type, message id, correlation id, reply-to.
Props = tuple[dict[str, Any], str | None, str | None, str | None, str | None]
#: What waits for a full subscription: message, topic, its ``Inbound``, properties, time.
Held = tuple["MQTTMessage", str, Inbound | None, Props, datetime]


class MqttConsumer(Consumer):
    protocol: ClassVar[str] = "mqtt"
    can_nack: ClassVar[bool] = False

    def __init__(
        self,
        hooks: LinkHooks,
        link: MqttLink,
        spec: SubscriptionSpec,
        sink: DeliverySink,
        topic_filter: str,
        qos: int,
    ) -> None:
        super().__init__(hooks)
        self.link = link
        self.sink = sink
        self.filter = topic_filter
        self.qos = qos
        self.no_ack = spec.no_ack
        self.unacked: dict[int, Inbound] = {}
        self.returns_on_loss = persistent(link.opts)
        #: QoS 1/2 messages for this subscription while its buffer is full, in arrival order,
        #: unacknowledged: each holds a slot of the broker's in-flight window (Receive
        #: Maximum), so the window bounds this queue. Other subscriptions are not held up.
        self.held: collections.deque[Held] = collections.deque()
        #: QoS 0 messages dropped for a full buffer since the last report (one per burst).
        self.dropping = 0
        #: Who has a QoS 2 message once it is in the buffer: this subscription, or for a
        #: shared filter the group (one of its subscriptions gets each message).
        self.key: object = topic_filter if topic_filter.startswith("$share/") else sink

    def deliver(
        self,
        msg: MQTTMessage,
        topic: str,
        inbound: Inbound | None,
        props: Props,
        now: datetime,
    ) -> None:
        headers, content_type, message_id, correlation_id, reply_to = props
        qos = msg.qos
        settled = self.no_ack
        if inbound is not None and qos == 1:
            if self.no_ack:
                self.link.release(inbound)
            else:
                self.unacked[msg.mid] = inbound
        self.sink.push(
            Delivery(
                self if qos == 1 else NO_ACK_NEEDED,
                topic,
                bytes(msg.payload),
                tag=msg.mid,
                headers=headers,
                content_type=content_type,
                message_id=message_id,
                correlation_id=correlation_id,
                reply_to=reply_to,
                timestamp=now,
                redelivered=msg.dup,
                qos=qos,
                retain=msg.retain,
                settled=settled,
                returns_on_loss=qos == 1 and self.returns_on_loss and not settled,
                raw=msg,
            )
        )
        if qos == 2 and inbound is not None:
            # In the buffer (which keeps QoS 2 through a link loss): now it may be completed.
            self.link.handed_over(inbound, self.key)

    def hold(
        self,
        msg: MQTTMessage,
        topic: str,
        inbound: Inbound | None,
        props: Props,
        now: datetime,
    ) -> None:
        """The buffer is full (or older messages wait already): QoS 1/2 wait here,
        unacknowledged, until the application takes from the buffer; QoS 0 is dropped
        (counted in the subscription's ``dropped``, reported once per burst)."""
        if not self.held and not self.dropping:
            self.sink.on_space(self._space)
        if msg.qos == 0:
            self.dropping += 1
            self.sink.dropped += 1
        else:
            self.held.append((msg, topic, inbound, props, now))

    def _space(self) -> None:
        """The application took a delivery: what is held moves into the buffer, in order.
        A burst of drops ends (and is reported) once the buffer is half empty again."""
        held, sink = self.held, self.sink
        while held and sink.room > 0:
            self.deliver(*held.popleft())
        if held:
            return
        if self.dropping:
            if sink.room * 2 < sink.capacity:
                return
            self.report_dropped()
        sink.on_space(None)

    def report_dropped(self) -> None:
        """The burst of QoS 0 drops ends: one ``deliveries_dropped`` event with its count."""
        count, self.dropping = self.dropping, 0
        if count:
            self.hooks.notify(
                "deliveries_dropped",
                f"subscription {self.filter!r}: {count} QoS 0 message"
                f"{'s' if count != 1 else ''} dropped while its buffer "
                f"(prefetch={self.sink.capacity}) was full",
                dropped=count,
            )

    async def ack(self, delivery: Delivery) -> None:
        # QoS 0: nothing to send. QoS 2: PUBCOMP went once the message was in the buffer.
        inbound = self.unacked.pop(delivery.tag, None)
        if inbound is not None:
            self.link.release(inbound)

    async def nack(self, delivery: Delivery, requeue: bool) -> None:  # pragma: no cover
        raise AssertionError("MQTT has no nack; Delivery.nack raises NotSupported first")

    async def cancel(self, *, reason: CancelReason = "leave") -> None:
        if self.cancelled:
            return
        self.cancelled = True
        why = reason
        # MQTT cannot give a message back, and a PUBACK would tell the broker the application
        # handled it: what it did not ack (in hand or still buffered) stays unacknowledged,
        # so a persistent session gets it again on its next connection. Until this
        # connection ends those messages hold part of the broker's in-flight window.
        self.unacked.clear()
        if self.held or self.dropping:
            self.sink.on_space(None)
            self.report_dropped()
        await self.link.detach(self, unsubscribe=not keeps_subscription(self.link.opts, why))


class Group:
    """One broker subscription (one filter) and the consumers that share it."""

    __slots__ = (
        "consumers",
        "filter",
        "granted",
        "matcher",
        "next",
        "ready",
        "shared",
        "sub_id",
    )

    def __init__(self, topic_filter: str, sub_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.filter = topic_filter
        self.sub_id = sub_id
        self.shared = topic_filter.startswith("$share/")
        self.matcher = TopicMatcher(topic_filter, "mqtt")
        self.consumers: list[MqttConsumer] = []
        self.next = 0
        #: The QoS the broker granted in SUBACK (set before ``ready`` completes).
        self.granted = 0
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.add_done_callback(retrieve)

    def targets(self) -> list[MqttConsumer]:
        consumers = self.consumers
        if not self.shared or len(consumers) <= 1:
            return consumers
        # Shared: one consumer per message, round robin, skipping full buffers if it can.
        count = len(consumers)
        for step in range(count):
            consumer = consumers[(self.next + step) % count]
            if consumer.sink.room > 0:
                self.next = (self.next + step + 1) % count
                return [consumer]
        consumer = consumers[self.next % count]
        self.next = (self.next + 1) % count
        return [consumer]
