"""Whether a subscription's queue counts deliveries, learnt from the deliveries themselves.

A broker requeue (``nack(requeue=True)``) returns a message unchanged: the attempt it is on
can then only come from the broker's own delivery count. RabbitMQ quorum queues keep one
(0-9-1 ``x-delivery-count``, AMQP 1.0 header ``delivery-count``), so does the memory broker;
RabbitMQ classic queues do not (0-9-1: no header on a redelivery; AMQP 1.0: the count stays 0
while ``first-acquirer`` is false). Which kind a queue is cannot be told from the protocol, so
each subscription keeps a ``QueueCounting`` that watches what its deliveries say:

- a redelivery without a count, or whose count did not go up, proves the queue does not
  count: from then on retries are republished copies carrying the attempt number;
- a count above 1 proves it does: requeues are bounded by the broker's count, shared by every
  replica consuming the queue;
- first deliveries tell nothing; until something is proven, a failure is requeued once, and
  the redelivery settles the question (it is attempt >= 2 either way: ``redelivered`` is a
  floor).

What a subscription is known to be before any delivery comes is decided in one place,
``declared_counting``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..message import Delivery

#: RabbitMQ 4 gives every quorum queue a delivery limit of 20 unless it is declared with one.
QUORUM_DEFAULT_DELIVERY_LIMIT = 20


class QueueCounting:
    """What one subscription's deliveries have shown about their queue's delivery count."""

    __slots__ = ("_zero_based", "counts")

    def __init__(self, counts: bool | None) -> None:
        self.counts = counts
        """True: the broker counts deliveries; False: it does not; None: not known yet."""
        # Until a first delivery shows the base, counts are taken as 1-based: where they are
        # 0-based, that reads a counted redelivery as uncounted, which only makes retries
        # republished copies (bounded), never endless requeues.
        self._zero_based = False

    def deliveries(self, delivery: Delivery) -> int:
        """This copy's delivery number (1-based, >= 2 on a redelivery), learning on the way."""
        raw = delivery.delivery_count
        if raw is not None and not delivery.redelivered:
            # A first delivery's count is its base: 0 where the protocol counts failed
            # earlier attempts (AMQP 1.0 header), 1 where it counts deliveries.
            self._zero_based = raw == 0
        number = None if raw is None else raw + 1 if self._zero_based else raw
        floor = 2 if delivery.redelivered else 1
        if delivery.redelivered and (number is None or number < 2):
            self.counts = False  # redelivered, not counted: this queue keeps no count
        elif number is not None and number >= 2 and self.counts is None:
            self.counts = True
        if self.counts is False or number is None:
            return floor
        return max(number, floor)


def declared_counting(
    protocol: str, subscription: object, queue: str | None, topology: Sequence[Any]
) -> bool | None:
    """Whether a subscription's queue counts deliveries, as far as is known before it runs.

    The single place for it: a subscription that knows its queue's type (the AMQP adapters'
    ``counts_deliveries``, once they have it) says so; the memory broker has one kind of
    queue, and it counts; a queue the connection declares as ``Queue(name,
    queue_type="quorum")`` counts; anything else is learnt from its deliveries.
    """
    known = getattr(subscription, "counts_deliveries", None)
    if isinstance(known, bool):
        return known
    if protocol == "memory":
        return True
    declared = declared_queue(queue, topology)
    if declared is not None and declared_type(declared) == "quorum":
        return True
    return None


def declared_queue(queue: str | None, topology: Sequence[Any]) -> Any:
    """The ``aiobus.amqp.Queue`` the connection declares under that name, if any."""
    if queue is None:
        return None
    for item in topology:
        if type(item).__name__ == "Queue" and getattr(item, "name", None) == queue:
            return item
    return None


def declared_type(queue: Any) -> str | None:
    queue_type = getattr(queue, "queue_type", None)
    if queue_type is None:
        queue_type = (getattr(queue, "arguments", None) or {}).get("x-queue-type")
    return str(queue_type) if queue_type is not None else None


def quorum_delivery_limit(queue: Any) -> int | None:
    """The delivery limit of a declared quorum queue (RabbitMQ 4's default where it sets
    none); None for other queues or where the limit is switched off (-1)."""
    if declared_type(queue) != "quorum":
        return None
    limit = (getattr(queue, "arguments", None) or {}).get(
        "x-delivery-limit", QUORUM_DEFAULT_DELIVERY_LIMIT
    )
    if not isinstance(limit, int) or limit < 0:
        return None
    return limit
