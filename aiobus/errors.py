"""One exception hierarchy for every protocol.

Each adapter maps its driver's exceptions onto these in one place, so user code catches
``aiobus`` errors only, whatever the wire.
"""

from __future__ import annotations

from enum import StrEnum


class AiobusError(Exception):
    """Base of every error aiobus raises on purpose."""


# --- raised at the call: the input or the configuration is wrong -------------------------


class ConfigError(AiobusError, ValueError):
    """A setting, URL part or option is invalid, or the protocol cannot carry it."""


class InvalidTopic(ConfigError):
    """A topic, filter, routing key or address breaks its protocol's rules."""


class TopologyMismatch(ConfigError):
    """A declaration clashes with what the broker already has (AMQP 0-9-1: the broker answered
    ``PRECONDITION_FAILED``), from ``topology=``, ``declare()`` or ``subscribe(queue=...)``.

    Where the broker names the clash: ``queue`` (or ``exchange``) is the entity's name,
    ``argument`` the flag or argument that differs (``"durable"``, ``"x-message-ttl"``...),
    ``expected`` the value this client declared and ``actual`` the broker's, both as the
    broker prints them (``None`` where one side has no value). Each is ``None`` when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        queue: str | None = None,
        exchange: str | None = None,
        argument: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.queue = queue
        self.exchange = exchange
        self.argument = argument
        self.expected = expected
        self.actual = actual


class NotSupported(AiobusError):
    """The protocol has no way to do what was asked (e.g. ``nack`` on MQTT)."""


# --- connection life -------------------------------------------------------------------------


class ConnectPhase(StrEnum):
    """Where a connect attempt failed, from the first step to the last."""

    DNS = "DNS lookup"
    TCP = "TCP connect"
    TLS = "TLS handshake"
    HEADER = "protocol header"
    AUTH = "authentication"
    OPEN = "open/vhost"
    ATTACH = "attach"


class ConnectError(AiobusError):
    """Connecting failed. ``permanent`` errors are not retried on the first connect.

    ``phase`` says which step failed and ``endpoint`` (``host:port``) where, when known.
    """

    permanent = False

    def __init__(
        self, *args: object, phase: ConnectPhase | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(*args)
        self.phase = phase
        self.endpoint = endpoint


class TransientConnectError(ConnectError):
    """Refused, reset, timed out, DNS: worth another attempt."""


class PermanentConnectError(ConnectError):
    """Retrying cannot help (bad credentials, TLS verification, unknown vhost, wrong protocol)."""

    permanent = True


class SessionTakenOver(PermanentConnectError):
    """The broker ended the link because another connection took over its session (MQTT 5
    DISCONNECT 0x8E: the same client id connected elsewhere). Reconnecting would take it
    back and start a tug of war, so the connection ends with this error instead."""


class AuthenticationError(PermanentConnectError):
    """The broker refused the credentials."""


class ProtocolMismatch(PermanentConnectError):
    """The server speaks another protocol than the URL scheme asked for."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No link came up within ``connect_timeout``; ``__cause__`` is the last attempt's error."""


class ConnectionClosed(AiobusError):
    """The connection is closed, or was closed before the operation finished."""


class LinkDown(AiobusError):
    """Raised by adapters when the wire link died; the supervisor turns it into a reconnect."""


# --- publishing outcomes ---------------------------------------------------------------------


class PublishError(AiobusError):
    """Base of what a ``PublishFuture`` can fail with."""


class Nacked(PublishError):
    """The broker refused the message (basic.nack, AMQP 1.0 rejected/modified, MQTT 5 >= 0x80)."""

    def __init__(self, reason: str, *, code: int | str | None = None) -> None:
        text = f"broker refused the message: {reason}"
        if code is not None:
            text += f" (code {code})"
        super().__init__(text)
        self.reason = reason
        self.code = code


