"""What each adapter refuses at the call, and the exact sizes it checks: no broker needed."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

import aiobus
from aiobus.publishing import Outgoing
from aiobus.transports.amqp091 import Amqp091Link, size_refused
from aiobus.transports.amqp10 import Amqp10Link
from aiobus.transports.mqtt import MqttLink
from aiobus.transports.mqtt_session import wire_publish
from aiobus.url import parse


def paho_publish_bytes(protocol: MQTTProtocolVersion, msg: Outgoing) -> bytes:
    """The PUBLISH packet exactly as paho writes it (its own encoder, queue captured)."""
    client = Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    written: list[bytes] = []
    client._sock = object()  # type: ignore[assignment]  # "connected": paho only checks it

    def capture(_command: int, packet: bytes | bytearray, *_: object) -> MQTTErrorCode:
        written.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign,assignment]
    wire = wire_publish(msg, protocol == MQTTv5)
    try:
        client._send_publish(
            1,
            wire.topic,
            msg.body,
            msg.qos or 0,
            False,
            False,
            None,
            wire.properties,  # type: ignore[arg-type]  # paho only calls .pack()
        )
    finally:
        client._sock = None  # nothing for paho to close
    return written[0]


text = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(
        st.characters(codec="utf-8", exclude_characters="+#\x00"), min_size=1, max_size=80
    ),
    body=st.binary(max_size=20_000),
    qos=st.sampled_from([0, 1, 2]),
    headers=st.dictionaries(text, text, max_size=5),
    content_type=st.none() | text,
    correlation_id=st.none() | text,
    reply_to=st.none() | text,
    ttl=st.none() | st.floats(min_value=0.001, max_value=1e6),
    v5=st.booleans(),
)
def test_mqtt_packet_size_is_exactly_what_paho_writes(
    topic: str,
    body: bytes,
    qos: int,
    headers: dict[str, str],
    content_type: str | None,
    correlation_id: str | None,
    reply_to: str | None,
    ttl: float | None,
    v5: bool,
) -> None:
    fields: dict[str, Any] = (
        {
            "headers": headers,
            "content_type": content_type,
            "correlation_id": correlation_id,
            "reply_to": reply_to,
            "ttl": ttl,
        }
        if v5
        else {}
    )
    msg = Outgoing(topic, body, qos=qos, message_id="aiobus-1234567890abcdef-1", **fields)
    written = paho_publish_bytes(MQTTv5 if v5 else MQTTv311, msg)
    assert wire_publish(msg, v5).size == len(written)


MQTT5 = parse("mqtt://h?protocol=5")


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"big": "x" * 65_536}},
        {"headers": {"big": "é" * 32_768}},  # 32,768 characters, 65,536 bytes
        {"headers": {"k" * 65_536: "v"}},
        {"content_type": "x" * 65_536},
        {"correlation_id": "é" * 40_000},
        {"reply_to": "x" * 70_000},
    ],
    ids=["value", "value-bytes", "name", "content_type", "correlation_id", "reply_to"],
)
def test_mqtt5_string_over_65535_bytes_fails_at_the_call(fields: dict[str, Any]) -> None:
    with pytest.raises(aiobus.InvalidMessage, match="65,535"):
        MqttLink.check_publish(MQTT5, Outgoing("a/b", b"x", **fields))


def test_mqtt5_string_of_65535_bytes_is_carried() -> None:
    MqttLink.check_publish(MQTT5, Outgoing("a/b", b"x", headers={"k": "x" * 65_535}))


AMQP = parse("amqp://h")


@pytest.mark.parametrize(
    "value",
    [
        uuid.uuid4(),
        {"a"},
        datetime.date(2026, 12, 1),
        2**70,
        decimal.Decimal("1.2345678901"),
        [1, {"x": uuid.uuid4()}],
    ],
    ids=["uuid", "set", "date", "2**70", "decimal", "nested"],
)
def test_amqp091_header_the_codec_refuses_fails_at_the_call(value: object) -> None:
    with pytest.raises(aiobus.InvalidMessage, match="cannot encode the headers"):
        Amqp091Link.check_publish(AMQP, Outgoing("k", b"x", headers={"h": value}))


def test_amqp091_headers_the_codec_takes_pass() -> None:
    headers = {
        "s": "x",
        "i": 2**62,
        "f": 1.5,
        "b": True,
        "n": None,
        "d": decimal.Decimal("1.5"),
        "t": datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC),
        "l": [1, "a", {"x": 1}],
    }
    Amqp091Link.check_publish(AMQP, Outgoing("k", b"x", headers=headers))


@pytest.mark.parametrize("name", ["content_type", "correlation_id", "reply_to", "message_id"])
def test_amqp091_short_strings_count_utf8_bytes(name: str) -> None:
    fits: dict[str, Any] = {name: "x" * 255}
    Amqp091Link.check_publish(AMQP, Outgoing("k", b"x", **fits))
    over: dict[str, Any] = {name: "é" * 128}
    with pytest.raises(aiobus.InvalidMessage, match=f"{name} is 256 bytes"):
        Amqp091Link.check_publish(AMQP, Outgoing("k", b"x", **over))


def test_amqp091_size_refusal_text_gives_the_limit() -> None:
    from aiormq.exceptions import ChannelPreconditionFailed
    from pamqp import commands as spec

    text = "PRECONDITION_FAILED - message size 66536 is larger than configured max size 65536"
    frame = spec.Channel.Close(reply_code=406, reply_text=text)
    assert size_refused(ChannelPreconditionFailed(frame)) == 65536
    other = spec.Channel.Close(reply_code=406, reply_text="PRECONDITION_FAILED - inequivalent")
    assert size_refused(ChannelPreconditionFailed(other)) is None


AMQP1 = parse("amqp1://h")


def test_amqp10_non_ascii_content_type_fails_at_the_call() -> None:
    with pytest.raises(aiobus.InvalidMessage, match="not ASCII"):
        Amqp10Link.check_publish(AMQP1, Outgoing("/queues/q", b"x", content_type="tëxt/plain"))
    Amqp10Link.check_publish(AMQP1, Outgoing("/queues/q", b"x", content_type="text/plain"))
