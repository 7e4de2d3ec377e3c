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
