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
import re
import ssl
import struct
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import ChannelFrame
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from pamqp import commands as spec
from pamqp import encode as pamqp_encode
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from ..amqp import Binding, Exchange, Queue
from ..connect_errors import (
    explain,
    fail,
    foreign_protocol,
    may_be_foreign,
    note_step,
    raise_from,
    socket_error,
)
from ..errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectPhase,
    InvalidMessage,
    LinkDown,
    MessageTooLarge,
    Nacked,
    PermanentConnectError,
    ProtocolMismatch,
    SubscriptionError,
    TopologyMismatch,
    TransientConnectError,
    Unroutable,
    unsendable,
)
from ..message import Delivery
from ..settings import AmqpOptions, options_as
from ..tls import client_context
from ..topics import validate_binding_pattern, validate_routing_key
from .amqp091_aiormq import Returns, publishing
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
    from aiormq.abc import DeliveredMessage

    from ..publishing import Outgoing
    from ..url import Settings

log = logging.getLogger("aiobus.amqp")


def _options(settings: Settings) -> AmqpOptions:
    return options_as(settings.options, AmqpOptions)


__all__ = ["Amqp091Link", "TopologyMismatch"]  # TopologyMismatch: importable here as before


def _heartbeat_to_negotiate(heartbeat: float) -> int:
    # aiormq declares a link dead after (heartbeat + 1) * 3 s of silence; negotiating two
    # thirds of the asked interval brings detection to about two intervals (DESIGN section 5).
    if heartbeat <= 0:
        return 0
    return max(1, round(heartbeat * 2 / 3))


