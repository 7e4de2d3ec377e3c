"""The ``amqp://`` / ``amqps://`` adapter: RabbitMQ over aio-pika, publishing through aiormq.

A plain (non-robust) aio-pika connection per link: reconnect is the core's job, the same for
every protocol. Publishes go straight to aiormq's channel (aio-pika's own underlay), so many
are in flight at once with publisher confirms; each consumer gets its own channel, so a
consumer's trouble never closes the publish channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from ..amqp import Binding, Exchange, Queue
from ..errors import (
    AuthenticationError,
    ConfigError,
    LinkDown,
    MessageTooLarge,
    Nacked,
    PermanentConnectError,
    ProtocolMismatch,
    SubscriptionError,
    TransientConnectError,
    Unroutable,
)
from ..message import Delivery
from ..settings import AmqpOptions, options_as
from ..tls import client_context
from ..topics import validate_binding_pattern, validate_routing_key
from .base import Capabilities, Consumer, DeliverySink, Link, LinkHooks, SubscriptionSpec

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage

    from ..publishing import Outgoing
    from ..url import Settings

log = logging.getLogger("aiobus.amqp")


def _options(settings: Settings) -> AmqpOptions:
    return options_as(settings.options, AmqpOptions)


class TopologyMismatch(ConfigError):
    """A declaration clashes with what the broker already has (PRECONDITION_FAILED)."""


def _heartbeat_to_negotiate(heartbeat: float) -> int:
    # aiormq declares a link dead after (heartbeat + 1) * 3 s of silence; negotiating two
    # thirds of the asked interval brings detection to about two intervals (DESIGN section 5).
    if heartbeat <= 0:
        return 0
    return max(1, round(heartbeat * 2 / 3))


def _has_frame_api(channel: Any) -> bool:
    """The aiormq internals the fast publish path relies on (checked, not assumed)."""
    return all(
        hasattr(channel, name)
        for name in (
            "delivery_tag",
            "confirmations",
            "message_id_delivery_tag",
            "write_queue",
            "number",
            "_split_body",
            "create_future",
        )
    )


def map_connect_error(exc: BaseException) -> BaseException:
    """The driver's errors, sorted once: permanent ones are not retried at first connect."""
    if isinstance(exc, amqp_errors.ProtocolSyntaxError) and "protocol header" in str(exc):
        return ProtocolMismatch(
            "the server answered with another AMQP protocol header; for AMQP 1.0 endpoints "
            "use an amqp1:// (or amqp1s://) URL"
        )
    if isinstance(exc, (amqp_errors.AuthenticationError, amqp_errors.ProbableAuthenticationError)):
        return AuthenticationError(f"the broker refused the credentials: {exc}")
    if isinstance(exc, amqp_errors.ConnectionNotAllowed):
        return PermanentConnectError(
            f"the broker refused access (unknown vhost or no permission): {exc}"
        )
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return PermanentConnectError(f"TLS verification failed: {cause}")
    if isinstance(exc, (OSError, TimeoutError, amqp_errors.AMQPConnectionError, EOFError)):
        return TransientConnectError(f"{type(exc).__name__}: {exc}")
    return exc


