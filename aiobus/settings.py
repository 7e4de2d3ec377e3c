"""Typed option sets, one per protocol, sharing the options the core itself uses.

The URL's query string and ``connect(**options)`` both end up here; every value is validated
once, at connect time, with a ``ConfigError`` that names the option.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from .auth import Credentials, as_credentials
from .errors import ConfigError

Outage = Literal["retry", "fail"]

#: Where ``url=False`` is set in a field's metadata the option can be given only as a keyword.
KW_ONLY = {"url": False}


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """Options every protocol shares: the core's own knobs (DESIGN section 5 defaults)."""

    timeout: float = 30.0
    """Publish deadline in seconds: waiting out an outage, writing and the confirm."""
    max_in_flight: int = 1024
    max_buffered: int = 100_000
    prefetch: int = 100
    heartbeat: float = 30.0
    """AMQP heartbeat, MQTT keep-alive, AMQP 1.0 idle time-out; 0 turns it off."""
    connect_timeout: float = 30.0
    close_timeout: float = 10.0
    attach_timeout: float = 30.0
    """Seconds the broker has to answer a subscription's attach (subscribe, declare, bind,
    consume) on a live link; past it the link is taken as dead, as a silent heartbeat would
    be, and the subscription is attached again on the next link."""
    outage: Outage = "retry"
    max_attempts: int | None = None
    """Reconnect attempts in a row before the connection gives up (None: unlimited)."""
    backoff_initial: float = 0.01
    backoff_factor: float = 2.0
    backoff_max: float = 20.0
    stable_after: float = 10.0
    """A link that stayed up this long resets the backoff."""
    ca_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    credentials: Any = field(default=None, repr=False, metadata=KW_ONLY)
    """(user, password), a ``Credentials``, or a sync/async callable returning either. A pair
    is held as ``Credentials`` (its password a ``Secret``); left out of ``repr`` whatever it is,
    since a callable's repr (a ``functools.partial``, say) can show its arguments."""

    def __post_init__(self) -> None:
        _positive(self, "timeout", "max_in_flight", "max_buffered", "prefetch")
        _positive(
            self,
            "connect_timeout",
            "close_timeout",
            "attach_timeout",
            "backoff_initial",
            "backoff_max",
        )
        _non_negative(self, "heartbeat", "stable_after")
        if self.backoff_factor < 1:
            raise ConfigError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1 or None, got {self.max_attempts!r}")
        if self.keyfile and not self.certfile:
            raise ConfigError("keyfile given without certfile")
        creds = self.credentials
        if creds is not None and not callable(creds):
            if not isinstance(creds, (tuple, Credentials)):
                raise ConfigError(
                    "credentials must be (username, password), a Credentials or a callable "
                    f"returning one, not {type(creds).__name__}"
                )
            # From here on the password is a Secret, whatever prints these options.
            object.__setattr__(self, "credentials", as_credentials(creds))


@dataclass(frozen=True, kw_only=True)
class MemoryOptions(CommonOptions):
    topics: Literal["amqp", "mqtt"] = "amqp"
    """Route like a RabbitMQ topic exchange (``a.*.#``) or like an MQTT broker (``a/+/#``)."""
    mandatory: bool = False
    max_message_size: int = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class AmqpOptions(CommonOptions):
    exchange: str = "amq.topic"
    mandatory: bool = True
    persistent: bool = True
    on_mismatch: Literal["error", "recreate"] = "error"
    max_message_size: int = 16 * 1024 * 1024
    connection_name: str = "aiobus"
    """The name the broker shows for this connection (management UI, ``rabbitmqctl
    list_connections client_properties``): the ``connection_name`` client property."""
    topology: Sequence[Any] = field(default=(), metadata=KW_ONLY)


#: The largest packet MQTT can frame: type byte, 4-byte Remaining Length, 268,435,455 bytes.
_MQTT_LARGEST_PACKET = 1 + 4 + 268_435_455


