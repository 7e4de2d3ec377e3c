"""Per-device queues on RabbitMQ: broadcasts through a fanout exchange, direct commands through
a topic exchange (``devices.<id>``), manual acks, and publishes with confirms whose outcome
(confirm, nack, timeout) is printed.

    python examples/rabbitmq_device_queues.py [amqp://guest:guest@localhost/] [device-id]
"""

from __future__ import annotations

import asyncio
import sys

import aiobus
from aiobus.amqp import Binding, Exchange, Queue

BROADCAST = "devices.broadcast"
COMMANDS = "devices.commands"


def device_topology(device: str) -> list[Exchange | Queue | Binding]:
    queue = f"device.{device}"
    return [
        Exchange(BROADCAST, type="fanout"),
        Exchange(COMMANDS, type="topic"),
        # Messages older than a minute are stale for a device; an unused queue goes in a day.
        Queue(queue, message_ttl=60, expires=86_400),
        Binding(queue, BROADCAST),
        Binding(queue, COMMANDS, f"devices.{device}"),
    ]


async def report(what: str, publish: aiobus.PublishFuture) -> None:
    try:
        confirm = await publish
        print(f"{what}: confirmed in {confirm.latency * 1000:.1f} ms")
    except aiobus.Nacked as exc:
        print(f"{what}: nacked by the broker ({exc.reason})")
    except aiobus.Unroutable as exc:
        print(f"{what}: no queue took it ({exc.reason})")
    except aiobus.PublishTimeout:
        print(f"{what}: no confirm before the deadline")


async def main(url: str, device: str) -> None:
    async with aiobus.amqp.connect(url, topology=device_topology(device)) as bus:
        async with bus.subscribe("", queue=f"device.{device}", prefetch=10) as inbox:
            await report("broadcast", bus.publish("", {"cmd": "sync-clock"}, exchange=BROADCAST))
            await report("command", bus.publish(f"devices.{device}", {"cmd": "reboot"},
                                                exchange=COMMANDS, timeout=5))
            await report("to nobody", bus.publish("devices.nobody", b"x", exchange=COMMANDS))
            for _ in range(2):
                msg = await inbox.get(timeout=10)
                async with msg.process():  # ack when handled, requeue if it raises
                    print(f"device {device} got {msg.json()} via {msg.topic or 'broadcast'}")


if __name__ == "__main__":
    asyncio.run(main(
        sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost/",
        sys.argv[2] if len(sys.argv) > 2 else "dev-1",
    ))
