"""Chaos targets for the fault tests: one per protocol and broker, with a real kill -9."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from aiobus.memory_broker import MemoryBroker
from aiobus.testing import FaultProxy, fresh_memory_broker
from tests.faults.scenarios import ChaosTarget
from tests.faults.targets import NET_TARGETS, NetTarget


async def amqp091_target(node: Any, *, name: str = "rabbitmq-amqp091") -> ChaosTarget:
    """A durable queue fed through the default exchange; declared with the raw driver and
    flushed to disk before any kill (RabbitMQ 4.0 keeps definitions in Mnesia)."""
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(node.amqp_url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True)
    await asyncio.to_thread(node.sync_metadata)

    async def kill() -> None:
        await asyncio.to_thread(node.restart, hard=True)

    return ChaosTarget(
        name=name,
        url=node.amqp_url,
        publish_topic=queue,
        publish_options={"exchange": ""},
        subscribe={"pattern": "", "queue": queue, "prefetch": 200},
        kill=kill,
        connect_options={"backoff_initial": 0.05, "backoff_max": 0.5, "heartbeat": 5},
    )


async def amqp10_target(node: Any) -> ChaosTarget:
    """AMQP 1.0 on RabbitMQ 4: a durable queue declared over 0-9-1, addressed /queues/Q."""
    queue = f"chaos1-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(node.amqp_url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True)
    await asyncio.to_thread(node.sync_metadata)

    async def kill() -> None:
        await asyncio.to_thread(node.restart, hard=True)

    return ChaosTarget(
        name="rabbitmq-amqp10",
        url=node.amqp1_url,
        publish_topic=f"/queues/{queue}",
        subscribe={"pattern": f"/queues/{queue}", "prefetch": 200},
        kill=kill,
        connect_options={"backoff_initial": 0.05, "backoff_max": 0.5, "heartbeat": 5},
    )


def mqtt_target(name: str, url: str, kill_broker: Any, protocol: int = 5) -> ChaosTarget:
    """QoS 1 on a persistent session (fixed client id, clean_session=False / session expiry),
    so the broker keeps the subscription and its queued messages across a restart."""
    topic = f"chaos/{uuid.uuid4().hex[:8]}"

    async def kill() -> None:
        await asyncio.to_thread(kill_broker)

    persistent: dict[str, Any] = (
        {"session_expiry": 3600} if protocol == 5 else {"clean_session": False}
    )
    return ChaosTarget(
        name=name,
        url=url,
        publish_topic=topic,
        publish_options={"qos": 1},
        subscribe={"pattern": topic, "qos": 1, "prefetch": 200},
        kill=kill,
        connect_options={
            "protocol": protocol,
            "client_id": f"chaos-{uuid.uuid4().hex[:8]}",
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
            "heartbeat": 5,
            **persistent,
        },
    )


def memory_target() -> tuple[ChaosTarget, MemoryBroker]:
    broker = fresh_memory_broker()

    async def kill() -> None:
        broker.kill_links("chaos")

    target = ChaosTarget(
        name="memory",
        url=broker.url(),
        publish_topic="chaos",
        subscribe={"pattern": "chaos", "queue": "chaos", "prefetch": 200},
        kill=kill,
        connect_options={"backoff_initial": 0.001},
    )
    return target, broker


@pytest.fixture
def memory_chaos() -> Any:
    target, broker = memory_target()
    yield target
    MemoryBroker.drop(broker.name)


@pytest.fixture(params=list(NET_TARGETS))
async def net(request: pytest.FixtureRequest) -> NetTarget:
    """Every protocol and broker, reached through a ``FaultProxy`` (``proxy``)."""
    return await NET_TARGETS[request.param](request)


@pytest.fixture
async def proxy(net: NetTarget) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(*net.host_port) as p:
        yield p