class Amqp091Consumer(Consumer):
    protocol: ClassVar[str] = "amqp091"
    can_nack: ClassVar[bool] = True

    def __init__(
        self,
        hooks: LinkHooks,
        channel: aio_pika.abc.AbstractChannel,
        raw: aiormq.abc.AbstractChannel,
        sink: DeliverySink,
        no_ack: bool,
    ) -> None:
        super().__init__(hooks)
        self.channel = channel
        self.raw = raw
        self.sink = sink
        self.no_ack = no_ack
        self.consumer_tag: str | None = None
        self.queue = ""
        # no_ack: acknowledged when handed to the application, so the buffer stays bounded by
        # basic.qos (a true no-ack consumer is pushed without limit).
        self._handed_out: list[int] = []
        self._ack_scheduled = False
        self._acking: set[asyncio.Task[None]] = set()
        if no_ack:
            sink.on_space(self._handed_out_one)

    async def on_message(self, message: DeliveredMessage) -> None:
        props = message.header.properties
        headers: dict[str, Any] = dict(props.headers) if props.headers else {}
        count = headers.get("x-delivery-count")
        redelivered = bool(message.redelivered)
        # Quorum queues count earlier deliveries in x-delivery-count; a first delivery is
        # always number 1; a classic queue's redelivery has no count to tell.
        if isinstance(count, int):
            delivery_count: int | None = count + 1
        else:
            delivery_count = None if redelivered else 1
        tag = message.delivery_tag
        timestamp = props.timestamp
        if timestamp is not None and timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        if self.no_ack:
            self._handed_out.append(tag or 0)
        self.sink.push(
            Delivery(
                self,
                message.routing_key or "",
                message.body,
                tag=tag,
                headers=headers,
                content_type=props.content_type,
                message_id=props.message_id,
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                timestamp=timestamp,
                redelivered=bool(message.redelivered),
                delivery_count=delivery_count,
                settled=self.no_ack,
                returns_on_loss=True,
                raw=message,
            )
        )

    def _handed_out_one(self) -> None:
        if not self._ack_scheduled and self.alive:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._ack_handed_out)

    def _ack_handed_out(self) -> None:
        self._ack_scheduled = False
        taken = len(self._handed_out) - self.sink_buffered()
        if taken <= 0 or not self.alive:
            return
        last = self._handed_out[taken - 1]
        del self._handed_out[:taken]
        # One multiple-ack covers everything handed out since the last one.
        task = asyncio.get_running_loop().create_task(self._ack_up_to(last))
        self._acking.add(task)
        task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Task[None]) -> None:
        self._acking.discard(task)
        _ignore_result(task)

    async def _ack_up_to(self, tag: int) -> None:
        await self.raw.basic_ack(tag, multiple=True, wait=False)

    def sink_buffered(self) -> int:
        return self.sink.buffered

    async def ack(self, delivery: Delivery) -> None:
        await self.raw.basic_ack(delivery.tag, wait=False)

    async def nack(self, delivery: Delivery, requeue: bool) -> None:
        if requeue:
            await self.raw.basic_nack(delivery.tag, requeue=True, wait=False)
        else:
            await self.raw.basic_reject(delivery.tag, requeue=False, wait=False)

    async def cancel(self, *, connection_closing: bool = False) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self._acking:
            await asyncio.gather(*self._acking, return_exceptions=True)
        with contextlib.suppress(Exception):
            if self.consumer_tag is not None and not self.raw.is_closed:
                await self.raw.basic_cancel(self.consumer_tag)
        # Closing the channel returns every unacked delivery to the queue.
        with contextlib.suppress(Exception):
            await self.channel.close()


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed ack on a dying link is the link's news, not this task's


