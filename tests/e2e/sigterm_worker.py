"""A worker as a service would write it, for the SIGTERM test: it consumes one message and
keeps it in hand, publishes 1,000 messages that stay in flight, and waits. SIGTERM cancels the
main task (the usual shutdown wiring); ``async with`` must then close within
``close_timeout`` and settle every future. It prints what it saw as one JSON line.

    python -m tests.e2e.sigterm_worker URL TOPIC SUBSCRIBE_JSON PUBLISH_JSON CLOSE_TIMEOUT
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


async def work(url: str, topic: str, subscribe: dict[str, Any], publish: dict[str, Any],
               close_timeout: float, futures: list[aiobus.PublishFuture]) -> None:
    async with aiobus.connect(url, close_timeout=close_timeout) as bus:
        async with bus.subscribe(**subscribe) as sub:
            await bus.publish(topic, b"in hand", **publish)
            in_hand = await sub.get(timeout=10)
            assert in_hand.body == b"in hand"
            print("READY", flush=True)
            sys.stdin.readline()  # the test has cut the broker off: publishes stay in flight
            if url.startswith("memory://"):
                from aiobus.memory_broker import MemoryBroker

                MemoryBroker.get(url.removeprefix("memory://").split("?")[0]).hold_confirms()
            futures.extend(bus.publish(topic, b"x", timeout=60, **publish) for _ in range(1000))
            await asyncio.sleep(0)  # let the pump write them
            print(f"PUBLISHED {bus.pending}", flush=True)
            await asyncio.Event().wait()  # until SIGTERM


async def main() -> None:
    url, topic, subscribe, publish, close_timeout = sys.argv[1:6]
    futures: list[aiobus.PublishFuture] = []
    task = asyncio.create_task(
        work(url, topic, json.loads(subscribe), json.loads(publish), float(close_timeout),
             futures)
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    outcomes: dict[str, int] = {}
    for fut in futures:
        kind = "pending" if not fut.done() else (
            "cancelled" if fut.cancelled() else type(fut.exception() or fut.result()).__name__
        )
        outcomes[kind] = outcomes.get(kind, 0) + 1
    left = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    print(json.dumps({"outcomes": outcomes, "tasks_left": left}), flush=True)


if __name__ == "__main__":
    if os.environ.get("AIOBUS_E2E_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    asyncio.run(main(), debug=True)
