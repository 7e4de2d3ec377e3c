"""The ``memory://`` adapter: links to an in-process ``MemoryBroker``."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import (
    AuthenticationError,
    ConfigError,
    LinkDown,
    MessageTooLarge,
    Nacked,
    SubscriptionError,
    TransientConnectError,
    Unroutable,
)
from ..memory_broker import MemoryBroker, MemoryQueue, Stored
from ..message import Delivery
from ..settings import MemoryOptions, options_as
from ..topics import (
    validate_binding_pattern,
    validate_mqtt_filter,
    validate_mqtt_topic,
    validate_routing_key,
)
from .base import (
    CancelReason,
    Capabilities,
    Consumer,
    DeliverySink,
    Link,
    LinkHooks,
    SubscriptionSpec,
)

if TYPE_CHECKING:
    from ..publishing import Outgoing
    from ..url import Settings

_private_names = itertools.count(1)


def _options(settings: Settings) -> MemoryOptions:
    return options_as(settings.options, MemoryOptions)


class MemoryConsumer(Consumer):
    protocol: ClassVar[str] = "memory"

    def __init__(
        self,
        hooks: LinkHooks,
        link: MemoryLink,
        queue: MemoryQueue,
        sink: DeliverySink,
        spec: SubscriptionSpec,
    ) -> None:
        super().__init__(hooks)
        self.link = link
        self.queue = queue
        self.sink = sink
        self.prefetch = spec.prefetch
        self.no_ack = spec.no_ack
        self.unacked: dict[int, Stored] = {}
        self._tags = itertools.count(1)
        if self.no_ack:
            # Nothing caps the broker but the local buffer: resume when the app makes room.
            sink.on_space(queue.dispatch)

    def has_room(self) -> bool:
        if self.no_ack:
            return self.sink.room > 0
        return len(self.unacked) < self.prefetch and self.sink.room > 0

    def deliver(self, stored: Stored) -> None:
        stored.delivery_count += 1
        tag = next(self._tags)
        if not self.no_ack:
            self.unacked[tag] = stored
        self.sink.push(
            Delivery(
                self,
                stored.topic,
                stored.body,
                tag=tag,
                headers=dict(stored.headers) if stored.headers else {},
                content_type=stored.content_type,
                message_id=stored.message_id,
                correlation_id=stored.correlation_id,
                reply_to=stored.reply_to,
                timestamp=datetime.fromtimestamp(stored.timestamp, UTC),
                redelivered=stored.redelivered,
                delivery_count=stored.delivery_count,
                qos=stored.qos,
                retain=stored.retain,
                settled=self.no_ack,
                returns_on_loss=not self.no_ack,
                raw=stored,
            )
        )

    async def ack(self, delivery: Delivery) -> None:
        if self.unacked.pop(delivery.tag, None) is not None:
            self.queue.dispatch()

    async def nack(self, delivery: Delivery, requeue: bool) -> None:
        stored = self.unacked.pop(delivery.tag, None)
        if stored is None:
            return
        if requeue:
            self.queue.requeue([stored])
        else:
            self.queue.broker.dead_lettered.append((stored, "rejected"))
        self.queue.dispatch()

    async def cancel(self, *, reason: CancelReason = "leave") -> None:
        self.detach()

    def ended_by_broker(self, reason: str) -> None:
        """The broker took the queue away: tell the core, which re-attaches or fails loudly."""
        if self.cancelled:
            return
        self.detach()
        self._hooks.consumer_lost(self.sink, SubscriptionError(f"memory broker: {reason}"))

    def detach(self) -> None:
        """Stop consuming; whatever was not acked goes back to the queue (redelivered)."""
        if self.cancelled:
            return
        self.cancelled = True
        queue = self.queue
        if self in queue.consumers:
            queue.consumers.remove(self)
        self.link.consumers.discard(self)
        if self.unacked:
            queue.requeue(self.unacked.values())
            self.unacked.clear()
        if queue.owner is self.link and not queue.consumers:
            queue.broker.delete_queue(queue)
        elif queue.consumers:
            queue.dispatch()


class MemoryLink(Link):
    protocol: ClassVar[str] = "memory"
    #: Messages are handed over as Python objects: nothing to encode, nothing a codec refuses.
    encodes: ClassVar[bool] = False
    capabilities: ClassVar[Capabilities] = Capabilities(
        nack=True,
        unroutable=True,
        headers=True,
        priority=True,
        ttl=True,
        retain=True,
        qos=True,
        shared_queue=True,
        delivery_count=True,
        topology=False,
    )

    def __init__(
        self, settings: Settings, endpoint: Any, credentials: Any, hooks: LinkHooks
    ) -> None:
        super().__init__(settings, endpoint, credentials, hooks)
        self.broker = MemoryBroker.get(settings.path)
        opts = _options(settings)
        self.syntax = opts.topics
        self.mandatory_default = opts.mandatory
        self.consumers: set[MemoryConsumer] = set()
        self._loop = asyncio.get_running_loop()

    # -- checks at the call ---------------------------------------------------------------

    @classmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        opts = _options(settings)
        if opts.topics == "mqtt":
            validate_mqtt_topic(msg.topic)
            if msg.qos not in (None, 0, 1, 2):
                raise ConfigError(f"qos must be 0, 1 or 2, got {msg.qos!r}")
        else:
            validate_routing_key(msg.topic)
            if msg.qos is not None:
                raise ConfigError(
                    "qos is an MQTT option; this memory broker routes like AMQP "
                    "(use memory://name?topics=mqtt)"
                )
            if msg.retain:
                raise ConfigError(
                    "retain is an MQTT option; this memory broker routes like AMQP "
                    "(use memory://name?topics=mqtt)"
                )
        if msg.priority is not None and (
            not isinstance(msg.priority, int) or not 0 <= msg.priority <= 255
        ):
            raise ConfigError(f"priority must be an int from 0 to 255, got {msg.priority!r}")
        if len(msg.body) > opts.max_message_size:
            raise MessageTooLarge(len(msg.body), opts.max_message_size, option="max_message_size")

    @classmethod
    def check_subscribe(cls, settings: Settings, spec: SubscriptionSpec) -> None:
        if spec.extra:
            raise ConfigError(f"unknown subscribe options for memory://: {sorted(spec.extra)}")
        if _options(settings).topics == "mqtt":
            validate_mqtt_filter(spec.pattern)
        else:
            validate_binding_pattern(spec.pattern)
        if spec.exchange is not None:
            raise ConfigError("memory:// has one topic space; exchange= does not apply")

    # -- the wire -------------------------------------------------------------------------

    async def open(self) -> None:
        broker = self.broker
        if broker.refusing:
            raise TransientConnectError(f"memory broker {broker.name!r} refused the connection")
        if broker.credentials is not None:
            given = None
            if self.credentials is not None:
                given = (self.credentials.username, self.credentials.reveal_password())
            if given != broker.credentials:
                raise AuthenticationError(f"memory broker {broker.name!r} refused the credentials")
        broker.connects += 1
        broker.links.add(self)

    async def abort(self) -> None:
        self.hooks.lost(LinkDown("aborted"))
        self._teardown()

    async def close(self) -> None:
        self.hooks.lost(LinkDown("closed"))
        self._teardown()

    def die(self, reason: str) -> None:
        self.hooks.lost(LinkDown(f"memory broker {self.broker.name!r}: {reason}"))
        self._teardown()

    def _teardown(self) -> None:
        for consumer in list(self.consumers):
            consumer.detach()
        self.broker.links.discard(self)

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        broker = self.broker
        hooks = self.hooks
        outcomes: list[tuple[Outgoing, BaseException | None]] = []
        now = time.time()
        mono = 0.0
        for msg in batch:
            if broker.nack_budget > 0:
                broker.nack_budget -= 1
                outcomes.append((msg, Nacked("refused by the memory broker's fault injection")))
                continue
            expires = None
            if msg.ttl is not None:
                mono = mono or time.monotonic()
                expires = mono + msg.ttl
            stored = Stored(
                msg.topic,
                msg.body,
                headers=msg.headers,
                content_type=msg.content_type,
                message_id=msg.message_id,
                correlation_id=msg.correlation_id,
                reply_to=msg.reply_to,
                priority=msg.priority,
                qos=msg.qos,
                retain=msg.retain,
                expires=expires,
                timestamp=now,
            )
            routed = broker.route(stored)
            mandatory = self.mandatory_default if msg.mandatory is None else msg.mandatory
            if not routed and mandatory:
                outcomes.append((msg, Unroutable(f"no queue is bound to {msg.topic!r}")))
            else:
                outcomes.append((msg, None))
        if broker.holding:
            broker.hold(self, lambda: self._settle(outcomes))
        else:
            # Outcomes arrive a loop turn later, as a broker's confirms would.
            self._loop.call_soon(self._settle, outcomes)
        if not hooks.alive:
            raise LinkDown("the memory link died while publishing")

    def _settle(self, outcomes: list[tuple[Outgoing, BaseException | None]]) -> None:
        hooks = self.hooks
        for msg, error in outcomes:
            if error is None:
                hooks.settled(msg, msg.seq)
            else:
                hooks.failed(msg, error)

    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        broker = self.broker
        await broker._pass_attach_gate()
        if not self.hooks.alive:
            raise LinkDown("the memory link died while attaching")
        pattern = spec.pattern
        queue_name = spec.queue
        if self.syntax == "mqtt" and pattern.startswith("$share/"):
            _, group, pattern = pattern.split("/", 2)
            queue_name = queue_name or f"$share/{group}/{pattern}"
        if queue_name is None:
            queue = broker.declare_queue(f"amq.gen-memory-{next(_private_names)}", owner=self)
        else:
            queue = broker.declare_queue(queue_name, owner=None)
        broker.bind(queue, pattern, self.syntax)
        consumer = MemoryConsumer(self.hooks, self, queue, sink, spec)
        self.consumers.add(consumer)
        queue.consumers.append(consumer)
        queue.dispatch()
        return consumer

    @property
    def raw(self) -> MemoryBroker:
        return self.broker