class Amqp091Link(Link):
    protocol: ClassVar[str] = "amqp091"
    capabilities: ClassVar[Capabilities] = Capabilities(
        nack=True,
        unroutable=True,
        headers=True,
        priority=True,
        ttl=True,
        retain=False,
        qos=False,
        shared_queue=True,
        delivery_count=True,
        topology=True,
    )

    def __init__(
        self, settings: Settings, endpoint: Any, credentials: Any, hooks: LinkHooks
    ) -> None:
        super().__init__(settings, endpoint, credentials, hooks)
        self.opts = _options(settings)
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._raw_publish: aiormq.abc.AbstractChannel | None = None
        self._control: aio_pika.abc.AbstractChannel | None = None
        self._known_exchanges: set[str] = {""}
        self._declared_queues: set[str] = set()
        self._loop = asyncio.get_running_loop()
        self._consumers: list[Amqp091Consumer] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._fast = False

    # -- checks at the call -----------------------------------------------------------------

    @classmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        opts = _options(settings)
        validate_routing_key(msg.topic)
        if msg.qos is not None:
            raise ConfigError("qos is an MQTT option; AMQP 0-9-1 has persistent= and confirms")
        if msg.retain:
            raise ConfigError("retain is an MQTT option; AMQP 0-9-1 has no retained messages")
        if msg.priority is not None and (
            not isinstance(msg.priority, int) or not 0 <= msg.priority <= 255
        ):
            raise ConfigError(f"priority must be an int from 0 to 255, got {msg.priority!r}")
        if msg.exchange is not None and not isinstance(msg.exchange, str):
            raise ConfigError(f"exchange must be a str, got {type(msg.exchange).__name__}")
        if len(msg.body) > opts.max_message_size:
            raise MessageTooLarge(len(msg.body), opts.max_message_size)

    @classmethod
    def check_subscribe(cls, settings: Settings, spec_: SubscriptionSpec) -> None:
        if spec_.extra:
            raise ConfigError(f"unknown subscribe options for amqp://: {sorted(spec_.extra)}")
        if spec_.qos is not None:
            raise ConfigError("qos is an MQTT option; AMQP 0-9-1 subscriptions ack manually")
        if spec_.pattern:
            validate_binding_pattern(spec_.pattern)
        if spec_.prefetch > 65535:
            raise ConfigError(f"prefetch {spec_.prefetch} is over AMQP 0-9-1's 65535")
        if spec_.queue is None and spec_.durable:
            raise ConfigError(
                "durable= needs queue=: a subscription without a queue name gets "
                "a server-named exclusive queue that ends with it"
            )

    # -- the wire ---------------------------------------------------------------------------

    async def open(self) -> None:
        opts = self.opts
        settings = self.settings
        context = client_context(opts) if settings.tls else None
        creds = self.credentials
        assert self.endpoint is not None
        try:
            self.connection = await aio_pika.connect(
                host=self.endpoint.host,
                port=self.endpoint.port,
                login=creds.username if creds else "guest",
                password=(creds.password or "") if creds else "guest",
                virtualhost=settings.path,
                ssl=settings.tls,
                ssl_context=context,
                timeout=opts.connect_timeout,
                heartbeat=_heartbeat_to_negotiate(opts.heartbeat),
                client_properties={"connection_name": "aiobus"},
            )
            self.connection.close_callbacks.add(self._on_connection_closed)
            self._publish_channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._publish_channel.close_callbacks.add(self._on_publish_channel_closed)
            self._raw_publish = await self._publish_channel.get_underlay_channel()
            self._fast = self.fast_publish and _has_frame_api(self._raw_publish)
        except asyncio.CancelledError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            mapped = map_connect_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _on_connection_closed(self, _: Any, exc: BaseException | None) -> None:
        self.hooks.lost(exc if exc is not None else LinkDown("connection closed"))

    def _on_publish_channel_closed(self, _: Any, exc: BaseException | None) -> None:
        # The broker closed the channel (a publish to an exchange deleted meanwhile, say):
        # the confirms of whatever was in flight are gone, so the link starts over.
        self.hooks.lost(LinkDown(f"the broker closed the publish channel: {exc}"))

    async def close(self) -> None:
        self.hooks.lost(LinkDown("closed"))
        connection, self.connection = self.connection, None
        # Outcomes of a closed link no longer count (the core re-sends or fails them).
        for task in list(self._publishing):
            task.cancel()
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    @property
    def raw(self) -> aio_pika.abc.AbstractConnection | None:
        return self.connection

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        default_exchange = self.opts.exchange
        unknown = {m.exchange if m.exchange is not None else default_exchange for m in batch}
        unknown -= self._known_exchanges
        for name in unknown:
            await self._check_exchange(name)
        channel = self._raw_publish
        assert channel is not None
        if channel.is_closed:
            raise LinkDown("the publish channel is closed")
        fast = self._fast
        timestamp = datetime.now(UTC)
        loop = self._loop
        for msg in batch:
            exchange = msg.exchange if msg.exchange is not None else default_exchange
            if exchange not in self._known_exchanges:
                self.hooks.failed(
                    msg, Unroutable(f"exchange {exchange!r} does not exist", code=404)
                )
                continue
            properties = self._properties(msg, timestamp)
            mandatory = self.opts.mandatory if msg.mandatory is None else msg.mandatory
            if fast:
                frame = self._publish_frame(channel, msg, exchange, properties, mandatory)
                queue: asyncio.Queue[ChannelFrame] = channel.write_queue  # type: ignore[attr-defined]
                if queue.full():
                    await queue.put(frame)  # aiormq's writer is behind: wait, as TCP would
                else:
                    queue.put_nowait(frame)
            else:
                task = loop.create_task(
                    self._publish_one(channel, msg, exchange, properties, mandatory)
                )
                self._publishing.add(task)
                task.add_done_callback(self._publishing.discard)

    #: Write frames straight into aiormq's channel (its own confirm bookkeeping, no task and
    #: no lock per message); False uses ``basic_publish`` tasks, aiormq's public path.
    fast_publish: ClassVar[bool] = True

    def _properties(self, msg: Outgoing, timestamp: datetime) -> spec.Basic.Properties:
        persistent = self.opts.persistent if msg.persistent is None else msg.persistent
        return spec.Basic.Properties(
            content_type=msg.content_type,
            headers=msg.headers,
            delivery_mode=2 if persistent else 1,
            priority=msg.priority,
            correlation_id=msg.correlation_id,
            reply_to=msg.reply_to,
            expiration=None if msg.ttl is None else str(math.ceil(msg.ttl * 1000)),
            message_id=msg.message_id,
            timestamp=timestamp,
        )

    def _publish_frame(
        self,
        channel: Any,
        msg: Outgoing,
        exchange: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> ChannelFrame:
        """What aiormq's ``basic_publish`` does, minus its per-call task, lock and timeout.
        Only the pump publishes on this channel, one batch at a time, so delivery tags follow
        the order the frames are queued in."""
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation = channel.create_future()  # failed by aiormq when the channel closes
        channel.confirmations[tag] = confirmation
        # aiormq matches a basic.return to its publish by message id.
        channel.message_id_delivery_tag[msg.message_id] = tag
        frames = [
            spec.Basic.Publish(exchange=exchange, routing_key=msg.topic, mandatory=mandatory),
            ContentHeader(properties=properties, body_size=len(msg.body)),
            *channel._split_body(msg.body),
        ]
        confirmation.add_done_callback(partial(self._confirmed, channel, msg, tag))
        return ChannelFrame.marshall(channel_number=channel.number, frames=frames)

    def _confirmed(
        self, channel: Any, msg: Outgoing, tag: int, confirmation: asyncio.Future[Any]
    ) -> None:
        if channel.message_id_delivery_tag.get(msg.message_id) == tag:
            del channel.message_id_delivery_tag[msg.message_id]
        if confirmation.cancelled():
            self.hooks.lost(LinkDown("the publish channel closed"))
            return
        exc = confirmation.exception()
        if exc is None:
            self.hooks.settled(msg, tag)
        else:
            self._publish_failed(msg, exc)

    def _publish_failed(self, msg: Outgoing, exc: BaseException) -> None:
        if isinstance(exc, amqp_errors.PublishError):
            frame = exc.frame
            self.hooks.failed(
                msg,
                Unroutable(
                    getattr(frame, "reply_text", str(exc)), code=getattr(frame, "reply_code", None)
                ),
            )
        elif isinstance(exc, amqp_errors.DeliveryError):
            self.hooks.failed(msg, Nacked("basic.nack: the broker refused the message"))
        else:
            # The channel or connection died under the publish: the core re-sends it on the
            # next link (or fails it, by outage policy).
            self.hooks.lost(LinkDown(f"publish interrupted: {exc!r}"))

    async def _check_exchange(self, name: str) -> None:
        """Publishing to a missing exchange closes the channel (404); a passive declare on a
        throwaway control channel finds out first, once per exchange per link."""
        control = await self._control_channel()
        try:
            await control.declare_exchange(name, passive=True)
        except amqp_errors.ChannelNotFoundEntity:
            self._control = None
            return
        self._known_exchanges.add(name)

    async def _control_channel(self) -> aio_pika.abc.AbstractChannel:
        if self._control is None or self._control.is_closed:
            assert self.connection is not None
            self._control = await self.connection.channel(publisher_confirms=False)
        return self._control

    async def _publish_one(
        self,
        channel: aiormq.abc.AbstractChannel,
        msg: Outgoing,
        exchange: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        try:
            result = await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=msg.topic,
                properties=properties,
                mandatory=mandatory,
            )
        except (amqp_errors.AMQPError, ConnectionError, RuntimeError) as exc:
            self._publish_failed(msg, exc)
            return
        self.hooks.settled(msg, getattr(result, "delivery_tag", None))

    # -- topology ---------------------------------------------------------------------------

    async def declare(self, items: Sequence[Any]) -> None:
        for item in sorted(items, key=_declare_order):
            await self._declare_one(item)

    async def _declare_one(self, item: Exchange | Queue | Binding) -> None:
        control = await self._control_channel()
        try:
            if isinstance(item, Exchange):
                await control.declare_exchange(
                    item.name,
                    type=item.type,
                    durable=item.durable,
                    auto_delete=item.auto_delete,
                    arguments=item.arguments or None,
                )
                self._known_exchanges.add(item.name)
            elif isinstance(item, Queue):
                await self._declare_queue(control, item)
            else:
                raw = await control.get_underlay_channel()
                await raw.queue_bind(
                    item.queue,
                    item.exchange,
                    routing_key=item.routing_key,
                    arguments=FieldTable(item.arguments) if item.arguments else None,
                )
        except amqp_errors.ChannelPreconditionFailed as exc:
            self._control = None
            if isinstance(item, Queue) and self.opts.on_mismatch == "recreate":
                await self._recreate(item)
                return
            raise TopologyMismatch(
                f"declaring {type(item).__name__.lower()} {item_name(item)!r} clashes with the "
                f"broker's: {_reply_text(exc)} (on_mismatch='recreate' deletes and re-declares "
                "a queue)"
            ) from None
        except amqp_errors.ChannelNotFoundEntity as exc:
            self._control = None
            raise TopologyMismatch(f"declaring {item!r} failed: {_reply_text(exc)}") from None

    async def _declare_queue(self, control: aio_pika.abc.AbstractChannel, item: Queue) -> None:
        raw = await control.get_underlay_channel()
        await raw.queue_declare(
            item.name,
            durable=item.durable,
            exclusive=item.exclusive,
            auto_delete=item.auto_delete,
            arguments=FieldTable(item.declare_arguments()),
        )
        self._declared_queues.add(item.name)

    async def _recreate(self, item: Queue) -> None:
        control = await self._control_channel()
        raw = await control.get_underlay_channel()
        deleted = await raw.queue_delete(item.name)
        log.warning(
            "aiobus: queue %r clashed with its declaration; deleted it (%d messages "
            "dropped) and declared it again",
            item.name,
            deleted.message_count,
        )
        await self._declare_queue(control, item)

    # -- consuming --------------------------------------------------------------------------

    async def attach(self, spec_: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        raw = await channel.get_underlay_channel()
        consumer = Amqp091Consumer(self.hooks, channel, raw, sink, spec_.no_ack)
        try:
            await raw.basic_qos(prefetch_count=spec_.prefetch)
            if spec_.queue is None:
                declared = await raw.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue or ""
            else:
                queue = spec_.queue
                if queue not in self._declared_queues:
                    durable = True if spec_.durable is None else spec_.durable
                    await raw.queue_declare(queue, durable=durable, exclusive=bool(spec_.exclusive))
            exchange = spec_.exchange if spec_.exchange is not None else self.opts.exchange
            if spec_.pattern or spec_.exchange is not None or spec_.queue is None:
                await raw.queue_bind(queue, exchange, routing_key=spec_.pattern)
            consumer.queue = queue
            ok = await raw.basic_consume(queue, consumer.on_message, no_ack=False)
            consumer.consumer_tag = ok.consumer_tag
        except amqp_errors.ChannelClosed as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            raise SubscriptionError(
                f"subscribing to {spec_.pattern!r} (queue {spec_.queue!r}) failed: "
                f"{_reply_text(exc)}"
            ) from None
        channel.close_callbacks.add(lambda _, exc: self._consumer_channel_closed(consumer, exc))
        raw.on_consumer_cancel_callbacks.add(
            lambda frame: self._consumer_channel_closed(consumer, f"basic.cancel {frame!r}")
        )
        self._consumers.append(consumer)
        return consumer

    def _consumer_channel_closed(self, consumer: Amqp091Consumer, exc: object) -> None:
        if consumer.cancelled:
            return
        # The broker ended the consumer (queue deleted, basic.cancel, channel error): start
        # over, so the subscription is re-attached (and re-declared) on a fresh link.
        self.hooks.lost(LinkDown(f"consumer on {consumer.queue!r} ended by the broker: {exc}"))


def _declare_order(item: Any) -> int:
    return {Exchange: 0, Queue: 1, Binding: 2}.get(type(item), 3)


def item_name(item: Exchange | Queue | Binding) -> str:
    if isinstance(item, Binding):
        return f"{item.queue} <- {item.exchange} [{item.routing_key}]"
    return item.name


def _reply_text(exc: BaseException) -> str:
    for arg in getattr(exc, "args", ()):
        text = getattr(arg, "reply_text", None)
        if text:
            return str(text)
    return str(exc)
