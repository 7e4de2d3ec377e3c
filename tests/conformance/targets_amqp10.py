"""Conformance target: AMQP 1.0 on the private RabbitMQ 4 node (native AMQP 1.0).

AMQP 1.0 publishes to addresses and consumes from queues it does not create, so topics are
``/exchanges/amq.topic/KEY`` addresses and a subscription to a pattern consumes from a queue the
test declares (over AMQP 0-9-1) and binds to ``amq.topic`` with the pattern: one queue per
subscription (every subscriber gets a copy), or the named ``queue=`` shared by competitors.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest

from aiobus.amqp1 import queue_address
from tests.conformance.conftest import Target

PREFIX = "/exchanges/amq.topic/"


def _rabbitmq(request: pytest.FixtureRequest) -> Target:
    node = request.getfixturevalue("rabbitmq")

    def kill_link() -> None:
        node.ctl("close_all_connections", "conformance test")

    @asynccontextmanager
    async def subscriber(
        bus: Any, pattern: str, *, queue: str | None = None, **options: Any
    ) -> AsyncIterator[Any]:
        key = pattern.removeprefix(PREFIX)
        name = queue or f"amqp10-private-{uuid.uuid4().hex[:10]}"
        connection = await aio_pika.connect(node.amqp_url)
        async with connection:
            channel = await connection.channel()
            if queue is None:  # a private copy, gone a minute after the test stops using it
                declared = await channel.declare_queue(name, arguments={"x-expires": 60_000})
            else:
                declared = await channel.declare_queue(name, durable=True)
            await declared.bind("amq.topic", key)
        async with bus.subscribe(queue_address(name), **options) as sub:
            yield sub

    return Target(
        name="rabbitmq-amqp10",
        url=node.amqp1_url,
        syntax="amqp",
        can_nack=True,
        can_unroutable=True,
        can_headers=True,
        kill_link=kill_link,
        options={"backoff_initial": 0.01},
        topic_prefix=PREFIX,
        subscriber=subscriber,
    )


TARGETS = {"rabbitmq-amqp10": _rabbitmq}
