"""A small service: two handlers, a retry policy and a request/reply call.

    python examples/service.py                       # the in-process broker
    python examples/service.py amqp://guest:guest@localhost/
    python examples/service.py "mqtt://localhost/?protocol=5"

On MQTT 3.1.1 (``mqtt://`` without ``protocol=5``) the request/reply part reports that the
protocol cannot carry a correlation id, and the rest runs. AMQP 1.0 consumes from queues it
does not create: see docs/service.md ("AMQP 1.0") for the ``subscribe=``/``address=`` hooks.
Exits 0 when the order was billed (after one retry) and the quote answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from typing import Any

import aiobus
from aiobus import Retry, Service


@dataclasses.dataclass
class Order:
    id: int
    sku: str
    qty: int


@dataclasses.dataclass
class Quote:
    sku: str
    qty: int


@dataclasses.dataclass
class Price:
    sku: str
    total: float


class Timing(aiobus.Middleware):
    """Logs every handling with its attempt and duration (the first middleware is outermost)."""

    async def on_handle(self, ctx: aiobus.HandleContext, call_next: Any) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await call_next(ctx)
        finally:
            took = (loop.time() - started) * 1000
            print(
                f"  [{ctx.subscriber}] attempt {ctx.attempt} on {ctx.delivery.topic}: {took:.1f} ms"
            )


async def main(url: str) -> int:
    sep = "/" if url.startswith("mqtt") or "topics=mqtt" in url else "."
    orders, quotes = f"shop{sep}orders{sep}created", f"shop{sep}prices{sep}quote"
    billed = asyncio.Event()
    failures = 0

    async with aiobus.connect(url) as bus:
        # MQTT has no reject: a message that fails for good goes to a dead-letter topic.
        svc = Service(bus, middleware=[Timing()], dead_letter_topic=f"shop{sep}dead")

        @svc.subscriber(
            orders,
            queue="aiobus-example-billing",
            concurrency=4,
            on_error=Retry(max_attempts=3, delay=0.2),
        )
        async def bill(order: Order) -> None:
            nonlocal failures
            if failures == 0:  # the payment provider is flaky the first time
                failures += 1
                raise ConnectionError("payment provider timed out")
            print(f"billed order {order.id}: {order.qty} x {order.sku}")
            billed.set()

        @svc.subscriber(quotes)
        async def quote(q: Quote) -> Price:
            return Price(q.sku, round(q.qty * 2.5, 2))

        async with asyncio.timeout(30), svc.serving():
            await svc.publish(orders, Order(1, "apple", 3))
            if bus.capabilities.correlation:
                price = await svc.request(
                    quotes, Quote("apple", 3), timeout=10, response_type=Price
                )
                print(f"quote: {price}")
            else:
                try:
                    await svc.request(quotes, Quote("apple", 3), timeout=10)
                except aiobus.NotSupported as exc:
                    print(f"request/reply: {exc}")
            await billed.wait()
        print(f"stats: {svc.stats('bill')}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://example")))
