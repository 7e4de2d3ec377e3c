"""MQTT options, checks made at the call, and property encoding: no broker needed."""

from __future__ import annotations

import asyncio

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import aiobus
from aiobus.mqtt import Will
from aiobus.publishing import Outgoing
from aiobus.settings import MqttOptions
from aiobus.transports.mqtt import MqttLink
from aiobus.transports.mqtt_session import publish_properties
from aiobus.transports.mqtt_wire import _Pipe
from aiobus.url import parse


def test_url_query_options_are_typed() -> None:
    settings = parse(
        "mqtt://h:1884?protocol=5&client_id=c1&session_expiry=60&qos=2&receive_maximum=50"
    )
    opts = settings.options
    assert isinstance(opts, MqttOptions)
    assert (opts.protocol, opts.session_expiry, opts.qos, opts.receive_maximum) == (5, 60, 2, 50)
    assert parse("mqtt+ws://h/ws").path == "/ws"
    with pytest.raises(aiobus.ConfigError):
        parse("mqtt://h?protocol=6")


@pytest.mark.parametrize(
    "options",
    [
        {"session_expiry": 10},  # MQTT 5 only
        {"receive_maximum": 10},
        {"protocol": 5, "receive_maximum": 0},
        {"will": Will("a/+", b"x")},
        {"will": Will("a", b"x", qos=3)},
        {"will": {"topic": "a", "nope": 1}},
        {"will": Will("a", b"x", delay=5)},  # will delay needs MQTT 5
        {"heartbeat": 70_000},
    ],
)
def test_bad_options_fail_at_connect(options: dict[str, object]) -> None:
    with pytest.raises(aiobus.ConfigError):
        aiobus.connect("mqtt://h", **options)


def test_will_from_a_dict() -> None:
    bus = aiobus.connect("mqtt://h", will={"topic": "dev/1/status", "payload": "gone"})
    will = bus.settings.options.will  # type: ignore[attr-defined]
    assert will == Will("dev/1/status", "gone")


def test_mqtt_connect_builds_the_url_and_hides_the_password() -> None:
    bus = aiobus.mqtt.connect(
        "broker.example", port=8884, tls=True, username="u", password="p@ss", protocol=5
    )
    assert bus.settings.scheme == "mqtts"
    assert bus.settings.credentials is not None
    assert bus.settings.credentials.password == "p@ss"
    assert "p@ss" not in repr(bus) and "p@ss" not in str(bus.settings)
    ws = aiobus.mqtt.connect("broker.example", websocket_path="mqtt")
    assert ws.settings.scheme == "mqtt+ws" and ws.settings.path == "/mqtt"
    with pytest.raises(aiobus.ConfigError):
        aiobus.mqtt.connect("amqp://h")
    with pytest.raises(aiobus.ConfigError):
        aiobus.mqtt.connect("mqtt://h", port=1)


def _msg(**kw: object) -> Outgoing:
    return Outgoing(str(kw.pop("topic", "a/b")), bytes(kw.pop("body", b"x")), **kw)  # type: ignore[arg-type]


def test_checks_at_the_call() -> None:
    v4 = parse("mqtt://h")
    v5 = parse("mqtt://h?protocol=5&max_message_size=10")
    msg = _msg()
    MqttLink.check_publish(v4, msg)
    assert msg.qos == 1  # the connection's default QoS filled in
    for bad in (
        {"qos": 3},
        {"mandatory": True},
        {"priority": 1},
        {"exchange": "x"},
        {"persistent": True},
        {"headers": {"a": "b"}},
        {"ttl": 1.0},
        {"correlation_id": "c"},
        {"reply_to": "r"},
        {"content_type": "t"},
    ):
        with pytest.raises(aiobus.ConfigError):
            MqttLink.check_publish(v4, _msg(**bad))
    with pytest.raises(aiobus.ConfigError):
        MqttLink.check_publish(v5, _msg(headers={"a": 1}))
    with pytest.raises(aiobus.MessageTooLarge, match="max_message_size option") as too_large:
        MqttLink.check_publish(v5, _msg(body=b"x" * 11))
    assert too_large.value.option == "max_message_size"
    for topic in ("a/#", "", "a" * 70_000):
        with pytest.raises(aiobus.InvalidTopic):
            MqttLink.check_publish(v4, _msg(topic=topic))


def test_publish_properties_decode_with_paho() -> None:
    msg = _msg(
        headers={"k": "v", "ü": "ß"},
        content_type="application/json",
        correlation_id="c-1",
        reply_to="r/1",
        ttl=2.5,
        message_id="m-1",
    )
    packed = publish_properties(msg).pack()
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.unpack(packed)  # type: ignore[no-untyped-call]
    assert props.ContentType == "application/json"
    assert props.CorrelationData == b"c-1"
    assert props.ResponseTopic == "r/1"
    assert props.MessageExpiryInterval == 3
    assert props.UserProperty == [("k", "v"), ("ü", "ß"), ("message-id", "m-1")]


async def test_pipe_reads_like_a_nonblocking_socket() -> None:
    pipe = _Pipe(asyncio.get_running_loop())
    with pytest.raises(BlockingIOError):
        pipe.recv(1)
    pipe.data_received(b"abc")
    pipe.data_received(b"def")
    assert pipe.recv(2) == b"ab"
    assert pipe.recv(10) == b"cdef"
    with pytest.raises(BlockingIOError):
        pipe.recv(1)
    pipe.eof_received()
    assert pipe.recv(1) == b""


def test_capabilities_follow_the_protocol_version() -> None:
    v4 = aiobus.connect("mqtt://h").capabilities
    v5 = aiobus.connect("mqtt://h?protocol=5").capabilities
    assert not v4.headers and not v4.ttl and not v4.correlation
    assert v5.headers and v5.ttl and v5.correlation
    for caps in (v4, v5):
        assert not caps.nack and not caps.unroutable and caps.retain and caps.qos
