"""Soak: the kill/restart scenario for N cycles per protocol, and the reliability table.

    python -m benchmarks.chaos --protocol amqp091 --cycles 20
    python -m benchmarks.chaos --protocol all --cycles 3        # what CI runs

Each cycle publishes a stream of confirmed messages with a consumer running, SIGKILLs the
broker part way through, starts it again, and counts: confirmed, lost (confirmed but never
received), duplicated, failed by error type, late (settled after the deadline), the slowest
settlement, and the time from the kill to the connection being up again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiobus.memory_broker import MemoryBroker
from tests.faults.conftest import amqp091_target, amqp10_target, memory_target, mqtt_target
from tests.faults.scenarios import (
    ChaosTarget,
    CycleResult,
    format_table,
    kill_restart_cycle,
    reliability_row,
)


@contextlib.asynccontextmanager
async def memory() -> AsyncIterator[Callable[[], Awaitable[ChaosTarget]]]:
    names: list[str] = []

    async def make() -> ChaosTarget:
        target, broker = memory_target()
        names.append(broker.name)
        return target

    try:
        yield make
    finally:
        for name in names:
            MemoryBroker.drop(name)


@contextlib.asynccontextmanager
async def rabbitmq_amqp091() -> AsyncIterator[Callable[[], Awaitable[ChaosTarget]]]:
    from tests.harness.rabbitmq import RabbitMQNode

    node = RabbitMQNode()
    await asyncio.to_thread(node.start)
    try:
        yield lambda: amqp091_target(node)
    finally:
        await asyncio.to_thread(node.close)


@contextlib.asynccontextmanager
async def rabbitmq_amqp10() -> AsyncIterator[Callable[[], Awaitable[ChaosTarget]]]:
    from tests.harness.rabbitmq import RabbitMQNode

    node = RabbitMQNode()
    await asyncio.to_thread(node.start)
    try:
        yield lambda: amqp10_target(node)
    finally:
        await asyncio.to_thread(node.close)


@contextlib.asynccontextmanager
async def rabbitmq_mqtt() -> AsyncIterator[Callable[[], Awaitable[ChaosTarget]]]:
    from tests.harness.rabbitmq import RabbitMQNode

    node = RabbitMQNode()
    await asyncio.to_thread(node.start)

    async def make() -> ChaosTarget:
        return mqtt_target("rabbitmq-mqtt5", node.mqtt_url, lambda: node.restart(hard=True))

    try:
        yield make
    finally:
        await asyncio.to_thread(node.close)


@contextlib.asynccontextmanager
async def mosquitto_mqtt() -> AsyncIterator[Callable[[], Awaitable[ChaosTarget]]]:
    from tests.harness.mosquitto import MosquittoBroker

    broker = MosquittoBroker()
    await asyncio.to_thread(broker.start)

    async def make() -> ChaosTarget:
        return mqtt_target("mosquitto-mqtt5", broker.url, lambda: broker.restart(hard=True))

    try:
        yield make
    finally:
        await asyncio.to_thread(broker.close)


PROTOCOLS: dict[str, Callable[[], Any]] = {
    "memory": memory,
    "amqp091": rabbitmq_amqp091,
    "amqp10": rabbitmq_amqp10,
    "mqtt-rabbitmq": rabbitmq_mqtt,
    "mqtt-mosquitto": mosquitto_mqtt,
}


async def soak(protocols: list[str], cycles: int, messages: int) -> list[dict[str, Any]]:
    rows = []
    for name in protocols:
        async with PROTOCOLS[name]() as make:
            results: list[CycleResult] = []
            for i in range(cycles):
                target = await make()
                result = await kill_restart_cycle(
                    target, messages=messages, kill_after=messages // 3
                )
                results.append(result)
                print(
                    f"  {target.name} cycle {i + 1}/{cycles}: confirmed {result.confirmed}, "
                    f"lost {result.lost}, dup {result.duplicates}, failed "
                    f"{dict(result.failed) or 0}, reconnect {result.reconnect or 0:.2f}s",
                    flush=True,
                )
            rows.append(reliability_row(target.name, results))
    return rows


def main(argv: list[str] | None = None) -> int:
    # Every kill makes the drivers log refused connects; the table is what matters here.
    logging.basicConfig(level=logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos")
    parser.add_argument("--protocol", default="all", help=f"one of {', '.join(PROTOCOLS)} or 'all'")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--messages", type=int, default=600, help="per cycle")
    args = parser.parse_args(argv)
    chosen = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown:
        parser.error(f"unknown protocol {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}")
    rows = asyncio.run(soak(chosen, args.cycles, args.messages))
    print()
    print(format_table(rows))
    bad = [r for r in rows if r["lost"] or r["late"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
