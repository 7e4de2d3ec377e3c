"""The ``mqtt://``, ``mqtts://``, ``mqtt+ws://`` and ``mqtt+wss://`` adapter, on paho-mqtt.

paho's ``Client`` is the protocol engine (CONNECT, packet parsing, SUBSCRIBE/UNSUBSCRIBE,
PUBLISH encoding, manual acks); asyncio owns the connection (see ``mqtt_wire``). What paho or
aiomqtt do not do right for aiobus is done here: publish outcomes with their MQTT 5 reason
codes, the broker's Receive Maximum as the in-flight window, the link's death noticed at once,
PUBACK sent when the application acks, backpressure per subscription (a full one holds only
its own messages, within the Receive Maximum aiobus sends), write backpressure for every
publish, QoS 2 completed only once the message is in a buffer, keep-alive with half-open
detection, and session state (client id, packet ids, QoS 2 flows) kept across the
reconnects of one connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from paho.mqtt.client import MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ..connect_errors import (
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
    InvalidMessage,
    LinkDown,
    MessageTooLarge,
    Nacked,
    PermanentConnectError,
    ProtocolMismatch,
    SessionTakenOver,
    SubscriptionError,
    TransientConnectError,
)
from ..mqtt import Will
from ..tls import client_context
from ..topics import validate_mqtt_filter, validate_mqtt_topic
from .base import Capabilities, Consumer, DeliverySink, Link, LinkHooks, SubscriptionSpec
from .mqtt_receive import Group, Held, Inbound, MqttConsumer
from .mqtt_session import (
    NO_INFO,
    Session,
    WirePublish,
    delivery_fields,
    new_session,
    options_of,
    persistent,
    properties,
    reason_text,
    retrieve,
    wire_publish,
)
from .mqtt_wire import (
    AGAIN,
    PahoClient,
    SizeGuard,
    _Pipe,
    websocket_handshake,
    websocket_over,
)

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessage

    from ..auth import Credentials
    from ..publishing import Outgoing
    from ..url import Endpoint, Settings

log = logging.getLogger("aiobus")

_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_PACKET_TOO_LARGE = 0x95  # DISCONNECT reason: a packet over the receiver's maximum
_PACKET_ID_NOT_FOUND = 0x92  # PUBREL/PUBCOMP reason: no flow with this packet id
#: The subscribe option that accepts a SUBACK granting a lower QoS than asked.
ACCEPT_DOWNGRADE = "accept_downgrade"
_SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: the same client id connected elsewhere
#: Bytes of PUBLISH packets queued in one batch before they are written and the transport's
#: write backpressure is looked at (asyncio's default high-water mark is 64 KiB).
WRITE_CHUNK = 64 * 1024
#: Seconds after a link opens during which messages no subscription matches yet (a resumed
#: session re-sends them at once) wait for a subscription to be attached.
ORPHAN_GRACE = 10.0


_options = options_of


# -- the link -------------------------------------------------------------------------------------


class MqttLink(Link):
    protocol: ClassVar[str] = "mqtt"
    capabilities: ClassVar[Capabilities] = Capabilities(
        nack=False,
        unroutable=False,
        headers=True,
        priority=False,
        ttl=True,
        retain=True,
        qos=True,
        shared_queue=True,
        delivery_count=False,
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
        self.opts = _options(settings)
        self.v5 = self.opts.protocol == 5
        state = hooks.state
        #: The connection's session (``new_connection_state``), the same on each of its links.
        self.session: Session = state if isinstance(state, Session) else new_session(settings)
        self._loop = asyncio.get_running_loop()
        self._pipe: _Pipe | None = None
        self._client: PahoClient | None = None
        self._out: dict[int, Outgoing] = {}
        #: One broker subscription per distinct filter; consumers with the same filter share it.
        self._groups: dict[str, Group] = {}
        self._groups_by_id: dict[int, Group] = {}
        #: Incoming QoS 2 packet ids released (PUBREL) on this link and not completed yet.
        self._qos2_open: set[int] = set()
        #: Messages no subscription matched yet, kept for ``ORPHAN_GRACE`` after the link
        #: opens (None afterwards: then they are acknowledged and dropped).
        self._orphans: list[MQTTMessage] | None = []
        self._orphan_timer: asyncio.TimerHandle | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._connack: asyncio.Future[tuple[Any, Any, Any]] | None = None
        self._keepalive = 0.0
        self._ping_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.session_present = False
        self.closing = False
        self._warned_kept: set[str] = set()
        #: QoS 1/2 messages for filters in ``session.kept``, unacked (bounded by the broker's
        #: in-flight window), for a subscription with that filter on this link.
        self._set_aside: list[MQTTMessage] = []
        #: Packet ids of QoS 2 publishes whose PUBREL this link sent again on a resumed
        #: session (recovery): PUBCOMP 0x92 (packet identifier not found) answering one of
        #: them means the broker had completed the message already [MQTT 5, 4.3.3].
        self._pubrel_resent: set[int] = set()
        #: On a resumed session: the packet ids of publishes from earlier links that wait to
        #: be sent again with their id (the broker may hold them); no new packet takes one.
        self._reserved: set[int] = set()

    @classmethod
    def capabilities_for(cls, settings: Settings) -> Capabilities:
        """MQTT 3.1.1 has no properties: no headers, TTL, correlation id or reply-to."""
        if _options(settings).protocol == 5:
            return cls.capabilities
        return _MQTT311

    # -- checks at the call -----------------------------------------------------------------

    @classmethod
    def new_connection_state(cls, settings: Settings) -> Session:
        """The session: client id, packet-id counter, what CONNACK said, QoS 2 flows."""
        return new_session(settings)

    @classmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        """The checks at the call that need no broker (before any link was up)."""
        cls.check_publish_in(settings, msg, None)

    @classmethod
    def check_publish_in(cls, settings: Settings, msg: Outgoing, state: Any) -> None:
        """Everything checked at the call; with the session, also what CONNACK stated."""
        opts = _options(settings)
        validate_mqtt_topic(msg.topic)
        qos = msg.qos
        if qos is None:
            qos = msg.qos = opts.qos
        elif qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ConfigError(f"MQTT qos must be 0, 1 or 2, got {qos!r}")
        if msg.mandatory:
            raise ConfigError(
                "MQTT has no unroutable-message report (mandatory=True); a "
                "message no one subscribes to is simply not delivered"
            )
        if msg.priority is not None:
            raise ConfigError("MQTT messages have no priority")
        if msg.exchange is not None:
            raise ConfigError("exchange= is an AMQP 0-9-1 option; MQTT has one topic space")
        if msg.persistent is not None:
            raise ConfigError(
                "persistent= is an AMQP option; on MQTT durability is the QoS "
                "and the subscriber's session"
            )
        if msg.retain not in (True, False):
            raise ConfigError(f"retain must be a bool, got {msg.retain!r}")
        # What the broker said in CONNACK, once a link of this connection was up.
        session = state if isinstance(state, Session) and state.connected_once else None
        if opts.protocol == 5:
            if msg.headers:
                for key, value in msg.headers.items():
                    if not isinstance(key, str) or not isinstance(value, str):
                        raise ConfigError(
                            "MQTT 5 user properties (headers) are str -> str; "
                            f"got {key!r}: {value!r}"
                        )
        elif (
            msg.headers
            or msg.correlation_id
            or msg.reply_to
            or msg.content_type
            or (msg.ttl is not None)
        ):
            given = [
                name
                for name, value in (
                    ("headers", msg.headers),
                    ("correlation_id", msg.correlation_id),
                    ("reply_to", msg.reply_to),
                    ("content_type", msg.content_type),
                    ("ttl", msg.ttl),
                )
                if value or (name == "ttl" and value is not None)
            ]
            raise ConfigError(f"MQTT 3.1.1 cannot carry {', '.join(given)}; use protocol=5")
        limit = opts.max_message_size
        size = len(msg.body)
        if size > limit:
            raise MessageTooLarge(size, limit, option="max_message_size")
        # Encoded once, here: the topic and properties do not depend on the link, and a
        # string MQTT cannot carry is an error at the call (``Link.encode`` reuses it).
        wire = msg.wire = wire_publish(msg, opts.protocol == 5)
        if session is not None:
            if qos > session.max_qos:
                raise ConfigError(
                    f"the broker accepts QoS up to {session.max_qos} "
                    f"(CONNACK Maximum QoS); got qos={qos}"
                )
            if msg.retain and not session.retain_available:
                raise ConfigError(
                    "the broker does not support retained messages (CONNACK Retain Available = 0)"
                )
            if session.max_packet is not None and wire.size > session.max_packet:
                raise MessageTooLarge(wire.size, session.max_packet)

    @classmethod
    def encoded_size(cls, settings: Settings, msg: Outgoing) -> int:
        """The whole PUBLISH packet, as the broker counts it against its maximum."""
        wire = msg.wire
        if not isinstance(wire, WirePublish):
            wire = msg.wire = wire_publish(msg, _options(settings).protocol == 5)
        return wire.size

    @classmethod
    def check_subscribe(cls, settings: Settings, spec: SubscriptionSpec) -> None:
        unknown = set(spec.extra) - {ACCEPT_DOWNGRADE}
        if unknown:
            raise ConfigError(f"unknown subscribe options for MQTT: {sorted(unknown)}")
        accept = spec.extra.get(ACCEPT_DOWNGRADE, False)
        if not isinstance(accept, bool):
            raise ConfigError(f"{ACCEPT_DOWNGRADE} must be a bool, got {accept!r}")
        validate_mqtt_filter(spec.pattern)
        if spec.queue is not None:
            if spec.pattern.startswith("$share/"):
                raise ConfigError("give either queue= or a '$share/group/' filter, not both")
            validate_mqtt_filter(f"$share/{spec.queue}/{spec.pattern}")
        if spec.qos is not None and (spec.qos not in (0, 1, 2) or isinstance(spec.qos, bool)):
            raise ConfigError(f"MQTT qos must be 0, 1 or 2, got {spec.qos!r}")
        if spec.exchange is not None:
            raise ConfigError("exchange= is an AMQP 0-9-1 option; MQTT has one topic space")
        if spec.durable is not None:
            raise ConfigError(
                "MQTT subscriptions are durable through the session "
                "(clean_session=False / session_expiry), not per subscription"
            )
        if spec.exclusive is not None:
            raise ConfigError("MQTT has no exclusive subscriptions")

    # -- connecting ---------------------------------------------------------------------------

    async def open(self) -> None:
        settings = self.settings
        assert self.endpoint is not None, "MQTT needs a host"
        host, port = self.endpoint.host, self.endpoint.port
        loop = self._loop
        ctx = client_context(self.opts) if settings.tls else None
        endpoint = str(self.endpoint)
        try:
            transport, pipe = await loop.create_connection(
                lambda: _Pipe(loop),
                host,
                port,
                ssl=ctx,
                server_hostname=host if ctx is not None else None,
            )
        except asyncio.CancelledError as exc:
            note_step(exc, ConnectPhase.TLS if ctx is not None else ConnectPhase.TCP, endpoint)
            raise
        except OSError as exc:
            error = socket_error(exc, host, endpoint, tls=ctx is not None)
            raise await self._connect_failed(error, exc, ctx)  # noqa: B904 (cause set inside)
        self._pipe = pipe
        pipe.on_lost = self._transport_lost
        pipe.on_oversize = self._inbound_too_large
        guard = SizeGuard(self.opts.max_receive_size)
        try:
            sock: Any = pipe
            if settings.websocket:
                await websocket_handshake(pipe, host, port, settings.path, settings.tls)
                sock = websocket_over(pipe, host, port, settings.path, guard)
            else:
                pipe.guard = guard  # before CONNECT: the broker sends nothing earlier
            await self._mqtt_connect(sock, host, port)
        except asyncio.CancelledError as exc:
            transport.abort()
            note_step(exc, ConnectPhase.HEADER, endpoint)
            raise
        except ConnectError as exc:
            transport.abort()
            error = placed(exc, ConnectPhase.HEADER, endpoint)
            raise await self._connect_failed(error, exc, ctx)  # noqa: B904 (cause set inside)
        except BaseException:
            transport.abort()
            raise
        if not self.hooks.alive:
            raise TransientConnectError("the broker closed the connection right after CONNACK")
        if self._keepalive:
            self._timer = loop.call_later(self._keepalive / 2, self._tick)
        self._orphan_timer = loop.call_later(ORPHAN_GRACE, self._drop_orphans)

    async def _connect_failed(
        self, error: ConnectError, original: BaseException, ctx: ssl.SSLContext | None
    ) -> ConnectError:
        """The error for a failed attempt; one that died before the server answered is
        checked against what the port speaks (another protocol is a ``ProtocolMismatch``)."""
        if may_be_foreign(error):
            assert self.endpoint is not None
            protocol = "http" if self.settings.websocket else "mqtt"
            host, port = self.endpoint.host, self.endpoint.port
            error = await foreign_protocol(
                protocol, self.settings.tls, host, port, error, context=ctx, server_hostname=host
            )
        return raise_from(error, original)

    def _drop_orphans(self) -> None:
        """Messages for subscriptions the session still has but this connection never
        subscribed again: acknowledged (dropped) so they do not hold the broker's window."""
        self._orphan_timer = None
        orphans, self._orphans = self._orphans, None
        client = self._client
        if orphans and client is not None and self.hooks.alive:
            for msg in orphans:
                if msg.qos and not self._kept_for_later(msg.topic):
                    if msg.qos == 1:
                        client.ack(msg.mid, 1)
                    else:
                        self._complete(msg.mid)

    def _kept_for_later(self, topic: str) -> bool:
        """Whether a message no subscription takes is for a filter a subscription of this
        connection left without unsubscribing on a persistent session: it is left
        unacknowledged, for the session's next connection, instead of acked and dropped."""
        kept = self.session.kept
        if not kept:
            return False
        for topic_filter, matcher in kept.items():
            if matcher.matches(topic):
                self._warn_held_for_session(topic_filter)
                return True
        return False

    def _warn_held_for_session(self, topic_filter: str) -> None:
        # Once per filter and link: each such message holds a slot of the broker's window
        # until the connection ends, so a long-lived connection should say so.
        if topic_filter in self._warned_kept:
            return
        self._warned_kept.add(topic_filter)
        log.warning(
            "aiobus %s: messages for %r, which a subscription left without unsubscribe() "
            "on a persistent session, are left unacknowledged for the session's next "
            "connection; each holds a slot of the broker's in-flight window until this "
            "connection ends (call Subscription.unsubscribe() if it is no longer wanted)",
            self.settings.redacted_url(),
            topic_filter,
        )

    def _adopt_orphans(self, group: Group) -> None:
        """Hand a new group what came for it before it existed, in arrival order: what a
        resumed session sent before the attach, then what was set aside for a subscription
        with the same filter that left this connection without unsubscribing."""
        mine: list[MQTTMessage] = []
        if self._orphans:
            self._orphans = _take_matching(self._orphans, group, mine)
        if self._set_aside:
            self._set_aside = _take_matching(self._set_aside, group, mine)
        for msg in mine:
            self._on_message(None, None, msg)

    async def _mqtt_connect(self, sock: Any, host: str, port: int) -> None:
        opts = self.opts
        session = self.session
        pipe = self._pipe
        assert pipe is not None
        client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=session.client_id,
            clean_session=None if self.v5 else opts.clean_session,
            protocol=MQTTv5 if self.v5 else MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.aiobus_sock = sock
        client.aiobus_link = self
        client.max_inflight_messages_set(0)  # the core's window bounds what is in flight
        self._client = client
        creds = self.credentials
        if creds is not None:
            client.username_pw_set(creds.username, creds.reveal_password())
        will = self.opts.will
        if will is not None:
            assert isinstance(will, Will)
            will_props = None
            if self.v5 and (will.delay or will.headers):
                will_props = properties(PacketTypes.WILLMESSAGE)
                if will.delay:
                    will_props.WillDelayInterval = will.delay
                if will.headers:
                    will_props.UserProperty = list(will.headers.items())
            client.will_set(will.topic, will.payload, will.qos, will.retain, will_props)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.aiobus_released = self._on_released
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_suback
        client.on_disconnect = self._on_disconnect
        props = None
        clean_start: bool = opts.clean_session and not session.connected_once
        if self.v5:
            props = properties(PacketTypes.CONNECT)
            if opts.session_expiry:
                props.SessionExpiryInterval = opts.session_expiry
            # The inflow window for every subscription of the connection together (see
            # docs/mqtt.md "Backpressure"); 65,535, the protocol default, if not sent.
            receive_max = opts.receive_maximum
            if receive_max is None:
                receive_max = min(opts.prefetch, 65535)
            props.ReceiveMaximum = receive_max
            # The broker must not send more (it drops such a message for this client);
            # the pipe enforces it on both versions anyway (``SizeGuard``).
            props.MaximumPacketSize = opts.max_receive_size
        self._connack = self._loop.create_future()
        # Failed by the transport's death whether or not open() is still waiting for it.
        self._connack.add_done_callback(retrieve)
        pipe.on_data = self._on_data
        keepalive = math.ceil(opts.heartbeat) if opts.heartbeat else 0
        try:
            if self.v5:
                rc = client.connect(
                    host, port, keepalive, clean_start=clean_start, properties=props
                )
            else:
                rc = client.connect(host, port, keepalive)
        except OSError as exc:
            raise TransientConnectError(f"sending CONNECT failed: {exc}") from exc
        if rc != _SUCCESS:
            raise TransientConnectError(f"sending CONNECT failed: {rc}")
        pipe.flush()
        flags, reason, cprops = await self._connack
        code = reason.value if isinstance(reason, ReasonCode) else int(reason)
        if code != 0:
            raise _connack_error(code, str(reason), self.v5)
        self.session_present = bool(flags.session_present)
        if self.session_present:
            # Before anything is sent on this link (the core re-subscribes before it replays
            # the outbox): the ids the re-sends will carry are taken already.
            self._reserved = {t for t in self.hooks.waiting_tags() if isinstance(t, int)}
        self._keepalive = float(client._keepalive)
        if self.v5 and cprops is not None:
            receive_max = getattr(cprops, "ReceiveMaximum", None)
            if receive_max:
                self.max_in_flight = int(receive_max)
            session.max_packet = getattr(cprops, "MaximumPacketSize", None)
            session.max_qos = int(getattr(cprops, "MaximumQoS", 2))
            session.retain_available = bool(getattr(cprops, "RetainAvailable", 1))
            session.shared_available = bool(getattr(cprops, "SharedSubscriptionAvailable", 1))
            assigned = getattr(cprops, "AssignedClientIdentifier", None)
            if assigned and assigned != session.client_id:
                session.client_id = str(assigned)
                session.client_id_source = "assigned by the broker"
        if not session.connected_once:
            log.info(
                "aiobus %s: MQTT client id %r (%s), %s session%s",
                self.settings.redacted_url(),
                session.client_id,
                session.client_id_source,
                "persistent" if persistent(opts) else "clean",
                ", resumed" if self.session_present else "",
            )
        session.connected_once = True

    @property
    def client_id(self) -> str:
        """The client id in effect: the one given, generated, or assigned by the broker in
        CONNACK (MQTT 5); the same on every link of the connection."""
        return self.session.client_id

    # -- paho callbacks ------------------------------------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        session = self.session
        if not flags.session_present:
            session.in_qos2.clear()
            session.qos2_given.clear()
            session.pubrec.clear()
        # Shared, not copied: a QoS 2 message received (or released and not yet buffered) on
        # this link and released on the next one is handed over exactly once.
        client._in_messages = session.in_qos2
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_result((flags, reason, properties))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.closing:
            return  # paho reports our own DISCONNECT too; close() finishes the job
        text = str(reason)
        if properties is not None:
            extra = getattr(properties, "ReasonString", None)
            if extra:
                text += f": {extra}"
        code = getattr(reason, "value", None)
        if code == _SESSION_TAKEN_OVER:
            self._taken_over(text)
            return
        if code == _PACKET_TOO_LARGE:
            self._refused_by_size()
        self._die(LinkDown(f"the broker disconnected: {text}"))

    def _taken_over(self, text: str) -> None:
        """DISCONNECT 0x8E: another connection with this client id took the session. Taking
        it back would take it from that one, and so on forever: the connection ends with
        ``SessionTakenOver`` (a permanent error: the core does not reconnect)."""
        reason = (
            f"the broker disconnected: {text}: another connection took over the session of "
            f"client id {self.session.client_id!r}; this connection stops instead of taking "
            "it back (two live connections need two client ids)"
        )
        error = SessionTakenOver(reason)
        self.hooks.notify("session_taken_over", reason, error)
        self._die(error)

    def _refused_by_size(self) -> None:
        """DISCONNECT 0x95 names no packet. The messages in flight over the limit we know
        (CONNACK's Maximum Packet Size, or one learned before) fail alone. ``encode`` keeps
        anything over that limit off the wire, so a refusal with nothing in flight over it
        disproves it, and so does a broker that stated no limit at all: then the largest in
        flight is blamed once it is the largest at two refusals in a row (one byte less
        becomes the limit). A small message that happened to be in flight when an oversized
        QoS 0 one went out is not failed for it, and a wrong limit never makes a loop."""
        hooks = self.hooks
        sized = [(self.encoded_size(self.settings, msg), msg) for msg in hooks.in_flight()]
        if not sized:
            return
        session = self.session
        limit = session.max_packet
        learned = hooks.size_limit
        if learned is not None:
            limit = learned if limit is None else min(limit, learned)
        if limit is None or all(size <= limit for size, _ in sized):
            largest_size, largest = max(sized, key=lambda pair: pair[0])
            # By sequence number, not the message: a suspect re-sent and confirmed is not
            # kept alive (body included) until the next refusal.
            suspect, session.size_suspect = session.size_suspect, largest.seq
            if suspect != largest.seq:
                return  # the link is lost and it is re-sent; a second refusal decides
            limit = largest_size - 1
        session.size_suspect = None
        for size, msg in sized:
            if size > limit:
                hooks.too_large(msg, size, limit)

    def _on_suback(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        fut = self._waiting.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_codes)

    def _on_message(self, client: Any, userdata: Any, msg: MQTTMessage) -> None:
        self._dispatch(msg)

    def _on_released(self, msg: MQTTMessage) -> None:
        """A PUBREL for a QoS 2 message we hold (``session.in_qos2``): it goes to the
        subscriptions now, and is completed (PUBCOMP, and forgotten) only once it is in every
        one's buffer. Until then it stays in the session: if the link dies first, the broker
        releases it again on the next link (a resumed session) and it is handed over then,
        to the subscriptions that do not have it yet."""
        mid = msg.mid
        if mid in self._qos2_open:
            return  # released again on this link while it waits for a full subscription
        self._qos2_open.add(mid)
        self._dispatch(msg)

    def _dispatch(self, msg: MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError as exc:
            self._undecodable_topic(msg, exc)
            return
        props: Any = msg.properties if self.v5 else None
        groups: list[Group] = []
        if props is not None and hasattr(props, "SubscriptionIdentifier"):
            by_id = self._groups_by_id
            groups = [by_id[i] for i in props.SubscriptionIdentifier if i in by_id]
        if not groups and topic is not None:
            # MQTT 3.1.1, or a message the broker re-sends on a resumed session with the
            # identifier of a subscription from an earlier link: match the filters here.
            groups = [g for g in self._groups.values() if g.matcher.matches(topic)]
        targets = (
            groups[0].targets() if len(groups) == 1 else [c for g in groups for c in g.targets()]
        )
        qos = msg.qos
        if not targets or topic is None:
            self._untaken(msg, topic)
            return
        inbound = None
        if qos:
            if qos == 2:
                given = self.session.qos2_given.get(msg.mid)
                if given:  # handed to some of them on an earlier link already
                    targets = [c for c in targets if c.key not in given]
                    if not targets:
                        self._complete(msg.mid)
                        return
            inbound = Inbound(msg.mid, len(targets))
        fields = delivery_fields(props)
        now = datetime.now(UTC)
        for consumer in targets:
            # A full subscription holds its own QoS 1/2 messages (unacknowledged: the broker's
            # window bounds them) and drops QoS 0; the others are not held up.
            if consumer.held or consumer.sink.room <= 0:
                consumer.hold(msg, topic, inbound, fields, now)
            else:
                consumer.deliver(msg, topic, inbound, fields, now)

    def _untaken(self, msg: MQTTMessage, topic: str | None) -> None:
        """A message no subscription of this link takes (now)."""
        qos = msg.qos
        if topic is not None and qos and self._kept_for_later(topic):
            # For a subscription that left without unsubscribing (see ``detach``): unacked
            # (QoS 2: not completed), so the session's next connection gets it; kept here
            # too, for a subscription with that filter on this connection.
            self._set_aside.append(msg)
            return
        if topic is not None and self._orphans is not None:
            # A resumed session re-sends and queues messages before the core has
            # re-attached the subscriptions: keep them for the attach that wants them.
            self._orphans.append(msg)
            return
        # Nobody to hand it to (an unsubscribe in flight, an undecodable topic): it must
        # still be acknowledged, or the broker's window for this client shrinks for good.
        if qos == 1 and self._client is not None:
            self._client.ack(msg.mid, 1)
        elif qos == 2:
            self._complete(msg.mid)

    def handed_over(self, inbound: Inbound, key: object) -> None:
        """A QoS 2 message is in one subscription's buffer (``key``: see
        ``MqttConsumer.key``); the last one completes it."""
        inbound.remaining -= 1
        if inbound.remaining == 0:
            self._complete(inbound.mid)
        else:
            self.session.qos2_given.setdefault(inbound.mid, set()).add(key)

    def _complete(self, mid: int) -> None:
        """QoS 2 done for the client: forgotten, and PUBCOMP (on a dead link the broker
        releases it again on the next one, and a PUBREL for an unknown id is answered at
        once)."""
        session = self.session
        session.in_qos2.pop(mid, None)
        session.qos2_given.pop(mid, None)
        self._qos2_open.discard(mid)
        client = self._client
        if client is not None and self.hooks.alive:
            client._send_pubcomp(mid)

    def _undecodable_topic(self, msg: MQTTMessage, exc: UnicodeDecodeError) -> None:
        """A PUBLISH whose topic is not UTF-8 (a broker must not forward one): no filter can
        match it, so it reaches no subscription. It is acknowledged (QoS 1) or completed
        (QoS 2), or the broker's window for this client would shrink for good, and reported in
        ``events()``."""
        raw = bytes(msg._topic)
        if msg.qos == 1 and self._client is not None:
            self._client.ack(msg.mid, 1)
        elif msg.qos == 2:
            self._complete(msg.mid)
        settled = {0: "", 1: "acknowledged and ", 2: "completed and "}[msg.qos]
        shown = repr(raw[:80]) + ("..." if len(raw) > 80 else "")
        reason = (
            f"an inbound MQTT message (QoS {msg.qos}) has a topic that is not UTF-8, "
            f"{shown} ({exc.reason} at byte {exc.start}); it reaches no subscription and was "
            f"{settled}dropped"
        )
        self.hooks.notify("delivery_undecodable", reason, InvalidMessage(reason))

    # -- reading, backpressure, keep-alive -----------------------------------------------------

    def _on_data(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            while True:
                rc = client.read_packet()
                if rc == AGAIN:
                    break
                if rc != _SUCCESS:
                    self._die(LinkDown(f"MQTT connection lost ({rc.name})"))
                    fut = self._connack
                    if fut is not None and not fut.done():
                        fut.set_exception(
                            TransientConnectError(
                                f"the broker closed the connection before CONNACK ({rc.name})"
                            )
                        )
                    return
        except Exception as exc:  # a malformed packet: the link cannot be trusted any more
            self._die(LinkDown(f"MQTT protocol error: {exc!r}"))
            return
        if client._out_packet:  # packets queued from inside paho's callbacks
            client.loop_write()

    def _tick(self) -> None:
        """Keep-alive: PINGREQ when the link has been quiet, dead when a ping goes unanswered
        for a whole interval (a half-open link is noticed within about two intervals)."""
        self._timer = None
        pipe, client = self._pipe, self._client
        if pipe is None or client is None or not self.hooks.alive:
            return
        interval = self._keepalive
        now = self._loop.time()
        # The socket is always read (a full subscription holds only its own messages), so
        # silence after a ping means a dead link.
        if self._ping_sent and pipe.last_in >= self._ping_sent:
            self._ping_sent = 0.0
        if self._ping_sent and now - self._ping_sent >= interval:
            self._die(
                LinkDown(
                    f"keep-alive: no answer from the broker within "
                    f"{interval:g} s (half-open connection)"
                )
            )
            return
        quiet = now - pipe.last_out >= interval / 2 or now - pipe.last_in >= interval / 2
        if not self._ping_sent and quiet:
            self._ping_sent = now
            client._send_pingreq()
            pipe.flush()
        self._timer = self._loop.call_later(interval / 2, self._tick)

    def _inbound_too_large(self, size: int) -> None:
        """The broker sent a packet over ``max_receive_size``: the link is closed at its
        header, before its body is read, and the application is told in ``events()``."""
        limit = self.opts.max_receive_size
        if size < 0:
            reason = (
                "the broker sent an MQTT packet with a malformed Remaining Length "
                "(more than 4 bytes); the link is closed"
            )
        else:
            reason = (
                f"the broker sent an MQTT packet of {size:,} bytes, over max_receive_size "
                f"({limit:,} bytes); the link is closed before the packet is read "
                "(raise max_receive_size to accept such packets)"
            )
        error = LinkDown(reason)
        self.hooks.notify("inbound_too_large", reason, error)
        self._die(error)

    def _transport_lost(self, exc: BaseException | None) -> None:
        why = f": {exc}" if exc else ""
        self._die(LinkDown(f"the MQTT connection was closed{why}"))
        fut = self._connack
        if fut is not None and not fut.done():
            if isinstance(exc, ssl.SSLError):
                # E.g. TLS 1.3 alert "certificate required": the server checks the client's
                # certificate after the handshake; retrying cannot help.
                fut.set_exception(
                    PermanentConnectError(f"TLS refused by the server{why}", phase=ConnectPhase.TLS)
                )
            else:
                fut.set_exception(TransientConnectError(f"connection closed before CONNACK{why}"))

    def _die(self, exc: BaseException) -> None:
        self.hooks.lost(exc)
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(LinkDown(str(exc)))
        self._waiting.clear()
        for group in self._groups.values():
            if not group.ready.done():
                group.ready.set_exception(LinkDown(str(exc)))
        pipe = self._pipe
        if pipe is not None and pipe.transport is not None and not pipe.transport.is_closing():
            pipe.transport.abort()

    # -- publishing --------------------------------------------------------------------------

    def next_packet_id(self) -> int:
        """The one packet-id allocator of the link, for every packet type: PUBLISH here,
        SUBSCRIBE and UNSUBSCRIBE through paho (``PahoClient._mid_generate``). An id is never
        one still held by a packet in flight [MQTT-2.2.1-3]: a QoS 1/2 publish of this link
        (until PUBACK/PUBCOMP), a SUBSCRIBE/UNSUBSCRIBE (until SUBACK/UNSUBACK), or, on a
        resumed session, a publish of an earlier link the broker may still hold and that is
        waiting to be sent again with its id. The counter is the session's, so ids keep
        rising across the links of a connection."""
        session, out, waiting, reserved = self.session, self._out, self._waiting, self._reserved
        mid = session.next_mid
        tried = 0
        while True:
            mid = mid + 1 if mid < 65535 else 1
            if mid not in out and mid not in waiting and mid not in reserved:
                session.next_mid = mid
                return mid
            tried += 1
            if tried >= 65535:
                raise LinkDown("no free MQTT packet id: 65,535 packets are in flight")

    def encode(self, msg: Outgoing) -> None:
        """The PUBLISH's topic and properties were encoded at the call; here its exact size
        meets this link's limits (CONNACK Maximum Packet Size, a limit a 0x95 taught), so a
        packet the broker would refuse fails alone instead of being written."""
        wire = msg.wire
        if not isinstance(wire, WirePublish) or (
            wire.content_type is not msg.content_type and self.v5
        ):
            wire = msg.wire = wire_publish(msg, self.v5)
        limit = self.session.max_packet
        if limit is not None and wire.size > limit:
            raise MessageTooLarge(wire.size, limit)
        limit = self.hooks.size_limit
        if limit is not None and wire.size > limit:
            raise MessageTooLarge(wire.size, limit)

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        client, pipe = self._client, self._pipe
        if client is None or pipe is None or not self.hooks.alive:
            raise LinkDown("the MQTT link is down")
        if pipe.write_paused:
            await self._writable(pipe)
        out = self._out
        resume = self.session_present
        pubrec = self.session.pubrec
        send: Any = client._send_publish
        settled = self.hooks.settled
        written: list[Outgoing] = []
        unflushed = 0
        for msg in batch:
            qos = msg.qos or 0
            wire: WirePublish = msg.wire
            props = wire.properties
            topic = wire.topic
            unflushed += wire.size
            if unflushed >= WRITE_CHUNK:
                # Written so far, and a paused transport (a slow link) makes the rest wait:
                # they stay in the outbox, counting against max_buffered, QoS 0 included.
                unflushed = 0
                pipe.flush()
                if pipe.write_paused:
                    for done in written:
                        settled(done, None)
                    written.clear()
                    await self._writable(pipe)
            if qos == 0:
                rc = send(0, topic, msg.body, 0, msg.retain, False, NO_INFO, props)
                written.append(msg)
            else:
                dup = False
                mid = msg.tag
                if resume and mid is not None and mid not in out:
                    # Same packet id with DUP on a resumed session: the broker recognises
                    # a QoS 2 message it already has instead of delivering it twice.
                    dup = True
                    self._reserved.discard(mid)
                    if mid in pubrec:
                        out[mid] = msg
                        self._pubrel_resent.add(mid)
                        rc = client._send_pubrel(mid)
                        if rc != _SUCCESS:
                            raise LinkDown(f"writing PUBREL failed ({rc})")
                        continue
                else:
                    mid = msg.tag = self.next_packet_id()
                out[mid] = msg
                rc = send(mid, topic, msg.body, qos, msg.retain, dup, None, props)
                if not msg.confirm:
                    written.append(msg)
            if rc != _SUCCESS:
                raise LinkDown(f"writing PUBLISH failed ({rc})")
        pipe.flush()
        for msg in written:
            settled(msg, None)

    async def _writable(self, pipe: _Pipe) -> None:
        await pipe.writable()
        if not self.hooks.alive or pipe.closed.done():
            raise LinkDown("the MQTT link went down while the transport was paused")

    def on_acked(self, mid: int, code: int, packet: bytes | bytearray, pubcomp: bool) -> None:
        msg = self._out.pop(mid, None)
        recovered = False
        if pubcomp:
            self.session.pubrec.discard(mid)
            if self._pubrel_resent:
                recovered = mid in self._pubrel_resent
                self._pubrel_resent.discard(mid)
        if msg is None:
            return
        if code == _PACKET_ID_NOT_FOUND and recovered:
            # The PUBREL was sent again on a resumed session and the broker no longer knows
            # the id: it completed the message before the link died (MQTT 5 4.3.3: 0x92 is
            # not an error during recovery). Anywhere else 0x92 stays a refusal.
            self.hooks.settled(msg, mid)
        elif code >= 0x80:
            kind = PacketTypes.PUBCOMP if pubcomp else PacketTypes.PUBACK
            self.hooks.failed(msg, Nacked(reason_text(kind, code, packet), code=code))
        else:
            self.hooks.settled(msg, mid)

    def on_pubrec(self, mid: int, code: int, packet: bytes | bytearray) -> bool:
        """True: answer with PUBREL. A refusal (>= 0x80) ends the QoS 2 flow there."""
        if code >= 0x80:
            msg = self._out.pop(mid, None)
            if msg is not None:
                self.hooks.failed(
                    msg, Nacked(reason_text(PacketTypes.PUBREC, code, packet), code=code)
                )
            return False
        self.session.pubrec.add(mid)
        return True

    # -- subscribing ---------------------------------------------------------------------------

    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer:
        client, pipe = self._client, self._pipe
        if client is None or pipe is None or not self.hooks.alive:
            raise LinkDown("the MQTT link is down")
        topic_filter = spec.pattern
        if spec.queue is not None:
            topic_filter = f"$share/{spec.queue}/{spec.pattern}"
        if topic_filter.startswith("$share/") and not self.session.shared_available:
            raise SubscriptionError(
                "the broker does not support shared subscriptions "
                "(CONNACK Shared Subscription Available = 0)"
            )
        qos = spec.qos if spec.qos is not None else self.opts.qos
        consumer = MqttConsumer(self.hooks, self, spec, sink, topic_filter, qos)
        group = self._groups.get(topic_filter)
        if group is not None:
            # One session cannot hold the same filter twice (a second SUBSCRIBE replaces the
            # first), so subscriptions with the same filter share one: a shared filter hands
            # each message to one of them, a plain one to each.
            await asyncio.shield(group.ready)
            self._check_grant(spec, topic_filter, qos, group.granted)
            consumer.granted["qos"] = group.granted
            group.consumers.append(consumer)
            return consumer
        # Session-wide, so that an identifier a resumed session still carries from an earlier
        # link never names a different subscription now.
        sub_id = self.session.next_sub_id = self.session.next_sub_id % 268_435_455 + 1
        group = Group(topic_filter, sub_id, self._loop)
        group.consumers.append(consumer)
        self.session.kept.pop(topic_filter, None)  # subscribed again: delivered again
        # Registered before SUBSCRIBE goes out: retained messages follow the SUBACK at once.
        self._groups[topic_filter] = group
        self._groups_by_id[sub_id] = group
        # What a resumed session sent before this attach goes first, before anything that
        # reaches the group directly from now on, so the broker's order is kept.
        self._adopt_orphans(group)
        props = None
        if self.v5:
            props = properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        try:
            codes = await self._request(client.subscribe(topic_filter, qos, properties=props))
            code = codes[0] if codes else None
            value = code.value if isinstance(code, ReasonCode) else code
            if value is None or value >= 0x80:
                raise SubscriptionError(
                    f"the broker refused the subscription {topic_filter!r}: {code}"
                )
            group.granted = int(value)
            try:
                self._check_grant(spec, topic_filter, qos, group.granted)
            except SubscriptionError:
                # Not wanted at that QoS: the broker's subscription goes too.
                self._drop_group(group)
                if self.hooks.alive:
                    with contextlib.suppress(LinkDown):
                        await self._request(client.unsubscribe(topic_filter))
                raise
        except BaseException as exc:
            self._drop_group(group)
            group.ready.set_exception(exc)
            raise
        consumer.granted["qos"] = group.granted
        group.ready.set_result(None)
        return consumer

    @staticmethod
    def _check_grant(spec: SubscriptionSpec, topic_filter: str, asked: int, granted: int) -> None:
        """A SUBACK that grants less than asked is an error unless the subscriber opted in
        (``accept_downgrade=True``): a QoS 1 subscription granted QoS 0 has lost
        at-least-once, and nothing else would say so."""
        if granted < asked and not spec.extra.get(ACCEPT_DOWNGRADE, False):
            raise SubscriptionError(
                f"the broker granted QoS {granted} for {topic_filter!r}, lower than the QoS "
                f"{asked} asked: its messages would come with at most QoS {granted}; pass "
                f"{ACCEPT_DOWNGRADE}=True to subscribe() to accept that"
            )

    def _drop_group(self, group: Group) -> None:
        if self._groups.get(group.filter) is group:
            del self._groups[group.filter]
        self._groups_by_id.pop(group.sub_id, None)

    async def _request(self, sent: tuple[MQTTErrorCode, int | None]) -> Any:
        rc, mid = sent
        if rc != _SUCCESS or mid is None:
            raise LinkDown(f"writing to the MQTT link failed ({rc})")
        fut = self._loop.create_future()
        self._waiting[mid] = fut
        assert self._pipe is not None
        self._pipe.flush()
        try:
            return await fut
        finally:
            self._waiting.pop(mid, None)

    async def detach(self, consumer: MqttConsumer, unsubscribe: bool = True) -> None:
        """Remove a cancelled consumer; the last one of a filter unsubscribes it."""
        group = self._groups.get(consumer.filter)
        if group is None or consumer not in group.consumers:
            return
        group.consumers.remove(consumer)
        held, consumer.held = consumer.held, collections.deque()
        if group.consumers:
            self._let_go(consumer, held, group, gone=False)
            return
        self._drop_group(group)
        if not unsubscribe:
            # The broker keeps the subscription in the session (the point of a persistent
            # one: a restarted worker gets what was published meanwhile); what it still sends
            # on this connection is left unacknowledged for that next connection.
            if persistent(self.opts):
                self.session.kept[group.filter] = group.matcher
            self._let_go(consumer, held, group, gone=True)
            return
        self.session.kept.pop(group.filter, None)
        self._let_go(consumer, held, group, gone=True)
        client = self._client
        if client is not None and self.hooks.alive and not self.closing:
            await self._request(client.unsubscribe(consumer.filter))

    def _let_go(
        self,
        consumer: MqttConsumer,
        held: collections.deque[Held],
        group: Group,
        gone: bool,
    ) -> None:
        """A cancelled consumer's held messages, which never reached its buffer. A shared
        filter's other subscriptions take them. One only this consumer still had to take,
        once its filter is ``gone`` from the link, is treated as a message that arrived for no
        subscription (``_untaken``: set aside for the session's next connection, kept for a
        subscription with that filter attached soon, or acknowledged). Otherwise this
        consumer's part of a message others have too: left unacknowledged (QoS 2: not
        completed) on a persistent session, done with on a clean one."""
        if not held:
            return
        if group.shared and group.consumers:
            for entry in held:
                target = group.targets()[0]
                if target.held or target.sink.room <= 0:
                    target.hold(*entry)
                else:
                    target.deliver(*entry)
            return
        keep = persistent(self.opts)
        for msg, topic, inbound, _props, _now in held:
            if inbound is None:
                continue
            if gone and inbound.remaining == 1:
                self._untaken(msg, topic)
            elif keep:
                continue
            elif msg.qos == 1:
                self.release(inbound)
            else:
                self.handed_over(inbound, consumer.key)

    def release(self, inbound: Inbound) -> None:
        """One subscription is done with a QoS 1 message; the last one sends the PUBACK."""
        inbound.remaining -= 1
        if inbound.remaining == 0 and self.hooks.alive:
            client = self._client
            if client is not None:
                client.ack(inbound.mid, 1)

    # -- closing -----------------------------------------------------------------------------

    async def abort(self) -> None:
        self.closing = True
        self._die(LinkDown("aborted"))
        pipe = self._pipe
        if pipe is not None and pipe.transport is not None:
            pipe.transport.abort()  # also one a cut-short close left closing

    async def close(self) -> None:
        self.closing = True
        pipe, client = self._pipe, self._client
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if pipe is None:
            self.hooks.lost(LinkDown("closed"))
            return
        transport = pipe.transport
        if client is not None and transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                # DISCONNECT: no will; a persistent session is kept unless asked to end.
                client.disconnect(properties=self._disconnect_properties())
            pipe.flush()
        self.hooks.lost(LinkDown("closed"))
        if transport is not None and not transport.is_closing():
            transport.close()
        try:
            async with asyncio.timeout(2):
                await asyncio.shield(pipe.closed)
        except TimeoutError:
            if transport is not None:
                transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await asyncio.shield(pipe.closed)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(LinkDown("closed"))
            self._waiting.clear()
            if client is not None:
                client.aiobus_link = None
                client.aiobus_sock = None
        if self._ends_by_clean_connect():
            await self._end_session_by_clean_connect()

    # -- ending the session ----------------------------------------------------------------

    def end_session(self) -> None:
        """``close(end_session=True)``: the close that follows ends the broker's session
        (its subscriptions and the messages queued or unacked in it) instead of keeping it.
        MQTT 5: DISCONNECT with Session Expiry Interval 0. MQTT 3.1.1 cannot change that at
        DISCONNECT: after it, a second connection with the same client id and clean session
        set is opened and closed at once (the broker discards the session at its CONNECT)."""
        self.session.end_requested = True

    def _disconnect_properties(self) -> Any:
        if not (self.v5 and self.session.end_requested and self.opts.session_expiry):
            return None
        props = properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        return props

    def _ends_by_clean_connect(self) -> bool:
        return (
            self.session.end_requested
            and not self.v5
            and not self.opts.clean_session
            and self.session.connected_once
        )

    async def _end_session_by_clean_connect(self) -> None:
        opts = dataclasses.replace(self.opts, clean_session=True)
        settings = dataclasses.replace(self.settings, options=opts)
        # A session of its own (the same client id): it must not touch this one's state.
        hooks = self.hooks.for_side_link(self._loop, Session(self.session.client_id))
        cleaner = MqttLink(settings, self.endpoint, self.credentials, hooks)
        cleaner.session.connected_once = True  # not a connection of its own: no INFO line
        try:
            await cleaner.open()
            await cleaner.close()
        finally:
            await cleaner.abort()

    @property
    def raw(self) -> Any:
        """paho's ``Client`` driving this link (outside aiobus's guarantees)."""
        return self._client


def _take_matching(
    waiting: list[MQTTMessage], group: Group, into: list[MQTTMessage]
) -> list[MQTTMessage]:
    """Move the messages for ``group`` from ``waiting`` to ``into``; return the rest."""
    rest: list[MQTTMessage] = []
    for msg in waiting:
        (into if group.matcher.matches(msg.topic) else rest).append(msg)
    return rest


_MQTT311 = dataclasses.replace(MqttLink.capabilities, headers=False, ttl=False, correlation=False)


def _connack_error(code: int, reason: str, v5: bool) -> Exception:
    # paho hands MQTT 3.1.1 return codes over as MQTT 5 reason codes (5 -> 0x87, ...).
    code = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}.get(code, code)
    if code in (0x86, 0x87, 0x8C):  # bad user name or password, not authorized, bad auth
        return AuthenticationError(
            f"the broker refused the credentials: {reason}", phase=ConnectPhase.AUTH
        )
    if code == 0x84:
        return ProtocolMismatch(
            f"the broker does not speak this MQTT version: {reason}; try protocol=4 or 5",
            phase=ConnectPhase.HEADER,
        )
    if code in (0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F):  # unavailable, busy, quota, moved...
        return TransientConnectError(
            f"the broker refused the connection: {reason}", phase=ConnectPhase.OPEN
        )
    return PermanentConnectError(
        f"the broker refused the connection: {reason}", phase=ConnectPhase.OPEN
    )
