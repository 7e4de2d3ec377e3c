"""Dead letters that land: a queue behind each dead-letter topic, a check that something
receives it, and a backoff for dead-letter publishes that fail.

A dead-letter publish that fails (``Unroutable``: nothing is bound to the topic) must neither
ack the original (the message would be lost) nor give it straight back to the broker (it is
redelivered at once, fails again: a hot loop). The original stays unsettled while the publish
is retried with a capped exponential backoff and full jitter, and the failure is logged once
per burst, not once per try.

Where the connection can declare topology (AMQP 0-9-1), the service declares a durable queue
bound to each dead-letter topic; on the memory broker (no declarations) a named queue made by
subscribing once does the same. Its name is ``Service(dead_letter_queue=...)``, a template
with ``{topic}`` (default ``aiobus-dead-{topic}``), or None to leave the topology to you.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from ..errors import AiobusError, ConfigError, ConnectionClosed, InvalidMessage
from .handler import safe_name

if TYPE_CHECKING:
    from ..connection import Connection

log = logging.getLogger("aiobus.service")

DEFAULT_QUEUE = "aiobus-dead-{topic}"
"""The default name of the queue the service declares behind a dead-letter topic."""


def queue_for(template: str, topic: str) -> str:
    """The dead-letter queue's name for ``topic`` (one routing-key word made of the topic)."""
    return template.replace("{topic}", safe_name(topic))


def can_hold_queue(bus: Connection) -> bool:
    """The service can make a queue that keeps dead letters while nobody consumes them."""
    return bus.capabilities.topology or bus.protocol == "memory"


async def declare_queue(bus: Connection, topic: str, queue: str) -> None:
    """A durable queue bound to ``topic`` (again after every reconnect, with the topology)."""
    if bus.capabilities.topology:
        from ..amqp import Binding, Queue  # AMQP 0-9-1's topology items

        exchange = str(getattr(bus.options, "exchange", "amq.topic"))
        binding = Binding(queue, exchange, topic)
        if await queue_exists(bus, queue):
            # Yours already (perhaps a quorum queue): only bound, never re-declared, so a
            # declaration that differs can never make on_mismatch="recreate" drop its letters.
            await bus.declare(binding)
        else:
            await bus.declare(Queue(queue, durable=True), binding)
        return
    # The memory broker keeps a named queue and its binding once a subscription made them.
    async with bus.subscribe(topic, queue=queue, prefetch=1):
        pass


async def queue_exists(bus: Connection, queue: str) -> bool | None:
    """Whether ``queue`` exists on the broker; None where the service cannot tell."""
    if bus.protocol == "memory":
        from ..memory_broker import MemoryBroker

        return queue in MemoryBroker.get(bus.settings.path).queues
    if bus.protocol != "amqp091":
        return None
    driver = bus.driver  # aio-pika's connection: a passive declare on a throwaway channel
    if driver is None:
        return None
    channel = await driver.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(queue, passive=True)
    except Exception as exc:  # 404 NOT_FOUND closes the channel: the queue is not there
        log.debug("aiobus: passive declare of %r: %r", queue, exc)
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


class Backoff:
    """Waits between tries of one failing publish: full jitter over ``initial * 2**n``,
    capped at ``maximum`` (so replicas do not retry in lockstep)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.tries = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0**self.tries)
        self.tries += 1
        return random.uniform(0.0, ceiling)


class FailureBursts:
    """One WARNING when publishes to a topic start failing, one INFO when they work again;
    the tries in between are DEBUG (a dead-letter topic with nothing behind it must not log
    a line per message per try)."""

    def __init__(self) -> None:
        self._failing: dict[str, int] = {}

    def failed(self, topic: str, subscriber: str, error: BaseException) -> None:
        count = self._failing.get(topic, 0)
        self._failing[topic] = count + 1
        if count == 0:
            log.warning(
                "aiobus: %s could not dead-letter to %r (%r); the message stays unsettled and "
                "the dead letter is retried with backoff (further failures are logged at DEBUG)",
                subscriber,
                topic,
                error,
            )
        else:
            log.debug("aiobus: dead letter to %r failed again: %r", topic, error)

    def landed(self, topic: str) -> None:
        count = self._failing.pop(topic, 0)
        if count:
            log.info("aiobus: dead letters to %r land again (after %d failures)", topic, count)

    def failures(self, topic: str) -> int:
        return self._failing.get(topic, 0)


async def wait_or_stop(delay: float, stopping: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds unless the service starts stopping; True if it did."""
    try:
        async with asyncio.timeout(delay):
            await stopping.wait()
    except TimeoutError:
        return False
    return True


def is_retryable(error: BaseException) -> bool:
    """A publish failure worth trying again later (unroutable, nacked, timed out, the link
    lost, a full buffer), not one the same copy would meet again (too large, bad options)."""
    return isinstance(error, AiobusError) and not isinstance(
        error, (InvalidMessage, ConfigError, ConnectionClosed)
    )


def describe_missing(topic: str, queue: str | None, exists: Any) -> str:
    where = f"queue {queue!r} " if queue else ""
    return (
        f"nothing receives the dead-letter topic {topic!r}: {where}"
        f"{'does not exist' if exists is False else 'is not declared'}; dead letters will "
        "wait unsettled until something is bound to it (Service(dead_letter_queue=...))"
    )
