"""Ack modes and error policies, and the one function that decides a failed message's fate.

The order, for a message failing its attempt ``n`` under a policy allowing ``max_attempts``:

1. an error listed in ``give_up_on`` (by default ``DecodeError``: retrying cannot fix a bad
   body) is dead-lettered at once;
2. otherwise, while ``n < max_attempts`` it is retried (requeued or republished), and never
   dead-lettered;
3. the failure of attempt ``max_attempts`` dead-letters it, exactly once, with the reason.

A retry or dead-letter copy is confirmed by the broker before the original is acked, so a
message is never both retried and dead-lettered, and never neither (Watermill's retry vs
poison-queue ordering bugs). See docs/service.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .errors import DecodeError

AckMode = Literal["on_success", "first", "manual"]
ACK_MODES: tuple[str, ...] = ("on_success", "first", "manual")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: publish a copy to ``topic`` with the reason in ``x-aiobus-*`` headers (or the
    envelope where the protocol has no headers); with no topic, the service's
    ``dead_letter_topic``; with neither, the broker's reject (dead-letter exchange / AMQP 1.0
    rejected outcome) where the protocol has one, and a ``ConfigError`` at registration where it
    has not (MQTT)."""

    topic: str | None = None

    def __post_init__(self) -> None:
        if self.topic is not None and (not isinstance(self.topic, str) or not self.topic):
            raise ConfigError(f"DeadLetter topic must be a non-empty str, got {self.topic!r}")


def _check_attempts(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"max_attempts must be an int >= 1, got {value!r}")


def _check_give_up(value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ConfigError(f"give_up_on must be a tuple of exception types, got {value!r}")


@dataclass(frozen=True, slots=True)
class Requeue:
    """Retry at once. Where the queue counts deliveries and the protocol has nack (RabbitMQ
    quorum queues over 0-9-1 or AMQP 1.0, memory) the message goes back to the broker and its
    delivery count, shared by every replica, bounds the attempts; where it does not (RabbitMQ
    classic queues, MQTT) a copy carrying the attempt number is republished to the
    subscriber's private retry topic and the original acked once the copy is confirmed. Which
    kind a queue is, each subscription learns from its deliveries (``counting.py``)."""

    max_attempts: int = 3
    dead_letter: DeadLetter = field(default_factory=DeadLetter)
    give_up_on: tuple[type[BaseException], ...] = (DecodeError,)

    def __post_init__(self) -> None:
        _check_attempts(self.max_attempts)
        _check_give_up(self.give_up_on)


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry after a delay without holding the consumer: the original is acked and a copy is
    republished to the subscriber's private retry topic when the delay is over (a timer owned
    by the service; on graceful shutdown pending copies are published at once). Delay before
    retry ``n`` (1-based) is ``min(max_delay, delay * factor ** (n - 1))``."""

    max_attempts: int = 3
    delay: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    dead_letter: DeadLetter = field(default_factory=DeadLetter)
    give_up_on: tuple[type[BaseException], ...] = (DecodeError,)

    def __post_init__(self) -> None:
        _check_attempts(self.max_attempts)
        _check_give_up(self.give_up_on)
        for name in ("delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isinf(value):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.factor, (int, float)) or self.factor < 1:
            raise ConfigError(f"factor must be >= 1, got {self.factor!r}")

    def delay_for(self, retry: int) -> float:
        return float(min(self.max_delay, self.delay * self.factor ** max(0, retry - 1)))


ErrorPolicy = Requeue | Retry | DeadLetter


def check_policy(policy: object) -> ErrorPolicy:
    if not isinstance(policy, (Requeue, Retry, DeadLetter)):
        raise ConfigError(
            f"on_error must be Requeue(...), Retry(...) or DeadLetter(...), got {policy!r}"
        )
    return policy


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["requeue", "republish", "dead_letter"]
    reason: str
    delay: float = 0.0


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def decide(
    policy: ErrorPolicy, attempt: int, error: BaseException, *, broker_requeue: bool
) -> Decision:
    """What to do with a message whose attempt number ``attempt`` (1-based) failed with
    ``error``. ``broker_requeue``: the broker counts redeliveries of this one and can nack."""
    if isinstance(policy, DeadLetter):
        return Decision("dead_letter", f"failed ({describe(error)})")
    if isinstance(error, policy.give_up_on):
        return Decision("dead_letter", f"not retryable ({describe(error)})")
    if attempt >= policy.max_attempts:
        return Decision("dead_letter", f"gave up after {attempt} attempt(s) ({describe(error)})")
    if isinstance(policy, Retry):
        return Decision("republish", f"retry {attempt}", policy.delay_for(attempt))
    return Decision("requeue" if broker_requeue else "republish", f"retry {attempt}")