@dataclass(frozen=True, kw_only=True)
class MqttOptions(CommonOptions):
    protocol: Literal[4, 5] = 4
    """4 is MQTT 3.1.1 (its protocol level), 5 is MQTT 5."""
    client_id: str | None = None
    """None: one is generated per connection and kept across its reconnects (a persistent
    session, ``clean_session=False`` or ``session_expiry > 0``, needs a fixed one)."""
    qos: Literal[0, 1, 2] = 1
    """Default QoS of publishes and subscriptions."""
    clean_session: bool = True
    """MQTT 3.1.1 clean session / MQTT 5 clean start on the first connect. False resumes the
    session the broker kept for this client id."""
    session_expiry: int = 0
    """MQTT 5: seconds the broker keeps the session after a disconnect (0: ends with the link).
    > 0 makes reconnects resume the session (messages queued while offline arrive)."""
    receive_maximum: int | None = None
    """MQTT 5: unacknowledged QoS 1/2 messages the broker may send at once, for every
    subscription of the connection together (sent in CONNECT; None: the connection's
    ``prefetch``, capped at 65,535)."""
    max_message_size: int = 256 * 1024 * 1024 - 1
    """Largest payload accepted at the call; lowered by the broker's MQTT 5 Maximum Packet Size."""
    max_receive_size: int = 16 * 1024 * 1024
    """Largest MQTT packet accepted from the broker, in bytes (the whole packet): sent as
    Maximum Packet Size in the MQTT 5 CONNECT, and on both versions a larger packet closes the
    link at its header, before its body is buffered (an ``inbound_too_large`` event)."""
    will: Any = field(default=None, metadata=KW_ONLY)
    """Last will: ``aiobus.mqtt.Will(topic, payload, qos=, retain=)`` or a dict of those."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.session_expiry < 0 or self.session_expiry > 0xFFFFFFFF:
            raise ConfigError(f"session_expiry must be 0-4294967295, got {self.session_expiry!r}")
        if self.session_expiry and self.protocol != 5:
            raise ConfigError(
                "session_expiry is an MQTT 5 option (protocol=5); on MQTT 3.1.1 "
                "use clean_session=False"
            )
        if self.receive_maximum is not None:
            if self.protocol != 5:
                raise ConfigError("receive_maximum is an MQTT 5 option (protocol=5)")
            if not 1 <= self.receive_maximum <= 65535:
                raise ConfigError(f"receive_maximum must be 1-65535, got {self.receive_maximum!r}")
        if self.client_id is not None and len(self.client_id.encode()) > 65535:
            raise ConfigError("client_id is longer than 65,535 bytes")
        if not self.client_id and (not self.clean_session or self.session_expiry):
            # A generated id is new on every start, so the session could never be resumed.
            given = "clean_session=False" if not self.clean_session else "session_expiry > 0"
            raise ConfigError(
                f"a persistent MQTT session ({given}) needs a fixed client_id: the broker "
                "keeps the session under it, and a generated id is new on every start; "
                "pass client_id='...' (or use a clean session)"
            )
        if self.heartbeat > 65535:
            raise ConfigError(
                f"heartbeat (MQTT keep-alive) must be <= 65535 s, got {self.heartbeat!r}"
            )
        _positive(self, "max_message_size")
        if not 64 <= self.max_receive_size <= _MQTT_LARGEST_PACKET:
            raise ConfigError(
                f"max_receive_size must be 64-{_MQTT_LARGEST_PACKET:,} bytes (the largest "
                f"MQTT packet), got {self.max_receive_size!r}"
            )
        if self.will is not None:
            from .mqtt import Will  # here, not at the top: aiobus.mqtt imports the core
            from .topics import validate_mqtt_topic

            will = Will.coerce(self.will)
            validate_mqtt_topic(will.topic)
            if will.qos not in (0, 1, 2):
                raise ConfigError(f"will qos must be 0, 1 or 2, got {will.qos!r}")
            if (will.delay or will.headers) and self.protocol != 5:
                raise ConfigError("will delay and headers need MQTT 5 (protocol=5)")
            object.__setattr__(self, "will", will)


@dataclass(frozen=True, kw_only=True)
class Amqp1Options(CommonOptions):
    container_id: str | None = None
    """The AMQP open frame's container-id (a random one per connection if None)."""
    hostname: str | None = None
    """The open frame's hostname; default the host connected to (RabbitMQ 4: ``vhost:NAME``)."""
    vhost: str | None = None
    """Shorthand for ``hostname="vhost:NAME"`` (RabbitMQ 4 picks the virtual host from it)."""
    server_hostname: str | None = None
    """Name checked against the TLS certificate (and sent as SNI) when it differs from the
    host connected to, e.g. ``localhost`` while connecting to 127.0.0.1."""
    presettled: bool = False
    """Send every message pre-settled (fire-and-forget): a publish resolves once written."""
    sasl: Literal["auto", "PLAIN", "ANONYMOUS"] = "auto"
    """auto: PLAIN when credentials are given, else ANONYMOUS."""
    mandatory: bool = True
    """A ``released`` outcome (RabbitMQ 4: no route) fails the publish with Unroutable; with
    False it is a success (the broker dropped the message, as asked)."""
    anonymous_relay: Literal["auto", "always", "never"] = "auto"
    """One sender with a null target and ``to`` on each message (auto: when the broker offers
    ANONYMOUS-RELAY, as RabbitMQ 4 does), or one sender per address, each in its own session."""
    modified_retries: int = 3
    """A ``modified`` outcome that is not undeliverable is sent again up to this many times."""
    max_message_size: int = 16 * 1024 * 1024
    max_senders: int = 64
    """Where the anonymous relay is not used: at most this many per-address senders (each in
    its own session) are open at once. A new address beyond it takes the slot of the least
    recently used sender with nothing queued or unsettled, or waits for one (within each
    message's deadline)."""
    sender_idle: float = 30.0
    """A per-address sender nothing was published to for this many seconds, with nothing
    queued or unsettled, is closed (with its session)."""
    undecodable: Literal["reject", "release", "modify"] = "reject"
    """What becomes of a received message that cannot be decoded (malformed, or nested deeper
    than 64 levels): ``reject`` (the broker drops or dead-letters it; the reason is the
    rejection's error description), ``release`` (back to the queue, not counted) or
    ``modify`` (delivery-failed and undeliverable-here: counted, not for this link again).
    Each is reported as a ``delivery_undecodable`` event."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.undecodable not in ("reject", "release", "modify"):
            raise ConfigError(
                f"undecodable must be 'reject', 'release' or 'modify', got {self.undecodable!r}"
            )
        if 0 < self.heartbeat < 2:
            # proton advertises half the value; RabbitMQ 4 refuses idle time-outs under 1 s.
            raise ConfigError(
                f"heartbeat (idle time-out) must be 0 or >= 2 s, got {self.heartbeat!r}"
            )
        if self.modified_retries < 0:
            raise ConfigError(f"modified_retries must be >= 0, got {self.modified_retries!r}")
        _positive(self, "max_senders", "sender_idle")
        if self.hostname is not None and self.vhost is not None:
            raise ConfigError("give hostname or vhost, not both")


OPTIONS_BY_PROTOCOL: dict[str, type[CommonOptions]] = {
    "memory": MemoryOptions,
    "amqp091": AmqpOptions,
    "mqtt": MqttOptions,
    "amqp10": Amqp1Options,
}


OptionsT = TypeVar("OptionsT", bound=CommonOptions)


def options_as(options: CommonOptions, cls: type[OptionsT]) -> OptionsT:
    """An adapter's own option set, typed (URL parsing picked it by the scheme)."""
    if not isinstance(options, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(options).__name__}")
    return options