def map_connect_error(
    exc: BaseException, host: str, endpoint: str, *, tls: bool, vhost: str
) -> BaseException:
    """The driver's errors, sorted once, each with its phase and endpoint: permanent ones are
    not retried at first connect."""
    cause = exc.__cause__
    # aiormq wraps what opening the socket raised with the same args.
    opening = isinstance(cause, OSError) and exc.args == cause.args
    if isinstance(exc, amqp_errors.AMQPConnectionError) and opening:
        assert isinstance(cause, OSError)
        return socket_error(cause, host, endpoint, tls=tls)
    if isinstance(exc, OSError) and not isinstance(exc, amqp_errors.AMQPError):
        return socket_error(exc, host, endpoint, tls=tls)
    if isinstance(exc, amqp_errors.ProtocolSyntaxError) and "protocol header" in str(exc):
        return fail(
            ProtocolMismatch,
            ConnectPhase.HEADER,
            endpoint,
            "the server answered with another AMQP protocol header (AMQP 1.0)",
            fix="for AMQP 1.0 endpoints use an amqp1:// (or amqp1s://) URL",
        )
    if isinstance(exc, (amqp_errors.AuthenticationError, amqp_errors.ProbableAuthenticationError)):
        return fail(
            AuthenticationError,
            ConnectPhase.AUTH,
            endpoint,
            f"the broker refused the credentials: {explain(exc)}",
        )
    if isinstance(exc, amqp_errors.ConnectionNotAllowed) or _closed_at_open(exc):
        return fail(
            PermanentConnectError,
            ConnectPhase.OPEN,
            endpoint,
            f"the broker refused to open virtual host {vhost!r}: "
            + (
                "it answered Connection.Open with Connection.Close (aiormq drops its reason)"
                if _closed_at_open(exc)
                else _reply_text(exc)
            ),
            fix="the vhost does not exist or the user has no permission on it: fix the URL's "
            "path (URL-encoded, '/' is %2F) or create the vhost and grant access",
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return socket_error(cause, host, endpoint, tls=tls)
    if isinstance(exc, (amqp_errors.AMQPConnectionError, EOFError, ConnectionError)):
        # The link died before the broker answered the protocol (or right after).
        return fail(TransientConnectError, ConnectPhase.HEADER, endpoint, explain(exc))
    if isinstance(exc, amqp_errors.InvalidFrameError):
        return fail(TransientConnectError, ConnectPhase.HEADER, endpoint, explain(exc))
    if isinstance(exc, TimeoutError):
        return fail(
            TransientConnectError,
            ConnectPhase.HEADER,
            endpoint,
            f"no answer within connect_timeout ({explain(exc)})",
        )
    return exc


def _closed_at_open(exc: BaseException) -> bool:
    """aiormq's answer when the broker closes the connection instead of Connection.OpenOk
    (an unknown vhost, no permission): an InvalidFrameError naming both frames."""
    text = str(exc)
    return (
        isinstance(exc, amqp_errors.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )


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

    async def cancel(self, *, reason: CancelReason = "leave") -> None:
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


class StreamKeeper(TransportFactory):
    """aiormq's own TCP or TLS factory, keeping the stream it opens so that ``abort()`` can
    cut the socket at once (aiormq's close waits for the broker's Close-Ok otherwise)."""

    def __init__(self, tls: bool) -> None:
        self._inner = TLSTransportFactory() if tls else TCPTransportFactory()
        self._writer: asyncio.StreamWriter | None = None

    async def create(
        self, url: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._inner.create(url, **kwargs)
        self._writer = writer
        return reader, writer

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()


_stream_keeper: ContextVar[StreamKeeper] = ContextVar("aiobus_amqp091_stream_keeper")


class KeptStreamConnection(aio_pika.Connection):
    """aio-pika's connection, handing aiormq the link's ``StreamKeeper`` as its
    ``transport_factory`` (aio-pika passes only the keyword arguments it knows; its
    ``connection_class`` hook and ``kwargs`` are how it is extended)."""

    async def connect(self, timeout: Any = None) -> None:
        self.kwargs["transport_factory"] = _stream_keeper.get()
        await super().connect(timeout)


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
        #: The topology's queues and their bindings, by queue name: what a re-attach declares
        #: again when the broker ended a consumer of one of them (the queue was deleted).
        self._topology_queues: dict[str, Queue] = {}
        self._topology_bindings: dict[str, list[Binding]] = {}
        #: Topology queues whose consumer the broker ended on this link: declared again (with
        #: their bindings) by the next attach on them.
        self._lost_queues: set[str] = set()
        self._tidying: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._consumers: list[Amqp091Consumer] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._fast = False
        self._returns = Returns(self.opts.exchange)
        self._stream = StreamKeeper(settings.tls)
        self._stamp = datetime.now(UTC)
        self._stamp_until = 0.0
        self._closed_connection: aio_pika.abc.AbstractConnection | None = None

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
            raise MessageTooLarge(len(msg.body), opts.max_message_size, option="max_message_size")
        check_short_strings(msg)
        if msg.headers:
            check_headers(msg.headers)

    @classmethod
    def check_subscribe(cls, settings: Settings, spec_: SubscriptionSpec) -> None:
        unknown = set(spec_.extra) - _SUBSCRIBE_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown subscribe options for amqp://: {sorted(unknown)} (AMQP 0-9-1 also "
                f"takes {', '.join(sorted(_SUBSCRIBE_OPTIONS))})"
            )
        check_passive(spec_)
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
            token = _stream_keeper.set(self._stream)
            try:
                connection = await aio_pika.connect(
                    connection_class=KeptStreamConnection,
                    host=self.endpoint.host,
                    port=self.endpoint.port,
                    login=creds.username if creds else "guest",
                    password=(creds.reveal_password() or "") if creds else "guest",
                    virtualhost=settings.path,
                    ssl=settings.tls,
                    ssl_context=context,
                    timeout=opts.connect_timeout,
                    heartbeat=_heartbeat_to_negotiate(opts.heartbeat),
                    client_properties={"connection_name": opts.connection_name},
                )
            finally:
                _stream_keeper.reset(token)
            self.connection = connection
            self.connection.close_callbacks.add(self._on_connection_closed)
            self._publish_channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._publish_channel.close_callbacks.add(self._on_publish_channel_closed)
            self._raw_publish = await self._publish_channel.get_underlay_channel()
            self._returns.install(self._raw_publish)
            self._fast = self.fast_publish
        except asyncio.CancelledError as exc:
            note_step(exc, ConnectPhase.HEADER, str(self.endpoint))
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            mapped = map_connect_error(
                exc, self.endpoint.host, str(self.endpoint), tls=settings.tls, vhost=settings.path
            )
            if isinstance(mapped, ConnectError) and may_be_foreign(mapped):
                mapped = await foreign_protocol(
                    "amqp091",
                    settings.tls,
                    self.endpoint.host,
                    self.endpoint.port,
                    mapped,
                    context=context,
                    server_hostname=self.endpoint.host,
                )
            if mapped is exc:
                raise
            if isinstance(mapped, ConnectError):
                raise raise_from(mapped, exc)  # noqa: B904 (a cause with text, never empty)
            raise mapped from exc

    def _on_connection_closed(self, _: Any, exc: BaseException | None) -> None:
        self.hooks.lost(exc if exc is not None else LinkDown("connection closed"))

    def _on_publish_channel_closed(self, _: Any, exc: BaseException | None) -> None:
        # The broker closed the channel (a publish to an exchange deleted meanwhile, or a
        # message over its size limit): the confirms of whatever was in flight are gone, so
        # the link starts over.
        self._publish_channel_died(exc)

    async def abort(self) -> None:
        """Cut the socket at once (aio-pika has no abort of its own), then let aiormq's
        close run: on a dead socket it ends at once, and with it every task it made."""
        self.hooks.lost(LinkDown("aborted"))
        self._stream.abort()
        connection = self.connection or self._closed_connection
        if connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await connection.close()

    async def close(self) -> None:
        self.hooks.lost(LinkDown("closed"))
        connection, self.connection = self.connection, None
        self._closed_connection = connection
        # Outcomes of a closed link no longer count (the core re-sends or fails them).
        for task in list(self._publishing):
            task.cancel()
        if self._publishing or self._tidying:
            await asyncio.gather(*self._publishing, *self._tidying, return_exceptions=True)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    @property
    def raw(self) -> aio_pika.abc.AbstractConnection | None:
        return self.connection

    # -- publishing -------------------------------------------------------------------------

    def encode(self, msg: Outgoing) -> None:
        """Marshal the message for this link's publish channel: a property or header the codec
        refuses fails this message alone. Delivery tags and confirmations are the write's
        (``publish``), so nothing here touches the channel."""
        size = len(msg.body)
        limit = self.hooks.size_limit
        if limit is not None and size > limit:
            raise MessageTooLarge(size, limit)
        channel: Any = self._raw_publish
        if channel is None:
            raise LinkDown("the publish channel is not open")
        properties = self._properties(msg, self._timestamp())
        mandatory = self.opts.mandatory if msg.mandatory is None else msg.mandatory
        if self._fast:
            exchange = msg.exchange if msg.exchange is not None else self.opts.exchange
            frames = [
                spec.Basic.Publish(exchange=exchange, routing_key=msg.topic, mandatory=mandatory),
                ContentHeader(properties=properties, body_size=size),
                *channel._split_body(msg.body),
            ]
            msg.wire = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        else:
            if msg.headers:
                # aiormq marshals inside its publish task; a trial here keeps a refused
                # header out of that task (headers are the one property checked loosely).
                ContentHeader(properties=properties, body_size=size).marshal()
            msg.wire = (properties, mandatory)

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        default_exchange = self.opts.exchange
        known = self._known_exchanges
        unknown = {m.exchange if m.exchange is not None else default_exchange for m in batch}
        unknown -= known
        for name in unknown:
            await self._check_exchange(name)
        channel: Any = self._raw_publish
        assert channel is not None
        if channel.is_closed:
            raise LinkDown("the publish channel is closed")
        if not self._fast:
            self._publish_tasks(channel, batch)
            return
        queue: asyncio.Queue[ChannelFrame] = channel.write_queue
        # aiormq's channel lock, once per batch, as its basic_publish takes it once per
        # message: no other publish interleaves its tags, and a closed channel is refused.
        async with channel.lock:
            for msg in batch:
                if self._exchange_for(msg) is None:
                    continue
                wire, msg.wire = msg.wire, None  # written once; a re-send encodes again
                if queue.full():
                    await queue.put(wire)  # aiormq's writer is behind: wait, as TCP would
                else:
                    queue.put_nowait(wire)
                # Queued, with no await since: the tag is the frame's, and nothing is taken
                # back if a wait above is cancelled (aiormq's rollback has nothing to undo).
                self._track(channel, msg)

    def _exchange_for(self, msg: Outgoing) -> str | None:
        """The exchange ``msg`` goes to, or None when it is known not to exist: then ``msg``
        has failed alone (``Unroutable``, 404) and is not written."""
        exchange = msg.exchange if msg.exchange is not None else self.opts.exchange
        if exchange in self._known_exchanges:
            return exchange
        self.hooks.failed(msg, Unroutable(f"exchange {exchange!r} does not exist", code=404))
        return None

    def _publish_tasks(
        self, channel: aiormq.abc.AbstractChannel, batch: Sequence[Outgoing]
    ) -> None:
        loop = self._loop
        for msg in batch:
            exchange = self._exchange_for(msg)
            if exchange is None:
                continue
            wire, msg.wire = msg.wire, None  # written once; a re-send encodes again
            properties, mandatory = wire
            task = loop.create_task(
                self._publish_one(channel, msg, exchange, properties, mandatory)
            )
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    #: Write frames straight into aiormq's channel under its lock, one lock per batch (its
    #: own confirm bookkeeping, no task per message); False uses ``basic_publish`` tasks,
    #: aiormq's public path. Both match returns through ``Returns``.
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

    def _timestamp(self) -> datetime:
        """Now, for the timestamp property: AMQP carries whole seconds, so one reading
        serves every message encoded within the next 100 ms (no clock call per message)."""
        now = self._loop.time()
        if now >= self._stamp_until:
            self._stamp = datetime.now(UTC)
            self._stamp_until = now + 0.1
        return self._stamp

    def _track(self, channel: Any, msg: Outgoing) -> None:
        """The bookkeeping of aiormq's ``basic_publish`` (under its lock, held by the
        caller), minus its per-call task and timeout, for the frame just queued."""
        channel.delivery_tag += 1
        tag = msg.tag = channel.delivery_tag
        confirmation = channel.create_future()  # failed by aiormq when the channel closes
        channel.confirmations[tag] = confirmation
        self._returns.add(msg)
        confirmation.add_done_callback(partial(self._confirmed, msg, tag))

    def _confirmed(self, msg: Outgoing, tag: int, confirmation: asyncio.Future[Any]) -> None:
        self._returns.remove(msg)
        if confirmation.cancelled():
            self._publish_channel_died(None)
            return
        exc = confirmation.exception()
        if exc is None:
            self.hooks.settled(msg, tag)
        else:
            self._publish_failed(msg, exc)

    def _publish_failed(self, msg: Outgoing, exc: BaseException) -> None:
        """Every way a publish can end badly, sorted at one place: the broker's answer about
        this message, the channel or connection dying under it, or (slow path) the codec
        refusing it inside aiormq."""
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
        elif isinstance(exc, _CODEC_ERRORS) and not isinstance(exc, _WIRE_ERRORS):
            # Named, not assumed: only what pamqp raises for a value it cannot encode is
            # this message's fault (raised before anything was written).
            self.hooks.failed(msg, unsendable(msg.message_id, msg.topic, "AMQP 0-9-1", exc))
        else:
            # Anything else (a closed channel or connection, a confirmation aiormq ended
            # with CancelledError): the wire. The core re-sends it on the next link (or
            # fails it, by outage policy).
            self._publish_channel_died(exc)

    def _publish_channel_died(self, exc: BaseException | None) -> None:
        """The publish channel is gone. Closed with 406 for a message over the broker's
        ``max_message_size`` (the text names the limit, not the message): the in-flight
        messages over it fail alone with ``MessageTooLarge`` first; the rest follow the
        outage policy when the link is reported lost."""
        reason = self._close_reason()
        if reason is not None:
            exc = reason  # why the broker closed it, rather than "closed" from a later call
        limit = size_refused(exc) if exc is not None else None
        hooks = self.hooks
        if limit is not None:
            for msg in hooks.in_flight():
                size = len(msg.body)
                if size > limit:
                    hooks.too_large(msg, size, limit)
        why = f"the broker closed the publish channel: {exc}" if exc else "publish channel closed"
        hooks.lost(LinkDown(why))

    def _close_reason(self) -> BaseException | None:
        """Why the publish channel closed (the broker's Channel.Close), once it has."""
        channel = self._raw_publish
        if channel is None or not channel.is_closed:
            return None
        closing = channel.closing  # done: aiormq's own record of the close
        return None if closing.cancelled() else closing.exception()

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
        publishing.set(msg)  # this task's: ``Returns`` learns its tag from aiormq
        try:
            result = await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=msg.topic,
                properties=properties,
                mandatory=mandatory,
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # close(): the core re-sends or fails what was in flight
            self._publish_channel_died(None)  # aiormq cancelled it: its channel closed
            return
        except Exception as exc:  # every outcome is sorted by _publish_failed, none escapes
            self._publish_failed(msg, exc)
            return
        finally:
            self._returns.remove(msg)
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
                bindings = self._topology_bindings.setdefault(item.queue, [])
                if item not in bindings:
                    bindings.append(item)
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
            raise topology_mismatch(
                exc,
                f"declaring {type(item).__name__.lower()} {item_name(item)!r}",
                "on_mismatch='recreate' deletes and re-declares a queue",
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
        self._topology_queues[item.name] = item

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
            elif not spec_.extra.get("declare", True):
                queue = spec_.queue  # as it is: only asked whether it exists
                await raw.queue_declare(queue, passive=True)
            elif spec_.queue in self._lost_queues:
                queue = spec_.queue
                self._lost_queues.discard(queue)
                # Its consumer was ended (the queue deleted): the topology's queue and
                # bindings come back before it is consumed again.
                await self.declare(
                    [self._topology_queues[queue], *self._topology_bindings.get(queue, ())]
                )
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
            if isinstance(exc, amqp_errors.ChannelPreconditionFailed) and _INEQUIVALENT.search(
                _reply_text(exc)
            ):
                raise topology_mismatch(
                    exc,
                    f"subscribing to {spec_.pattern!r} on queue {spec_.queue!r}",
                    "declare the queue as the broker has it (a Queue(...) in topology= with "
                    "its flags and arguments), or consume it as it is with "
                    "subscribe('', queue=..., declare=False)",
                ) from None
            if isinstance(exc, amqp_errors.ChannelNotFoundEntity) and not spec_.extra.get(
                "declare", True
            ):
                raise SubscriptionError(
                    f"queue {spec_.queue!r} does not exist: subscribe(..., declare=False) "
                    "consumes an existing queue and declares nothing (declare it with "
                    f"Queue({spec_.queue!r}, ...) in topology=, or leave out declare=False): "
                    f"{_reply_text(exc)}"
                ) from None
            raise SubscriptionError(
                f"subscribing to {spec_.pattern!r} (queue {spec_.queue!r}) failed: "
                f"{_reply_text(exc)}"
            ) from None
        channel.close_callbacks.add(lambda _, exc: self._consumer_channel_closed(consumer, exc))
        raw.on_consumer_cancel_callbacks.add(
            lambda frame: self._consumer_ended(consumer, "basic.cancel (the queue was deleted?)")
        )
        self._consumers.append(consumer)
        return consumer

    def _consumer_channel_closed(self, consumer: Amqp091Consumer, exc: object) -> None:
        if consumer.cancelled:
            return
        connection = self.connection
        if (
            isinstance(exc, amqp_errors.ChannelClosed)
            and connection is not None
            and not connection.is_closed
        ):
            # The broker closed this consumer's channel alone (consumer_timeout, a queue
            # error): this subscription's business, not the connection's.
            self._consumer_ended(consumer, f"the broker closed its channel: {_reply_text(exc)}")
            return
        self.hooks.lost(LinkDown(f"consumer on {consumer.queue!r} ended: {exc}"))

    def _consumer_ended(self, consumer: Amqp091Consumer, why: str) -> None:
        """The broker ended one consumer while the connection lives: its deliveries are
        stale (the broker has them back), its channel is closed, and the core re-attaches
        that subscription (declaring its queue again) or fails it loudly. Publishes in
        flight and other subscriptions are untouched."""
        if consumer.cancelled:
            return
        consumer.cancelled = True
        queue = consumer.queue
        if queue in self._topology_queues:
            self._lost_queues.add(queue)
        task = self._loop.create_task(self._close_quietly(consumer.channel))
        self._tidying.add(task)
        task.add_done_callback(self._tidying.discard)
        self.hooks.consumer_lost(
            consumer.sink,
            SubscriptionError(f"the broker ended the consumer of queue {queue!r}: {why}"),
        )

    @staticmethod
    async def _close_quietly(channel: aio_pika.abc.AbstractChannel) -> None:
        with contextlib.suppress(Exception):
            await channel.close()


#: Subscribe options of AMQP 0-9-1 beyond the common ones.
_SUBSCRIBE_OPTIONS = frozenset({"declare"})


def check_passive(spec_: SubscriptionSpec) -> None:
    """``declare=False``: consume a queue as it is (another application's, a quorum or stream
    queue), declaring and binding nothing, so nothing the subscription asks can clash."""
    declare = spec_.extra.get("declare", True)
    if not isinstance(declare, bool):
        raise ConfigError(f"declare must be True or False, got {declare!r}")
    if declare:
        return
    if spec_.queue is None:
        raise ConfigError("declare=False consumes an existing queue: name it with queue=")
    if spec_.pattern or spec_.exchange is not None:
        raise ConfigError(
            "declare=False binds nothing: pass '' as the pattern and no exchange=, and declare "
            "the bindings you need as Binding(...) in topology= (or leave out declare=False)"
        )
    if spec_.durable is not None or spec_.exclusive is not None:
        raise ConfigError(
            "durable= and exclusive= describe a queue to declare; declare=False takes the "
            "queue as it is"
        )


def _declare_order(item: Any) -> int:
    return {Exchange: 0, Queue: 1, Binding: 2}.get(type(item), 3)


def item_name(item: Exchange | Queue | Binding) -> str:
    if isinstance(item, Binding):
        return f"{item.queue} <- {item.exchange} [{item.routing_key}]"
    return item.name


#: RabbitMQ's text for a declaration that differs from the entity it has.
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' "
    r"in vhost '[^']*': received (?P<expected>.+?) but current is (?P<actual>.+?)\s*$"
)
_VALUE = re.compile(r"^(?:the value )?'(?P<value>[^']*)'")


def _printed_value(text: str) -> str | None:
    """One side of RabbitMQ's clash text: ``none``, ``'x'`` or ``the value 'x' of type 't'``."""
    found = _VALUE.match(text)
    return found.group("value") if found else None


def topology_mismatch(exc: BaseException, what: str, fix: str) -> TopologyMismatch:
    """``TopologyMismatch`` for a declaration the broker refused with PRECONDITION_FAILED:
    what differs, taken from the broker's text where it names it, and what to change."""
    text = _reply_text(exc)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return TopologyMismatch(f"{what} clashes with the broker's: {text} ({fix})")
    name, argument = found.group("name"), found.group("argument")
    expected = _printed_value(found.group("expected"))
    actual = _printed_value(found.group("actual"))
    kind = found.group("kind")
    return TopologyMismatch(
        f"{what} clashes with the broker's {kind} {name!r}: {argument} is "
        f"{'unset' if actual is None else repr(actual)} there, declared here as "
        f"{'unset' if expected is None else repr(expected)} ({text}); {fix}",
        queue=name if kind == "queue" else None,
        exchange=name if kind == "exchange" else None,
        argument=argument,
        expected=expected,
        actual=actual,
    )


def _reply_text(exc: BaseException) -> str:
    for arg in getattr(exc, "args", ()):
        text = getattr(arg, "reply_text", None)
        if text:
            return str(text)
    return str(exc)


#: What ends a publish because the channel or connection under it ended, not the message.
_WIRE_ERRORS = (amqp_errors.AMQPError, ConnectionError, OSError, EOFError, RuntimeError)

#: RabbitMQ's text when it closes a channel for a message over ``max_message_size``.
_SIZE_REFUSAL = re.compile(r"message size (\d+) is larger than configured max size (\d+)")

#: What pamqp raises for a value it cannot encode.
_CODEC_ERRORS = (TypeError, ValueError, OverflowError, struct.error)

_SHORT_STRINGS = ("content_type", "message_id", "correlation_id", "reply_to")


def size_refused(exc: BaseException) -> int | None:
    """The limit RabbitMQ states when it closes a channel with 406 for a message's size."""
    found = _SIZE_REFUSAL.search(f"{_reply_text(exc)} {exc}")
    return int(found.group(2)) if found else None


def check_short_strings(msg: Outgoing) -> None:
    """The properties AMQP 0-9-1 carries as short strings: str of at most 255 UTF-8 bytes."""
    for name in _SHORT_STRINGS:
        text = getattr(msg, name)
        if text is None:
            continue
        if not isinstance(text, str):
            raise InvalidMessage(f"{name} must be a str, got {type(text).__name__}")
        # A character is at most 4 UTF-8 bytes: only a long text needs encoding to know.
        if len(text) > 63 and len(text.encode(errors="replace")) > 255:
            raise InvalidMessage(
                f"{name} is {len(text.encode(errors='replace'))} bytes in UTF-8; AMQP 0-9-1 "
                "carries at most 255"
            )


def check_headers(headers: dict[str, Any]) -> None:
    """Trial-encode the headers table at the call: what the codec refuses is the caller's to
    change, and is named here rather than failing later on the link."""
    try:
        pamqp_encode.field_table(headers)
    except _CODEC_ERRORS as exc:
        raise InvalidMessage(
            f"AMQP 0-9-1 cannot encode the headers ({exc}); header values may be str, int "
            "(64-bit), float, bool, None, datetime, bytearray, Decimal (at most 9 digits), "
            "and lists or dicts of these"
        ) from exc
