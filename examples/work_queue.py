"""A RabbitMQ work queue: competing consumers with prefetch, requeue on error, confirms.

    python examples/work_queue.py [amqp://guest:guest@localhost/]
"""

from __future__ import annotations

import asyncio
import sys

import aiobus
from aiobus.amqp import Binding, Queue

QUEUE = "work.jobs"


async def worker(bus: aiobus.Connection, name: str, done: asyncio.Queue[str]) -> None:
    async with bus.subscribe("", queue=QUEUE, prefetch=2) as jobs:
        async for job in jobs:
            try:
                async with job.process(requeue=True):  # an exception sends it back to the queue
                    payload = job.json()
                    if payload["n"] % 5 == 0 and not job.redelivered:
                        raise RuntimeError(f"job {payload['n']} failed once")
                    print(f"{name} did job {payload['n']}{' (retried)' if job.redelivered else ''}")
                    await done.put(str(payload["n"]))
            except RuntimeError as exc:
                print(f"{name}: {exc}; requeued")


async def main(url: str, jobs: int = 12) -> None:
    # Declared before anything is published, and again after every reconnect.
    topology = [Queue(QUEUE), Binding(QUEUE, "amq.topic", QUEUE)]
    async with aiobus.amqp.connect(url, topology=topology) as bus:
        done: asyncio.Queue[str] = asyncio.Queue()
        workers = [asyncio.create_task(worker(bus, f"worker-{i}", done)) for i in range(3)]
        confirms = await asyncio.gather(*(bus.publish(QUEUE, {"n": n}) for n in range(jobs)))
        print(f"{len(confirms)} jobs confirmed by the broker")
        finished = {await asyncio.wait_for(done.get(), 30) for _ in range(jobs)}
        print(f"all {len(finished)} jobs done")
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost/"))
