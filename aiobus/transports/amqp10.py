"""The ``amqp1://`` / ``amqp1s://`` adapter: proton's protocol engine driven from asyncio.

No thread and no proton reactor: bytes read from the socket go into ``proton.Transport``, the
collector's events are handled here, and the transport's output is written back in one write
per batch (a publish batch, a read, or one loop turn of acks). TLS is asyncio's; the idle
time-out is a timer on the loop that calls ``transport.tick``.

Every receiver, and every per-address sender, lives in its own session: RabbitMQ answers a bad
address by ending the whole session (``amqp:not-found``), which then takes only that one link.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import proton
from proton import Event, Terminus

from ..connect_errors import (
    explain,
    fail,
    foreign_protocol,
    may_be_foreign,
    note_step,
    placed,
    raise_from,
    socket_error,
)
from ..errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectPhase,
    LinkDown,
    LinkLost,
    MessageTooLarge,
    Nacked,
    PermanentConnectError,
    ProtocolMismatch,
    SubscriptionError,
    TransientConnectError,
)
from ..settings import Amqp1Options, options_as
from ..tls import client_context
from . import amqp10_codec as codec
from .amqp10_address import validate_address
from .amqp10_links import (
    Amqp1Raw,
    Amqp10Consumer,
    ReceiverState,
    SenderState,
    condition_text,
    link_names,
    wire_message,
)
from .amqp10_senders import SenderPool
from .base import Capabilities, Consumer, DeliverySink, Link, LinkHooks, SubscriptionSpec
from .stream import StreamTransport, stream_transport

__all__ = ["Amqp1Raw", "Amqp10Consumer", "Amqp10Link", "validate_address"]

if TYPE_CHECKING:
    from ..auth import Credentials
    from ..publishing import Outgoing
    from ..url import Endpoint, Settings

_AMQP10_HEADERS = (b"AMQP\x00\x01\x00\x00", b"AMQP\x03\x01\x00\x00")
# Conditions after which retrying the same connect cannot help.
_PERMANENT_CONDITIONS = {
    "amqp:unauthorized-access",
    "amqp:not-found",
    "amqp:not-allowed",
    "amqp:not-implemented",
    "amqp:invalid-field",
}
_RABBITMQ_V2 = ("/queues/", "/exchanges/")


def _options(settings: Settings) -> Amqp1Options:
    return options_as(settings.options, Amqp1Options)


# --- the link -----------------------------------------------------------------------------


class Amqp10Link(Link, asyncio.Protocol):
    protocol: ClassVar[str] = "amqp10"
    capabilities: ClassVar[Capabilities] = Capabilities(
        nack=True,
        unroutable=True,
        headers=True,
        priority=True,
        ttl=True,
        retain=False,
        qos=False,
        shared_queue=False,
        delivery_count=True,
        topology=False,
    )

    def __init__(
        self,
        settings: Settings,
        endpoint: Endpoint | None,
        credentials: Credentials | None,
        hooks: LinkHooks,
    ) -> None:
        super().__init__(settings, endpoint, credentials, hooks)
        opts = _options(settings)
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.presettled = opts.presettled
        self.mandatory = opts.mandatory
        self.modified_retries = opts.modified_retries
        self.durable = True
        self.tags = itertools.count(1)
        self.written: list[Outgoing] = []  # pre-settled messages to settle once on the socket
        self.conn = proton.Connection()
        self.transport = proton.Transport()
        self.collector = proton.Collector()
        self.conn.collect(self.collector)
        self._sock: StreamTransport | None = None
        self._header = b""
        self._states: dict[Any, Any] = {}
        self._anon: SenderState | None = None
        self._pool = SenderPool(self, opts.max_senders, opts.sender_idle)
        self.sessions = 0
        """Sessions begun and not yet ended (each holds one of the peer's channels)."""
        self._channels = 0
        self._use_anon = False
        self._rabbitmq = False
        self._opened: asyncio.Future[None] = self.loop.create_future()
        self.dead: asyncio.Future[None] = self.loop.create_future()
        self._sock_closed: asyncio.Future[None] = self.loop.create_future()
        self._kick_handle: asyncio.Handle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._sasl: Any = None
        self._handlers = {
            Event.DELIVERY: self._on_delivery,
            Event.LINK_FLOW: self._on_flow,
            Event.CONNECTION_REMOTE_OPEN: self._on_connection_open,
            Event.CONNECTION_REMOTE_CLOSE: self._on_connection_close,
            Event.SESSION_REMOTE_CLOSE: self._on_session_close,
            Event.LINK_REMOTE_OPEN: self._on_link_open,
            Event.LINK_REMOTE_CLOSE: self._on_link_close,
            Event.TRANSPORT_ERROR: self._on_transport_error,
            Event.TRANSPORT_CLOSED: self._on_transport_closed,
        }

    # -- checks at the call ------------------------------------------------------------------

    @classmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        opts = _options(settings)
        validate_address(msg.topic, publishing=True)
        if msg.qos is not None:
            raise ConfigError("qos is an MQTT option; AMQP 1.0 settles with outcomes")
        if msg.retain:
            raise ConfigError("retain is an MQTT option; AMQP 1.0 has no retained messages")
        if msg.exchange is not None:
            raise ConfigError(
                "exchange= does not apply to AMQP 1.0: the address names it "
                "(RabbitMQ 4: /exchanges/NAME/KEY)"
            )
        if msg.priority is not None and (
            not isinstance(msg.priority, int)
            or isinstance(msg.priority, bool)
            or not 0 <= msg.priority <= 255
        ):
            raise ConfigError(f"priority must be an int from 0 to 255, got {msg.priority!r}")
        if msg.ttl is not None and msg.ttl * 1000 >= 2**32:
            raise ConfigError(f"ttl {msg.ttl!r} s is over AMQP 1.0's 32-bit milliseconds")
        if msg.headers:
            codec.check_headers(msg.headers)
        if msg.content_type is not None:
            codec.check_content_type(msg.content_type)
        if len(msg.body) > opts.max_message_size:
            raise MessageTooLarge(len(msg.body), opts.max_message_size)

    @classmethod
    def check_subscribe(cls, settings: Settings, spec: SubscriptionSpec) -> None:
        validate_address(spec.pattern, publishing=False)
        for name in ("queue", "durable", "exclusive"):
            if getattr(spec, name) is not None:
                raise ConfigError(
                    f"{name}= does not apply to an AMQP 1.0 address: the address names the "
                    f"queue (RabbitMQ 4: /queues/NAME), got {spec.pattern!r}"
                )
        if spec.exchange is not None:
            raise ConfigError("exchange= does not apply to an AMQP 1.0 address")
        if spec.qos is not None:
            raise ConfigError("qos is an MQTT option; AMQP 1.0 settles with outcomes")
        if spec.extra:
            raise ConfigError(f"unknown subscribe options for amqp1://: {sorted(spec.extra)}")

    # -- opening -------------------------------------------------------------------------------

    async def open(self) -> None:
        opts = self.opts
        endpoint = self.endpoint
        assert endpoint is not None
        conn = self.conn
        transport = self.transport
        conn.container = opts.container_id or f"aiobus-{secrets.token_hex(6)}"
        if opts.hostname is not None:
            conn.hostname = opts.hostname
        elif opts.vhost is not None:
            conn.hostname = f"vhost:{opts.vhost}"
        else:
            conn.hostname = endpoint.host
        creds = self.credentials
        sasl = transport.sasl()
        mech = opts.sasl
        if mech == "auto":
            mech = "PLAIN" if creds is not None and creds.password is not None else "ANONYMOUS"
        sasl.allowed_mechs(mech)
        if mech == "PLAIN":
            if creds is None:
                raise ConfigError("sasl=PLAIN needs credentials (user:password@ in the URL)")
            # The scheme is the user's choice (amqp1:// is plain text, like amqp://).
            sasl.allow_insecure_mechs = True
            conn.user = creds.username
            conn.password = creds.reveal_password() or ""
        self._sasl = sasl
        if opts.heartbeat:
            transport.idle_timeout = opts.heartbeat
        transport.bind(conn)
        conn.open()
        ssl_ctx = client_context(self.opts) if self.settings.tls else None
        server_hostname = None
        if ssl_ctx is not None:
            server_hostname = opts.server_hostname or endpoint.host
        where = str(endpoint)
        try:
            await self.loop.create_connection(
                lambda: self,
                endpoint.host,
                endpoint.port,
                ssl=ssl_ctx,
                server_hostname=server_hostname,
            )
        except asyncio.CancelledError as exc:
            note_step(exc, ConnectPhase.TLS if ssl_ctx is not None else ConnectPhase.TCP, where)
            raise
        except OSError as exc:
            error = socket_error(exc, endpoint.host, where, tls=ssl_ctx is not None)
            raise await self._connect_failed(error, exc, ssl_ctx, server_hostname)  # noqa: B904
        try:
            await asyncio.shield(self._opened)
        except asyncio.CancelledError as exc:
            note_step(exc, self._connect_phase(), where)  # before the abort changes the state
            self._abort()
            raise
        except Exception as exc:
            error = self._opening_error(exc, where)
            self._abort()
            raise await self._connect_failed(error, exc, ssl_ctx, server_hostname)  # noqa: B904
        except BaseException:
            self._abort()
            raise
        offered = conn.remote_offered_capabilities or ()
        relay = any(str(c) == "ANONYMOUS-RELAY" for c in offered)
        choice = opts.anonymous_relay
        self._use_anon = choice == "always" or (choice == "auto" and relay)
        props = conn.remote_properties or {}
        self._rabbitmq = str(props.get(proton.symbol("product"), "")) == "RabbitMQ"
        self._channels = transport.channel_max + 1  # as negotiated with the peer
        if self._use_anon:
            self._anon = SenderState(self, None)
            self._anon.open()
            self.flush()

    def _connect_phase(self) -> ConnectPhase:
        """How far the handshake got: the peer's header, then SASL, then the open frames."""
        if len(self._header) < 8:
            return ConnectPhase.HEADER
        sasl = self._sasl
        if sasl is not None and sasl.outcome is None:
            return ConnectPhase.AUTH
        return ConnectPhase.OPEN

    def _opening_error(self, exc: Exception, where: str) -> ConnectError:
        """What failed the handshake, with its phase. A connection closed after our open frame
        without a close frame is how RabbitMQ 4 answers a virtual host that does not exist
        or that the user may not use (after a 3 s delay, with no reason on the wire)."""
        phase = self._connect_phase()
        if isinstance(exc, ConnectError):
            return placed(exc, phase, where)
        if phase is ConnectPhase.OPEN and self._closed_without_a_word():
            return fail(
                PermanentConnectError,
                phase,
                where,
                f"the broker closed the connection instead of opening it for hostname "
                f"{self.conn.hostname!r} ({explain(exc)})",
                fix="the virtual host does not exist or the user may not use it: check vhost= "
                "(or hostname=), or create the vhost and grant access",
            )
        return fail(TransientConnectError, phase, where, explain(exc))

    def _closed_without_a_word(self) -> bool:
        """The peer dropped the socket (proton: "connection aborted") with no close frame: not
        an idle timeout, not a refusal with a condition (those say why themselves)."""
        if self.conn.state & proton.Endpoint.REMOTE_CLOSED:
            return False
        cond = self.transport.condition
        return cond is not None and cond.name == "amqp:connection:framing-error"

    async def _connect_failed(
        self,
        error: ConnectError,
        original: BaseException,
        ctx: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> ConnectError:
        """``error``, or a ``ProtocolMismatch`` when the port turns out to speak another
        protocol (asked only when the attempt died before the peer's AMQP header)."""
        endpoint = self.endpoint
        if may_be_foreign(error) and endpoint is not None:
            error = await foreign_protocol(
                "amqp10",
                self.settings.tls,
                endpoint.host,
                endpoint.port,
                error,
                context=ctx,
                server_hostname=server_hostname,
            )
        return raise_from(error, original)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # By interface, not class: uvloop's transports are not asyncio.Transport subclasses.
        self._sock = stream_transport(transport)
        self.flush()
        self._schedule_tick()

    def data_received(self, data: bytes) -> None:
        if len(self._header) < 8:
            need = 8 - len(self._header)
            self._header += data[:need]
            prefix = self._header[:4]
            if b"AMQP"[: len(prefix)] != prefix:
                self._mismatch()
                return
            if len(self._header) == 8 and self._header not in _AMQP10_HEADERS:
                self._mismatch()
                return
        transport = self.transport
        view = memoryview(data)
        while view:
            cap = transport.capacity()
            if cap <= 0:
                if cap < 0:
                    break  # input side closed: the events below say why
                self._process()
                cap = transport.capacity()
                if cap <= 0:
                    break
            chunk = view[:cap]
            transport.push(bytes(chunk))
            view = view[len(chunk) :]
            self._process()
        self._process()
        if not self._opened.done():
            self._refused_by_sasl()
        self.flush()

    def _refused_by_sasl(self) -> None:
        """A SASL outcome that refuses the credentials ends the handshake at once: RabbitMQ
        sends it but closes the socket (which is when proton reports it) seconds later."""
        sasl = self._sasl
        if sasl is not None and sasl.outcome in (proton.SASL.AUTH, proton.SASL.PERM):
            self._die(
                AuthenticationError(
                    "the broker refused the credentials (SASL outcome: "
                    + ("auth" if sasl.outcome == proton.SASL.AUTH else "perm")
                    + ")",
                    phase=ConnectPhase.AUTH,
                )
            )

    def eof_received(self) -> bool | None:
        self.transport.close_tail()
        self._process()
        self._die(LinkDown("the broker closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._sock_closed.done():
            self._sock_closed.set_result(None)
        if not self._closing:
            self.transport.close_tail()
            self._process()
        self._die(LinkDown(f"connection lost: {exc}" if exc else "connection closed"))

    def _mismatch(self) -> None:
        header = self._header
        if header.startswith(b"AMQP") and header[4:8] == b"\x00\x00\x09\x01":
            text = (
                "the server answered with the AMQP 0-9-1 protocol header: it does not "
                "speak AMQP 1.0 here; use amqp:// (or amqps://) for AMQP 0-9-1"
            )
        else:
            text = f"the server does not speak AMQP 1.0 (it answered {header!r})"
        self._die(ProtocolMismatch(text))

    # -- the engine ----------------------------------------------------------------------------

    def _process(self) -> None:
        collector = self.collector
        handlers = self._handlers
        while True:
            ev = collector.peek()
            if ev is None:
                break
            handler = handlers.get(ev.type)
            if handler is not None:
                handler(ev)
            collector.pop()

    def flush(self) -> None:
        """Write whatever the engine has to say, in one write."""
        sock = self._sock
        transport = self.transport
        if sock is None:
            return
        chunks: list[bytes] = []
        while True:
            n = transport.pending()
            if n <= 0:
                break
            out = transport.peek(n)
            transport.pop(n)
            if out:
                chunks.append(out)
        if chunks and not sock.is_closing():
            sock.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        written = self.written
        if written:
            self.written = []
            hooks = self.hooks
            for msg in written:
                hooks.settled(msg, None)

    def kick(self) -> None:
        """Flush at the end of this loop turn: settlements made together leave together."""
        if self._kick_handle is None:
            self._kick_handle = self.loop.call_soon(self._kicked)

    def _kicked(self) -> None:
        self._kick_handle = None
        self._process()
        self.flush()

    def _schedule_tick(self) -> None:
        if not self.opts.heartbeat or self.dead.done():
            return
        now = self.loop.time()
        deadline = self.transport.tick(now)
        self._process()
        self.flush()
        if self.dead.done():
            return
        # proton's tick returns no deadline for our own idle check on a tick that saw new
        # input (only the peer's keep-alive, if it asked for one): tick at least every half
        # interval, or a silent peer that never asked for keep-alives would go unnoticed.
        latest = now + self.opts.heartbeat / 2
        when = min(deadline, latest) if deadline > 0 else latest
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._tick_handle = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        self._schedule_tick()

    # -- events -----------------------------------------------------------------------------

    def _on_delivery(self, ev: Any) -> None:
        dlv = ev.context
        state = self._states.get(ev.link)  # the event already wrapped it: no new wrapper
        if state is not None:
            state.on_delivery(dlv)

    def _on_flow(self, ev: Any) -> None:
        state = self._states.get(ev.link)
        if isinstance(state, SenderState):
            state.pump()

    def _on_connection_open(self, ev: Any) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_connection_close(self, ev: Any) -> None:
        reason, code = condition_text(self.conn.remote_condition)
        if self._closing:
            return
        self.conn.close()
        self.flush()
        if code in _PERMANENT_CONDITIONS and not self._opened.done():
            self._die(
                PermanentConnectError(f"the broker refused the connection: {reason} ({code})")
            )
        else:
            self._die(LinkDown(f"the broker closed the connection: {reason} ({code})"))

    def _on_session_close(self, ev: Any) -> None:
        session = ev.session
        reason, code = condition_text(session.remote_condition)
        for link_obj, state in list(self._states.items()):
            if state.session == session:
                self._link_ended(link_obj, state, reason, code)
        # Ended both ways: proton gives its channel back. Not ``free()``d here: that frees
        # its links too while their wrappers may still be referenced, and a later
        # ``__del__`` then aborts the process inside proton (seen in a full test run). The
        # object goes with the connection; the pool reuses sessions, so few ever end.
        session.close()
        self.sessions -= 1
        if self._pool.parked:
            self._pool.unpark()

    def _on_link_open(self, ev: Any) -> None:
        link_obj = ev.link
        state = self._states.get(link_obj)
        if isinstance(state, ReceiverState):
            # A refused attach comes back with no source, then a detach or an end.
            source = link_obj.remote_source
            refused = source.type == Terminus.UNSPECIFIED or source.address is None
            if not refused and not state.attached.done():
                state.attached.set_result(None)
        elif isinstance(state, SenderState):
            state.attached = True
            limit = link_obj.remote_max_message_size
            if limit:  # the peer's max-message-size: checked before the wire from now on
                state.max_size = limit
                self.hooks.size_limit_stated(limit)

    def _on_link_close(self, ev: Any) -> None:
        link_obj = ev.link
        state = self._states.get(link_obj)
        reason, code = condition_text(link_obj.remote_condition)
        if state is not None:
            self._link_ended(link_obj, state, reason, code)
        link_obj.close()
        if isinstance(state, SenderState) and state.closing:
            link_obj.free()  # detached both ways; its session lives on for the next sender

    def _link_ended(self, link_obj: Any, state: Any, reason: str, code: str | None) -> None:
        """One link is gone (detached, or its session ended): only its own users hear of it."""
        self._states.pop(link_obj, None)
        if self._closing:
            return  # our own close: the broker's detach answers it
        if isinstance(state, ReceiverState):
            consumer = state.consumer
            if not state.attached.done():
                state.attached.set_exception(
                    SubscriptionError(
                        f"cannot attach to address {consumer.address!r}: {reason}"
                        + (f" ({code})" if code else "")
                    )
                )
            if not consumer.closed.done():
                consumer.closed.set_result(None)
            if not consumer.cancelled:
                consumer.cancelled = True
                self.hooks.consumer_lost(
                    consumer.sink,
                    SubscriptionError(
                        f"the broker detached the consumer of {consumer.address!r}: {reason}"
                        + (f" ({code})" if code else "")
                    ),
                )
        elif isinstance(state, SenderState):
            if state.closing:
                return  # the pool closed it: this is the answer
            if state is self._anon:
                self._die(LinkDown(f"the broker ended the sender: {reason} ({code})"))
                return
            state.fail_all(Nacked(f"address {state.address!r}: {reason}", code=code))
            self._pool.ended(state)

    def _on_transport_error(self, ev: Any) -> None:
        cond = self.transport.condition
        reason, code = condition_text(cond)
        outcome = self._sasl.outcome
        if outcome in (proton.SASL.AUTH, proton.SASL.PERM) or code == "amqp:unauthorized-access":
            self._die(AuthenticationError(f"the broker refused the credentials: {reason}"))
        elif outcome in (proton.SASL.SYS, proton.SASL.TEMP):
            self._die(TransientConnectError(f"SASL failed on the broker's side: {reason}"))
        else:
            self._die(LinkDown(f"transport error: {reason} ({code})"))

    def _on_transport_closed(self, ev: Any) -> None:
        reason, code = condition_text(self.transport.condition)
        self._die(LinkDown(f"transport closed: {reason}" + (f" ({code})" if code else "")))

    # -- death and closing ---------------------------------------------------------------------

    def _die(self, exc: BaseException) -> None:
        """The link is dead: say so once, at once, and let the socket go."""
        if self.dead.done():
            return
        self._error = exc
        self.dead.set_result(None)
        if not self._opened.done():
            self._opened.set_exception(exc)
            self._opened.exception()  # open() re-raises it if it still waits; else not news
        # Messages still waiting here for credit never left this process: where the outage
        # policy is "fail", say exactly that (the core would count them as maybe delivered).
        senders = self._pool.states()
        if self._anon is not None:
            senders.append(self._anon)
        for sender in senders:
            for msg in sender.queue:
                if msg.outage == "fail" and msg.tag is sender:
                    self.hooks.failed(msg, LinkLost(maybe_delivered=False))
        self.hooks.lost(exc)
        for state in list(self._states.values()):
            if isinstance(state, ReceiverState):
                if not state.attached.done():
                    state.attached.set_exception(LinkDown(f"link lost while attaching: {exc}"))
                if not state.consumer.closed.done():
                    state.consumer.closed.set_result(None)
        self._cancel_timers()
        sock = self._sock
        if sock is not None and not sock.is_closing():
            sock.close()

    def _cancel_timers(self) -> None:
        self._pool.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._kick_handle is not None:
            self._kick_handle.cancel()
            self._kick_handle = None

    def _abort(self) -> None:
        self._closing = True
        self._die(LinkDown("aborted"))
        sock = self._sock
        if sock is not None:
            sock.abort()

    async def abort(self) -> None:
        self._closing = True
        self._die(LinkDown("aborted"))
        if self._sock is not None:
            self._sock.abort()  # also one a cut-short close left closing

    async def close(self) -> None:
        """Detach links, end sessions, close the connection, then the socket; bounded."""
        if not self.dead.done() and self._sock is not None:
            self._closing = True
            for state in list(self._states.values()):
                if isinstance(state, ReceiverState):
                    state.receiver.close()
                else:
                    state.sender.close()
                state.session.close()
            self.conn.close()
            self._process()
            self.flush()
            try:
                async with asyncio.timeout(min(self.opts.close_timeout, 5.0)):
                    await asyncio.shield(self.dead)
            except TimeoutError:
                pass
            self._die(LinkDown("closed"))
        else:
            self._die(LinkDown("closed"))
        if self._sock is not None and not self._sock_closed.done():
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._sock_closed)
            except TimeoutError:
                self._sock.abort()
                await asyncio.shield(self._sock_closed)

    # -- publishing ------------------------------------------------------------------------------

    def _via_relay(self, topic: str) -> bool:
        # RabbitMQ 4 takes only its v2 addresses in ``to``; the older forms work as a
        # link's target, so those get a sender (and a session) of their own.
        return self._anon is not None and (not self._rabbitmq or topic.startswith(_RABBITMQ_V2))

    def free_channels(self) -> int:
        """Sessions that may still be begun on this connection (the peer's channel-max)."""
        return self._channels - self.sessions

    def encode(self, msg: Outgoing) -> None:
        """The bare message's bytes for the sender it will go through (``to`` only on the
        anonymous relay); written when that sender has credit."""
        msg.wire = wire_message(msg, self._via_relay(msg.topic), self.durable)

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        if self.dead.done():
            raise LinkDown(f"the AMQP 1.0 link is dead: {self._error}")
        anon = self._anon
        touched: dict[int, SenderState] = {}
        pool = self._pool
        via_relay = self._via_relay
        for msg in batch:
            state = anon if anon is not None and via_relay(msg.topic) else pool.get(msg.topic)
            msg.tag = state
            state.queue.append(msg)
            touched[id(state)] = state
        now = None
        for used in touched.values():
            if used is not anon:
                if now is None:
                    now = self.loop.time()
                pool.touch(used, now)
            used.pump()
        self.flush()

    def withdraw(self, msg: Outgoing) -> bool:
        """A message still waiting for a sender's credit (or for a sender slot) is dropped
        there, unsent; one already written is not (``SenderState.withdraw``)."""
        holder = msg.tag
        return type(holder) is SenderState and holder.link is self and holder.withdraw(msg)

    # -- receiving ---------------------------------------------------------------------------

    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        if self.dead.done():
            raise LinkDown(f"the AMQP 1.0 link is dead: {self._error}")
        if self.free_channels() <= 0:
            raise SubscriptionError(
                f"cannot attach to address {spec.pattern!r}: every session the broker allows "
                f"({self._channels}) is in use by subscriptions and per-address senders; "
                "lower max_senders, or use fewer subscriptions on this connection"
            )
        consumer = Amqp10Consumer(self.hooks, self, spec, sink)
        session = self.conn.session()
        session.open()
        self.sessions += 1
        receiver = session.receiver(f"aiobus-recv-{next(link_names)}")
        receiver.source.address = spec.pattern
        if spec.no_ack:
            receiver.snd_settle_mode = proton.Link.SND_SETTLED
            sink.on_space(consumer._space)
        else:
            receiver.snd_settle_mode = proton.Link.SND_UNSETTLED
        receiver.rcv_settle_mode = proton.Link.RCV_FIRST
        receiver.open()
        state = ReceiverState(receiver, session, consumer)
        consumer.state = state
        self._states[receiver] = state
        self.flush()
        try:
            await asyncio.shield(state.attached)
        except BaseException:
            consumer.cancelled = True
            raise
        # Credit only once attached: RabbitMQ 4.0 oversends (twice the credit, measured) when
        # the flow frame arrives together with the attach.
        receiver.flow(spec.prefetch)
        self._pool.keep_spare()
        self.flush()
        return consumer

    @property
    def raw(self) -> Any:
        return self.conn
