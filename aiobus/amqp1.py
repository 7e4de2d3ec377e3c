"""AMQP 1.0 with its full typed option set: ``aiobus.amqp1.connect(url, **options)``.

Addresses are the broker's own names (RabbitMQ 4: ``/queues/NAME``, ``/exchanges/NAME/KEY``;
RabbitMQ 3.x: ``/amq/queue/NAME``, ``/exchange/NAME/KEY``, ``/topic/KEY``; plain names on
Artemis, Service Bus, cloud IoT endpoints). ``queue_address`` and ``exchange_address`` build the
RabbitMQ 4 forms with the percent-encoding RabbitMQ requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote

from .connection import Connection
from .errors import ConfigError, NotSupported
from .message import Delivery

__all__ = ["connect", "exchange_address", "queue_address", "release"]


def connect(
    url: str | Sequence[str],
    *,
    container_id: str | None = None,
    hostname: str | None = None,
    vhost: str | None = None,
    server_hostname: str | None = None,
    presettled: bool | None = None,
    sasl: Literal["auto", "PLAIN", "ANONYMOUS"] | None = None,
    mandatory: bool | None = None,
    anonymous_relay: Literal["auto", "always", "never"] | None = None,
    modified_retries: int | None = None,
    max_message_size: int | None = None,
    max_senders: int | None = None,
    sender_idle: float | None = None,
    **common: Any,
) -> Connection:
    """An AMQP 1.0 connection (``amqp1://`` or ``amqp1s://``); every option is typed here and
    documented on ``aiobus.settings.Amqp1Options``. Core options (``timeout``, ``prefetch``,
    ``heartbeat`` = idle time-out, ``credentials``, ``ca_file``...) pass through ``common``."""
    from .url import parse

    given = {
        "container_id": container_id,
        "hostname": hostname,
        "vhost": vhost,
        "server_hostname": server_hostname,
        "presettled": presettled,
        "sasl": sasl,
        "mandatory": mandatory,
        "anonymous_relay": anonymous_relay,
        "modified_retries": modified_retries,
        "max_message_size": max_message_size,
        "max_senders": max_senders,
        "sender_idle": sender_idle,
    }
    options = {k: v for k, v in given.items() if v is not None}
    options.update(common)
    settings = parse(url, **options)
    if settings.protocol != "amqp10":
        raise ConfigError(
            f"aiobus.amqp1.connect takes amqp1:// or amqp1s:// URLs, not {settings.scheme}://"
        )
    return Connection(settings)


def queue_address(name: str) -> str:
    """RabbitMQ 4's address of a queue: ``/queues/NAME``, NAME percent-encoded."""
    return "/queues/" + quote(name, safe="")


def exchange_address(exchange: str, routing_key: str | None = None) -> str:
    """RabbitMQ 4's address of an exchange (and routing key): ``/exchanges/NAME[/KEY]``."""
    address = "/exchanges/" + quote(exchange, safe="")
    if routing_key is not None:
        address += "/" + quote(routing_key, safe="")
    return address


async def release(delivery: Delivery) -> None:
    """Settle with AMQP 1.0 ``released``: back to the queue, not counted as a failed delivery
    (``nack(requeue=True)`` is ``modified`` with delivery-failed, which the broker counts)."""
    from .transports.amqp10 import Amqp10Consumer

    consumer = delivery._consumer
    if not isinstance(consumer, Amqp10Consumer):
        raise NotSupported(f"release() is AMQP 1.0's; this delivery came over {consumer.protocol}")
    delivery._begin_settle()  # AlreadySettled / StaleDelivery, as for ack and nack
    await consumer.release(delivery)
