"""IoT telemetry over MQTT: devices publish, a dashboard watches them all.

Each device publishes QoS 1 readings (each call resolves on the broker's PUBACK), keeps its
last status retained, and leaves a last will so the broker announces it when its link dies
without a goodbye. The dashboard subscribes with wildcards and acks what it has shown.

    python examples/mqtt_telemetry.py [mqtt://localhost:1883]

Runs as written against a local Mosquitto (``mosquitto`` with its default configuration).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

import aiobus
from aiobus.mqtt import Will

SITE = "site-1"


async def device(url: str, name: str, readings: int) -> None:
    status = f"{SITE}/{name}/status"
    will = Will(status, b"offline", qos=1, retain=True)
    async with aiobus.mqtt.connect(url, client_id=f"{SITE}-{name}", will=will, qos=1) as bus:
        await bus.publish(status, b"online", retain=True)
        pending = []
        for i in range(readings):
            reading = {"seq": i, "temp": round(20 + random.random() * 5, 2)}
            pending.append(bus.publish(f"{SITE}/{name}/temp", reading))
        await asyncio.gather(*pending)  # pipelined: all confirmed by the broker
        await bus.publish(status, b"idle", retain=True)


async def dashboard(url: str, expected: int, ready: asyncio.Event) -> None:
    async with (
        aiobus.mqtt.connect(url) as bus,
        bus.subscribe(f"{SITE}/+/temp", qos=1) as temps,
        bus.subscribe(f"{SITE}/+/status") as statuses,
    ):
        ready.set()

        async def show_statuses() -> None:
            async for msg in statuses:
                flag = " (retained)" if msg.retain else ""
                print(f"status {msg.topic.split('/')[1]}: {msg.text()}{flag}")
                await msg.ack()

        watcher = asyncio.create_task(show_statuses())
        try:
            for _ in range(expected):
                msg = await temps.get(timeout=30)
                async with msg.process():  # ack after it was handled
                    data = json.loads(msg.body)
                    print(f"{msg.topic}: #{data['seq']} {data['temp']} °C")
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def main(url: str) -> None:
    ready = asyncio.Event()
    devices, readings = 3, 5
    board = asyncio.create_task(dashboard(url, devices * readings, ready))
    await ready.wait()
    await asyncio.gather(*(device(url, f"dev{i}", readings) for i in range(devices)))
    await board


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "mqtt://localhost:1883"))
