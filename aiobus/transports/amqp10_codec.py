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
import uuid
from datetime import UTC, datetime
from typing import Any

from ..errors import AiobusError, ConfigError, InvalidMessage

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


def check_content_type(content_type: str) -> None:
    """Raise InvalidMessage at the call: AMQP 1.0 carries the content type as a symbol."""
    if not isinstance(content_type, str) or not content_type.isascii():
        raise InvalidMessage(
            f"content_type {content_type!r} is not ASCII; AMQP 1.0 carries it as a symbol "
            "(ASCII only): use a MIME type such as 'text/plain; charset=utf-8'"
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
#
# Two decoders give the same fields: ``decode_fast`` reads the common layout straight from the
# bytes, ``decode_proton`` is proton's own decoder for everything else. Both map AMQP types to
# the same Python values (tests/unit/test_amqp10_decode_fuzz.py checks it against proton):
#
#   null None | boolean bool | (u)byte, (u)short, (u)int, (u)long int | float, double float
#   char, string, symbol str | binary bytes | uuid uuid.UUID | timestamp Timestamp (int ms)
#   list, array list | map dict | described value: its value (the descriptor is dropped)
#   decimal32/64/128: proton's decimal types (only proton's decoder reads them)
#
# ``Delivery.timestamp`` (creation-time) is a UTC datetime, or None when absent, zero or out of
# datetime's range (milliseconds written where seconds were meant); a content-type that is
# empty or "None" is None (proton reads a missing one as "None"); application-property names
# that are not strings are given as ``str()`` of their value. Nesting deeper than
# ``MAX_DEPTH`` lists, maps, arrays or described values is ``UndecodableMessage``, as is
# anything proton's decoder refuses: that message alone fails, never the link.

MAX_DEPTH = 64
"""Deepest nesting of lists, maps, arrays and described values a received message may have."""


class UndecodableMessage(AiobusError, ValueError):
    """An inbound AMQP 1.0 message that cannot be decoded (malformed bytes, or nesting deeper
    than ``MAX_DEPTH``): the consumer settles it (rejected by default, see the ``undecodable``
    option) and reports it in ``events()``; the link and the messages behind it go on."""


def _too_deep() -> UndecodableMessage:
    return UndecodableMessage(
        f"the message nests lists, maps, arrays or described values deeper than {MAX_DEPTH} "
        "levels (aiobus refuses deeper nesting: it would exhaust the decoder's stack)"
    )


def _text(value_: Any) -> str | None:
    """message-id and correlation-id may be string, ulong, uuid or binary: show them as text."""
    if value_ is None:
        return None
    if isinstance(value_, (bytes, memoryview)):
        raw = bytes(value_)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw.hex()
    return str(value_)


def _content_type(text: str | None) -> str | None:
    # proton 0.40 wraps a missing content-type as symbol(None), which reads "None": both
    # decoders read "" and "None" as absent, so they agree.
    return None if text in ("", "None") else text


def _instant(seconds: float | None) -> datetime | None:
    """creation-time as a datetime; absent when zero or outside datetime's years 1-9999."""
    if not seconds:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None  # e.g. milliseconds written where seconds were meant


def body_bytes(body: Any, content_type: str | None) -> tuple[bytes, str | None]:
    """A received body as bytes: data sections as they are, amqp-value decoded sensibly."""
    if body is None:
        return b"", content_type
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type  # copy: proton's memoryview changes once freed
    if isinstance(body, str):
        return body.encode(errors="surrogatepass"), content_type or "text/plain; charset=utf-8"
    try:
        text = json.dumps(body, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(body)
        return text.encode(errors="surrogatepass"), content_type or "text/plain; charset=utf-8"
    return text.encode(), content_type or "application/json"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode(errors="replace")
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def _plain(obj: Any, depth: int) -> Any:
    """A value from proton's decoder in the documented mapping (see the table above)."""
    if obj is None or type(obj) in (str, int, float, bool, bytes):
        return obj
    import proton

    if isinstance(obj, (proton.decimal32, proton.decimal64, proton.decimal128)):
        return obj
    if isinstance(obj, proton.timestamp):
        return Timestamp(obj)
    if isinstance(obj, (str, int, float, bytes)):
        return type(obj).__mro__[1](obj)  # proton's symbol, char, ulong, int32, float32, ...
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, (list, dict, proton.Array, proton.Described)):
        if depth >= MAX_DEPTH:
            raise _too_deep()
        if isinstance(obj, list):
            return [_plain(item, depth + 1) for item in obj]
        if isinstance(obj, dict):
            return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, proton.Array):
            return [_plain(item, depth + 1) for item in obj.elements]
        _plain(obj.descriptor, depth + 1)  # dropped, but its nesting counts
        return _plain(obj.value, depth + 1)
    return obj  # uuid.UUID


