"""Where replies to this service's requests arrive, by mechanism.

``Capabilities.reply`` names the mechanism. ``"topic"`` works on every transport with
per-connection subscriptions: a private subscription on ``aiobus-reply-<random>`` (one topic
level / routing-key word, valid everywhere), and replies routed to waiting requests by
correlation id. An adapter offering a native mechanism (RabbitMQ direct reply-to, an AMQP 1.0
dynamic node, an MQTT 5 response topic on a private filter) adds a class here under the name
it puts in its capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from ..errors import NotSupported
from ..message import Delivery

if TYPE_CHECKING:
    from ..connection import Connection
    from ..subscription import Subscription

log = logging.getLogger("aiobus.service")


class ReplyChannel(Protocol):
    """Opened once per running service, on the first request."""

    address: str
    """What requests carry as ``reply_to``."""

    @property
    def alive(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def expect(self, correlation_id: str) -> asyncio.Future[Delivery]: ...

    def forget(self, correlation_id: str) -> None: ...


SubscribeFn = Callable[..., AbstractAsyncContextManager["Subscription"]]


class TopicReplyChannel:
    def __init__(
        self, subscribe: SubscribeFn, address: Callable[[str], str], prefetch: int = 100
    ) -> None:
        self._subscribe = subscribe
        self.address = address(f"aiobus-reply-{secrets.token_hex(8)}")
        self._prefetch = prefetch
        self._waiting: dict[str, asyncio.Future[Delivery]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        sub = await self._stack.enter_async_context(
            self._subscribe(self.address, prefetch=self._prefetch)
        )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(sub), name=f"aiobus replies {self.address}"
        )

    async def _read(self, sub: Subscription) -> None:
        try:
            async for delivery in sub:
                waiter = self._waiting.pop(delivery.correlation_id or "", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(delivery)
                else:
                    log.debug(
                        "aiobus: reply %r matches no waiting request (late or foreign)",
                        delivery.correlation_id,
                    )
                with contextlib.suppress(Exception):  # a stale ack: the reply is in hand
                    await delivery.ack()
        except Exception as exc:
            # The reply subscription is gone: every waiting request learns now.
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(exc)
            self._waiting.clear()
            raise

    @property
    def alive(self) -> bool:
        """False once the reply subscription has failed (a new channel is opened then)."""
        return self._reader is not None and not self._reader.done()

    def expect(self, correlation_id: str) -> asyncio.Future[Delivery]:
        waiter: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = waiter
        return waiter

    def forget(self, correlation_id: str) -> None:
        waiter = self._waiting.pop(correlation_id, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def close(self) -> None:
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        with contextlib.suppress(Exception):
            await self._stack.aclose()


MECHANISMS: dict[str, type[TopicReplyChannel]] = {"topic": TopicReplyChannel}


def reply_channel_for(
    bus: Connection, subscribe: SubscribeFn, address: Callable[[str], str]
) -> ReplyChannel:
    caps = bus.capabilities
    if not caps.correlation:
        raise NotSupported(
            f"{bus.protocol} here cannot carry a correlation id and reply address "
            "(MQTT 3.1.1); request/reply needs MQTT 5 (protocol=5), AMQP or memory"
        )
    mechanism = MECHANISMS.get(caps.reply)
    if mechanism is None:
        raise NotSupported(
            f"reply mechanism {caps.reply!r} of {bus.protocol} is not known to the service layer"
        )
    return mechanism(subscribe, address)
