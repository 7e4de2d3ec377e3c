"""aiobus: one asyncio messaging API over MQTT, AMQP 0-9-1, AMQP 1.0 and an in-process broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .auth import Credentials, Secret
from .connection import Connection
from .errors import (
    AiobusError,
    AlreadySettled,
    AuthenticationError,
    BufferFull,
    ConfigError,
    ConnectError,
    ConnectionClosed,
    ConnectPhase,
    ConnectTimeout,
    InvalidMessage,
    InvalidTopic,
    LinkLost,
    MessageTooLarge,
    Nacked,
    NotSupported,
    PermanentConnectError,
    ProtocolMismatch,
    PublishError,
    PublishTimeout,
    SessionTakenOver,
    StaleDelivery,
    SubscriptionError,
    SubscriptionNotEntered,
    TopologyMismatch,
    TransientConnectError,
    Unroutable,
)
from .events import Event, State
from .message import Delivery
from .publishing import Confirm, PublishFuture
from .service import (
    DeadLetter,
    DecodeError,
    HandleContext,
    Middleware,
    NotSettled,
    Outbound,
    RemoteError,
    RequestTimeout,
    Requeue,
    Retry,
    Service,
    ServiceError,
    ServiceNotRunning,
)
from .subscription import Subscription
from .url import Settings

__version__ = "0.1.0"

_PROTOCOL_MODULES = ("amqp", "amqp1", "mqtt")


def __getattr__(name: str) -> Any:
    # ``aiobus.amqp.connect(...)`` works after a plain ``import aiobus``; the protocol modules
    # (and their drivers) load only when used, which keeps ``import aiobus`` fast.
    if name in _PROTOCOL_MODULES:
        import importlib

        return importlib.import_module(f"aiobus.{name}")
    raise AttributeError(f"module 'aiobus' has no attribute {name!r}")


def connect(url: str | Sequence[str], **options: Any) -> Connection:
    """A connection to use as ``async with aiobus.connect(url) as bus``.

    The scheme picks the protocol (``mqtt``, ``mqtts``, ``mqtt+ws``, ``mqtt+wss``, ``amqp``,
    ``amqps``, ``amqp1``, ``amqp1s``, ``memory``); query parameters and keyword options set the
    typed options of that protocol. Several hosts (a list of URLs, or ``h1:p1,h2:p2`` in one)
    are tried in turn on each reconnect. Invalid input raises ``ConfigError`` here.
    """
    from .url import parse

    return Connection(parse(url, **options))


__all__ = [
    "AiobusError",
    "AlreadySettled",
    "AuthenticationError",
    "BufferFull",
    "ConfigError",
    "Confirm",
    "ConnectError",
    "ConnectPhase",
    "ConnectTimeout",
    "Connection",
    "ConnectionClosed",
    "Credentials",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "Event",
    "HandleContext",
    "InvalidMessage",
    "InvalidTopic",
    "LinkLost",
    "MessageTooLarge",
    "Middleware",
    "Nacked",
    "NotSettled",
    "NotSupported",
    "Outbound",
    "PermanentConnectError",
    "ProtocolMismatch",
    "PublishError",
    "PublishFuture",
    "PublishTimeout",
    "RemoteError",
    "RequestTimeout",
    "Requeue",
    "Retry",
    "Secret",
    "Service",
    "ServiceError",
    "ServiceNotRunning",
    "SessionTakenOver",
    "Settings",
    "StaleDelivery",
    "State",
    "Subscription",
    "SubscriptionError",
    "SubscriptionNotEntered",
    "TopologyMismatch",
    "TransientConnectError",
    "Unroutable",
    "connect",
]
