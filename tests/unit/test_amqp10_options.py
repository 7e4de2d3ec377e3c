"""AMQP 1.0 options, address checks and the signed cloud IoT credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

import aiobus
import aiobus.amqp1
from aiobus.auth import Credentials, iot_amqp_credentials
from aiobus.publishing import Outgoing
from aiobus.settings import Amqp1Options
from aiobus.transports.amqp10 import Amqp10Link
from aiobus.transports.base import SubscriptionSpec
from aiobus.url import parse


def test_iot_credentials_match_an_independent_signature() -> None:
    times = iter([1_700_000_000.123, 1_700_000_005.0])
    sign = iot_amqp_credentials(
        access_key="AK",
        access_secret="secret",
        consumer_group_id="G1",
        iot_instance_id="iot-1",
        client_id="host-1",
        clock=lambda: next(times),
    )
    first = sign()
    assert isinstance(first, Credentials)
    assert first.username == (
        "host-1|authMode=aksign,signMethod=hmacsha1,consumerGroupId=G1,"
        "authId=AK,iotInstanceId=iot-1,timestamp=1700000000123|"
    )
    expected = base64.b64encode(
        hmac.new(b"secret", b"authId=AK&timestamp=1700000000123", hashlib.sha1).digest()
    ).decode()
    assert first.password == expected
    second = sign()  # a fresh timestamp on every connect attempt
    assert "timestamp=1700000005000|" in second.username
    assert second.password != first.password


def test_iot_credentials_need_their_parts() -> None:
    with pytest.raises(aiobus.ConfigError):
        iot_amqp_credentials(access_key="", access_secret="s", consumer_group_id="g")


def test_options_from_the_url_and_keywords() -> None:
    settings = parse(
        "amqp1s://u:p@127.0.0.1:5671?server_hostname=localhost&vhost=v&"
        "anonymous_relay=never&presettled=true&heartbeat=10"
    )
    opts = settings.options
    assert isinstance(opts, Amqp1Options)
    assert (opts.server_hostname, opts.vhost, opts.anonymous_relay) == ("localhost", "v", "never")
    assert opts.presettled and opts.heartbeat == 10
    with pytest.raises(aiobus.ConfigError, match="heartbeat"):
        parse("amqp1://h?heartbeat=1")
    with pytest.raises(aiobus.ConfigError, match="hostname or vhost"):
        parse("amqp1://h", hostname="x", vhost="y")
    with pytest.raises(aiobus.ConfigError, match="amqp1"):
        aiobus.amqp1.connect("amqp://h")
    with pytest.raises(aiobus.ConfigError):
        aiobus.amqp1.connect("amqp1://h", sasl="CRAM")  # type: ignore[arg-type]
    bounded = parse("amqp1://h?max_senders=8&sender_idle=2.5").options
    assert isinstance(bounded, Amqp1Options)
    assert (bounded.max_senders, bounded.sender_idle) == (8, 2.5)
    assert (opts.max_senders, opts.sender_idle) == (64, 30.0)
    with pytest.raises(aiobus.ConfigError, match="max_senders"):
        parse("amqp1://h?max_senders=0")
    with pytest.raises(aiobus.ConfigError, match="sender_idle"):
        aiobus.amqp1.connect("amqp1://h", sender_idle=0)


def test_address_helpers_percent_encode() -> None:
    assert aiobus.amqp1.queue_address("a/b c") == "/queues/a%2Fb%20c"
    assert aiobus.amqp1.exchange_address("amq.topic", "a.b") == "/exchanges/amq.topic/a.b"
    assert aiobus.amqp1.exchange_address("x") == "/exchanges/x"


def _msg(topic: str, **kw: object) -> Outgoing:
    return Outgoing(topic, b"x", **kw)  # type: ignore[arg-type]


def test_checks_at_the_call() -> None:
    settings = parse("amqp1://h")
    check = Amqp10Link.check_publish
    check(settings, _msg("/queues/q"))
    check(settings, _msg("plain-name"))
    for bad in ("", "/queues/", "a\nb", "/exchanges/amq.topic/a.*", "/topic/a.#"):
        with pytest.raises(aiobus.InvalidTopic):
            check(settings, _msg(bad))
    with pytest.raises(aiobus.ConfigError):
        check(settings, _msg("/queues/q", priority=256))
    with pytest.raises(aiobus.ConfigError):
        check(settings, _msg("/queues/q", qos=1))
    with pytest.raises(aiobus.ConfigError):
        check(settings, _msg("/queues/q", exchange="x"))
    with pytest.raises(aiobus.ConfigError):
        check(settings, _msg("/queues/q", headers={"d": {}}))
    with pytest.raises(aiobus.MessageTooLarge):
        Amqp10Link.check_publish(parse("amqp1://h", max_message_size=1), Outgoing("/q", b"xx"))
    sub = Amqp10Link.check_subscribe
    sub(settings, SubscriptionSpec("/queues/q"))
    sub(settings, SubscriptionSpec("/exchanges/amq.topic/a.*"))  # a source may be anything
    for kw in (
        {"queue": "q"},
        {"durable": True},
        {"exclusive": True},
        {"exchange": "x"},
        {"qos": 1},
        {"extra": {"bogus": 1}},
    ):
        with pytest.raises(aiobus.ConfigError):
            sub(settings, SubscriptionSpec("/queues/q", **kw))  # type: ignore[arg-type]
