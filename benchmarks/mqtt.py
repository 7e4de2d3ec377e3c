"""MQTT QoS 1: aiobus against raw aiomqtt, same private Mosquitto, same run, interleaved rounds.

The broker runs with ``set_tcp_nodelay true``: without it Mosquitto's Nagle delay caps every
windowed client (see shared/performance.md); its queue for a slow subscriber is unbounded and
its database is not saved on every change. Payloads are 256 bytes. Receive: a subscriber
takes ``count`` messages while another connection publishes them (same process), measured
from the first message to the last.

    python -m benchmarks mqtt [--count 50000] [--rounds 3] [--protocol 4|5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid

import aiomqtt

import aiobus
from tests.harness.mosquitto import MosquittoBroker

from .table import Row, print_table, rate

BODY = b"x" * 256
WINDOW = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", type=int, choices=(4, 5), default=4)


def _quiet_logger() -> logging.Logger:
    # aiomqtt warns on every publish once more than 10 are pending: that log line alone halves
    # its throughput, so its fastest form runs with the logger quiet.
    logger = logging.getLogger("bench.aiomqtt")
    logger.setLevel(logging.ERROR)
    return logger


def _aiomqtt(port: int, protocol: int, **kw: object) -> aiomqtt.Client:
    version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311
    return aiomqtt.Client("127.0.0.1", port, protocol=version, logger=_quiet_logger(), **kw)  # type: ignore[arg-type]


# -- publishing ----------------------------------------------------------------------------------


async def aiobus_gather(url: str, protocol: int, count: int) -> None:
    async with aiobus.connect(url, protocol=protocol, max_buffered=count + 1) as bus:
        await asyncio.gather(*[bus.publish("bench/pub", BODY) for _ in range(count)])


async def aiobus_tasks(url: str, protocol: int, count: int, tasks: int = 64) -> None:
    """Many publisher tasks, each awaiting its own publishes in turn (plain user code)."""
    async with aiobus.connect(url, protocol=protocol) as bus:

        async def one(n: int) -> None:
            for _ in range(n):
                await bus.publish("bench/pub", BODY)

        await asyncio.gather(*(one(count // tasks) for _ in range(tasks)))


async def aiobus_each(url: str, protocol: int, count: int) -> None:
    async with aiobus.connect(url, protocol=protocol) as bus:
        for _ in range(count):
            await bus.publish("bench/pub", BODY)


async def aiomqtt_each(port: int, protocol: int, count: int) -> None:
    async with _aiomqtt(port, protocol) as client:
        for _ in range(count):
            await client.publish("bench/pub", BODY, qos=1)


async def aiomqtt_window(port: int, protocol: int, count: int) -> None:
    """aiomqtt's fastest form measured: ~256 in flight, paho's inflight limit raised."""
    async with _aiomqtt(port, protocol, max_inflight_messages=1000) as client:
        window = asyncio.Semaphore(WINDOW)

        async def one() -> None:
            async with window:
                await client.publish("bench/pub", BODY, qos=1)

        await asyncio.gather(*(one() for _ in range(count)))


# -- receiving -----------------------------------------------------------------------------------


async def _feed(url: str, topic: str, count: int, protocol: int) -> None:
    async with aiobus.connect(url, protocol=protocol, max_buffered=count + 1) as bus:
        await asyncio.gather(*[bus.publish(topic, BODY) for _ in range(count)])


async def aiobus_receive(url: str, protocol: int, count: int) -> float:
    topic = f"bench/recv/{uuid.uuid4().hex[:8]}"
    async with aiobus.connect(url, protocol=protocol) as bus:
        async with bus.subscribe(topic, qos=1, prefetch=1000) as sub:
            feeder = asyncio.create_task(_feed(url, topic, count, protocol))
            loop = asyncio.get_running_loop()
            started = 0.0
            for n in range(count):
                msg = await sub.get()
                if n == 0:
                    started = loop.time()
                await msg.ack()
            elapsed = loop.time() - started
            await feeder
    return (count - 1) / elapsed


async def aiomqtt_receive(url: str, port: int, protocol: int, count: int) -> float:
    topic = f"bench/recv/{uuid.uuid4().hex[:8]}"
    async with _aiomqtt(port, protocol) as client:
        await client.subscribe(topic, qos=1)
        feeder = asyncio.create_task(_feed(url, topic, count, protocol))
        loop = asyncio.get_running_loop()
        started = 0.0
        n = 0
        async for _ in client.messages:
            if n == 0:
                started = loop.time()
            n += 1
            if n == count:
                break
        elapsed = loop.time() - started
        await feeder
    return (count - 1) / elapsed


async def run(args: argparse.Namespace) -> None:
    count = args.count or 50_000
    rounds = args.rounds
    protocol = args.protocol
    broker = MosquittoBroker(
        tcp_nodelay=True,
        extra_config=[
            # The harness saves the database after every change (for kill -9 tests); that
            # costs more than the clients measured here. Save at exit only.
            "autosave_on_changes false",
            "autosave_interval 0",
            # Queue everything for a subscriber that is behind (default: drop past 1,000).
            "max_queued_messages 0",
        ],
    )
    broker.start()
    try:
        url, port = broker.url, broker.port
        each_count = max(1000, count // 10)  # one round trip each: fewer, or it takes minutes
        rows = {
            "aiomqtt await each": Row("aiomqtt await each", "msg/s"),
            "aiobus await each": Row("aiobus await each", "msg/s"),
            "aiomqtt window 256": Row(f"aiomqtt window {WINDOW}, inflight 1000", "msg/s"),
            "aiobus 64 tasks": Row("aiobus 64 tasks awaiting each", "msg/s"),
            "aiobus gather": Row("aiobus gather (pipelined)", "msg/s"),
            "aiomqtt receive": Row("aiomqtt receive (acks on receipt)", "msg/s"),
            "aiobus receive": Row("aiobus receive + ack", "msg/s"),
        }
        for _ in range(rounds):
            r = rows
            r["aiomqtt await each"].samples.append(
                await rate(each_count, lambda: aiomqtt_each(port, protocol, each_count))
            )
            r["aiobus await each"].samples.append(
                await rate(each_count, lambda: aiobus_each(url, protocol, each_count))
            )
            r["aiomqtt window 256"].samples.append(
                await rate(count, lambda: aiomqtt_window(port, protocol, count))
            )
            r["aiobus 64 tasks"].samples.append(
                await rate(count, lambda: aiobus_tasks(url, protocol, count))
            )
            r["aiobus gather"].samples.append(
                await rate(count, lambda: aiobus_gather(url, protocol, count))
            )
            r["aiomqtt receive"].samples.append(await aiomqtt_receive(url, port, protocol, count))
            r["aiobus receive"].samples.append(await aiobus_receive(url, protocol, count))
        window = rows["aiomqtt window 256"].name
        print_table(
            f"MQTT {'5' if protocol == 5 else '3.1.1'} QoS 1, {count:,} x 256 B "
            f"({each_count:,} for await-each), Mosquitto set_tcp_nodelay true, {rounds} rounds",
            list(rows.values()),
            {
                rows["aiobus await each"].name: rows["aiomqtt await each"].name,
                rows["aiobus 64 tasks"].name: window,
                rows["aiobus gather"].name: window,
                rows["aiobus receive"].name: rows["aiomqtt receive"].name,
            },
        )
    finally:
        broker.close()
