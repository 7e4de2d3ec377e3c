"""AMQP 1.0 through a RabbitMQ 4 crash: SIGKILL mid-stream, restart, nothing accepted is lost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aio_pika
import pytest

import aiobus
import aiobus.amqp1
from aiobus.amqp1 import queue_address
from aiobus.events import State
from tests.helpers import other_tasks, wait_for_state

pytestmark = [pytest.mark.rabbitmq, pytest.mark.faults]

COUNT = 3000


async def test_broker_killed_mid_stream_loses_no_accepted_message(rabbitmq: Any) -> None:
    q = f"crash-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(q, durable=True)
    await asyncio.to_thread(rabbitmq.sync_metadata)  # the queue must survive kill -9

    address = queue_address(q)
    received: set[str] = set()
    accepted: set[str] = set()
    progress = asyncio.Event()
    async with (
        aiobus.amqp1.connect(
            rabbitmq.amqp1_url,
            timeout=60,
            backoff_initial=0.05,
            backoff_max=0.5,
            connect_timeout=15,
            close_timeout=3,
        ) as bus,
        bus.subscribe(address, prefetch=200) as sub,
    ):

        async def consume() -> None:
            while True:
                try:
                    msg = await sub.get()
                except aiobus.StaleDelivery:
                    continue
                if msg.message_id is not None:
                    received.add(msg.message_id)
                    progress.set()
                # The link may have died meanwhile: the broker delivers it again.
                with contextlib.suppress(aiobus.StaleDelivery):
                    await msg.ack()

        consumer = asyncio.create_task(consume())
        try:
            async with bus.events() as events:
                futures: list[asyncio.Future[aiobus.Confirm]] = []
                for i in range(COUNT):
                    futures.append(bus.publish(address, str(i), message_id=f"m{i}"))
                    if i == COUNT // 3:
                        # Mid-stream: a third is out, the rest are written during the outage.
                        await asyncio.gather(*futures[: COUNT // 6])
                        await asyncio.to_thread(rabbitmq.kill)
                        await wait_for_state(events, State.RECONNECTING, timeout=10)
                        await asyncio.to_thread(rabbitmq.start)
                    if i % 100 == 0:
                        await asyncio.sleep(0)  # let the loop breathe, as a real producer does
                async with asyncio.timeout(70):  # none hangs: each confirms or fails, typed
                    outcomes = await asyncio.gather(*futures, return_exceptions=True)
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, aiobus.Confirm):
                    accepted.add(f"m{i}")
                else:
                    assert isinstance(outcome, aiobus.PublishError), outcome
            assert len(accepted) == COUNT  # outage policy "retry": every one confirmed
            async with asyncio.timeout(30):
                while not accepted <= received:
                    progress.clear()
                    await progress.wait()
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        assert sub.live  # the consumer was re-attached without user code
    assert not other_tasks()
