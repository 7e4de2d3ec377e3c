"""Sorting a failed connect attempt: permanent or transient, and the error the user sees.

Every protocol's connect failure passes through here once (after the adapter mapped its
driver's exceptions in its ``open()``), so the rules for what is retried live in one place.
The adapters build their errors with the helpers below, so every ``ConnectError`` names the
endpoint, the phase that failed (``ConnectPhase``) and, where it is known, what to change.

A server that speaks another protocol on the port rarely says so: Mosquitto resets a
connection that does not start with CONNECT, a TLS listener answers plain bytes with an
alert, RabbitMQ answers a foreign header with its own. When an attempt dies before the
server answered the protocol header (or the TLS handshake fails without a certificate
problem), ``identify`` asks the port once with a short probe per protocol, and a clear
answer becomes a ``ProtocolMismatch`` that says which URL to use. No answer stays transient:
a proxy whose backend is not up yet looks the same and must be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import (
    AiobusError,
    ConnectError,
    ConnectPhase,
    LinkDown,
    PermanentConnectError,
    ProtocolMismatch,
    TransientConnectError,
)

#: How long each probe of ``identify`` waits for the port's first answer.
PROBE_TIMEOUT = 1.0

_NAMES = {
    "mqtt": "MQTT",
    "amqp091": "AMQP 0-9-1",
    "amqp10": "AMQP 1.0",
    "tls": "TLS",
    "http": "HTTP (MQTT over WebSocket)",
}
# The URL scheme for a protocol, plain and over TLS.
_SCHEMES = {
    "mqtt": ("mqtt", "mqtts"),
    "amqp091": ("amqp", "amqps"),
    "amqp10": ("amqp1", "amqp1s"),
    "http": ("mqtt+ws", "mqtt+wss"),
}

# getaddrinfo's "this name does not exist" answers; EAI_AGAIN and EAI_FAIL are temporary.
_NO_SUCH_NAME = {
    code
    for code in (
        getattr(socket, "EAI_NONAME", None),
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_ADDRFAMILY", None),
    )
    if code is not None
}
# What an SSL library says when the peer's bytes are not TLS at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE")
_TCP_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EADDRNOTAVAIL,
}


def fail(
    cls: type[ConnectError],
    phase: ConnectPhase,
    endpoint: str,
    what: str,
    *,
    fix: str | None = None,
) -> ConnectError:
    """One connect error: ``connecting to <endpoint> failed at the <phase>: <what>; <fix>``."""
    text = f"connecting to {endpoint} failed at the {phase}: {what or 'no details given'}"
    if fix:
        text += f"; {fix}"
    return cls(text, phase=phase, endpoint=endpoint)


def placed(error: ConnectError, phase: ConnectPhase, endpoint: str) -> ConnectError:
    """``error`` with its phase (``phase`` unless it has its own) and the endpoint named in
    its text; an error that names its endpoint already is returned as it is."""
    if error.endpoint is not None:
        return error
    new = fail(type(error), error.phase or phase, endpoint, str(error) or explain(error))
    cause = error.__cause__
    new.__cause__ = cause if cause is not None and str(cause) else error
    return new


def raise_from(error: ConnectError, original: BaseException) -> ConnectError:
    """``error`` ready to be raised in place of ``original`` (never its own cause)."""
    if error is not original and error.__cause__ is None:
        error.__cause__ = textual(original)
    return error


def textual(exc: BaseException) -> BaseException:
    """``exc``, or when its text is empty (asyncio's bare ``ConnectionResetError()`` in a TLS
    handshake) an exception of its type that says so, chained to it."""
    if str(exc):
        return exc
    text = f"{type(exc).__name__} (no message from the driver or the OS)"
    try:
        said = type(exc)(text)
    except Exception:
        said = ConnectionError(text)
    said.__cause__ = exc
    return said


def explain(exc: BaseException) -> str:
    """An exception's text that is never empty: its type always, its text when it has one."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        detail = getattr(exc, "verify_message", None) or exc.reason
        return f"{type(exc).__name__}: {detail}"
    text = str(exc)
    if isinstance(exc, AiobusError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- socket-level failures: DNS, TCP, TLS --------------------------------------------------


def dns_error(exc: socket.gaierror, host: str, endpoint: str) -> ConnectError:
    """A name that does not exist is permanent; a resolver that is not answering is not."""
    if exc.errno in _NO_SUCH_NAME:
        return fail(
            PermanentConnectError,
            ConnectPhase.DNS,
            endpoint,
            f"the host name {host!r} does not exist ({exc.strerror or exc})",
            fix="check the host in the URL",
        )
    return fail(TransientConnectError, ConnectPhase.DNS, endpoint, explain(exc))


def socket_error(exc: OSError, host: str, endpoint: str, *, tls: bool) -> ConnectError:
    """What ``loop.create_connection`` raised, sorted by phase (DNS, TCP, TLS)."""
    if isinstance(exc, socket.gaierror):
        return dns_error(exc, host, endpoint)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return fail(
            PermanentConnectError,
            ConnectPhase.TLS,
            endpoint,
            f"TLS verification failed: {exc.verify_message or exc.reason}",
            fix="give ca_file= with the CA that signed the broker's certificate, or connect "
            "with the host name the certificate names",
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        if any(mark in str(exc).upper() for mark in _NOT_TLS):
            return fail(
                ProtocolMismatch,
                ConnectPhase.TLS,
                endpoint,
                f"the server does not speak TLS on this port ({exc.reason})",
                fix="use the plain-text scheme for this port, or the port of the TLS listener",
            )
        return fail(PermanentConnectError, ConnectPhase.TLS, endpoint, explain(exc))
    if tls and not _before_tcp(exc):
        # Reset or closed in the middle of the handshake: a plain-text server that gave up on
        # our ClientHello, or a broker going down. ``identify`` tells them apart.
        return fail(TransientConnectError, ConnectPhase.TLS, endpoint, explain(exc))
    return fail(
        TransientConnectError,
        ConnectPhase.TCP,
        endpoint,
        explain(exc),
        fix="is the broker running and listening on that port?"
        if isinstance(exc, ConnectionRefusedError)
        else None,
    )


def _before_tcp(exc: OSError) -> bool:
    return isinstance(exc, (ConnectionRefusedError, TimeoutError)) or exc.errno in _TCP_ERRNOS


def may_be_foreign(error: ConnectError) -> bool:
    """Worth asking the port what it speaks: the attempt died before the server answered
    our protocol, and nothing more specific (a certificate, a refusal) explains it. A TLS
    handshake that met plain text is asked too, to say which plain protocol it met."""
    if isinstance(error, ProtocolMismatch):
        return error.phase in (ConnectPhase.TLS, ConnectPhase.HEADER)
    return not error.permanent and error.phase in (ConnectPhase.TLS, ConnectPhase.HEADER)


# --- what does the port speak? ---------------------------------------------------------------

_MQTT_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 0])
_AMQP091_HEADER = b"AMQP\x00\x00\x09\x01"
_AMQP10_HEADER = b"AMQP\x03\x01\x00\x00"


