"""The AMQP 1.0 message codec, checked against proton's own encoder and decoder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import proton
import pytest

from aiobus.errors import ConfigError
from aiobus.transports import amqp10_codec as codec


def proton_decode(data: bytes) -> proton.Message:
    message = proton.Message()
    message.decode(data)
    return message


def test_every_field_reaches_proton_as_sent() -> None:
    data = codec.encode(
        to="/queues/q",
        body=b"\x00\xff" * 200,
        message_id="m-1",
        correlation_id="c-1",
        reply_to="/queues/r",
        subject="s",
        content_type="application/json",
        headers={
            "s": "x",
            "i": 7,
            "big": 2**40,
            "neg": -3,
            "f": 2.5,
            "b": True,
            "n": None,
            "raw": b"\x01",
        },
        durable=True,
        priority=9,
        ttl=1.5,
        creation_ms=1_700_000_000_000,
    )
    m = proton_decode(data)
    assert (m.address, m.id, m.correlation_id, m.reply_to, m.subject) == (
        "/queues/q",
        "m-1",
        "c-1",
        "/queues/r",
        "s",
    )
    assert m.content_type == "application/json"
    assert m.durable and m.priority == 9 and m.ttl == 1.5
    assert m.creation_time == 1_700_000_000.0
    assert m.expiry_time == 1_700_000_001.5
    assert m.inferred and bytes(m.body) == b"\x00\xff" * 200  # a data section
    props = {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in m.properties.items()}
    assert props == {
        "s": "x",
        "i": 7,
        "big": 2**40,
        "neg": -3,
        "f": 2.5,
        "b": True,
        "n": None,
        "raw": b"\x01",
    }


def test_minimal_message_and_large_compound_encodings() -> None:
    m = proton_decode(codec.encode(to=None, body=b"", durable=False))
    assert m.address is None and not m.durable and bytes(m.body) == b""
    headers = {f"k{i}": "v" * 20 for i in range(40)}  # over 255 bytes: map32
    m = proton_decode(codec.encode(to="a", body=b"x", headers=headers))
    assert dict(m.properties) == headers


def test_headers_amqp_cannot_carry_are_refused() -> None:
    with pytest.raises(ConfigError):
        codec.check_headers({"nested": {"a": 1}})
    with pytest.raises(ConfigError):
        codec.check_headers({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        codec.check_headers({"huge": 2**70})


def test_decode_fast_agrees_with_proton() -> None:
    data = codec.encode(
        to="/queues/q",
        body=b"body",
        message_id="m",
        headers={"a": 1},
        content_type="text/plain",
        priority=3,
        ttl=2,
        creation_ms=5000,
    )
    fields = codec.decode_fast(bytearray(data))  # what proton's recv hands out
    assert fields["body"] == b"body" and type(fields["body"]) is bytes
    assert fields["headers"] == {"a": 1}
    assert fields["to"] == "/queues/q" and fields["message_id"] == "m"
    assert fields["content_type"] == "text/plain"
    assert fields["priority"] == 3 and fields["ttl"] == 2000 and fields["durable"]
    assert fields["timestamp"] == datetime.fromtimestamp(5, UTC)


@pytest.mark.parametrize(
    ("body", "expected", "content_type"),
    [
        ("text", b"text", "text/plain; charset=utf-8"),
        ({"k": [1, 2]}, b'{"k":[1,2]}', "application/json"),
        ([1, "a"], b'[1,"a"]', "application/json"),
        (None, b"", None),
    ],
)
def test_amqp_value_bodies_from_other_clients(
    body: object, expected: bytes, content_type: str | None
) -> None:
    fields = codec.decode_fast(proton.Message(body=body).encode())
    assert fields["body"] == expected
    assert fields["content_type"] == content_type


def test_other_id_types_symbols_and_annotations() -> None:
    cid = uuid.uuid4()
    m = proton.Message(
        body=b"x",
        inferred=True,
        id=proton.ulong(42),
        correlation_id=cid,
        properties={"sym": proton.symbol("y")},
        annotations={"x-opt-a": 1},
        first_acquirer=True,
        delivery_count=2,
    )
    fields = codec.decode_fast(m.encode())
    assert fields["message_id"] == "42" and fields["correlation_id"] == str(cid)
    assert fields["headers"] == {"sym": "y"}
    assert fields["annotations"] == {"x-opt-a": 1}
    assert fields["first_acquirer"] and fields["delivery_count"] == 2


def test_unknown_types_fall_back_to_proton() -> None:
    m = proton.Message(body=proton.decimal64(7))
    with pytest.raises(codec._Unknown):
        codec.decode_fast(m.encode())
    fields = codec.decode(m.encode())
    assert fields["body"] == b"7"
