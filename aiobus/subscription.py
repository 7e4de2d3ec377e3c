"""Subscription: an async context manager and async iterator of deliveries that outlives links.

The buffer is bounded by prefetch (credit, receive maximum): the broker keeps the surplus, so
while the subscription is open nothing it considers delivered is dropped here. Several tasks
may iterate one subscription at once (a worker pool): each delivery goes to exactly one of
them, and all of them end when the subscription leaves or the connection closes (see
``aiobus.buffer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .attachment import Attachment, SubscriptionState
from .buffer import Mailbox
from .errors import ConnectionClosed, SubscriptionNotEntered

if TYPE_CHECKING:
    from .connection import Connection
    from .message import Delivery
    from .transports.base import Consumer, SubscriptionSpec


def _returns_on_loss(delivery: Delivery) -> bool:
    return delivery.returns_on_loss


class Subscription:
    def __init__(self, connection: Connection, spec: SubscriptionSpec) -> None:
        self._connection = connection
        self.spec = spec
        #: The buffer's bound (prefetch): the consumer keeps ``room`` at or above 0.
        self.capacity = spec.prefetch
        self._mailbox: Mailbox[Delivery] = Mailbox(spec.prefetch)
        #: The consumer's side (``DeliverySink.push``): buffer a delivery; False once the
        #: subscription has ended. An unsettled delivery refused then goes back to the broker
        #: with the cancelled consumer; a pre-settled one (MQTT QoS 0, ``no_ack``) is gone, as
        #: it would be had the process stopped. The mailbox's own method: one call per
        #: delivery, not two.
        self.push: Callable[[Delivery], bool] = self._mailbox.push
        self._entered = False
        #: Deliveries dropped because the buffer was full and the broker does not keep them
        #: (MQTT QoS 0; every other kind waits with the broker or unacknowledged instead).
        #: Each burst is also reported in ``events()`` (``deliveries_dropped``).
        self.dropped = 0
        #: The core's record of this subscription on the current link (``aiobus.attachment``).
        self._attachment = Attachment()

    @property
    def granted_qos(self) -> int | None:
        """The QoS the broker granted this subscription on the current link (MQTT SUBACK;
        lower than asked only with ``accept_downgrade=True``); None while it is not attached
        or where the protocol grants none."""
        consumer = self._attachment.consumer
        if consumer is None:
            return None
        qos = consumer.granted.get("qos")
        return qos if isinstance(qos, int) else None

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    @property
    def consumer(self) -> Consumer | None:
        """Its consumer on the current link, while attached (kept by ``_attachment``)."""
        return self._attachment.consumer

    @property
    def live(self) -> bool:
        """True while attached on a live link; False during an outage or after a failure."""
        return self.consumer is not None and self.consumer.alive

    @property
    def state(self) -> SubscriptionState:
        """Where this subscription stands: new, detached, attaching, attached, closing,
        failed or closed (see ``aiobus.attachment``)."""
        return self._attachment.state

    @property
    def resume(self) -> Any:
        """The adapter's resume state for this subscription (kept across links)."""
        return self._attachment.resume

    @resume.setter
    def resume(self, value: Any) -> None:
        self._attachment.resume = value

    @property
    def error(self) -> BaseException | None:
        """Why re-attaching failed, if it did; iteration raises it too."""
        return self._mailbox.error

    # -- the application's side -----------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        await self._connection._add_subscription(self)
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Left because its task is being cancelled: the consumer's cancel is the
        # connection's to finish, so the cancellation is not held up by the broker.
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        await self._connection._remove_subscription(self, cancelled=cancelled)

    async def unsubscribe(self) -> None:
        """Leave now, and drop the broker's side as well: on MQTT the session's
        subscription is removed (UNSUBSCRIBE), which leaving ``async with`` does not do on a
        persistent session. Nothing is acknowledged for the application; the ``async with``
        exit after it does nothing more."""
        await self._connection._remove_subscription(self, unsubscribe=True)

    def __aiter__(self) -> Subscription:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Delivery]:
        # Not ``async def``: the mailbox's own coroutine is awaited directly (one frame less
        # per delivery), and a subscription never entered fails here, at once.
        if not self._entered:
            raise self._not_entered()
        return self._mailbox.get()

    async def get(self, timeout: float | None = None) -> Delivery:
        """The next delivery, waiting at most ``timeout`` seconds (``TimeoutError``)."""
        if not self._entered:
            raise self._not_entered()
        if timeout is None:
            return await self._mailbox.get()
        async with asyncio.timeout(timeout):
            return await self._mailbox.get()

    def _not_entered(self) -> SubscriptionNotEntered:
        return SubscriptionNotEntered(
            f"subscription {self.spec.pattern!r} was never entered, so it receives nothing: "
            "enter it first: `async with bus.subscribe(...) as sub: async for msg in sub: ...`"
        )

    # -- the consumer's side (DeliverySink) -----------------------------------------------

    @property
    def room(self) -> int:
        return self._mailbox.room

    def pause(self) -> None:
        """Take nothing more: ``room`` reads 0 from now on, so the consumer leaves further
        messages with the broker (or unacknowledged in the link) while what is already
        buffered can still be read. For a graceful drain where the protocol cannot give a
        delivered message back (MQTT): stop the inflow, handle what is in hand, then leave."""
        self._mailbox.pause()

    @property
    def paused(self) -> bool:
        return self._mailbox.paused

    @property
    def buffered(self) -> int:
        """Deliveries waiting in the local buffer (``capacity - room`` only while not paused)."""
        return self._mailbox.buffered

    def on_space(self, callback: Callable[[], None] | None) -> None:
        """Called after the application takes a delivery: a consumer paused on a full buffer
        (no-ack, MQTT) resumes reading from here."""
        self._mailbox.on_space(callback)

    # -- the core's side ------------------------------------------------------------------

    def _link_lost(self) -> None:
        """Drop buffered deliveries the broker will send again; keep those it will not."""
        self._mailbox.on_space(None)
        self._mailbox.drop_if(_returns_on_loss)

    def _fail(self, error: BaseException) -> None:
        """Not receiving any more: readers are handed what is buffered, then raise ``error``."""
        self._mailbox.fail(error)

    def _close(self, connection_closed: bool) -> None:
        """Left (or the connection closed): the buffer is dropped (its unsettled deliveries
        go back to the broker with the consumer; pre-settled ones are gone) and every reader
        ends, with ``StopAsyncIteration``, or ``ConnectionClosed`` when the connection
        closed."""
        mailbox = self._mailbox
        mailbox.on_space(None)
        mailbox.clear()
        if connection_closed:
            mailbox.fail(ConnectionClosed("the connection was closed"))  # the first error wins
        mailbox.close()

    def __repr__(self) -> str:
        if self.live:
            state = "live"
        elif self._mailbox.ended:
            state = "closed" if self._mailbox.error is None else "failed"
        elif not self._entered:
            state = "not entered"
        else:
            state = "detached"
        return f"<Subscription {self.spec.pattern!r} {state} buffered={self._mailbox.buffered}>"
