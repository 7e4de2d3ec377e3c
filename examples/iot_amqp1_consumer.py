"""Cloud IoT server-side subscription over AMQP 1.0: signed SASL, credit 20, process then accept.

The pattern cloud IoT platforms document for their AMQP 1.0 server-side subscriptions:

- SASL PLAIN with a *signed* user name and password (``aksign``: HMAC-SHA1 over the access key
  id and a millisecond timestamp), signed afresh before every connect attempt;
- link credit 20: at most 20 messages unsettled at once, credit returned as each is settled;
- messages processed concurrently and accepted only after processing (an exception releases
  the message back with ``modified``/delivery-failed, so the platform redelivers it);
- reconnect with backoff from 10 ms doubling to 20 s, the subscription re-attached each time.

Run against a cloud endpoint (``amqp1s://`` and the IOT_* variables), or as written against a
local RabbitMQ 4 with plain credentials::

    AIOBUS_AMQP1_URL=amqp1://guest:guest@127.0.0.1:5672 python examples/iot_amqp1_consumer.py

Environment: ``AIOBUS_AMQP1_URL`` (default ``amqp1://guest:guest@127.0.0.1:5672``),
``AIOBUS_AMQP1_ADDRESS`` (default ``/queue/iot-telemetry``: RabbitMQ's older address form, which
declares the queue if it is missing), and for signed credentials ``IOT_ACCESS_KEY``,
``IOT_ACCESS_SECRET``, ``IOT_CONSUMER_GROUP_ID``, ``IOT_INSTANCE_ID``, ``IOT_CLIENT_ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiobus
import aiobus.amqp1
from aiobus.auth import iot_amqp_credentials

log = logging.getLogger("iot_amqp1_consumer")

CREDIT = 20


def credentials_from_env() -> Any:
    """Signed credentials when IOT_ACCESS_KEY is set; None keeps the URL's user:password."""
    if not os.environ.get("IOT_ACCESS_KEY"):
        return None
    return iot_amqp_credentials(
        access_key=os.environ["IOT_ACCESS_KEY"],
        access_secret=os.environ["IOT_ACCESS_SECRET"],
        consumer_group_id=os.environ["IOT_CONSUMER_GROUP_ID"],
        iot_instance_id=os.environ.get("IOT_INSTANCE_ID", ""),
        client_id=os.environ.get("IOT_CLIENT_ID"),
    )


async def handle(msg: aiobus.Delivery) -> None:
    """Your processing: here, log the telemetry."""
    log.info("%s from %s: %r", msg.message_id, msg.topic, msg.body[:80])


async def consume(
    url: str,
    address: str,
    *,
    handler: Callable[[aiobus.Delivery], Awaitable[None]] = handle,
    limit: int | None = None,
    **options: Any,
) -> int:
    """Consume until cancelled (or ``limit`` messages are settled); returns how many."""
    credentials = credentials_from_env()
    if credentials is not None:
        options.setdefault("credentials", credentials)
    settled = 0
    finished = asyncio.Event()

    async def process(msg: aiobus.Delivery) -> None:
        nonlocal settled
        try:
            async with msg.process(requeue=True):  # accept after processing, modified on error
                await handler(msg)
        except aiobus.StaleDelivery:
            pass  # the link died meanwhile: the platform delivers it again
        except Exception:
            log.exception("processing %s failed; the broker will redeliver it", msg.message_id)
        settled += 1
        if limit is not None and settled >= limit:
            finished.set()

    async with (
        aiobus.amqp1.connect(
            url,
            prefetch=CREDIT,
            backoff_initial=0.01,
            backoff_factor=2,
            backoff_max=20,
            **options,
        ) as bus,
        bus.subscribe(address) as sub,
        asyncio.TaskGroup() as tasks,
    ):

        async def pull() -> None:
            # Credit bounds the work in flight: at most CREDIT deliveries are unsettled.
            async for msg in sub:
                tasks.create_task(process(msg))

        puller = tasks.create_task(pull())
        await finished.wait()
        puller.cancel()
    return settled


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    url = os.environ.get("AIOBUS_AMQP1_URL", "amqp1://guest:guest@127.0.0.1:5672")
    address = os.environ.get("AIOBUS_AMQP1_ADDRESS", "/queue/iot-telemetry")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(consume(url, address))


if __name__ == "__main__":
    main()
