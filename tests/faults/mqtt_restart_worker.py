"""A worker process for the MQTT restart test, written the way a service writes one:
``async with connect(): async with subscribe(): ...`` and SIGTERM cancelling the main task.

    python -m tests.faults.mqtt_restart_worker hold URL TOPIC OPTIONS_JSON
    python -m tests.faults.mqtt_restart_worker take URL TOPIC OPTIONS_JSON COUNT

``hold``: subscribes, prints ``READY``, takes 2 messages in hand and waits until 3 more are in
the subscription's buffer (acking none), prints ``HOLDING in_hand buffered``, and waits for
SIGTERM. ``take``: subscribes, prints ``READY``, receives and acks ``COUNT`` messages, prints
them as one JSON line and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

import aiobus
from tests.helpers import Pushes

IN_HAND = 2
BUFFERED = 3


async def hold(url: str, topic: str, options: dict[str, Any]) -> None:
    async with aiobus.connect(url, **options) as bus, bus.subscribe(topic, qos=1) as sub:
        pushes = Pushes(sub)
        print("READY", flush=True)
        in_hand = [await sub.get(timeout=15) for _ in range(IN_HAND)]
        await pushes.until(lambda: sub.buffered >= BUFFERED, timeout=15)
        print(f"HOLDING {len(in_hand)} {sub.buffered}", flush=True)
        await asyncio.Event().wait()  # until SIGTERM cancels this task


async def take(url: str, topic: str, options: dict[str, Any], count: int) -> None:
    got: list[dict[str, Any]] = []
    async with aiobus.connect(url, **options) as bus, bus.subscribe(topic, qos=1) as sub:
        print("READY", flush=True)
        # Past ``count``, a short wait: a duplicate would show here. A timeout before it
        # ends the run with what came, for the test to report.
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await sub.get(timeout=15 if len(got) < count else 0.5)
                got.append({"body": msg.text(), "redelivered": msg.redelivered})
                await msg.ack()
    print(json.dumps(got), flush=True)


async def main() -> None:
    mode, url, topic, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    if mode == "hold":
        task = asyncio.create_task(hold(url, topic, options))
    else:
        task = asyncio.create_task(take(url, topic, options, int(sys.argv[5])))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print("EXITED", flush=True)


if __name__ == "__main__":
    if os.environ.get("AIOBUS_E2E_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    asyncio.run(main(), debug=True)
