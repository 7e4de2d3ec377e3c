"""MQTT session state kept across the links of one connection, and MQTT 5 properties."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import struct
import weakref
from typing import TYPE_CHECKING, Any

from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..settings import MqttOptions

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
        "connected_once",
        "in_qos2",
        "max_packet",
        "max_qos",
        "next_mid",
        "next_sub_id",
        "pubrec",
        "retain_available",
        "shared_available",
    )

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.connected_once = False
        self.next_mid = 0
        self.next_sub_id = 0
        self.max_packet: int | None = None
        self.max_qos = 2
        self.retain_available = True
        self.shared_available = True
        #: Outgoing QoS 2 packet ids whose PUBREC came: on a resumed session the PUBREL is
        #: sent again instead of the message.
        self.pubrec: set[int] = set()
        #: Incoming QoS 2 messages waiting for PUBREL (paho's ``_in_messages``), carried over
        #: so that a PUBREL after a reconnect still hands the message over exactly once.
        self.in_qos2: dict[int, Any] = {}


sessions: dict[int, Session] = {}


def session_for(settings: Settings) -> Session:
    # One Settings object per Connection, so its id keys the connection's session; the entry
    # goes when the Settings object does.
    key = id(settings)
    found = sessions.get(key)
    if found is None:
        opts = options_of(settings)
        client_id = opts.client_id or f"aiobus-{secrets.token_hex(8)}"
        found = sessions[key] = Session(client_id)
        weakref.finalize(settings, sessions.pop, key, None)
    return found


def persistent(opts: MqttOptions) -> bool:
    """Whether the broker keeps the session (and re-sends unacked QoS 1) across a drop."""
    if opts.protocol == 5:
        return opts.session_expiry > 0
    return not opts.clean_session


# -- MQTT 5 properties -------------------------------------------------------------------------


def str16(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


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
    out = bytearray()
    if msg.ttl is not None:
        out += b"\x02" + struct.pack("!I", min(0xFFFFFFFF, max(1, math.ceil(msg.ttl))))
    if msg.content_type:
        out += b"\x03" + str16(msg.content_type)
    if msg.reply_to:
        out += b"\x08" + str16(msg.reply_to)
    if msg.correlation_id:
        out += b"\x09" + str16(msg.correlation_id)
    if msg.headers:
        for key, value in msg.headers.items():
            out += b"\x26" + str16(key) + str16(value)
    if msg.message_id:
        out += b"\x26\x00\x0amessage-id" + str16(msg.message_id)
    return Packed(varint(len(out)) + bytes(out))


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
