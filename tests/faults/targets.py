"""Network-fault targets: real brokers reached through a ``FaultProxy``.

Each transport lists its targets in ``NET_TARGETS`` (name -> async factory(request)); the tests
in ``test_network_faults.py`` run against every one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest


@dataclass
class NetTarget:
    name: str
    url: str
    """The broker's URL, straight (the tests point it at a proxy with ``proxy.rewrite``)."""
    topic: str
    """Publish address feeding ``subscribe``'s durable queue."""
    subscribe: dict[str, Any]
    publish_options: dict[str, Any] = field(default_factory=dict)
    connect_options: dict[str, Any] = field(default_factory=dict)
    set_password: Callable[[str, str], Awaitable[None]] | None = None
    """Change a dedicated user's password on the broker (None: the broker cannot)."""
    user: tuple[str, str] | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def url_as(self, url: str, user: str, password: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{user}:{password}@{parts.hostname}:{parts.port}{parts.path}"


async def rabbitmq_user(node: Any) -> tuple[tuple[str, str], Callable[[str, str], Awaitable[None]]]:
    """A throwaway user with full rights, and a way to change its password."""
    user = f"chaos-{uuid.uuid4().hex[:6]}"
    password = uuid.uuid4().hex
    await asyncio.to_thread(node.ctl, "add_user", user, password)
    await asyncio.to_thread(node.ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")

    async def set_password(name: str, new: str) -> None:
        await asyncio.to_thread(node.ctl, "change_password", name, new)

    return (user, password), set_password


async def amqp091(request: pytest.FixtureRequest) -> NetTarget:
    node = request.getfixturevalue("rabbitmq")
    queue = f"net-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(node.amqp_url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True)
    user, set_password = await rabbitmq_user(node)
    return NetTarget(
        name="rabbitmq-amqp091",
        url=node.amqp_url,
        topic=queue,
        publish_options={"exchange": ""},
        subscribe={"pattern": "", "queue": queue},
        set_password=set_password,
        user=user,
    )


async def amqp10(request: pytest.FixtureRequest) -> NetTarget:
    """AMQP 1.0 on RabbitMQ 4: a durable queue (declared over 0-9-1) addressed as /queues/Q."""
    node = request.getfixturevalue("rabbitmq")
    queue = f"net1-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(node.amqp_url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True)
    user, set_password = await rabbitmq_user(node)
    return NetTarget(
        name="rabbitmq-amqp10",
        url=node.amqp1_url,
        topic=f"/queues/{queue}",
        subscribe={"pattern": f"/queues/{queue}"},
        set_password=set_password,
        user=user,
    )


def _mqtt_net(
    name: str, fixture: str, url_attr: str, users: bool
) -> Callable[[pytest.FixtureRequest], Awaitable[NetTarget]]:
    async def make(request: pytest.FixtureRequest) -> NetTarget:
        broker = request.getfixturevalue(fixture)
        topic = f"net/{uuid.uuid4().hex[:8]}"
        user, set_password = await rabbitmq_user(broker) if users else (None, None)
        return NetTarget(
            name=name,
            url=getattr(broker, url_attr),
            topic=topic,
            subscribe={"pattern": topic, "qos": 1},
            publish_options={"qos": 1},
            connect_options={"protocol": 5},
            set_password=set_password,
            user=user,
        )

    return make


NET_TARGETS: dict[str, Callable[[pytest.FixtureRequest], Awaitable[NetTarget]]] = {
    "rabbitmq-mqtt5": _mqtt_net("rabbitmq-mqtt5", "rabbitmq", "mqtt_url", users=True),
    "mosquitto-mqtt5": _mqtt_net("mosquitto-mqtt5", "mosquitto", "url", users=False),
    "rabbitmq-amqp091": amqp091,
    "rabbitmq-amqp10": amqp10,
}