class Unroutable(PublishError):
    """No queue took the message (mandatory publish returned, AMQP 1.0 released)."""

    def __init__(self, reason: str, *, code: int | str | None = None) -> None:
        super().__init__(f"message was not routed to any queue: {reason}")
        self.reason = reason
        self.code = code


class InvalidMessage(PublishError, ValueError):
    """This message cannot be sent as it is: the protocol cannot encode one of its fields (a
    header value, a property over its size limit, a non-ASCII content type) or the broker
    refused it for what it is. Raised at ``publish()`` where the check can be made there,
    otherwise through the message's future once the link finds out. It fails alone and is
    never re-sent; the link stays up, except where a broker refuses by size by closing it
    (MQTT DISCONNECT 0x95, an AMQP 0-9-1 channel closed with 406): that costs one link,
    once, since the limit is then checked at the call."""


class MessageTooLarge(InvalidMessage):
    """The encoded message is over a maximum size (``size`` and ``limit`` in bytes).

    ``option`` names the aiobus option that set the limit (``"max_message_size"``), or is
    ``None`` where the broker stated the limit (MQTT 5 CONNACK Maximum Packet Size, a size
    refusal). A limit learned from a broker's refusal is checked at ``publish()`` from then on
    for that connection."""

    def __init__(self, size: int, limit: int, *, option: str | None = None) -> None:
        if option is None:
            text = f"message of {size} bytes is over the broker's maximum of {limit} bytes"
        else:
            text = (
                f"message of {size} bytes is over {limit} bytes, this connection's "
                f"{option} option (an aiobus limit, not the broker's): pass a larger "
                f"{option}= to connect() if the broker accepts larger messages"
            )
        super().__init__(text)
        self.size = size
        self.limit = limit
        self.option = option


class PublishTimeout(PublishError, TimeoutError):
    """Not settled by the broker before the message's deadline.

    ``maybe_delivered`` is False when the message never left this process (still queued, or
    held by the link waiting for credit and withdrawn at the deadline: it is never sent
    after), True when it was written and the broker may or may not have it.
    """

    def __init__(self, *args: object, maybe_delivered: bool = True) -> None:
        super().__init__(*args)
        self.maybe_delivered = maybe_delivered


class BufferFull(PublishError):
    """The outbox already holds ``max_buffered`` messages."""


class LinkLost(PublishError):
    """The link died and the outage policy is ``"fail"``.

    ``maybe_delivered`` is False when the message never left this process, True when it was
    written and the broker may or may not have it.
    """

    def __init__(self, *, maybe_delivered: bool) -> None:
        what = "outcome unknown: it was written" if maybe_delivered else "it was never sent"
        super().__init__(f"link lost before the broker settled the message ({what})")
        self.maybe_delivered = maybe_delivered


# --- receiving -------------------------------------------------------------------------------


class StaleDelivery(AiobusError):
    """The delivery came on a link that has since died; settling it there is impossible."""


class SubscriptionError(AiobusError):
    """A subscription could not be (re)attached; it is not receiving."""


class SubscriptionNotEntered(AiobusError, RuntimeError):
    """A subscription was iterated (or ``get()`` called) before ``async with`` subscribed it:
    nothing would ever arrive. Enter it first: ``async with bus.subscribe(...) as sub``."""


class AlreadySettled(AiobusError):
    """The delivery was already acked, nacked or rejected."""


def describe(exc: BaseException) -> str:
    """An error for a log line or an event: its type always, its text when it has one."""
    text = str(exc)
    if isinstance(exc, AiobusError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unsendable(message_id: str, topic: str, protocol: str, exc: BaseException) -> PublishError:
    """The per-message channel's error for a driver's refusal to encode a message: an
    ``InvalidMessage`` naming the message, the driver's error as its cause. An aiobus
    publish error keeps its type."""
    if isinstance(exc, PublishError):
        return exc
    error = InvalidMessage(
        f"message {message_id} to {topic!r} cannot be sent over {protocol}: {describe(exc)}"
    )
    error.__cause__ = exc
    return error