def decoded_fields(message: Any) -> dict[str, Any]:
    """Delivery fields from a decoded ``proton.Message``, in the documented mapping."""
    content_type = _content_type(str(message.content_type))
    body, content_type = body_bytes(_plain(message.body, 0), content_type)
    props = message.properties
    headers: dict[str, Any] = {}
    if props:
        headers = {str(k): v for k, v in _plain(dict(props), 0).items()}
    return {
        "to": message.address,
        "subject": message.subject,
        "body": body,
        "content_type": content_type,
        "headers": headers,
        "message_id": _text(message.id),
        "correlation_id": _text(message.correlation_id),
        "reply_to": message.reply_to,
        "timestamp": _instant(message.creation_time),
        "delivery_count": message.delivery_count,
        "first_acquirer": message.first_acquirer,
    }


def decode_proton(buf: bytes) -> dict[str, Any]:
    """proton's decoder: the fields ``decode_fast`` gives, or ``UndecodableMessage``."""
    import proton

    message = proton.Message()
    try:
        message.decode(bytes(buf))
        fields = decoded_fields(message)
        fields.update(
            durable=bool(message.durable),
            priority=message.priority,
            ttl=round(message.ttl * 1000) if message.ttl else None,
            annotations=_plain(dict(message.annotations or {}), 0),
        )
    except UndecodableMessage:
        raise
    except RecursionError:
        raise _too_deep() from None
    except (
        proton.ProtonException,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
    ) as exc:
        # ValueError covers UnicodeDecodeError; TypeError an unhashable map key (a list).
        raise UndecodableMessage(
            f"the message's bytes are not a valid AMQP 1.0 message: {type(exc).__name__}: {exc}"
        ) from exc
    return fields


# --- a direct decoder for received messages ---------------------------------------------------
#
# proton's Message.decode builds a Data wrapper per section and a Python call per element; on
# the receive path that is about a third of the client's CPU (shared/amqp10-notes.md). This
# reads the sections straight from the bytes, but only the layout it is proven to read as
# proton does (sections in order, each once, properties and header fields of their own types,
# sizes that add up). Anything else (decimal types, a field of another type, malformed bytes)
# raises _Unknown and ``decode`` asks proton's decoder, which decides.


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

# Array element types read here: not described ones, not those of no width, not unknown
# codes (proton's decoder misreads what follows an empty array of an unknown type).
_ARRAY_ELEMENTS = frozenset(
    (
        *(0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x60, 0x61, 0x70, 0x71, 0x72, 0x73),
        *(0x80, 0x81, 0x82, 0x83, 0x98, 0xA0, 0xA1, 0xA3, 0xB0, 0xB1, 0xB3),
        *(0xC0, 0xC1, 0xD0, 0xD1, 0xE0, 0xF0),
    )
)
_DESCRIPTORS = frozenset((0xA3, 0xB3, 0x80, 0x53, 0x44))


