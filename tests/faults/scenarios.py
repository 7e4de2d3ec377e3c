"""Fault scenarios shared by the fault tests and the soak runner (``python -m benchmarks.chaos``).

Each protocol describes itself as a ``ChaosTarget``: how to reach the broker, where durable
messages go, and how to kill and restart the broker. The scenario counts what matters: every
confirmed message received at least once, every publish settled by its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiobus
from aiobus.events import State


@dataclass
class ChaosTarget:
    name: str
    url: str
    publish_topic: str
    """Where publishes go (a durable queue's address / routing key / topic)."""
    subscribe: dict[str, Any]
    """Arguments of ``bus.subscribe`` that consume what ``publish_topic`` feeds, durably."""
    kill: Callable[[], Awaitable[None]]
    """Kill the broker (SIGKILL) and start it again; returns once it accepts connections."""
    connect_options: dict[str, Any] = field(default_factory=dict)
    publish_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleResult:
    confirmed: int = 0
    received_unique: int = 0
    duplicates: int = 0
    lost: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    max_settle: float = 0.0
    """Longest time from publish() to its outcome (confirm or error), seconds."""
    late: int = 0
    """Publishes that settled after their deadline (must be 0)."""
    reconnect: float | None = None
    """Seconds from the kill to the connection being connected again."""


async def kill_restart_cycle(
    target: ChaosTarget,
    *,
    messages: int = 600,
    kill_after: int = 200,
    deadline: float = 20.0,
    interval: float = 0.002,
) -> CycleResult:
    """Publish a stream of confirmed messages with a consumer running; kill the broker part way
    through and start it again; then check that every confirmed message arrived."""
    loop = asyncio.get_running_loop()
    result = CycleResult()
    received: Counter[int] = Counter()
    confirmed: set[int] = set()
    progress = asyncio.Event()

    async with aiobus.connect(target.url, timeout=deadline, **target.connect_options) as bus:
        async with bus.subscribe(**target.subscribe) as sub:

            async def consume() -> None:
                async for msg in sub:
                    received[int(msg.body)] += 1
                    with contextlib.suppress(aiobus.StaleDelivery):
                        await msg.ack()  # a stale one comes again from the broker
                    progress.set()

            consumer = loop.create_task(consume())
            try:
                killed_at: float | None = None
                reconnected = loop.create_future()

                async def watch(events: aiobus.events.EventStream) -> None:
                    saw_loss = False
                    async for event in events:
                        if event.kind == "link_lost":
                            saw_loss = True
                        elif saw_loss and event.kind == "state" and event.state is State.CONNECTED:
                            reconnected.set_result(loop.time())
                            return

                async with bus.events() as events:
                    watcher = loop.create_task(watch(events))
                    outcomes: list[asyncio.Task[None]] = []

                    async def publish_one(i: int) -> None:
                        started = loop.time()
                        try:
                            await bus.publish(
                                target.publish_topic, str(i).encode(), **target.publish_options
                            )
                            confirmed.add(i)
                        except aiobus.PublishError as exc:
                            result.failed[type(exc).__name__] += 1
                        took = loop.time() - started
                        result.max_settle = max(result.max_settle, took)
                        if took > deadline + 0.5:
                            result.late += 1

                    killer: asyncio.Task[None] | None = None
                    for i in range(messages):
                        outcomes.append(loop.create_task(publish_one(i)))
                        if i == kill_after:
                            killed_at = loop.time()
                            killer = loop.create_task(target.kill())
                        # Pacing the load into a stream that spans the outage (not test sync).
                        await asyncio.sleep(interval)
                    if killer is not None:
                        await killer
                    await asyncio.gather(*outcomes)
                    result.confirmed = len(confirmed)
                    async with asyncio.timeout(deadline + 10):
                        up_at = await reconnected
                    watcher.cancel()
                    if killed_at is not None:
                        result.reconnect = up_at - killed_at
                # Wait (bounded) until every confirmed message has come through.
                async with asyncio.timeout(deadline):
                    while not confirmed <= received.keys():
                        progress.clear()
                        await progress.wait()
            except TimeoutError:
                pass  # counted as lost below
            finally:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
    result.received_unique = len(received.keys() & confirmed)
    result.lost = len(confirmed - received.keys())
    result.duplicates = sum(n - 1 for n in received.values() if n > 1)
    return result


def reliability_row(name: str, cycles: list[CycleResult]) -> dict[str, Any]:
    reconnects = sorted(c.reconnect for c in cycles if c.reconnect is not None)
    failed: Counter[str] = Counter()
    for c in cycles:
        failed.update(c.failed)

    def pct(p: float) -> float:
        if not reconnects:
            return float("nan")
        return reconnects[min(len(reconnects) - 1, round(p * (len(reconnects) - 1)))]

    return {
        "target": name,
        "cycles": len(cycles),
        "confirmed": sum(c.confirmed for c in cycles),
        "lost": sum(c.lost for c in cycles),
        "duplicated": sum(c.duplicates for c in cycles),
        "failed": dict(failed),
        "late": sum(c.late for c in cycles),
        "max_settle_s": max((c.max_settle for c in cycles), default=0.0),
        "reconnect_p50_s": statistics.median(reconnects) if reconnects else float("nan"),
        "reconnect_p99_s": pct(0.99),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| target | cycles | confirmed | lost | duplicated | failed (by type) | late | "
        "max settle s | reconnect p50 s | reconnect p99 s |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "0"
        lines.append(
            f"| {r['target']} | {r['cycles']} | {r['confirmed']:,} | {r['lost']} | "
            f"{r['duplicated']} | {failed} | {r['late']} | {r['max_settle_s']:.2f} | "
            f"{r['reconnect_p50_s']:.2f} | {r['reconnect_p99_s']:.2f} |"
        )
    return "\n".join(lines)
