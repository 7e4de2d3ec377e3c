"""The ``aiobus`` command: ``demo``, ``pub`` and ``sub``."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiobus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiobus", description="aiobus command line")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="publish and receive on one broker, with latencies")
    demo.add_argument("--url", default="memory://demo", help="broker URL (default: in-process)")
    demo.add_argument("--count", type=int, default=10, help="messages to send (default 10)")
    demo.add_argument("--topic", default=None, help="topic (default fits the protocol)")

    pub = commands.add_parser("pub", help="publish one message and wait for the confirm")
    pub.add_argument("url")
    pub.add_argument("topic")
    pub.add_argument("body")

    sub = commands.add_parser("sub", help="print messages until interrupted")
    sub.add_argument("url")
    sub.add_argument("pattern")
    sub.add_argument("--count", type=int, default=0, help="stop after N messages")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return asyncio.run(run_demo(args.url, args.count, args.topic))
        if args.command == "pub":
            return asyncio.run(run_pub(args.url, args.topic, args.body))
        return asyncio.run(run_sub(args.url, args.pattern, args.count))
    except aiobus.AiobusError as exc:
        print(f"aiobus: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _demo_topic(bus: aiobus.Connection) -> str:
    if bus.protocol == "mqtt" or getattr(bus.settings.options, "topics", None) == "mqtt":
        return "aiobus/demo"
    if bus.protocol == "amqp10":
        return "/queues/aiobus-demo"
    return "aiobus.demo"


async def run_demo(url: str, count: int, topic: str | None) -> int:
    async with aiobus.connect(url) as bus:
        topic = topic or _demo_topic(bus)
        print(f"connected to {bus.settings.redacted_url()} ({bus.protocol})")
        async with bus.subscribe(topic, prefetch=min(max(count, 1), 1000)) as sub:
            latencies: list[float] = []
            received = 0
            last_progress = time.monotonic()
            show_each = count <= 20

            async def consume() -> None:
                nonlocal received, last_progress
                async for msg in sub:
                    await msg.ack()
                    received += 1
                    if show_each:
                        print(f"  received {msg.topic} {msg.text()!r}")
                    elif time.monotonic() - last_progress >= 1:
                        last_progress = time.monotonic()
                        print(f"  ... {received:,}/{count:,} received", flush=True)
                    if received == count:
                        return

            consumer = asyncio.create_task(consume())
            for i in range(count):
                body = f"hello #{i}"
                confirm = await bus.publish(topic, body)
                latencies.append(confirm.latency)
                if show_each:
                    print(f"sent {topic} {body!r}: confirmed in {confirm.latency * 1000:.2f} ms")
            async with asyncio.timeout(30):
                await consumer
        if latencies:
            ms = sorted(x * 1000 for x in latencies)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(
                f"{count} sent and confirmed, {received} received; confirm latency "
                f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"
            )
    return 0


async def run_pub(url: str, topic: str, body: str) -> int:
    async with aiobus.connect(url) as bus:
        confirm = await bus.publish(topic, body)
        print(f"confirmed {confirm.message_id} in {confirm.latency * 1000:.2f} ms")
    return 0


async def run_sub(url: str, pattern: str, count: int) -> int:
    async with aiobus.connect(url) as bus, bus.subscribe(pattern) as sub:
        seen = 0
        async for msg in sub:
            print(f"{msg.topic}: {msg.body!r}", flush=True)
            await msg.ack()
            seen += 1
            if count and seen >= count:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
