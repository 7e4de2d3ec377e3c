"""Bodies in, deliveries out: what the application hands to ``publish`` and gets from a
subscription."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import AlreadySettled, NotSupported, StaleDelivery

if TYPE_CHECKING:
    from .transports.base import Consumer

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


def encode_body(body: object) -> tuple[bytes, str | None]:
    """bytes as they are, str as UTF-8, dict/list as JSON; anything else is the caller's bug."""
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body), None
    if isinstance(body, str):
        return body.encode(), TEXT
    if isinstance(body, (dict, list)):
        try:
            return json.dumps(body, separators=(",", ":")).encode(), JSON
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"body is a {type(body).__name__} that JSON cannot encode: {exc}"
            ) from None
    raise TypeError(
        f"body must be bytes, str, dict or list, not {type(body).__name__}; encode it yourself"
    )


class Delivery:
    """A received message. Settle it once: ``ack``, ``nack`` or ``reject`` (or ``process()``)."""

    __slots__ = (
        "_consumer",
        "_settled",
        "body",
        "content_type",
        "correlation_id",
        "delivery_count",
        "headers",
        "message_id",
        "qos",
        "raw",
        "redelivered",
        "reply_to",
        "retain",
        "returns_on_loss",
        "tag",
        "timestamp",
        "topic",
    )

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        body: bytes,
        *,
        tag: Any = None,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        timestamp: datetime | None = None,
        redelivered: bool = False,
        delivery_count: int | None = None,
        qos: int | None = None,
        retain: bool = False,
        settled: bool = False,
        returns_on_loss: bool = True,
        raw: Any = None,
    ) -> None:
        self._consumer = consumer
        self.topic = topic
        self.body = body
        self.tag = tag
        self.headers = headers if headers is not None else {}
        self.content_type = content_type
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.timestamp = timestamp
        self.redelivered = redelivered
        self.delivery_count = delivery_count
        self.qos = qos
        self.retain = retain
        self._settled = settled
        #: True when the broker takes the message back if the link dies before it is settled
        #: (AMQP, MQTT QoS 1 on a persistent session): such deliveries are dropped from the
        #: local buffer on link loss instead of being handed out only to fail on ack.
        self.returns_on_loss = returns_on_loss
        self.raw = raw

    @property
    def settled(self) -> bool:
        return self._settled

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding)

    def json(self) -> Any:
        return json.loads(self.body)

    def _begin_settle(self) -> Consumer:
        if self._settled:
            raise AlreadySettled(f"delivery {self.tag!r} on {self.topic!r} was already settled")
        consumer = self._consumer
        if not consumer.alive:
            raise StaleDelivery(
                f"delivery {self.tag!r} on {self.topic!r} came on a link that has since died; "
                "the broker decides whether it comes again"
            )
        self._settled = True
        return consumer

    async def ack(self) -> None:
        await self._begin_settle().ack(self)

    async def nack(self, requeue: bool = True) -> None:
        consumer = self._consumer
        if not consumer.can_nack:
            raise NotSupported(f"{consumer.protocol} has no negative acknowledgement")
        await self._begin_settle().nack(self, requeue)

    async def reject(self) -> None:
        consumer = self._consumer
        if not consumer.can_nack:
            raise NotSupported(f"{consumer.protocol} has no reject")
        await self._begin_settle().nack(self, False)

    @asynccontextmanager
    async def process(self, requeue: bool = True) -> AsyncIterator[Delivery]:
        """Ack when the block succeeds; nack (requeue) when it raises, then re-raise.

        Where the protocol has no nack (MQTT) a failed message is left unacknowledged, so a
        persistent session gets it again after a reconnect.

        If the link died while the message was in hand, the block's success cannot be told
        to the broker: ``process()`` does not raise (a consumer loop survives reconnects);
        a ``settle_lost`` event says so and whether the broker delivers the message again
        (AMQP: yes; MQTT QoS 1: only on a persistent session). An explicit ``ack()`` still
        raises ``StaleDelivery``.
        """
        try:
            yield self
        except BaseException:
            if not self._settled and self._consumer.can_nack and self._consumer.alive:
                await self.nack(requeue=requeue)
            raise
        if self._settled:
            return
        if self._consumer.alive:
            try:
                await self.ack()
                return
            except Exception:
                if self._consumer.alive:
                    raise  # the ack failed on a live link: that is news
                # The link died during the ack (a driver's error, or StaleDelivery).
        self._consumer.settle_lost(self)

    def __repr__(self) -> str:
        return (
            f"<Delivery topic={self.topic!r} tag={self.tag!r} {len(self.body)} bytes"
            f"{' redelivered' if self.redelivered else ''}>"
        )
