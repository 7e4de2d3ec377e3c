"""AMQP 1.0 message bytes: a direct encoder for what aiobus sends, proton's decoder for the rest.

Why encode by hand: proton's ``Message`` costs a wrapper call per property and ``encode()``
starts from a 16-byte buffer that it doubles (a 275-byte message takes six encode calls; see
shared/amqp10-notes.md). What aiobus sends is always the same shape (header, properties,
application properties, one data section), so it is written here in one pass; the unit tests
check every field against proton's own decoder.
"""

from __future__ import annotations

import json
import struct
import time
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError

_NULL = b"\x40"
_TRUE = b"\x41"
_FALSE = b"\x42"
_HEADER = b"\x00\x53\x70"
_PROPERTIES = b"\x00\x53\x73"
_APP_PROPERTIES = b"\x00\x53\x74"
_DATA = b"\x00\x53\x75"
_pack_uint = struct.Struct(">I").pack
_pack_long = struct.Struct(">q").pack
_pack_double = struct.Struct(">d").pack
_pack_list8 = struct.Struct(">BBB").pack
_pack_list32 = struct.Struct(">BII").pack


def _binary(data: bytes) -> bytes:
    n = len(data)
    if n < 256:
        return b"\xa0" + bytes((n,)) + data
    return b"\xb0" + _pack_uint(n) + data


