"""MQTT session state kept across the links of one connection, and MQTT 5 properties."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import struct
from typing import TYPE_CHECKING, Any

from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import InvalidMessage
from ..settings import MqttOptions
from ..topics import TopicMatcher
from .base import CancelReason

if TYPE_CHECKING:
    from ..publishing import Outgoing
    from ..url import Settings

#: The user property that carries ``message_id`` on MQTT 5 (MQTT has no such field).
MESSAGE_ID_PROPERTY = "message-id"


def options_of(settings: Settings) -> MqttOptions:
    opts = settings.options
    assert isinstance(opts, MqttOptions)
    return opts


# -- per-connection session state ------------------------------------------------------------


class Session:
    """What outlives one link of a connection: the client id, the packet-id counter, what the
    broker told us about itself, and the QoS 2 flows a resumed session must finish."""

    __slots__ = (
        "client_id",
        "client_id_source",
        "connected_once",
        "end_requested",
        "in_qos2",
        "kept",
        "max_packet",
        "max_qos",
        "next_mid",
        "next_sub_id",
        "pubrec",
        "qos2_given",
        "retain_available",
        "shared_available",
        "size_suspect",
    )

    def __init__(self, client_id: str, client_id_source: str = "given") -> None:
        self.client_id = client_id
        #: "given", "generated", or "assigned by the broker" (MQTT 5 CONNACK), for the log.
        self.client_id_source = client_id_source
        self.connected_once = False
        #: Filters a subscription left without UNSUBSCRIBE on a persistent session: the
        #: broker still sends their messages, which are left unacknowledged (the next
        #: connection of the session gets them again) instead of acknowledged and dropped.
        self.kept: dict[str, TopicMatcher] = {}
        #: ``close(end_session=True)``: the next close ends the broker's session.
        self.end_requested = False
        self.next_mid = 0
        self.next_sub_id = 0
        self.max_packet: int | None = None
        self.max_qos = 2
        self.retain_available = True
        self.shared_available = True
        #: The sequence number of the largest message in flight at a DISCONNECT 0x95 that
        #: no known limit explains: blamed only if it is the largest again at the next 0x95.
        self.size_suspect: int | None = None
        #: Outgoing QoS 2 packet ids whose PUBREC came: on a resumed session the PUBREL is
        #: sent again instead of the message.
        self.pubrec: set[int] = set()
        #: Incoming QoS 2 messages not completed yet (paho's ``_in_messages``): waiting for
        #: PUBREL, or released and not yet in every subscription's buffer. Carried over, so
        #: that a PUBREL after a reconnect still hands the message over exactly once.
        self.in_qos2: dict[int, Any] = {}
        #: For a QoS 2 message in some subscriptions' buffers but not all of them yet: who
        #: has it (``MqttConsumer.key``), so that a release on the next link skips them.
        self.qos2_given: dict[int, set[object]] = {}


def new_session(settings: Settings) -> Session:
    """A connection's session state (``MqttLink.new_connection_state``): the core keeps it
    with the connection and hands it to each of its links, so it is never shared with
    another connection and goes when the connection does."""
    opts = options_of(settings)
    if opts.client_id:
        return Session(opts.client_id)
    return Session(f"aiobus-{secrets.token_hex(8)}", "generated")


def persistent(opts: MqttOptions) -> bool:
    """Whether the broker keeps the session (and re-sends unacked QoS 1) across a drop."""
    if opts.protocol == 5:
        return opts.session_expiry > 0
    return not opts.clean_session


#: Why a consumer is cancelled (``Consumer.cancel(reason=...)``): its subscription left its
#: ``async with`` (normally or by an exception), its task was cancelled, the connection is
#: closing, or the application unsubscribed explicitly.


def keeps_subscription(opts: MqttOptions, reason: CancelReason) -> bool:
    """The rule: a persistent session keeps the broker's subscription on every exit but an
    explicit unsubscribe; a clean session unsubscribes when a subscription leaves a live
    connection (a closing one ends the session anyway)."""
    if reason == "unsubscribe":
        return False
    return reason == "closing" or persistent(opts)


# -- MQTT 5 properties -------------------------------------------------------------------------


def str16(text: str, what: str = "a string") -> bytes:
    data = text.encode()
    n = len(data)
    if n > 65535:
        raise InvalidMessage(
            f"{what} is {n:,} bytes in UTF-8; an MQTT string carries at most 65,535"
        )
    return struct.pack("!H", n) + data


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


class NoInfo:
    """paho marks a written QoS 0 packet as published on its info object; we need none."""

    __slots__ = ()

    def _set_as_published(self) -> None:
        pass


NO_INFO = NoInfo()


class Packed:
    """Pre-encoded publish properties: paho only calls ``pack()``, and building its
    ``Properties`` object per message costs more than the rest of a publish."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def pack(self) -> bytes:
        return self.data


