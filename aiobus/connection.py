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
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from .attachment import SubscriptionState
from .auth import resolve_credentials
from .backoff import Backoff
from .connect_errors import as_connect_error, cut_short
from .errors import (
    AiobusError,
    BufferFull,
    ConfigError,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    LinkDown,
    MessageTooLarge,
    NotSupported,
    TransientConnectError,
    describe,
    unsendable,
)
from .events import Event, EventHub, EventStream, State
from .lifecycle import OPEN_STATES, Deadline, Trigger, next_state
from .message import Delivery, encode_body
from .publishing import Outbox, Outgoing, PublishFuture
from .subscription import Subscription
from .tls import warn_if_unverified
from .transports import adapter_for
from .transports.base import CancelReason, Consumer, Link, LinkHooks, SubscriptionSpec
from .url import Endpoint, Settings

log = logging.getLogger("aiobus")

#: How long an aborted link's own close may take to notice its socket is gone.
ABORT_GRACE = 0.05


class Connection:
    """``async with aiobus.connect(url) as bus``: publish, subscribe, and watch the link."""

    def __init__(self, settings: Settings, link_cls: type[Link] | None = None) -> None:
        self.settings = settings
        self.options = settings.options
        self._link_cls = link_cls if link_cls is not None else adapter_for(settings.protocol)
        self.protocol = self._link_cls.protocol
        self.capabilities = self._link_cls.capabilities_for(settings)
        #: The adapter's state for this connection, shared by its links (MQTT: the session).
        self._adapter_state: Any = self._link_cls.new_connection_state(settings)
        self._state = State.IDLE
        self._hub = EventHub()
        self._outbox: Outbox | None = None
        #: Entered subscriptions that have not closed, in the order they were entered.
        self._subs: list[Subscription] = []
        self._topology: list[Any] = list(getattr(settings.options, "topology", ()))
        self._link: Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        #: ``close(end_session=True)``: the link's polite close ends the broker's session.
        self._end_session = False
        self._deadline: Deadline | None = None
        #: What every waiter is told once the connection has ended (closed or gave up).
        self._end_error: BaseException = ConnectionClosed("the connection was closed")
        self._first: asyncio.Future[None] | None = None
        self._state_changed: asyncio.Future[None] | None = None
        self._generation = 0
        self._id_prefix = secrets.token_hex(8) + "-"
        self._id_counter = 0
        #: Tasks the connection owns besides the supervisor (re-attaches, consumer cancels
        #: handed over by a cancelled leave): ended by the teardown.
        self._background: set[asyncio.Task[None]] = set()
        #: Subscriptions re-attached on the current link after the broker ended their consumer.
        self._reattached: set[int] = set()
        self.last_error: BaseException | None = None
        """The last failed attempt's or lost link's error (None until one happens): for
        readiness probes and logs."""
        self.connected_at: datetime | None = None
        """When the current link came up (UTC), or None while there is none."""
        self.attempts = 0
        """Failed connect attempts in a row since the link was last up."""

    def __repr__(self) -> str:
        return f"<Connection {self.settings.redacted_url()} {self._state.value}>"

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> Connection:
        if self._state is not State.IDLE:
            raise ConnectionClosed("a Connection can be entered once; make a new one")
        warn_if_unverified(self.settings)  # once per connection, not per reconnect
        loop = asyncio.get_running_loop()
        self._outbox = Outbox(loop, self.protocol, self.options.max_buffered)
        self._first = loop.create_future()
        self._fire(Trigger.ENTER)
        self._supervisor = loop.create_task(
            self._supervise(), name=f"aiobus supervisor {self.settings.redacted_url()}"
        )
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.close(graceful=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(graceful=exc_type is not asyncio.CancelledError)

    async def close(self, graceful: bool = True, *, end_session: bool = False) -> None:
        """Stop taking publishes, wait for outstanding confirms, detach consumers, close the
        link: all within one ``close_timeout``. Idempotent: a second call waits for the first.

        ``end_session``: also end what the broker keeps for this client beyond the
        connection (an MQTT persistent session: its subscriptions and the messages queued or
        unacked in it) instead of keeping it for the next connection; it needs a live link.

        Safe under cancellation: if the caller is cancelled (an outer timeout, a failing
        TaskGroup sibling), the close turns abortive (no more waiting for the broker) and
        still finishes, leaving no task or socket, before the cancellation goes on.
        """
        if self._state is State.IDLE:
            self._fire(Trigger.CLOSE)
            self._fire(Trigger.TORN_DOWN)
            return
        if end_session:
            self._end_session = True  # also asked by a second call while the first runs
        closer = self._closer
        if closer is None:
            closer = self._closer = asyncio.get_running_loop().create_task(
                self._close(graceful), name=f"aiobus close {self.settings.redacted_url()}"
            )
        try:
            await asyncio.shield(closer)
        except asyncio.CancelledError:
            if not closer.done():
                self._abort_close()
                await finish_uncancelled(closer)
            raise

    def _abort_close(self) -> None:
        if self._deadline is not None:
            self._deadline.abort()

    async def _close(self, graceful: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline = Deadline(loop, loop.time() + self.options.close_timeout)
        if self._state is not State.CLOSED:
            self._fire(Trigger.CLOSE)
        if graceful:
            await self._drain(deadline)
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.cancel()  # its ``finally`` tears everything down, within the deadline
            await asyncio.gather(supervisor, return_exceptions=True)

    async def _drain(self, deadline: Deadline) -> None:
        """The polite part of a close, within the deadline: outstanding confirms, then every
        consumer's cancel at once (each would otherwise wait its own timeout in turn)."""
        outbox = self._outbox
        if outbox is not None and outbox.pending and self._live_link() is not None:
            await deadline.run(outbox.flush())
        consumers = [sub for sub in self._subs if sub._attachment.consumer is not None]
        cancels = [self._cancel_consumer(s, reason="closing") for s in consumers]
        if (cancels or self._background) and self._live_link() is not None:
            # Also the cancels of subscriptions that left before the close.
            await deadline.run(asyncio.gather(*cancels, *self._background, return_exceptions=True))
        else:
            for cancel in cancels:
                cancel.close()

    async def _teardown(self) -> None:
        """The end of every connection, run once in the supervisor's ``finally`` (after a
        close, a give-up or a failed first connect): nothing the connection made is left."""
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # The outbox first: what is unsettled now fails because the connection ended, not
        # as if the link had been lost (which would re-queue it or say LinkLost).
        end = self._end_error
        assert self._outbox is not None
        self._outbox.fail_all(lambda m: copy_error(end))
        link, self._link = self._link, None
        if link is not None:
            alive = link.hooks.alive  # a link lost a moment ago gets no polite close
            link.hooks.lost(ConnectionClosed("closed"))
            self._link_lost()
            await self._discard(link, polite=alive)
        for sub in self._subs:
            self._end_subscription(sub, end)
        self._subs.clear()
        first = self._first
        if first is not None and not first.done():
            first.set_exception(copy_error(end))
        if first is not None and not first.cancelled():
            first.exception()  # retrieved: ``__aenter__`` may have been cancelled meanwhile
        if self._state is not State.CLOSING:
            self._fire(Trigger.CLOSE)
        self._fire(Trigger.TORN_DOWN)
        self._hub.close()

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is State.CONNECTED

    def events(self) -> EventStream:
        """Everything that happens to the connection from now on (state changes, failed
        attempts, lost links, subscriptions re-attached or failed, ``settle_lost``,
        ``overflow``; see ``Event``). Several tasks may read one stream; every stream ends
        when the connection closes or gives up."""
        return self._hub.listen()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the link is up; ``TimeoutError`` after ``timeout``, ``ConnectionClosed`` if it
        is closed meanwhile."""
        async with asyncio.timeout(timeout):
            while self._state is not State.CONNECTED or self._live_link() is None:
                if self._state in (State.CLOSING, State.CLOSED):
                    end = self._end_error
                    if isinstance(end, ConnectError) and end.permanent:
                        raise copy_error(end)  # why it ended, typed (e.g. SessionTakenOver)
                    raise ConnectionClosed("the connection is closed")
                if self._state_changed is None or self._state_changed.done():
                    self._state_changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._state_changed)

    def _fire(
        self,
        trigger: Trigger,
        *,
        reason: str = "",
        endpoint: str = "",
        error: BaseException | None = None,
        attempt: int = 0,
        delay: float | None = None,
    ) -> None:
        """The one place the connection's state changes (see ``aiobus.lifecycle``): the state
        event, then the trigger's own event, then everyone waiting on a state change."""
        old = self._state
        new = next_state(old, trigger)
        self._state = new
        if new is not old:
            log.info(
                "aiobus %s: %s%s",
                self.settings.redacted_url(),
                new.value,
                f" ({reason})" if reason else "",
            )
            self._emit(Event("state", new, reason=reason, endpoint=endpoint))
        if trigger is Trigger.ATTEMPT_FAILED or trigger is Trigger.LINK_LOST:
            self._emit(
                Event(
                    trigger.value,
                    new,
                    reason=reason,
                    error=error,
                    attempt=attempt,
                    delay=delay,
                    endpoint=endpoint,
                )
            )
        if new is not old:
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

    @property
    def adapter_state(self) -> Any:
        """What the adapter keeps for this connection across its links (MQTT: the session),
        for inspection and tests; outside aiobus's guarantees, like ``driver``."""
        return self._adapter_state

    @property
    def client_id(self) -> str | None:
        """The identity the broker knows this connection by, where the protocol has one
        (MQTT: the client id given, generated, or assigned by the broker), once a link has
        been up; None otherwise. The same across reconnects."""
        link = self._link
        return link.client_id if link is not None else None

    def _not_open(self) -> ConnectionClosed:
        url = self.settings.redacted_url()
        if self._state is State.IDLE:
            return ConnectionClosed(f"connection {url} is not open: enter it with `async with`")
        return ConnectionClosed(f"connection {url} is closed: {describe(self._end_error)}")

    def _live_link(self) -> Link | None:
        link = self._link
        return link if link is not None and link.hooks.alive else None

    # -- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._run_links()
        finally:
            await self._teardown()

    async def _run_links(self) -> None:
        """Connect, serve the link until it dies, back off, again: until a close cancels it
        or it gives up (returns)."""
        opts = self.options
        loop = asyncio.get_running_loop()
        first = self._first
        assert first is not None
        backoff = Backoff(opts.backoff_initial, opts.backoff_factor, opts.backoff_max)
        endpoints: Sequence[Endpoint | None] = self.settings.endpoints or (None,)
        first_deadline = loop.time() + opts.connect_timeout
        index = 0
        #: The last attempt's error that says why (not one the first deadline cut short).
        telling: BaseException | None = None
        while True:
            endpoint = endpoints[index % len(endpoints)]
            where = str(endpoint) if endpoint is not None else self.settings.path
            try:
                link = await self._open_link(endpoint, first_deadline if not first.done() else None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                permanent, error = as_connect_error(exc)
                if telling is None or not cut_short(error):
                    telling = error
                self.attempts += 1
                self.last_error = error
                index += 1
                now = loop.time()
                if not first.done():
                    if permanent:
                        self._give_up(error, error)
                        return
                    if now >= first_deadline:
                        timeout_error = ConnectTimeout(
                            f"could not connect to {self.settings.redacted_url()} within "
                            f"connect_timeout={opts.connect_timeout}s: {describe(telling)}",
                            phase=getattr(telling, "phase", None),
                            endpoint=getattr(telling, "endpoint", None),
                        )
                        timeout_error.__cause__ = telling
                        self._give_up(timeout_error, timeout_error)
                        return
                if opts.max_attempts is not None and self.attempts >= opts.max_attempts:
                    reason = (
                        f"gave up after {self.attempts} failed attempts (max_attempts): "
                        f"{describe(error)}"
                    )
                    log.error("aiobus %s: %s", self.settings.redacted_url(), reason)
                    self._give_up(ConnectionClosed(reason), error)
                    return
                delay = backoff.next_delay()
                if not first.done():
                    delay = min(delay, max(0.0, first_deadline - now))
                log.warning(
                    "aiobus %s: attempt %d to %s failed: %s; next in %.3fs",
                    self.settings.redacted_url(),
                    self.attempts,
                    where,
                    describe(error),
                    delay,
                )
                self._fire(
                    Trigger.ATTEMPT_FAILED,
                    reason=describe(error),
                    error=error,
                    attempt=self.attempts,
                    delay=delay,
                    endpoint=where,
                )
                await asyncio.sleep(delay)
                continue

            lost = await self._serve(link, where)
            if isinstance(lost.error, ConnectError) and lost.error.permanent:
                # The broker ended the link for a reason reconnecting cannot change (MQTT:
                # the session was taken over by another connection): no retry loop.
                reason = describe(lost.error)
                self.last_error = lost.error
                log.error(
                    "aiobus %s: link lost (%s); not reconnecting",
                    self.settings.redacted_url(),
                    reason,
                )
                self._fire(Trigger.LINK_LOST, reason=reason, error=lost.error, endpoint=where)
                self._give_up(lost.error, lost.error)
                return
            if loop.time() - lost.up_since >= opts.stable_after:
                backoff.reset()
            index += 1
            delay = backoff.next_delay()
            reason = describe(lost.error)
            self.last_error = lost.error
            log.warning(
                "aiobus %s: link lost (%s); reconnecting in %.3fs",
                self.settings.redacted_url(),
                reason,
                delay,
            )
            self._fire(
                Trigger.LINK_LOST, reason=reason, error=lost.error, delay=delay, endpoint=where
            )
            await asyncio.sleep(delay)

    async def _serve(self, link: Link, where: str) -> LostLink:
        """Run the pump on a live link until it dies; then everything that depended on it
        learns at once, not at a deadline."""
        loop = asyncio.get_running_loop()
        first = self._first
        assert first is not None
        up_since = loop.time()
        self.attempts = 0
        self.connected_at = datetime.now(UTC)
        self._link = link
        self._reattached.clear()
        pump = loop.create_task(self._pump(link), name="aiobus pump")
        self._fire(Trigger.LINK_UP, endpoint=where)
        if not first.done():
            first.set_result(None)
        try:
            error = await link.hooks.wait_lost()
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        self._link = None
        self.connected_at = None
        self._link_lost()
        await self._discard(link, polite=False)
        return LostLink(error, up_since)

    def _give_up(self, end: BaseException, cause: BaseException) -> None:
        """No more attempts: the teardown (in ``_supervise``'s ``finally``) fails everything
        that waits with ``end``."""
        self._end_error = end
        first = self._first
        if first is not None and not first.done():
            # Still inside ``async with``: it raises the attempt's own error.
            first.set_exception(cause)
        self._fire(Trigger.GIVE_UP, reason=describe(end), error=cause)

    async def _open_link(self, endpoint: Endpoint | None, first_deadline: float | None) -> Link:
        opts = self.options
        loop = asyncio.get_running_loop()
        budget = opts.connect_timeout
        if first_deadline is not None:
            budget = max(0.001, min(budget, first_deadline - loop.time()))
        self._generation += 1
        assert self._outbox is not None
        hooks = LinkHooks(
            self._outbox,
            self._generation,
            loop,
            self._consumer_lost,
            self._settle_lost,
            self._notified,
            state=self._adapter_state,
        )
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
                self._link_lost()
                await self._discard(link, polite=False)
            raise
        if not hooks.alive:
            self._link_lost()
            await self._discard(link, polite=False)
            raise TransientConnectError("the link died while it was being set up")
        return link

    async def _restore(self, link: Link) -> None:
        """Topology first, then every subscription that needs a consumer, until none does:
        one entered or left meanwhile is picked up or let go by its own state, never by its
        place in a list. One that cannot come back is failed loudly."""
        if self._topology:
            await link.declare(self._topology)
        while True:
            waiting = [sub for sub in self._subs if sub._attachment.restorable]
            if not waiting:
                return
            for sub in waiting:
                if sub._attachment.restorable:
                    await self._attach(sub, link)

    async def _attach(self, sub: Subscription, link: Link) -> None:
        """Attach ``sub`` on ``link``: the one way a subscription gets a consumer.

        A subscription that left while its consumer was being attached has that consumer
        cancelled here; one the broker cannot take fails loudly; a link that died under it
        leaves it detached for the next restore.
        """
        attachment = sub._attachment
        attempt = attachment.begin_attach()
        bound = self.options.attach_timeout
        try:
            # One deadline for every attach on every protocol: a broker that never answers
            # (RabbitMQ 4.0.5 sometimes ignores a begin on a channel it has just ended) must
            # not hang the caller, the restore, or a re-attach.
            async with asyncio.timeout(bound) as deadline:
                try:
                    consumer = await link.attach(sub.spec, sub)
                except asyncio.CancelledError:
                    if deadline.expired():
                        raise self._attach_unanswered(sub, link, bound) from None
                    raise
        except AiobusError as exc:
            if isinstance(exc, (ConnectError, LinkDown)) or not link.hooks.alive:
                if attachment.attaching(attempt):
                    attachment.move(SubscriptionState.DETACHED)
                raise
            if attachment.attaching(attempt):
                self._subscription_failed(sub, exc)
            return
        except BaseException:
            if attachment.attaching(attempt):
                attachment.move(SubscriptionState.DETACHED)
            raise
        if attachment.attaching(attempt) and link.hooks.alive:
            attachment.move(SubscriptionState.ATTACHED)
            attachment.consumer = consumer
            ended = attachment.ended
            if ended is not None:  # ended by the broker before the attach returned
                self._consumer_lost(sub, ended)
            return
        # Left meanwhile (closing), or the link died (detached): it serves no one.
        await self._cancel_quietly(consumer, sub.pattern, reason="leave")

    def _attach_unanswered(self, sub: Subscription, link: Link, bound: float) -> LinkDown:
        """The broker did not answer an attach within ``attach_timeout``: the link cannot be
        trusted (the next one attaches the subscription again)."""
        error = LinkDown(
            f"the broker did not answer the attach of subscription {sub.pattern!r} within "
            f"attach_timeout ({bound:g} s): the link is taken as dead and the subscription "
            "is attached again on the next link"
        )
        link.hooks.lost(error)
        return error

    async def _pump(self, link: Link) -> None:
        outbox = self._outbox
        assert outbox is not None
        limit = self.options.max_in_flight
        hooks = link.hooks
        encodes = link.encodes
        if hooks.alive:
            outbox.withdraw = link.withdraw  # cleared by ``Outbox.link_lost``
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
            attachment = sub._attachment
            if attachment.state in (SubscriptionState.ATTACHED, SubscriptionState.ATTACHING):
                attachment.move(SubscriptionState.DETACHED)
            sub._link_lost()

    async def _discard(self, link: Link, *, polite: bool = True) -> None:
        """Let go of a link. ``polite``: close it within the close deadline (or
        ``close_timeout`` outside a close) first; that is only for a live link at a close.
        A link that was lost, or never finished opening, has nothing to wait for and is
        aborted at once (politeness to a broker that stopped answering would only spend the
        deadline). The polite close runs as a task, so a driver that does not give way to
        cancellation cannot stretch the deadline: when it passes, the link is aborted
        instead, and the close task then ends at once on the dead socket."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline
        if deadline is None:
            deadline = Deadline(loop, loop.time() + self.options.close_timeout)
        if polite and self._end_session:
            link.end_session()
        closing = loop.create_task(link.close(), name="aiobus link close") if polite else None
        try:
            if closing is not None and not deadline.aborted:
                await deadline.run(asyncio.shield(closing))
        finally:
            await link.abort()
            if closing is not None:
                if not closing.done():
                    await asyncio.wait({closing}, timeout=ABORT_GRACE)
                    closing.cancel()
                    await asyncio.gather(closing, return_exceptions=True)
                if not closing.cancelled() and closing.exception() is not None:
                    # The link is gone either way; say why it did not close well.
                    log.debug("aiobus: closing a link failed: %r", closing.exception())

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
        InvalidMessage (MessageTooLarge among them), BufferFull, ConnectionClosed. Through
        the future: Nacked, Unroutable, InvalidMessage (found only once encoded for the
        link, or refused by the broker for what it is), PublishTimeout, LinkLost,
        ConnectionClosed.
        """
        if self._state not in OPEN_STATES:
            raise self._not_open()
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
        state = self._adapter_state
        if state is None:
            self._link_cls.check_publish(self.settings, msg)
        else:  # only adapters that keep connection state take it
            self._link_cls.check_publish_in(self.settings, msg, state)
        size_limit = outbox.size_limit
        if size_limit is not None:
            size = self._link_cls.encoded_size(self.settings, msg)
            if size > size_limit:
                raise MessageTooLarge(size, size_limit)
        if content_type is None:
            # After the checks: an implied type is not the caller's (MQTT 3.1.1 cannot carry
            # one and drops it); where it counts in an exact size, ``encode`` checks again.
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
        if self._state not in OPEN_STATES:
            raise self._not_open()
        self._subs.append(sub)
        sub._attachment.move(SubscriptionState.DETACHED)
        link = self._live_link()
        if link is None or self._state is not State.CONNECTED:
            return  # the next link's restore attaches it
        try:
            await self._attach(sub, link)
        except asyncio.CancelledError:
            self._forget(sub)
            raise
        except Exception:
            if link.hooks.alive:
                self._forget(sub)
                raise
            # The link died under us: the reconnect's restore attaches it.
        if sub._attachment.state is SubscriptionState.FAILED:
            error = sub.error
            self._forget(sub)
            assert error is not None
            raise error

    def _forget(self, sub: Subscription) -> None:
        """A subscription whose ``async with`` did not complete: it was never entered."""
        if sub in self._subs:
            self._subs.remove(sub)
        attachment = sub._attachment
        if attachment.state is not SubscriptionState.CLOSED:
            if attachment.state is not SubscriptionState.CLOSING:
                attachment.move(SubscriptionState.CLOSING)
            attachment.move(SubscriptionState.CLOSED)

    def _consumer_lost(self, sink: Any, error: BaseException) -> None:
        sub = sink if isinstance(sink, Subscription) else None
        if sub is None or sub not in self._subs or self._state is not State.CONNECTED:
            return
        attachment = sub._attachment
        if attachment.state is SubscriptionState.ATTACHING:
            attachment.ended = error  # the attach under way decides, once it returns
            return
        if attachment.state is not SubscriptionState.ATTACHED:
            return
        attachment.move(SubscriptionState.DETACHED)
        if id(sub) in self._reattached:
            # Ended again on the same link: re-attaching would only loop.
            self._subscription_failed(sub, error)
            return
        self._reattached.add(id(sub))
        self._in_background(self._reattach(sub, error), f"aiobus re-attach {sub.pattern}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reattach(self, sub: Subscription, error: BaseException) -> None:
        link = self._live_link()
        if link is None or not sub._attachment.restorable:
            return  # the next link's restore attaches it, or it left
        log.warning(
            "aiobus: the broker ended the consumer of %r (%s); re-attaching",
            sub.pattern,
            describe(error),
        )
        with contextlib.suppress(ConnectError, LinkDown):  # the link died: restore does it
            await self._attach(sub, link)
        if sub._attachment.state is SubscriptionState.ATTACHED:
            self._emit(
                Event("subscription_reattached", self._state, reason=describe(error), error=error)
            )

    def notify(self, kind: str, reason: str, error: BaseException | None = None) -> None:
        """Put an event of the application's own (the service layer's, for one) on every
        ``events()`` stream, logged at WARNING."""
        self._notified(kind, reason, error)

    @property
    def topology(self) -> tuple[Any, ...]:
        """What this connection declares again after every reconnect: the ``topology=``
        option and everything ``declare()`` added since."""
        return tuple(self._topology)

    def _notified(
        self, kind: str, reason: str, error: BaseException | None, dropped: int = 0
    ) -> None:
        log.warning("aiobus %s: %s", self.settings.redacted_url(), reason)
        self._emit(Event(kind, self._state, reason=reason, error=error, dropped=dropped))

    def _settle_lost(self, delivery: Delivery) -> None:
        again = delivery.returns_on_loss
        reason = (
            f"handled message on {delivery.topic!r} could not be acknowledged: its link died; "
            + (
                "the broker delivers it again"
                if again
                else "the broker will not deliver it again (no persistent session)"
            )
        )
        log.info("aiobus %s: %s", self.settings.redacted_url(), reason)
        self._emit(Event("settle_lost", self._state, reason=reason, redelivered=again))

    def _subscription_failed(self, sub: Subscription, error: BaseException) -> None:
        sub._attachment.move(SubscriptionState.FAILED)
        sub._fail(error)
        log.error("aiobus: subscription %r is not receiving: %s", sub.pattern, describe(error))
        self._emit(Event("subscription_failed", self._state, reason=describe(error), error=error))

    def _end_subscription(self, sub: Subscription, error: BaseException) -> None:
        attachment = sub._attachment
        if attachment.state is not SubscriptionState.CLOSING:
            attachment.move(SubscriptionState.CLOSING)
        attachment.move(SubscriptionState.CLOSED)
        if not isinstance(error, ConnectionClosed) or str(error) != "the connection was closed":
            sub._fail(copy_error(error))
        sub._close(connection_closed=True)

    async def _remove_subscription(
        self, sub: Subscription, *, cancelled: bool = False, unsubscribe: bool = False
    ) -> None:
        """A subscription leaves its ``async with``. Its consumer is cancelled here (so no
        more deliveries flow to it once this returns), or, when the leaving task is being
        cancelled (or is cancelled while it waits), by a task of the connection's, so no
        broker consumer outlives it and no cancellation waits for the broker. A broker that
        does not answer the cancel within ``close_timeout`` is taken as gone (see
        ``_cancel_quietly``). Whatever happens, the subscription ends and its readers wake."""
        if sub not in self._subs:
            return  # the connection ended it already
        self._subs.remove(sub)
        attachment = sub._attachment
        consumer = attachment.consumer
        attachment.move(SubscriptionState.CLOSING)  # an attach under way cancels its own
        try:
            if consumer is not None and consumer.alive:
                reason: CancelReason = (
                    "unsubscribe" if unsubscribe else "cancelled" if cancelled else "leave"
                )
                if cancelled:
                    self._hand_over_cancel(consumer, sub.pattern, reason)
                else:
                    try:
                        await self._cancel_quietly(consumer, sub.pattern, reason=reason)
                    except asyncio.CancelledError:
                        self._hand_over_cancel(consumer, sub.pattern, reason)
                        raise
        finally:
            attachment.move(SubscriptionState.CLOSED)
            sub._close(connection_closed=False)

    def _hand_over_cancel(self, consumer: Consumer, pattern: str, reason: CancelReason) -> None:
        if self._state in OPEN_STATES and not consumer.cancelled:
            self._in_background(
                self._cancel_quietly(consumer, pattern, reason=reason),
                f"aiobus cancel consumer {pattern}",
            )

    async def _cancel_consumer(self, sub: Subscription, *, reason: CancelReason) -> None:
        consumer = sub._attachment.consumer
        if consumer is not None and consumer.alive:
            await self._cancel_quietly(consumer, sub.pattern, reason=reason)

    async def _cancel_quietly(
        self, consumer: Consumer, pattern: str, *, reason: CancelReason
    ) -> None:
        """Cancel a consumer within ``close_timeout``; a failure is logged, since the
        broker ends it with the link anyway. A broker that does not answer within
        ``close_timeout`` is taken as gone: its link is lost from here (as a missed
        heartbeat would find later), so whatever follows, a close included, does not wait
        on it again."""
        try:
            async with asyncio.timeout(self.options.close_timeout):
                await consumer.cancel(reason=reason)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            consumer.hooks.lost(
                LinkDown(
                    f"the broker did not answer the cancel of the consumer of {pattern!r} "
                    f"within close_timeout={self.options.close_timeout}s"
                )
            )
        except Exception as exc:
            log.debug("aiobus: cancelling consumer for %r failed: %r", pattern, exc)


async def finish_uncancelled(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` even through further cancellations (it is bounded: an aborted
    close); the caller re-raises its own cancellation after."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    if not task.cancelled():
        task.exception()


def copy_error(error: BaseException) -> BaseException:
    """A fresh exception of the same kind and text for each waiter: one exception object
    raised in many tasks would collect every task's traceback."""
    try:
        clone = type(error)(*error.args)
    except Exception:
        clone = ConnectionClosed(str(error))
    clone.__cause__ = error.__cause__ if error.__cause__ is not None else None
    return clone


class LostLink:
    __slots__ = ("error", "up_since")

    def __init__(self, error: BaseException, up_since: float) -> None:
        self.error = error
        self.up_since = up_since


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
            outbox.fail(msg, unsendable(msg.message_id, msg.topic, link.protocol, exc))
        else:
            ready.append(msg)
    return ready


def _stamp(event: Event, now: float) -> Event:
    from dataclasses import replace

    return replace(event, time=now)