def _string(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 256:
        return b"\xa1" + bytes((n,)) + data
    return b"\xb1" + _pack_uint(n) + data


def _symbol(text: str) -> bytes:
    data = text.encode("ascii")
    n = len(data)
    if n < 256:
        return b"\xa3" + bytes((n,)) + data
    return b"\xb3" + _pack_uint(n) + data


def _timestamp(ms: int) -> bytes:
    return b"\x83" + _pack_long(ms)


def _compound(items: list[bytes], small: int, large: int) -> bytes:
    body = b"".join(items)
    count = len(items)
    if len(body) + 1 < 256 and count < 256:
        return _pack_list8(small, len(body) + 1, count) + body
    return _pack_list32(large, len(body) + 4, count) + body


def _list(items: list[bytes]) -> bytes:
    while items and items[-1] is _NULL:  # trailing nulls may be left out
        items.pop()
    if not items:
        return b"\x45"  # list0
    return _compound(items, 0xC0, 0xD0)


def value(obj: Any) -> bytes:
    """One application-property value: the simple AMQP types a header can hold."""
    if obj is None:
        return _NULL
    if obj is True:
        return _TRUE
    if obj is False:
        return _FALSE
    if isinstance(obj, str):
        return _string(obj)
    if isinstance(obj, int):
        if -128 <= obj <= 127:
            return b"\x55" + struct.pack(">b", obj)
        if -(2**63) <= obj < 2**63:
            return b"\x81" + _pack_long(obj)
        raise ConfigError(f"header value {obj} does not fit a 64-bit AMQP long")
    if isinstance(obj, float):
        return b"\x82" + _pack_double(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _binary(bytes(obj))
    if isinstance(obj, datetime):
        return _timestamp(int(obj.timestamp() * 1000))
    raise ConfigError(
        f"AMQP 1.0 application properties hold str, int, float, bool, bytes, datetime or None, "
        f"not {type(obj).__name__}"
    )


def check_headers(headers: dict[str, Any]) -> None:
    """Raise ConfigError at the call for a header AMQP 1.0 cannot carry."""
    for key, val in headers.items():
        if not isinstance(key, str):
            raise ConfigError(f"header names must be str, got {type(key).__name__} {key!r}")
        value(val)


def encode(
    *,
    to: str | None,
    body: bytes,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    subject: str | None = None,
    content_type: str | None = None,
    headers: dict[str, Any] | None = None,
    durable: bool = True,
    priority: int | None = None,
    ttl: float | None = None,
    creation_ms: int | None = None,
) -> bytes:
    """A whole bare message: header, properties, application properties, one data section."""
    parts: list[bytes] = []
    if durable or priority is not None or ttl is not None:
        header = [
            _TRUE if durable else _FALSE,
            _NULL if priority is None else b"\x50" + bytes((priority,)),
            _NULL if ttl is None else b"\x70" + _pack_uint(int(ttl * 1000)),
        ]
        parts.append(_HEADER + _list(header))
    if creation_ms is None:
        creation_ms = int(time.time() * 1000)
    props = [
        _NULL if message_id is None else _string(message_id),
        _NULL,  # user-id
        _NULL if to is None else _string(to),
        _NULL if subject is None else _string(subject),
        _NULL if reply_to is None else _string(reply_to),
        _NULL if correlation_id is None else _string(correlation_id),
        _NULL if content_type is None else _symbol(content_type),
        _NULL,  # content-encoding
        _NULL if ttl is None else _timestamp(creation_ms + int(ttl * 1000)),  # absolute-expiry
        _timestamp(creation_ms),
    ]
    parts.append(_PROPERTIES + _list(props))
    if headers:
        items = []
        for key, val in headers.items():
            items.append(_string(key))
            items.append(value(val))
        parts.append(_APP_PROPERTIES + _compound(items, 0xC1, 0xD1))
    parts.append(_DATA + _binary(body))
    return b"".join(parts)


# --- decoding -------------------------------------------------------------------------------


def _text(value_: Any) -> str | None:
    """message-id and correlation-id may be string, ulong, uuid or binary: show them as text."""
    if value_ is None:
        return None
    if isinstance(value_, bytes):
        try:
            return value_.decode()
        except UnicodeDecodeError:
            return value_.hex()
    return str(value_)


def body_bytes(body: Any, content_type: str | None) -> tuple[bytes, str | None]:
    """A received body as bytes: data sections as they are, amqp-value decoded sensibly."""
    if body is None:
        return b"", content_type
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type  # copy: proton's memoryview changes once freed
    if isinstance(body, str):
        return body.encode(), content_type or "text/plain; charset=utf-8"
    try:
        text = json.dumps(body, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(body).encode(), content_type or "text/plain; charset=utf-8"
    return text.encode(), content_type or "application/json"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode(errors="replace")
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def decoded_fields(message: Any) -> dict[str, Any]:
    """Delivery fields from a decoded ``proton.Message``."""
    # proton 0.40 wraps a missing content-type as symbol(None), which reads "None".
    content_type: str | None = str(message.content_type)
    if content_type in ("", "None"):
        content_type = None
    body, content_type = body_bytes(message.body, content_type)
    props = message.properties
    headers: dict[str, Any] = {}
    if props:
        for key, val in props.items():
            if isinstance(val, memoryview):
                val = bytes(val)
            elif type(val) is not str and isinstance(val, str):
                val = str(val)  # proton's symbol / char
            headers[str(key)] = val
    created = message.creation_time
    return {
        "to": message.address,
        "subject": message.subject,
        "body": body,
        "content_type": content_type,
        "headers": headers,
        "message_id": _text(message.id),
        "correlation_id": _text(message.correlation_id),
        "reply_to": message.reply_to,
        "timestamp": datetime.fromtimestamp(created, UTC) if created else None,
        "delivery_count": message.delivery_count,
        "first_acquirer": message.first_acquirer,
    }


# --- a direct decoder for received messages ---------------------------------------------------
#
# proton's Message.decode builds a Data wrapper per section and a Python call per element; on
# the receive path that is about a third of the client's CPU (shared/amqp10-notes.md). This
# reads the sections straight from the bytes. Anything it does not know (decimal types, a
# malformed message) raises _Unknown and the caller falls back to proton's decoder.


class _Unknown(Exception):
    pass


_u8 = struct.Struct(">B").unpack_from
_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_i8 = struct.Struct(">b").unpack_from
_i16 = struct.Struct(">h").unpack_from
_i32 = struct.Struct(">i").unpack_from
_i64 = struct.Struct(">q").unpack_from
_f32 = struct.Struct(">f").unpack_from
_f64 = struct.Struct(">d").unpack_from


def _read(code: int, buf: bytes, pos: int) -> tuple[Any, int]:
    """One value of type ``code`` at ``pos`` (after its constructor)."""
    # The most common codes first: strings, nulls, small integers, lists, maps.
    if code == 0xA1 or code == 0xA3 or code == 0xA0:
        n = buf[pos]
        raw = buf[pos + 1 : pos + 1 + n]
        return (raw if code == 0xA0 else raw.decode()), pos + 1 + n
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code in (0xB1, 0xB3, 0xB0):
        n = _u32(buf, pos)[0]
        raw = buf[pos + 4 : pos + 4 + n]
        return (raw if code == 0xB0 else raw.decode()), pos + 4 + n
    if code in (0x43, 0x44):
        return 0, pos
    if code in (0x50, 0x52, 0x53):
        return buf[pos], pos + 1
    if code in (0x51, 0x54, 0x55):
        return _i8(buf, pos)[0], pos + 1
    if code == 0x56:
        return buf[pos] != 0, pos + 1
    if code == 0x60:
        return _u16(buf, pos)[0], pos + 2
    if code == 0x61:
        return _i16(buf, pos)[0], pos + 2
    if code == 0x70:
        return _u32(buf, pos)[0], pos + 4
    if code == 0x71:
        return _i32(buf, pos)[0], pos + 4
    if code == 0x72:
        return _f32(buf, pos)[0], pos + 4
    if code == 0x73:
        return chr(_u32(buf, pos)[0]), pos + 4
    if code == 0x80:
        return _u64(buf, pos)[0], pos + 8
    if code == 0x81:
        return _i64(buf, pos)[0], pos + 8
    if code == 0x82:
        return _f64(buf, pos)[0], pos + 8
    if code == 0x83:
        return Timestamp(_i64(buf, pos)[0]), pos + 8
    if code == 0x98:
        import uuid

        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code == 0x45:
        return [], pos
    if code in (0xC0, 0xC1, 0xD0, 0xD1):
        if code & 0x10:
            count = _u32(buf, pos + 4)[0]
            pos += 8
        else:
            count = buf[pos + 1]
            pos += 2
        items = []
        for _ in range(count):
            item, pos = _value(buf, pos)
            items.append(item)
        if code & 0x01:
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return items, pos
    if code in (0xE0, 0xF0):
        if code == 0xF0:
            count = _u32(buf, pos + 4)[0]
            pos += 8
        else:
            count = buf[pos + 1]
            pos += 2
        element = buf[pos]
        pos += 1
        if element == 0x00:
            raise _Unknown("described array")
        out = []
        for _ in range(count):
            item, pos = _read(element, buf, pos)
            out.append(item)
        return out, pos
    if code == 0x00:
        _descriptor, pos = _value(buf, pos)
        return _value(buf, pos)
    raise _Unknown(f"type 0x{code:02x}")


def _value(buf: bytes, pos: int) -> tuple[Any, int]:
    return _read(buf[pos], buf, pos + 1)


class Timestamp(int):
    """An AMQP timestamp: milliseconds since the epoch."""


_SECTIONS = {
    "amqp:header:list": 0x70,
    "amqp:delivery-annotations:map": 0x71,
    "amqp:message-annotations:map": 0x72,
    "amqp:properties:list": 0x73,
    "amqp:application-properties:map": 0x74,
    "amqp:data:binary": 0x75,
    "amqp:amqp-sequence:list": 0x76,
    "amqp:amqp-value:*": 0x77,
    "amqp:footer:map": 0x78,
}


def decode_fast(buf: bytes) -> dict[str, Any]:
    """The sections of one message: Delivery fields plus ``annotations`` and ``durable``."""
    if type(buf) is not bytes:
        buf = bytes(buf)  # proton hands out a bytearray: slices of it would be bytearrays too
    header: list[Any] = []
    props: list[Any] = []
    app: dict[Any, Any] | None = None
    annotations: dict[Any, Any] | None = None
    data: list[bytes] = []
    value: Any = None
    has_value = False
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            if buf[pos] != 0x00:
                raise _Unknown("a section must be described")
            descriptor, pos = _value(buf, pos + 1)
            if isinstance(descriptor, str):
                descriptor = _SECTIONS.get(descriptor, -1)
            section, pos = _value(buf, pos)
            if descriptor == 0x75:
                data.append(section)
            elif descriptor == 0x70:
                header = section
            elif descriptor == 0x73:
                props = section
            elif descriptor == 0x74:
                app = section
            elif descriptor == 0x72:
                annotations = section
            elif descriptor in (0x77, 0x76):
                if descriptor == 0x76 and has_value:
                    value.extend(section)
                else:
                    value = section
                has_value = True
            elif descriptor not in (0x71, 0x78):
                raise _Unknown(f"section {descriptor!r}")
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise _Unknown(str(exc)) from None
    props = props + [None] * (13 - len(props))
    header = header + [None] * (5 - len(header))
    content_type = props[6]
    if data:
        body: bytes = data[0] if len(data) == 1 else b"".join(data)
    else:
        body, content_type = body_bytes(value if has_value else None, content_type)
    created = props[9]
    return {
        "to": props[2],
        "subject": props[3],
        "body": body,
        "content_type": content_type,
        "headers": {str(k): v for k, v in app.items()} if app else {},
        "message_id": _text(props[0]),
        "correlation_id": _text(props[5]),
        "reply_to": props[4],
        "timestamp": datetime.fromtimestamp(created / 1000, UTC) if created else None,
        "delivery_count": header[4] or 0,
        "first_acquirer": bool(header[3]),
        "durable": bool(header[0]),
        "priority": 4 if header[1] is None else header[1],
        "ttl": header[2],
        "annotations": annotations or {},
    }


def decode(buf: bytes) -> dict[str, Any]:
    """``decode_fast``, or proton's decoder for what it does not know."""
    try:
        return decode_fast(buf)
    except _Unknown:
        import proton

        message = proton.Message()
        message.decode(buf)
        fields = decoded_fields(message)
        fields.update(
            durable=bool(message.durable),
            priority=message.priority,
            ttl=int(message.ttl * 1000) if message.ttl else None,
            annotations=dict(message.annotations or {}),
        )
        return fields
