"""AMQP 0-9-1 (RabbitMQ): typed connect and the declarative topology.

    async with aiobus.amqp.connect("amqp://guest:guest@localhost/", topology=[
        Exchange("devices", type="topic"),
        Queue("dev-42", message_ttl=60, expires=3600),
        Binding("dev-42", "devices", "devices.42"),
    ]) as bus:
        ...

Topology is declared when the link comes up and again after every reconnect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .connection import Connection
from .errors import ConfigError
from .url import parse

ExchangeType = Literal["direct", "fanout", "topic", "headers"]


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType = "topic"
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("amq."):
            raise ConfigError(f"exchange name {self.name!r} is empty or reserved (amq.*)")
        if self.type not in ("direct", "fanout", "topic", "headers"):
            raise ConfigError(
                f"exchange type must be direct, fanout, topic or headers, got {self.type!r}"
            )


@dataclass(frozen=True)
class Queue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    message_ttl: float | None = None
    """Seconds a message may wait in the queue (x-message-ttl)."""
    expires: float | None = None
    """Seconds the queue may stay unused before the broker deletes it (x-expires)."""
    max_length: int | None = None
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    queue_type: Literal["classic", "quorum", "stream"] | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError(
                "a declared Queue needs a name (subscribe() without queue= makes server-named ones)"
            )
        if self.queue_type == "quorum" and (self.exclusive or not self.durable):
            raise ConfigError(f"quorum queue {self.name!r} must be durable and not exclusive")

    def declare_arguments(self) -> dict[str, Any]:
        args = dict(self.arguments)
        if self.message_ttl is not None:
            args["x-message-ttl"] = int(self.message_ttl * 1000)
        if self.expires is not None:
            args["x-expires"] = int(self.expires * 1000)
        if self.max_length is not None:
            args["x-max-length"] = self.max_length
        if self.overflow is not None:
            args["x-overflow"] = self.overflow
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.dead_letter_routing_key is not None:
            args["x-dead-letter-routing-key"] = self.dead_letter_routing_key
        if self.queue_type is not None:
            args["x-queue-type"] = self.queue_type
        return args


@dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)


TopologyItem = Exchange | Queue | Binding


def connect(
    url: str | Sequence[str] = "amqp://guest:guest@localhost/",
    *,
    topology: Sequence[TopologyItem] = (),
    **options: Any,
) -> Connection:
    """``aiobus.connect`` for ``amqp://`` / ``amqps://`` with AMQP 0-9-1's full options
    (``exchange``, ``mandatory``, ``persistent``, ``on_mismatch``, ``connection_name``,
    ``heartbeat``, TLS files...)."""
    settings = parse(url, topology=tuple(topology), **options)
    if settings.protocol != "amqp091":
        raise ConfigError(
            f"aiobus.amqp.connect takes amqp:// or amqps:// URLs, not {settings.scheme}://"
        )
    for item in topology:
        if not isinstance(item, (Exchange, Queue, Binding)):
            raise ConfigError(
                f"topology items are Exchange, Queue or Binding, not {type(item).__name__}"
            )
    return Connection(settings)
