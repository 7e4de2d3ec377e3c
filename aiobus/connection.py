"""The protocol-agnostic core: one supervisor task per connection owns the link's life.

It connects (with backoff, host failover and fresh credentials per attempt), restores topology
and subscriptions, runs the pump that moves messages from the outbox onto the link within the
window, notices a dead link at once, and on close leaves no task, socket or future behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from .auth import resolve_credentials
from .backoff import Backoff
from .connect_errors import as_connect_error
from .errors import (
    AiobusError,
    BufferFull,
    ConfigError,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    InvalidMessage,
    LinkDown,
    MessageTooLarge,
    NotSupported,
    PublishError,
    TransientConnectError,
)
from .events import Event, EventHub, EventStream, State
from .message import encode_body
from .publishing import Outbox, Outgoing, PublishFuture
from .subscription import Subscription
from .transports import adapter_for
from .transports.base import Link, LinkHooks, SubscriptionSpec
from .url import Endpoint, Settings

log = logging.getLogger("aiobus")

_OPEN_STATES = (State.CONNECTING, State.CONNECTED, State.RECONNECTING)


class Connection:
    """``async with aiobus.connect(url) as bus``: publish, subscribe, and watch the link."""

    def __init__(self, settings: Settings, link_cls: type[Link] | None = None) -> None:
        self.settings = settings
        self.options = settings.options
        self._link_cls = link_cls if link_cls is not None else adapter_for(settings.protocol)
        self.protocol = self._link_cls.protocol
        self.capabilities = self._link_cls.capabilities_for(settings)
        self._state = State.IDLE
        self._hub = EventHub()
        self._outbox: Outbox | None = None
        self._subs: list[Subscription] = []
        self._topology: list[Any] = list(getattr(settings.options, "topology", ()))
        self._link: Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._state_changed: asyncio.Future[None] | None = None
        self._generation = 0
        self._id_prefix = secrets.token_hex(8) + "-"
        self._id_counter = 0
        self._closing = False
        self._reattaching: set[asyncio.Task[None]] = set()
        #: Subscriptions re-attached on the current link after the broker ended their consumer.
        self._reattached: set[int] = set()

    def __repr__(self) -> str:
        return f"<Connection {self.settings.redacted_url()} {self._state.value}>"

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> Connection:
        if self._state is not State.IDLE:
            raise ConnectionClosed("a Connection can be entered once; make a new one")
        loop = asyncio.get_running_loop()
        self._outbox = Outbox(loop, self.protocol, self.options.max_buffered)
        self._first = loop.create_future()
        self._set_state(State.CONNECTING)
        self._supervisor = loop.create_task(
            self._supervise(), name=f"aiobus supervisor {self.settings.redacted_url()}"
        )
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self._shutdown(graceful=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(graceful=exc_type is not asyncio.CancelledError)

    async def close(self, graceful: bool = True) -> None:
        """Stop taking publishes, wait up to ``close_timeout`` for outstanding confirms, detach
        consumers, close the link. Idempotent."""
        if self._closing:
            return
        await self._shutdown(graceful)

    async def _shutdown(self, graceful: bool) -> None:
        self._closing = True
        if self._state is not State.IDLE:
            self._set_state(State.CLOSING)
        outbox = self._outbox
        close_timeout = self.options.close_timeout
        if graceful and outbox is not None and outbox.pending and self._live_link() is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(close_timeout):
                    await outbox.flush()
        if outbox is not None:
            outbox.fail_all(
                lambda m: ConnectionClosed(
                    f"connection closed before message {m.message_id} was settled"
                )
            )
        for task in list(self._reattaching):
            task.cancel()
        if self._reattaching:
            await asyncio.gather(*self._reattaching, return_exceptions=True)
        for sub in list(self._subs):
            await self._cancel_consumer(sub, connection_closing=True)
            sub._close(connection_closed=True)
        self._subs.clear()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if self._first is not None and not self._first.done():
            self._first.cancel()
        self._set_state(State.CLOSED)
        self._hub.close()

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is State.CONNECTED

    def events(self) -> EventStream:
        """State changes, failed attempts and subscription failures, from now until closed."""
        return self._hub.listen()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the link is up; ``TimeoutError`` after ``timeout``, ``ConnectionClosed`` if it
        is closed meanwhile."""
        async with asyncio.timeout(timeout):
            while self._state is not State.CONNECTED or self._live_link() is None:
                if self._state in (State.CLOSING, State.CLOSED):
                    raise ConnectionClosed("the connection is closed")
                if self._state_changed is None or self._state_changed.done():
                    self._state_changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._state_changed)

    def _set_state(self, state: State, *, reason: str = "", endpoint: str = "") -> None:
        if state is self._state:
            return
        self._state = state
        log.info(
            "aiobus %s: %s%s",
            self.settings.redacted_url(),
            state.value,
            f" ({reason})" if reason else "",
        )
        self._emit(Event("state", state, reason=reason, endpoint=endpoint))
        waiter = self._state_changed
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _emit(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):
            event = _stamp(event, asyncio.get_running_loop().time())
        self._hub.emit(event)

    @property
    def driver(self) -> Any:
        """The driver's own connection object for the current link, or None during an outage.

        For what aiobus does not wrap; anything done through it is outside aiobus's
        guarantees (it is replaced on every reconnect).
        """
        link = self._live_link()
        return link.raw if link is not None else None

    def _live_link(self) -> Link | None:
        link = self._link
        return link if link is not None and link.hooks.alive else None

    # -- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        first = self._first
        assert first is not None
        backoff = Backoff(opts.backoff_initial, opts.backoff_factor, opts.backoff_max)
        endpoints: Sequence[Endpoint | None] = self.settings.endpoints or (None,)
        first_deadline = loop.time() + opts.connect_timeout
        index = 0
        failures = 0
        link: Link | None = None
        try:
            while True:
                endpoint = endpoints[index % len(endpoints)]
                where = str(endpoint) if endpoint is not None else self.settings.path
                try:
                    link = await self._open_link(
                        endpoint, first_deadline if not first.done() else None
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    permanent, error = as_connect_error(exc)
                    failures += 1
                    index += 1
                    now = loop.time()
                    if not first.done():
                        if permanent:
                            first.set_exception(error)
                            return
                        if now >= first_deadline:
                            timeout_error = ConnectTimeout(
                                f"could not connect to {self.settings.redacted_url()} within "
                                f"connect_timeout={opts.connect_timeout}s: {error}"
                            )
                            timeout_error.__cause__ = error
                            first.set_exception(timeout_error)
                            return
                    if opts.max_attempts is not None and failures >= opts.max_attempts:
                        self._give_up(error, failures)
                        return
                    delay = backoff.next_delay()
                    if not first.done():
                        delay = min(delay, max(0.0, first_deadline - now))
                    log.warning(
                        "aiobus %s: attempt %d to %s failed: %s; next in %.3fs",
                        self.settings.redacted_url(),
                        failures,
                        where,
                        error,
                        delay,
                    )
                    self._emit(
                        Event(
                            "attempt_failed",
                            self._state,
                            reason=str(error),
                            error=error,
                            attempt=failures,
                            delay=delay,
                            endpoint=where,
                        )
                    )
                    await asyncio.sleep(delay)
                    continue

                failures = 0
                up_since = loop.time()
                self._link = link
                self._reattached.clear()
                pump = loop.create_task(self._pump(link), name="aiobus pump")
                self._set_state(State.CONNECTED, endpoint=where)
                if not first.done():
                    first.set_result(None)
                try:
                    lost = await link.hooks.wait_lost()
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                # The link died: everything that depended on it learns now, not at a deadline.
                self._link_lost()
                await self._discard(link)
                link = None
                if loop.time() - up_since >= opts.stable_after:
                    backoff.reset()
                index += 1
                delay = backoff.next_delay()
                reason = describe(lost)
                log.warning(
                    "aiobus %s: link lost (%s); reconnecting in %.3fs",
                    self.settings.redacted_url(),
                    reason,
                    delay,
                )
                self._set_state(State.RECONNECTING, reason=reason, endpoint=where)
                self._emit(
                    Event(
                        "link_lost",
                        State.RECONNECTING,
                        reason=reason,
                        error=lost,
                        delay=delay,
                        endpoint=where,
                    )
                )
                await asyncio.sleep(delay)
        finally:
            if link is not None:
                link.hooks.lost(ConnectionClosed("closed"))
                self._link_lost()
                await self._discard(link)
            self._link = None

    async def _open_link(self, endpoint: Endpoint | None, first_deadline: float | None) -> Link:
        opts = self.options
        loop = asyncio.get_running_loop()
        budget = opts.connect_timeout
        if first_deadline is not None:
            budget = max(0.001, min(budget, first_deadline - loop.time()))
        self._generation += 1
        assert self._outbox is not None
        hooks = LinkHooks(self._outbox, self._generation, loop, self._consumer_lost)
        link: Link | None = None
        try:
            async with asyncio.timeout(budget):
                credentials = await resolve_credentials(opts.credentials, self.settings.credentials)
                link = self._link_cls(self.settings, endpoint, credentials, hooks)
                await link.open()
                await self._restore(link)
        except BaseException as exc:
            hooks.lost(exc)
            if link is not None:
                await self._discard(link)
            raise
        if not hooks.alive:
            raise TransientConnectError("the link died while it was being set up")
        return link

    async def _restore(self, link: Link) -> None:
        """Topology first, then every subscription; a subscription that cannot come back is
        failed loudly (iteration raises, an event says why) instead of staying silently dead."""
        if self._topology:
            await link.declare(self._topology)
        i = 0
        while i < len(self._subs):  # subscriptions added meanwhile are picked up too
            sub = self._subs[i]
            i += 1
            if sub.error is not None:
                continue
            try:
                sub.consumer = await link.attach(sub.spec, sub)
            except AiobusError as exc:
                if isinstance(exc, (ConnectError, LinkDown)) or not link.hooks.alive:
                    raise
                self._subscription_failed(sub, exc)

    async def _pump(self, link: Link) -> None:
        outbox = self._outbox
        assert outbox is not None
        limit = self.options.max_in_flight
        hooks = link.hooks
        encodes = link.encodes
        try:
            while True:
                window = limit if link.max_in_flight is None else min(limit, link.max_in_flight)
                room = window - len(outbox.in_flight)
                batch = outbox.take(room) if room > 0 else None
                if not batch:
                    await outbox.wait_for_work()
                    continue
                if encodes:
                    batch = encode_each(link, outbox, batch)
                    if not batch:
                        continue
                await link.publish(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The wire channel: a failed write means the link is broken, and the supervisor
            # takes it from here. No message's content can get here (see ``encode_each``).
            hooks.lost(exc)

    def _link_lost(self) -> None:
        assert self._outbox is not None
        self._outbox.link_lost()
        for sub in self._subs:
            sub._link_lost()

    async def _discard(self, link: Link) -> None:
        try:
            async with asyncio.timeout(self.options.close_timeout):
                await link.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the link is gone either way; say why it did not close well
            log.debug("aiobus: closing a link failed: %r", exc)

    def _give_up(self, error: BaseException, attempts: int) -> None:
        reason = f"gave up after {attempts} failed attempts (max_attempts): {error}"
        log.error("aiobus %s: %s", self.settings.redacted_url(), reason)
        self._closing = True
        assert self._outbox is not None
        self._outbox.fail_all(lambda m: ConnectionClosed(reason))
        for sub in self._subs:
            sub._fail(ConnectionClosed(reason))
        self._set_state(State.CLOSED, reason=reason)
        first = self._first
        if first is not None and not first.done():
            # Still inside ``async with``: it must raise, not wait forever.
            first.set_exception(error)

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        body: object,
        *,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        ttl: float | None = None,
        priority: int | None = None,
        qos: int | None = None,
        retain: bool = False,
        mandatory: bool | None = None,
        exchange: str | None = None,
        persistent: bool | None = None,
        confirm: bool = True,
        timeout: float | None = None,
        outage: str | None = None,
    ) -> PublishFuture:
        """Queue a message and return at once a future that resolves on the broker's confirm.

        Raises at the call (nothing queued): TypeError (body), InvalidTopic, ConfigError,
        MessageTooLarge, BufferFull, ConnectionClosed. Through the future: Nacked,
        Unroutable, PublishTimeout, LinkLost, ConnectionClosed.
        """
        if self._state not in _OPEN_STATES or self._closing:
            raise ConnectionClosed(f"connection {self.settings.redacted_url()} is not open")
        data, implied_type = encode_body(body)
        outbox = self._outbox
        assert outbox is not None
        opts = self.options
        if timeout is None:
            timeout = opts.timeout
        elif not isinstance(timeout, (int, float)) or not timeout > 0 or math.isinf(timeout):
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if outage is None:
            outage = opts.outage
        elif outage not in ("retry", "fail"):
            raise ConfigError(f"outage must be 'retry' or 'fail', got {outage!r}")
        if headers is not None and not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl < 0):
            raise ConfigError(f"ttl must be a non-negative number of seconds, got {ttl!r}")
        if message_id is None:
            self._id_counter += 1
            message_id = self._id_prefix + str(self._id_counter)
        msg = Outgoing(
            topic,
            data,
            headers=headers,
            content_type=content_type,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            ttl=ttl,
            priority=priority,
            qos=qos,
            retain=retain,
            mandatory=mandatory,
            exchange=exchange,
            persistent=persistent,
            confirm=confirm,
            outage=outage,
        )
        self._link_cls.check_publish(self.settings, msg)
        size_limit = outbox.size_limit
        if size_limit is not None:
            size = self._link_cls.encoded_size(self.settings, msg)
            if size > size_limit:
                raise MessageTooLarge(size, size_limit)
        if content_type is None:
            msg.content_type = implied_type
        if outbox.pending >= outbox.max_buffered:
            raise BufferFull(
                f"the outbox already holds max_buffered={outbox.max_buffered} messages"
            )
        fut = outbox.add(msg, timeout)
        if outage == "fail" and self._live_link() is None:
            # No link to wait for: this message fails now (the others were failed when the
            # link went; scanning the whole queue per publish would be quadratic).
            outbox.fail_unsent(msg)
        return fut

    async def flush(self, timeout: float | None = None) -> None:
        """Until every message published so far is settled (confirmed or failed)."""
        if self._outbox is None:
            return
        async with asyncio.timeout(timeout):
            await self._outbox.flush()

    @property
    def pending(self) -> int:
        """Messages published and not yet settled."""
        return self._outbox.pending if self._outbox is not None else 0

    # -- topology ----------------------------------------------------------------------------

    async def declare(self, *items: Any) -> None:
        """Declare topology now and again after every reconnect."""
        if not self.capabilities.topology:
            raise NotSupported(f"{self.protocol} has no declarative topology")
        link = self._live_link()
        if link is not None:
            await link.declare(items)
        self._topology.extend(items)

    # -- receiving ---------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        durable: bool | None = None,
        exclusive: bool | None = None,
        prefetch: int | None = None,
        qos: int | None = None,
        no_ack: bool = False,
        exchange: str | None = None,
        **extra: Any,
    ) -> Subscription:
        """``async with bus.subscribe(pattern) as sub: async for msg in sub: ...``"""
        if prefetch is None:
            prefetch = self.options.prefetch
        elif not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise ConfigError(f"prefetch must be a positive int, got {prefetch!r}")
        spec = SubscriptionSpec(
            pattern=pattern,
            queue=queue,
            durable=durable,
            exclusive=exclusive,
            prefetch=prefetch,
            qos=qos,
            no_ack=no_ack,
            exchange=exchange,
            extra=extra,
        )
        self._link_cls.check_subscribe(self.settings, spec)
        return Subscription(self, spec)

    async def _add_subscription(self, sub: Subscription) -> None:
        if self._state not in _OPEN_STATES or self._closing:
            raise ConnectionClosed(f"connection {self.settings.redacted_url()} is not open")
        self._subs.append(sub)
        link = self._live_link()
        if link is None or self._state is not State.CONNECTED:
            return  # the next link's restore attaches it
        try:
            consumer = await link.attach(sub.spec, sub)
        except Exception:
            if link.hooks.alive:
                self._subs.remove(sub)
                raise
            return  # the link died under us: the reconnect attaches it
        if link is self._link and link.hooks.alive and sub.consumer is None:
            sub.consumer = consumer
        else:
            with contextlib.suppress(Exception):
                await consumer.cancel()

    def _consumer_lost(self, sink: Any, error: BaseException) -> None:
        sub = sink if isinstance(sink, Subscription) else None
        if sub is None or sub not in self._subs or self._closing:
            return
        sub.consumer = None
        if id(sub) in self._reattached:
            # Ended again on the same link: re-attaching would only loop.
            self._subscription_failed(sub, error)
            return
        self._reattached.add(id(sub))
        task = asyncio.get_running_loop().create_task(
            self._reattach(sub, error), name=f"aiobus re-attach {sub.pattern}"
        )
        self._reattaching.add(task)
        task.add_done_callback(self._reattaching.discard)

    async def _reattach(self, sub: Subscription, error: BaseException) -> None:
        link = self._live_link()
        if link is None:
            return  # the next link's restore attaches it
        log.warning(
            "aiobus: the broker ended the consumer of %r (%s); re-attaching",
            sub.pattern,
            describe(error),
        )
        try:
            consumer = await link.attach(sub.spec, sub)
        except Exception as exc:
            if link.hooks.alive:
                self._subscription_failed(sub, exc)
            return
        if link is self._link and link.hooks.alive and sub in self._subs:
            sub.consumer = consumer
            self._emit(
                Event("subscription_reattached", self._state, reason=describe(error), error=error)
            )
        else:
            with contextlib.suppress(Exception):
                await consumer.cancel()

    def _subscription_failed(self, sub: Subscription, error: BaseException) -> None:
        sub._fail(error)
        log.error("aiobus: subscription %r is not receiving: %s", sub.pattern, describe(error))
        self._emit(Event("subscription_failed", self._state, reason=describe(error), error=error))

    async def _remove_subscription(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        await self._cancel_consumer(sub)
        sub._close(connection_closed=False)

    async def _cancel_consumer(
        self, sub: Subscription, *, connection_closing: bool = False
    ) -> None:
        consumer = sub.consumer
        if consumer is None or not consumer.alive:
            return
        try:
            async with asyncio.timeout(self.options.close_timeout):
                await consumer.cancel(connection_closing=connection_closing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("aiobus: cancelling consumer for %r failed: %r", sub.pattern, exc)


def encode_each(link: Link, outbox: Outbox, batch: list[Outgoing]) -> list[Outgoing]:
    """The per-message channel: encode each message for this link; one that cannot be
    encoded fails alone (and leaves the window at once) instead of reaching the wire."""
    encode = link.encode
    ready: list[Outgoing] = []
    for msg in batch:
        try:
            encode(msg)
        except LinkDown:
            raise  # the one wire error an encoder may name (its link is already gone)
        except Exception as exc:
            outbox.fail(msg, as_message_error(msg, exc, link.protocol))
        else:
            ready.append(msg)
    return ready


def as_message_error(msg: Outgoing, exc: Exception, protocol: str) -> PublishError:
    """An aiobus publish error keeps its type; a driver's encoding error becomes an
    ``InvalidMessage`` that names the message and keeps the driver's error as the cause."""
    if isinstance(exc, PublishError):
        return exc
    error = InvalidMessage(
        f"message {msg.message_id} to {msg.topic!r} cannot be sent over {protocol}: "
        f"{describe(exc)}"
    )
    error.__cause__ = exc
    return error


def describe(exc: BaseException) -> str:
    """An error for a log line or an event: its type always, its text when it has one."""
    text = str(exc)
    if isinstance(exc, AiobusError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _stamp(event: Event, now: float) -> Event:
    from dataclasses import replace

    return replace(event, time=now)