@dataclass(frozen=True)
class Spoken:
    """What a port answered to the probes: protocol names, and whether it answered TLS."""

    protocols: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.protocols)

    def names(self) -> str:
        return " and ".join(_NAMES[p] for p in sorted(self.protocols))


def recognize(reply: bytes) -> str | None:
    """The protocol a server's first bytes belong to, if they say."""
    if reply.startswith((b"\x15\x03", b"\x16\x03")):
        return "tls"  # an alert or a ServerHello
    if reply.startswith(b"HTTP/"):
        return "http"
    if reply.startswith(b"AMQP") and len(reply) >= 8:
        return "amqp091" if reply[4:8] == b"\x00\x00\x09\x01" else "amqp10"
    if reply.startswith(b"\x01\x00\x00") and len(reply) >= 7:
        return "amqp091"  # a frame on channel 0: Connection.Start
    if reply[:1] == b"\x20" and len(reply) >= 4:
        return "mqtt"  # CONNACK
    return None


async def _probe(
    host: str,
    port: int,
    hello: bytes,
    context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> str | None:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=context,
                server_hostname=server_hostname if context is not None else None,
            )
            writer.write(hello)
            reply = await reader.read(16)
            while reply and recognize(reply) is None and len(reply) < 8:
                more = await reader.read(16)
                if not more:
                    break
                reply += more
    except (OSError, TimeoutError, EOFError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()
    return recognize(reply)


def _tls_hello(server_hostname: str) -> bytes:
    """A ClientHello, made by the ssl module in memory (never sent over a TLS stack of ours)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def identify(
    host: str,
    port: int,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Spoken:
    """Ask the port, once per protocol and at the same time, what it speaks.

    With ``context`` the probes go over TLS (the handshake worked, the inner protocol did
    not); otherwise in plain text, and a ClientHello probe tells whether it speaks TLS.
    """
    hellos = [_MQTT_CONNECT, _AMQP091_HEADER, _AMQP10_HEADER]
    if context is None:
        hellos.append(_tls_hello(host))
    answers = await asyncio.gather(
        *(_probe(host, port, hello, context, server_hostname) for hello in hellos)
    )
    return Spoken(frozenset(a for a in answers if a is not None))


async def foreign_protocol(
    protocol: str,
    tls: bool,
    host: str,
    port: int,
    error: ConnectError,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> ConnectError:
    """``error`` (the attempt died before the server answered), or a ``ProtocolMismatch``
    naming what the port speaks instead, with the URL to use."""
    inner = tls and error.phase is ConnectPhase.HEADER  # the TLS handshake itself worked
    spoken = await identify(
        host,
        port,
        context=context if inner else None,
        server_hostname=server_hostname,
    )
    mismatch = mismatch_text(protocol, tls, spoken, inner=inner)
    if mismatch is None:
        return error
    what, fix = mismatch
    endpoint = error.endpoint or f"{host}:{port}"
    return fail(ProtocolMismatch, error.phase or ConnectPhase.HEADER, endpoint, what, fix=fix)


def mismatch_text(
    protocol: str, tls: bool, spoken: Spoken, *, inner: bool
) -> tuple[str, str] | None:
    """(what is wrong, what to change) when ``spoken`` rules out ``protocol`` (over TLS
    when ``tls``); None when the answers do not say (nothing answered, or ours did)."""
    got = spoken.protocols
    if not got:
        return None
    want = _NAMES[protocol]
    tls_scheme = _SCHEMES[protocol][1]
    if tls and not inner:
        if got == {"tls"}:
            return None  # it does speak TLS: the handshake failed for another reason
        others = Spoken(got - {"tls"})
        return (
            f"the server does not speak TLS on this port, it answers in plain text "
            f"({others.names()})",
            _use(others.protocols, tls=False)
            + f"; for {want} over TLS use {tls_scheme}:// with the port of its TLS listener",
        )
    if not tls and "tls" in got:
        return (
            "the server speaks TLS on this port",
            f"use {tls_scheme}:// for {want} over TLS, or the port of the plain listener",
        )
    if protocol in got:
        return None
    where = "over TLS " if tls else ""
    return (
        f"the server speaks {spoken.names()} {where}on this port, not {want}",
        _use(got, tls=tls) + f", or the port of the {want} listener",
    )


def _use(protocols: Iterable[str], *, tls: bool) -> str:
    schemes = [_SCHEMES[p][1 if tls else 0] for p in sorted(protocols) if p in _SCHEMES]
    if not schemes:
        return "check the port"
    return "to talk to it use " + " or ".join(f"{s}://" for s in schemes)


# --- timeouts from the core's attempt budget --------------------------------------------------

_STEP = "aiobus_connect_step"


def note_step(exc: BaseException, phase: ConnectPhase, endpoint: str) -> None:
    """Mark a cancellation (the core's attempt budget ran out) with the step it interrupted,
    so the ``TimeoutError`` the core sees can say where the attempt was stuck."""
    if getattr(exc, _STEP, None) is None:
        setattr(exc, _STEP, (phase, endpoint))


def _timed_out(exc: TimeoutError) -> ConnectError:
    step = getattr(exc.__cause__, _STEP, None) or getattr(exc, _STEP, None)
    text = str(exc)
    if step is not None:
        phase, endpoint = step
        what = "no answer within the attempt's time budget"
        return fail(TransientConnectError, phase, endpoint, f"{what}{': ' + text if text else ''}")
    what = f"TimeoutError: {text}" if text else "no answer within the attempt's time budget"
    return TransientConnectError(f"connect attempt timed out: {what}")


def cut_short(error: BaseException) -> bool:
    """Whether ``error`` only says the core's attempt budget ran out (the connect deadline
    cut the attempt), which says less than the failure of the attempt before it."""
    cause = error.__cause__
    return isinstance(cause, TimeoutError) and isinstance(cause.__cause__, asyncio.CancelledError)


# --- the one sort ------------------------------------------------------------------------------


def as_connect_error(exc: BaseException) -> tuple[bool, BaseException]:
    """Sort an attempt's failure: (permanent?, the error to report).

    aiobus errors keep their type (a ``TopologyMismatch`` at first connect is raised as
    itself); unknown errors are not retried, so a bug shows at once instead of as a
    30-second connect timeout. The error reported always has text that names its cause.
    """
    if isinstance(exc, ConnectError):
        if str(exc):
            return exc.permanent, exc
        err: ConnectError = type(exc)(
            f"{type(exc).__name__} (no details given)", phase=exc.phase, endpoint=exc.endpoint
        )
        err.__cause__ = exc
        return exc.permanent, err
    if isinstance(exc, TimeoutError):
        err = _timed_out(exc)
    elif isinstance(exc, (LinkDown, OSError, EOFError, asyncio.IncompleteReadError)):
        err = TransientConnectError(explain(exc))
    elif isinstance(exc, AiobusError):
        return True, exc
    else:
        err = PermanentConnectError(f"unexpected {explain(exc)} while connecting")
        err.__cause__ = exc
        return True, err
    err.__cause__ = exc
    return False, err