def publish_properties(msg: Outgoing) -> Packed:
    """The PUBLISH properties, encoded; ``InvalidMessage`` for a string MQTT cannot carry."""
    out = bytearray()
    if msg.ttl is not None:
        out += b"\x02" + struct.pack("!I", min(0xFFFFFFFF, max(1, math.ceil(msg.ttl))))
    if msg.content_type:
        out += b"\x03" + str16(msg.content_type, "content_type")
    if msg.reply_to:
        out += b"\x08" + str16(msg.reply_to, "reply_to")
    if msg.correlation_id:
        out += b"\x09" + str16(msg.correlation_id, "correlation_id")
    if msg.headers:
        for key, value in msg.headers.items():
            out += b"\x26" + str16(key, "a header name") + header_value(key, value)
    if msg.message_id:
        out += b"\x26\x00\x0amessage-id" + str16(msg.message_id, "message_id")
    return Packed(varint(len(out)) + bytes(out))


def header_value(key: str, value: str) -> bytes:
    data = value.encode()
    if len(data) > 65535:
        raise InvalidMessage(
            f"header {key[:40]!r} is {len(data):,} bytes in UTF-8; an MQTT 5 user property "
            "carries at most 65,535"
        )
    return struct.pack("!H", len(data)) + data


class WirePublish:
    """A PUBLISH as this connection writes it: the topic and properties encoded once (at the
    call), and the exact packet size the broker counts against its Maximum Packet Size."""

    __slots__ = ("content_type", "properties", "size", "topic")

    def __init__(
        self, topic: bytes, properties: Packed | None, size: int, content_type: str | None
    ) -> None:
        self.topic = topic
        self.properties = properties
        self.size = size
        #: What it was encoded with: the core fills in an implied content type after the
        #: call's check, and the link encodes again if so.
        self.content_type = content_type


def wire_publish(msg: Outgoing, v5: bool) -> WirePublish:
    topic = msg.topic.encode()
    if len(topic) > 65535:
        raise InvalidMessage(
            f"the topic is {len(topic):,} bytes in UTF-8; an MQTT topic carries at most 65,535"
        )
    if not v5:  # the common case, inline: no properties
        remaining = 2 + len(topic) + len(msg.body) + (2 if msg.qos else 0)
        size = 1 + (1 if remaining < 128 else varint_size(remaining)) + remaining
        return WirePublish(topic, None, size, None)
    props = publish_properties(msg)
    size = packet_size(topic, len(msg.body), msg.qos or 0, props)
    return WirePublish(topic, props, size, msg.content_type)


def packet_size(topic: bytes, body_size: int, qos: int, props: Packed | None) -> int:
    """The whole PUBLISH in bytes: fixed header, remaining length, topic, packet id (QoS 1
    and 2), properties (MQTT 5), payload."""
    remaining = 2 + len(topic) + body_size + (2 if qos else 0)
    if props is not None:
        remaining += len(props.data)
    return 1 + varint_size(remaining) + remaining


def varint_size(value: int) -> int:
    if value < 128:
        return 1
    if value < 16384:
        return 2
    return 3 if value < 2097152 else 4


def properties(packet_type: int) -> Any:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def reason_text(packet_type: int, code: int, packet: bytes | bytearray) -> str:
    """A refusal's name and, if the broker sent one, its reason string."""
    try:
        name = ReasonCode(packet_type, identifier=code).getName()
    except Exception:
        name = f"reason code 0x{code:02X}"
    if len(packet) > 3:
        with contextlib.suppress(Exception):
            props = properties(packet_type)
            props.unpack(packet[3:])
            text = getattr(props, "ReasonString", None)
            if text:
                return f"{name}: {text}"
    return str(name)


def delivery_fields(
    props: Any,
) -> tuple[dict[str, Any], str | None, str | None, str | None, str | None]:
    """headers, content type, message id, correlation id, reply-to from MQTT 5 properties."""
    if props is None:
        return {}, None, None, None, None
    headers: dict[str, Any] = {}
    message_id = None
    user = getattr(props, "UserProperty", None)
    if user:
        for key, value in user:
            if key == MESSAGE_ID_PROPERTY and message_id is None:
                message_id = value
            else:
                headers[key] = value
    correlation = getattr(props, "CorrelationData", None)
    correlation_id = None
    if correlation is not None:
        correlation_id = bytes(correlation).decode("utf-8", "replace")
    return (
        headers,
        getattr(props, "ContentType", None),
        message_id,
        correlation_id,
        getattr(props, "ResponseTopic", None),
    )


def retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
