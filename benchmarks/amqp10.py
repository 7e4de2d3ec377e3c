"""AMQP 1.0: aiobus against proton's own reactor, same private RabbitMQ 4 node, same run.

``python -m benchmarks amqp10 [--count 50000] [--rounds 3] [--prefetch 1000]``

Settled-send throughput (durable 256-byte messages to a durable classic queue, each publish
awaited to its ``accepted`` outcome, all pipelined) and receive throughput (credit = prefetch,
each message accepted). The reactor (``proton.reactor.Container`` + ``MessagingHandler``) runs
in a worker thread while the event loop waits, so the two never compete for the CPU; rounds
are interleaved and alternate which client goes first. Each timing includes connect and close.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aio_pika

import aiobus
import aiobus.amqp1

from .table import Row, print_table

BODY = b"x" * 256
QUEUE = "bench-amqp10"
ADDRESS = f"/queues/{QUEUE}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefetch", type=int, default=1000, help="receiver credit")
    parser.add_argument(
        "--link-credit",
        type=int,
        default=None,
        help="the broker's max_link_credit for senders (RabbitMQ 4.0 default: 128)",
    )


# --- aiobus ------------------------------------------------------------------------------------


CPU: dict[str, list[float]] = {}
BROKER: dict[str, list[float]] = {}
_broker_pid: int | None = None


def _broker_cpu() -> float:
    """Seconds of CPU the broker (beam.smp) has used, from /proc."""
    if _broker_pid is None:
        return 0.0
    fields = Path(f"/proc/{_broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(name: str, run: Awaitable[float]) -> float:
    """Run one measurement; note how many cores the broker kept busy meanwhile."""
    cpu = _broker_cpu()
    started = time.perf_counter()
    rate = await run
    BROKER.setdefault(name, []).append((_broker_cpu() - cpu) / (time.perf_counter() - started))
    return rate


def _cpu(name: str, started: float, count: int) -> None:
    """Client CPU per message (process-wide: the reactor's thread counts, the idle loop not)."""
    CPU.setdefault(name, []).append((time.process_time() - started) / count * 1e6)


async def aiobus_send(url: str, count: int) -> float:
    cpu = time.process_time()
    started = time.perf_counter()
    async with aiobus.amqp1.connect(url, max_buffered=count + 1) as bus:
        # Pipelined as a producer would: publish in chunks and give the loop a turn between
        # them, so writing overlaps with publishing (one 50,000-long list comprehension would
        # keep the socket idle until the last publish() returned).
        futures = []
        for i in range(0, count, 500):
            futures.extend(bus.publish(ADDRESS, BODY) for _ in range(min(500, count - i)))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
    rate = count / (time.perf_counter() - started)
    _cpu("send aiobus", cpu, count)
    return rate


async def aiobus_receive(url: str, count: int, prefetch: int) -> float:
    cpu = time.process_time()
    started = time.perf_counter()
    async with aiobus.amqp1.connect(url) as bus, bus.subscribe(ADDRESS, prefetch=prefetch) as sub:
        n = 0
        async for msg in sub:
            await msg.ack()
            n += 1
            if n == count:
                break
    rate = count / (time.perf_counter() - started)
    _cpu("receive aiobus", cpu, count)
    return rate


# --- proton's reactor ----------------------------------------------------------------------------


def reactor_send(url: str, count: int) -> float:
    from proton import Message
    from proton.handlers import MessagingHandler
    from proton.reactor import Container

    class Send(MessagingHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0
            self.accepted = 0

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
            event.container.create_sender(conn, ADDRESS)

        def on_sendable(self, event: Any) -> None:
            sender = event.sender
            while sender.credit and self.sent < count:
                sender.send(Message(body=BODY, durable=True, inferred=True))
                self.sent += 1

        def on_accepted(self, event: Any) -> None:
            self.accepted += 1
            if self.accepted == count:
                event.connection.close()

        def on_rejected(self, event: Any) -> None:
            raise RuntimeError("rejected")

    handler = Send()
    cpu = time.process_time()
    started = time.perf_counter()
    Container(handler).run()
    assert handler.accepted == count
    rate = count / (time.perf_counter() - started)
    _cpu("send reactor", cpu, count)
    return rate


def reactor_receive(url: str, count: int, prefetch: int) -> float:
    from proton.handlers import MessagingHandler
    from proton.reactor import Container

    class Receive(MessagingHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(prefetch=prefetch, auto_accept=True)
            self.received = 0

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
            event.container.create_receiver(conn, ADDRESS)

        def on_message(self, event: Any) -> None:
            self.received += 1
            if self.received == count:
                event.receiver.close()
                event.connection.close()

    handler = Receive()
    cpu = time.process_time()
    started = time.perf_counter()
    Container(handler).run()
    assert handler.received == count
    rate = count / (time.perf_counter() - started)
    _cpu("receive reactor", cpu, count)
    return rate


# --- the run -------------------------------------------------------------------------------------


async def _queue_depth(amqp_url: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, durable=True)
        return queue.declaration_result.message_count or 0


async def run(args: argparse.Namespace) -> None:
    from tests.harness.rabbitmq import RabbitMQNode

    count = args.count or 50_000
    rounds = args.rounds
    prefetch = args.prefetch
    global _broker_pid
    node = RabbitMQNode()
    if args.link_credit:
        # RabbitMQ grants senders credit in steps of max_link_credit: with the default both
        # clients spend most of the run waiting for credit (measured: credit-starved on 477
        # of 479 socket reads), so the broker, not the client, sets the send rate.
        (node.dir / "advanced.config").write_text(
            f"[{{rabbit, [{{max_link_credit, {args.link_credit}}}]}}].\n"
        )
    await asyncio.to_thread(node.start)
    _broker_pid = node.pid
    try:
        url = node.amqp1_url
        reactor_url = url.replace("amqp1://", "amqp://")
        assert await _queue_depth(node.amqp_url) == 0
        send_a = Row("aiobus send, accepted", "msg/s")
        send_r = Row("proton reactor send, accepted", "msg/s")
        recv_a = Row(f"aiobus receive + accept, credit {prefetch}", "msg/s")
        recv_r = Row(f"proton reactor receive + accept, credit {prefetch}", "msg/s")
        # Warm-up: imports, the broker's first queue process, JIT-free but cache-warm.
        await aiobus_send(url, 2000)
        await aiobus_receive(url, 2000, prefetch)
        CPU.clear()
        for i in range(rounds):
            clients = ["aiobus", "reactor"] if i % 2 == 0 else ["reactor", "aiobus"]
            for client in clients:
                if client == "aiobus":
                    send_a.samples.append(await timed("send aiobus", aiobus_send(url, count)))
                    recv_a.samples.append(
                        await timed("receive aiobus", aiobus_receive(url, count, prefetch))
                    )
                else:
                    send_r.samples.append(
                        await timed(
                            "send reactor", asyncio.to_thread(reactor_send, reactor_url, count)
                        )
                    )
                    recv_r.samples.append(
                        await timed(
                            "receive reactor",
                            asyncio.to_thread(reactor_receive, reactor_url, count, prefetch),
                        )
                    )
            print(
                f"round {i + 1}/{rounds}: send {send_a.samples[-1]:,.0f} vs "
                f"{send_r.samples[-1]:,.0f}, receive {recv_a.samples[-1]:,.0f} vs "
                f"{recv_r.samples[-1]:,.0f} msg/s",
                flush=True,
            )
        assert await _queue_depth(node.amqp_url) == 0
        credit = f", broker max_link_credit {args.link_credit}" if args.link_credit else ""
        print_table(
            f"AMQP 1.0 on RabbitMQ 4 — {count:,} durable 256-byte messages, {rounds} "
            f"interleaved rounds{credit}",
            [send_a, send_r, recv_a, recv_r],
            {send_a.name: send_r.name, recv_a.name: recv_r.name},
        )
        print(
            "client CPU per message (median, µs): "
            + ", ".join(f"{name} {statistics.median(v):.0f}" for name, v in sorted(CPU.items()))
        )
        print(
            "broker CPU while running (median, cores busy): "
            + ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in sorted(BROKER.items()))
        )
    finally:
        await asyncio.to_thread(node.close)