def _positive(opts: object, *names: str) -> None:
    for name in names:
        value = getattr(opts, name)
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")


def _non_negative(opts: object, *names: str) -> None:
    for name in names:
        value = getattr(opts, name)
        if not value >= 0:
            raise ConfigError(f"{name} must be >= 0, got {value!r}")


def build_options(
    cls: type[CommonOptions],
    query: Mapping[str, str],
    kwargs: Mapping[str, Any],
    where: str,
) -> CommonOptions:
    """Merge URL query strings (coerced by the field's type) and keyword options (checked)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, text in query.items():
        f = fields.get(name)
        if f is None or not f.metadata.get("url", True):
            raise ConfigError(f"unknown query parameter {name!r} for {where}{_known(fields)}")
        values[name] = coerce_text(name, text, hints[name])
    for name, value in kwargs.items():
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for {where}{_known(fields)}")
        check_type(name, value, hints[name])
        values[name] = value
    return cls(**values)


def _known(fields: Mapping[str, dataclasses.Field[Any]]) -> str:
    return " (known: " + ", ".join(sorted(fields)) + ")"


#: How a URL's query string may spell a bool (any case).
TRUE_TEXTS = frozenset({"1", "true", "yes", "on"})
FALSE_TEXTS = frozenset({"0", "false", "no", "off"})


def coerce_text(name: str, text: str, hint: Any) -> Any:
    """Turn a query-string value into the option's type, or say exactly why not."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("", "none", "null"):
            return None
        return coerce_text(name, text, args[0])
    if origin is Literal:
        for choice in typing.get_args(hint):
            if str(choice) == text:
                return choice
        choices = ", ".join(repr(str(c)) for c in typing.get_args(hint))
        raise ConfigError(f"option {name!r} must be one of {choices}, got {text!r}")
    try:
        if hint is bool:
            low = text.lower()
            if low in TRUE_TEXTS:
                return True
            if low in FALSE_TEXTS:
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"option {name!r} must be a {hint.__name__}, got {text!r}") from None
    return text


def check_type(name: str, value: Any, hint: Any) -> None:
    """Reject a keyword option of the wrong type at connect time, not deep in a driver."""
    if hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                check_type(name, value, arg)
            except ConfigError:
                continue
            return
        raise ConfigError(f"option {name!r} has the wrong type {type(value).__name__}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"option {name!r} must be one of {choices}, got {value!r}")
        return
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"option {name!r} must be None")
        return
    if origin is not None:
        hint = origin
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"option {name!r} must be an int, got a bool")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(
            f"option {name!r} must be {hint.__name__}, got {type(value).__name__} {value!r}"
        )
