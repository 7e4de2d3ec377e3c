"""Middleware around publish and handle, for logging, metrics and tracing.

Order: the first middleware given is the outermost. For ``[a, b]`` a handle runs
``a`` before, ``b`` before, the handler, ``b`` after, ``a`` after; a publish runs the same way
round its broker confirm. Every publish the service makes goes through the chain (``kind``
says which: publish, request, reply, retry, dead_letter), so a tracing middleware can stamp a
header on all of them. Settling (ack, retry, dead letter) happens after the handle chain has
returned or raised, so a middleware sees the handler's own outcome, and its exceptions count
as the handler's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..message import Delivery
from ..publishing import Confirm

if TYPE_CHECKING:
    from .core import Service

PublishKind = Literal["publish", "request", "reply", "retry", "dead_letter"]


@dataclass(slots=True)
class Outbound:
    """A publish on its way through the chain; middleware may change any field."""

    topic: str
    body: bytes
    kind: PublishKind
    headers: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """The other ``Connection.publish`` keywords (content_type, correlation_id, reply_to...)."""


@dataclass(slots=True)
class HandleContext:
    """One handling of one delivery."""

    service: Service
    subscriber: str
    delivery: Delivery
    attempt: int
    """1 on the first delivery; counted across requeues and republished retries."""
    meta: dict[str, str]
    """The ``x-aiobus-*`` metadata the delivery carried (attempt, original topic, first
    error), read only on the service's own retry route; empty for any other delivery, whose
    ``x-aiobus-*`` headers are somebody else's and have no effect."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free for middleware (a span, a start time)."""


PublishNext = Callable[[Outbound], Awaitable[Confirm]]
HandleNext = Callable[[HandleContext], Awaitable[Any]]


class Middleware:
    """Override either method; call ``call_next`` exactly once to go on (or not, to stop)."""

    async def on_publish(self, call: Outbound, call_next: PublishNext) -> Confirm:
        return await call_next(call)

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> Any:
        return await call_next(ctx)


def publish_chain(middleware: Sequence[Middleware], last: PublishNext) -> PublishNext:
    chain = last
    for mw in reversed(middleware):
        chain = _bind_publish(mw, chain)
    return chain


def handle_chain(middleware: Sequence[Middleware], last: HandleNext) -> HandleNext:
    chain = last
    for mw in reversed(middleware):
        chain = _bind_handle(mw, chain)
    return chain


def _bind_publish(mw: Middleware, call_next: PublishNext) -> PublishNext:
    async def step(call: Outbound) -> Confirm:
        return await mw.on_publish(call, call_next)

    return step


def _bind_handle(mw: Middleware, call_next: HandleNext) -> HandleNext:
    async def step(ctx: HandleContext) -> Any:
        return await mw.on_handle(ctx, call_next)

    return step