def _read(code: int, buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """One value of type ``code`` at ``pos`` (after its constructor), ``depth`` levels down."""
    # The most common codes first: strings, nulls, small integers, lists, maps.
    if code == 0xA1 or code == 0xA3 or code == 0xA0:
        n = buf[pos]
        end = pos + 1 + n
        if end > len(buf):
            raise _Unknown("truncated")
        raw = buf[pos + 1 : end]
        if code == 0xA1:
            return raw.decode(), end
        return (raw if code == 0xA0 else raw.decode("ascii")), end  # symbols are ASCII
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code in (0xB1, 0xB3, 0xB0):
        n = _u32(buf, pos)[0]
        end = pos + 4 + n
        if end > len(buf):
            raise _Unknown("truncated")
        raw = buf[pos + 4 : end]
        if code == 0xB1:
            return raw.decode(), end
        return (raw if code == 0xB0 else raw.decode("ascii")), end
    if code in (0x43, 0x44):
        return 0, pos
    if code in (0x50, 0x52, 0x53):
        return buf[pos], pos + 1
    if code in (0x51, 0x54, 0x55):
        return _i8(buf, pos)[0], pos + 1
    if code == 0x56:
        if buf[pos] > 1:
            raise _Unknown("boolean neither 0 nor 1")
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
        if pos + 16 > len(buf):
            raise _Unknown("truncated")
        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code == 0x45:
        if depth >= MAX_DEPTH:
            raise _too_deep()  # an empty list is a level too, as it is for proton's decoder
        return [], pos
    if code in (0xC0, 0xC1, 0xD0, 0xD1, 0xE0, 0xF0):
        if depth >= MAX_DEPTH:
            raise _too_deep()
        return _compound_value(code, buf, pos, depth + 1)
    if code == 0x00:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        # proton's decoder misreads a described descriptor or value (and what follows it):
        # only the specification's symbol or ulong descriptors are read here.
        if buf[pos] not in _DESCRIPTORS:
            raise _Unknown("descriptor that is not a symbol or ulong")
        _descriptor, pos = _value(buf, pos, depth + 1)
        if buf[pos] == 0x00:
            raise _Unknown("described described value")
        return _value(buf, pos, depth + 1)
    raise _Unknown(f"type 0x{code:02x}")


def _compound_value(code: int, buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """A list, map or array; its size must match what its elements take."""
    if code & 0x10:
        size = _u32(buf, pos)[0]
        count = _u32(buf, pos + 4)[0]
        end = pos + 4 + size
        pos += 8
    else:
        size = buf[pos]
        count = buf[pos + 1]
        end = pos + 1 + size
        pos += 2
    if end > len(buf) or count > size:
        raise _Unknown("compound larger than the message")
    items: list[Any] = []
    if code >= 0xE0:
        element = buf[pos]
        pos += 1
        if element not in _ARRAY_ELEMENTS:
            raise _Unknown(f"array of elements of type 0x{element:02x}")
        for _ in range(count):
            item, pos = _read(element, buf, pos, depth)
            items.append(item)
    else:
        for _ in range(count):
            item, pos = _read(buf[pos], buf, pos + 1, depth)
            items.append(item)
    if pos != end:
        raise _Unknown("compound size does not match its elements")
    if code & 0x01 and code < 0xE0:
        return dict(zip(items[::2], items[1::2], strict=True)), pos
    return items, pos


def _value(buf: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    return _read(buf[pos], buf, pos + 1, depth)


def _typed_list(buf: bytes, pos: int, allowed: tuple[frozenset[int], ...]) -> tuple[list[Any], int]:
    """A header or properties list whose fields are each of their allowed types (others are
    proton's business: it reads a field of another type as absent)."""
    code = buf[pos]
    if code == 0x45:
        return [], pos + 1
    if code == 0xC0:
        end = pos + 2 + buf[pos + 1]
        count = buf[pos + 2]
        pos += 3
    elif code == 0xD0:
        end = pos + 5 + _u32(buf, pos + 1)[0]
        count = _u32(buf, pos + 5)[0]
        pos += 9
    else:
        raise _Unknown("section is not a list")
    if count > len(allowed):
        raise _Unknown("more fields than the section has")
    fields: list[Any] = []
    for index in range(count):
        field_code = buf[pos]
        if field_code != 0x40 and field_code not in allowed[index]:
            raise _Unknown(f"field {index} of type 0x{field_code:02x}")
        item, pos = _read(field_code, buf, pos + 1, 1)
        fields.append(item)
    if pos != end:
        raise _Unknown("list size does not match its fields")
    return fields, end


_STRING = frozenset((0xA1, 0xB1))
_SYMBOL = frozenset((0xA3, 0xB3))
_BINARY = frozenset((0xA0, 0xB0))
_UINT = frozenset((0x70, 0x52, 0x43))
_BOOL = frozenset((0x41, 0x42, 0x56))
_TIMESTAMP = frozenset((0x83,))
_ID = _STRING | _BINARY | frozenset((0x80, 0x53, 0x44, 0x98))  # proton drops symbol ids
_HEADER_TYPES = (_BOOL, frozenset((0x50,)), _UINT, _BOOL, _UINT)
_PROPERTY_TYPES = (
    _ID,  # message-id
    _BINARY,  # user-id
    _STRING,  # to
    _STRING,  # subject
    _STRING,  # reply-to
    _ID,  # correlation-id
    _SYMBOL,  # content-type
    _SYMBOL,  # content-encoding
    _TIMESTAMP,  # absolute-expiry-time
    _TIMESTAMP,  # creation-time
    _STRING,  # group-id
    _UINT,  # group-sequence
    _STRING,  # reply-to-group-id
)
_MAPS = frozenset((0xC1, 0xD1))


class Timestamp(int):
    """An AMQP timestamp: milliseconds since the epoch."""


def decode_fast(buf: bytes) -> dict[str, Any]:
    """The sections of one message: Delivery fields plus ``annotations`` and ``durable``.

    Raises ``UndecodableMessage`` for nesting over ``MAX_DEPTH`` and ``_Unknown`` for what
    only proton's decoder may judge."""
    if type(buf) is not bytes:
        buf = bytes(buf)  # proton hands out a bytearray: slices of it would be bytearrays too
    header: list[Any] = []
    props: list[Any] = []
    app: dict[Any, Any] | None = None
    annotations: dict[Any, Any] | None = None
    data: bytes | None = None
    value: Any = None
    has_value = False
    last = 0
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            # Sections in the specification's order, each once, with the small descriptor
            # code: proton's decoder reads other layouts its own way.
            if buf[pos] != 0x00 or buf[pos + 1] != 0x53:
                raise _Unknown("section descriptor")
            descriptor = buf[pos + 2]
            pos += 3
            if descriptor <= last or not 0x70 <= descriptor <= 0x78:
                raise _Unknown(f"section 0x{descriptor:02x} out of order or repeated")
            last = descriptor if descriptor < 0x75 or descriptor == 0x78 else 0x77
            if descriptor == 0x73:
                props, pos = _typed_list(buf, pos, _PROPERTY_TYPES)
                continue
            if descriptor == 0x70:
                header, pos = _typed_list(buf, pos, _HEADER_TYPES)
                continue
            code = buf[pos]
            if descriptor == 0x75:
                if code not in _BINARY:
                    raise _Unknown("data section is not binary")
            elif descriptor in (0x74, 0x72, 0x71, 0x78):
                if code not in _MAPS:
                    raise _Unknown("map section is not a map")
            elif descriptor == 0x76 and code not in (0xC0, 0xD0, 0x45):
                raise _Unknown("amqp-sequence section is not a list")
            section, pos = _read(code, buf, pos + 1, 0)
            if descriptor == 0x75:
                data = section
            elif descriptor == 0x74:
                app = section
            elif descriptor == 0x72:
                annotations = section
            elif descriptor in (0x77, 0x76):
                value = section
                has_value = True
    except UndecodableMessage:
        raise
    except (IndexError, struct.error, ValueError, TypeError, OverflowError) as exc:
        # ValueError covers UnicodeDecodeError, chr() out of range and a map of odd length;
        # TypeError an unhashable map key.
        raise _Unknown(str(exc)) from None
    props = props + [None] * (13 - len(props))
    header = header + [None] * (5 - len(header))
    content_type = _content_type(props[6])
    if data is not None:
        body: bytes = data
    else:
        body, content_type = body_bytes(value if has_value else None, content_type)
    if app:
        for key in app:
            if type(key) is not str:
                raise _Unknown("application property name that is not a string")
    for text in (props[2], props[3], props[4], content_type):
        if text is not None and "\x00" in text:
            raise _Unknown("NUL in a text property")  # proton's decoder ends the text there
    if props[0] in ("", b"") or props[5] in ("", b""):
        raise _Unknown("empty id")  # proton's decoder reads some of those as none
    created = props[9]
    return {
        "to": props[2],
        "subject": props[3],
        "body": body,
        "content_type": content_type,
        "headers": app or {},
        "message_id": _text(props[0]),
        "correlation_id": _text(props[5]),
        "reply_to": props[4],
        "timestamp": _instant(created / 1000) if created else None,
        "delivery_count": header[4] or 0,
        "first_acquirer": bool(header[3]),
        "durable": bool(header[0]),
        "priority": 4 if header[1] is None else header[1],
        "ttl": header[2] or None,  # proton's decoder reads a ttl of 0 as none
        "annotations": annotations or {},
    }


def decode(buf: bytes) -> dict[str, Any]:
    """``decode_fast``, or proton's decoder for what it does not know; either way the same
    fields or ``UndecodableMessage``, never another exception."""
    try:
        return decode_fast(buf)
    except _Unknown:
        return decode_proton(buf)
