"""Connect errors that name their cause: each protocol against the private brokers.

Every failure here is permanent at first connect and must be raised at once (well under
``connect_timeout``), as a typed error whose text names the endpoint, and with a phase
(``ConnectPhase``) a program can check without parsing text.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

import aiobus
from aiobus.connect_errors import as_connect_error, cut_short, dns_error, socket_error
from aiobus.errors import (
    AuthenticationError,
    ConnectError,
    ConnectPhase,
    ConnectTimeout,
    PermanentConnectError,
    ProtocolMismatch,
    TransientConnectError,
)

CONNECT_TIMEOUT = 20.0
AT_ONCE = 5.0  # RabbitMQ 4 closes an AMQP 1.0 connection for an unknown vhost after 3 s
FAST = {"backoff_initial": 0.01, "backoff_max": 0.2}
TLS_SCHEMES = {"mqtts", "mqtt+wss", "amqps", "amqp1s"}


@dataclass(frozen=True)
class Case:
    url: str
    error: type[ConnectError]
    phase: ConnectPhase
    says: str  # what the text must name besides the endpoint (the fix, the protocol)


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _swap(url: str, scheme: str) -> str:
    """``url`` with another scheme, the same host, port and credentials."""
    return scheme + url[url.index("://") :]


async def _fails_at_once(url: str, ca_file: str | None) -> tuple[ConnectError, float]:
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, **FAST}
    if ca_file is not None and urlsplit(url).scheme in TLS_SCHEMES:
        kwargs["ca_file"] = ca_file
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        async with aiobus.connect(url, **kwargs):
            pass
    return caught.value, time.monotonic() - started


def _check(error: ConnectError, elapsed: float, case: Case) -> None:
    assert isinstance(error, case.error), repr(error)
    assert not isinstance(error, ConnectTimeout)
    assert error.permanent
    assert error.phase is case.phase, (error.phase, str(error))
    assert error.endpoint == _host_port(case.url)
    text = str(error)
    assert _host_port(case.url) in text
    assert case.says in text, text
    assert elapsed < AT_ONCE, f"took {elapsed:.2f}s (connect_timeout {CONNECT_TIMEOUT}s)"
    cause = error.__cause__
    if cause is not None:
        assert str(cause), f"empty cause text: {cause!r}"


# -- another protocol on the port ---------------------------------------------------------------


def _rabbitmq_cases(rabbitmq: Any) -> list[Case]:
    mqtt, mqtts = rabbitmq.mqtt_url, rabbitmq.mqtts_url
    amqp, amqps = rabbitmq.amqp_url, rabbitmq.amqps_url
    header, tls = ConnectPhase.HEADER, ConnectPhase.TLS
    return [
        # MQTT aimed at AMQP ports, and the other way round.
        Case(_swap(amqp, "mqtt").rstrip("/"), ProtocolMismatch, header, "amqp://"),
        Case(_swap(mqtt, "amqp") + "/", ProtocolMismatch, header, "mqtt://"),
        Case(_swap(mqtt, "amqp1"), ProtocolMismatch, header, "mqtt://"),
        # Plain text aimed at a TLS listener.
        Case(_swap(amqps, "mqtt").rstrip("/"), ProtocolMismatch, header, "mqtts://"),
        Case(amqps.replace("amqps://", "amqp://"), ProtocolMismatch, header, "amqps://"),
        Case(_swap(amqps, "amqp1").rstrip("/"), ProtocolMismatch, header, "amqp1s://"),
        # TLS aimed at a plain listener.
        Case(amqp.replace("amqp://", "amqps://"), ProtocolMismatch, tls, "amqp://"),
        Case(_swap(amqp, "amqp1s").rstrip("/"), ProtocolMismatch, tls, "amqp1://"),
        Case(_swap(mqtt, "mqtts"), ProtocolMismatch, tls, "mqtt://"),
        # TLS on both ends, another protocol inside.
        Case(_swap(mqtts, "amqps") + "/", ProtocolMismatch, header, "mqtts://"),
        Case(_swap(amqps, "mqtts").rstrip("/"), ProtocolMismatch, header, "amqps://"),
        # MQTT over WebSocket aimed at an AMQP port.
        Case(_swap(amqp, "mqtt+ws") + "ws", ProtocolMismatch, header, "amqp://"),
    ]


@pytest.mark.rabbitmq
async def test_another_protocol_on_a_rabbitmq_port_is_named_at_once(rabbitmq: Any) -> None:
    for case in _rabbitmq_cases(rabbitmq):
        error, elapsed = await _fails_at_once(case.url, rabbitmq.ca_file)
        _check(error, elapsed, case)


@pytest.mark.mosquitto
async def test_another_protocol_on_a_mosquitto_port_is_named_at_once(mosquitto: Any) -> None:
    plain, tls_url = mosquitto.url, mosquitto.tls_url
    header, tls = ConnectPhase.HEADER, ConnectPhase.TLS
    cases = [
        Case(_swap(plain, "amqp") + "/", ProtocolMismatch, header, "mqtt://"),
        Case(_swap(plain, "amqp1"), ProtocolMismatch, header, "mqtt://"),
        Case(_swap(tls_url, "mqtt"), ProtocolMismatch, header, "mqtts://"),
        Case(_swap(tls_url, "amqp") + "/", ProtocolMismatch, header, "amqps://"),
        Case(_swap(plain, "mqtts"), ProtocolMismatch, tls, "mqtt://"),
        Case(_swap(plain, "amqps") + "/", ProtocolMismatch, tls, "mqtt://"),
        Case(_swap(plain, "amqp1s"), ProtocolMismatch, tls, "mqtt://"),
        # WebSocket and plain MQTT listeners mixed up.
        Case(_swap(mosquitto.ws_url, "mqtt").rsplit("/", 1)[0], ProtocolMismatch, header, "ws://"),
        Case(_swap(plain, "mqtt+ws") + "/mqtt", ProtocolMismatch, header, "mqtt://"),
    ]
    for case in cases:
        error, elapsed = await _fails_at_once(case.url, mosquitto.ca_file)
        _check(error, elapsed, case)


# -- vhosts, credentials, DNS ----------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_unknown_vhost_amqp091_is_permanent_at_open(rabbitmq: Any) -> None:
    url = rabbitmq.amqp_url + "no-such-vhost"
    error, elapsed = await _fails_at_once(url, None)
    _check(error, elapsed, Case(url, PermanentConnectError, ConnectPhase.OPEN, "no-such-vhost"))
    assert "object at 0x" not in str(error)


@pytest.mark.rabbitmq
async def test_unknown_vhost_amqp10_is_permanent_at_open(rabbitmq: Any) -> None:
    url = rabbitmq.amqp1_url + "?vhost=no-such-vhost"
    error, elapsed = await _fails_at_once(url, None)
    _check(error, elapsed, Case(url, PermanentConnectError, ConnectPhase.OPEN, "vhost"))
    assert "no-such-vhost" in str(error)


@pytest.mark.rabbitmq
async def test_wrong_password_amqp091_is_authentication(rabbitmq: Any) -> None:
    url = rabbitmq.amqp_url.replace("guest:guest@", "guest:wrong@")
    error, elapsed = await _fails_at_once(url, None)
    _check(error, elapsed, Case(url, AuthenticationError, ConnectPhase.AUTH, "credentials"))
    assert "wrong" not in str(error)


@pytest.mark.rabbitmq
async def test_wrong_password_amqp10_is_authentication(rabbitmq: Any) -> None:
    # RabbitMQ sends the refusing SASL outcome after 3 s and closes the socket 3 s later:
    # the outcome itself ends the attempt.
    url = rabbitmq.amqp1_url.replace("guest:guest@", "guest:wrong@")
    error, elapsed = await _fails_at_once(url, None)
    _check(error, elapsed, Case(url, AuthenticationError, ConnectPhase.AUTH, "credentials"))


@pytest.mark.parametrize("scheme", ["mqtt", "amqp", "amqp1"])
async def test_a_name_that_does_not_exist_is_permanent_at_dns(scheme: str) -> None:
    url = f"{scheme}://nonexistent.invalid:5999" + ("/" if scheme == "amqp" else "")
    error, elapsed = await _fails_at_once(url, None)
    _check(error, elapsed, Case(url, PermanentConnectError, ConnectPhase.DNS, "does not exist"))


# -- transient failures still say what happened -----------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["mqtt", "amqp", "amqp1"])
async def test_refused_is_retried_and_the_timeout_names_the_cause(scheme: str) -> None:
    port = _closed_port()
    url = f"{scheme}://127.0.0.1:{port}" + ("/" if scheme == "amqp" else "")
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as caught:
        async with aiobus.connect(url, connect_timeout=0.5, **FAST):
            pass
    assert time.monotonic() - started < 3
    error = caught.value
    cause = error.__cause__
    assert isinstance(cause, TransientConnectError)
    assert str(cause)
    assert not str(error).rstrip().endswith(":")
    assert f"127.0.0.1:{port}" in str(cause)
    assert cause.phase in (ConnectPhase.TCP, ConnectPhase.HEADER)


# -- the sorting itself (pure logic) ---------------------------------------------------------


def test_temporary_dns_failure_stays_transient() -> None:
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    error = dns_error(again, "broker.example", "broker.example:5672")
    assert isinstance(error, TransientConnectError)
    assert not error.permanent
    assert error.phase is ConnectPhase.DNS
    assert "broker.example:5672" in str(error)
    assert "Temporary failure" in str(error)


def test_name_that_does_not_exist_is_permanent() -> None:
    noname = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    error = socket_error(noname, "nope.invalid", "nope.invalid:1883", tls=False)
    assert isinstance(error, PermanentConnectError)
    assert error.phase is ConnectPhase.DNS


def test_reset_during_tls_is_a_tls_phase_transient() -> None:
    error = socket_error(ConnectionResetError(104, "reset"), "h", "h:1", tls=True)
    assert not error.permanent
    assert error.phase is ConnectPhase.TLS
    refused = socket_error(ConnectionRefusedError(111, "refused"), "h", "h:1", tls=True)
    assert refused.phase is ConnectPhase.TCP


async def test_an_attempt_cut_by_its_budget_names_where_it_was_stuck() -> None:
    from aiobus.connect_errors import note_step

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            note_step(exc, ConnectPhase.HEADER, "h:1")
            raise

    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.01):
            await stuck()
    permanent, error = as_connect_error(caught.value)
    assert not permanent
    assert isinstance(error, TransientConnectError)
    assert error.phase is ConnectPhase.HEADER
    assert "h:1" in str(error)
    assert "time budget" in str(error)
    assert cut_short(error)
    assert not cut_short(TransientConnectError("refused"))


@pytest.mark.parametrize(
    "raw",
    [TimeoutError(), OSError(), EOFError(), ValueError(), TransientConnectError()],
    ids=["timeout", "oserror", "eof", "bug", "empty-aiobus"],
)
def test_the_sorted_error_never_has_empty_text(raw: BaseException) -> None:
    _, error = as_connect_error(raw)
    assert str(error).strip()
    assert type(raw).__name__ in str(error) or "time budget" in str(error)
