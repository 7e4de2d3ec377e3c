"""One subscriber at run time: read, dispatch within concurrency and prefetch, handle, settle.

Bounds: at most ``concurrency`` handler calls at once; at most ``prefetch`` deliveries taken
from the subscription and not finished (the subscription's own buffer and the broker's
prefetch bound the unacknowledged ones). With a ``key``, deliveries with the same key run one
after another in arrival order, each in its own slot, and different keys run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AiobusError
from ..message import Delivery
from .carrier import (
    ATTEMPT,
    ERROR,
    ERROR_TYPE,
    FIRST_ERROR,
    LAST_ERROR,
    REASON,
    SUBSCRIBER,
    TOPIC,
    attempts_before,
)
from .codec import encode_value
from .counting import QueueCounting, declared_counting
from .deadletters import Backoff, is_retryable, wait_or_stop
from .errors import NotSettled
from .handler import SubscriberSpec
from .middleware import HandleContext, Outbound, handle_chain
from .policy import Decision, decide, describe

if TYPE_CHECKING:
    from ..subscription import Subscription
    from .core import Service

log = logging.getLogger("aiobus.service")

_FIRST_ERRORS = 10_000
_ERROR_TEXT = 2000


@dataclass(slots=True)
class SubscriberStats:
    """Counters per subscriber, for tests and metrics."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    retried: int = 0
    dead_lettered: int = 0
    in_progress: int = 0


@dataclass(frozen=True, slots=True)
class Source:
    """One subscription a subscriber reads: its pattern, or its private retry topic."""

    pattern: str
    queue: str | None
    prefetch: int
    options: dict[str, Any]
    trusted: bool = False
    """The subscriber's private retry route: only what comes this way was published by the
    service itself, so only here its ``x-aiobus-*`` metadata (headers or envelope) is read.
    On any other subscription it is somebody else's and has no effect (docs/service.md)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a delivery came from: what its queue counts, and whether its metadata is ours."""

    counting: QueueCounting
    trusted: bool


Lane = deque[tuple[Delivery, Origin, asyncio.Semaphore]]


class Runner:
    def __init__(
        self,
        service: Service,
        spec: SubscriberSpec,
        sources: list[Source],
        retry_topic: str | None,
    ) -> None:
        self.service = service
        self.spec = spec
        self.sources = sources
        self.retry_topic = retry_topic
        self.stats = SubscriberStats()
        self.handle = handle_chain(service.middleware, self._invoke)
        self._subs: list[tuple[Subscription, Origin]] = []
        self._stack = contextlib.AsyncExitStack()
        self._readers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[Hashable, Lane] = {}
        self._first_errors: OrderedDict[str, str] = OrderedDict()
        self._slots: asyncio.Semaphore | None = None

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.spec.concurrency)
        opener = self.service.open_subscription
        topology = self.service.declared_topology()
        for source in self.sources:
            sub = await self._stack.enter_async_context(
                opener(
                    source.pattern, queue=source.queue, prefetch=source.prefetch, **source.options
                )
            )
            counting = QueueCounting(
                declared_counting(self.service.bus.protocol, sub, source.queue, topology)
            )
            self._subs.append((sub, Origin(counting, source.trusted)))
        loop = asyncio.get_running_loop()
        for sub, origin in self._subs:
            # Taken and not finished, per subscription: at most its prefetch. A reader never
            # holds a handler slot while it waits for a message (it would starve the other).
            inhand = asyncio.Semaphore(sub.spec.prefetch)
            self._readers.append(
                loop.create_task(
                    self._read(sub, origin, inhand), name=f"aiobus reader {self.spec.name}"
                )
            )

    async def stop_reading(self) -> None:
        """Take no new deliveries.

        Where the protocol gives unsettled messages back (AMQP, memory), those already
        buffered go back to the broker when the subscriptions close. Where it cannot (MQTT
        acknowledges them when a consumer goes), the inflow is paused first and what is
        buffered is handled during the drain instead of being dropped.
        """
        gives_back = self.service.bus.capabilities.nack
        if not gives_back:
            for sub, _ in self._subs:
                sub.pause()
        for reader in self._readers:
            reader.cancel()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._readers.clear()
        if gives_back:
            return
        for sub, origin in self._subs:
            released = asyncio.Semaphore(0)  # the reader's bound is over: nothing waits on it
            while sub.buffered:
                try:
                    delivery = await sub.__anext__()  # buffered: returns at once
                except (StopAsyncIteration, AiobusError):
                    break
                if self.spec.key is not None:
                    self._enqueue(delivery, origin, released)
                else:
                    self._spawn(self._one(delivery, origin, released))

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel_handlers(self) -> None:
        """Past the drain timeout: stop handlers; their deliveries stay unsettled and the
        broker takes them back when the subscriptions close."""
        for task in self._tasks:
            task.cancel()
        await self.wait_idle()

    async def close(self) -> None:
        try:
            await self._stack.aclose()
        except Exception as exc:  # the connection may be gone already; nothing to return
            log.debug("aiobus: closing the subscriptions of %s failed: %r", self.spec.name, exc)
        self._subs.clear()
        self._lanes.clear()

    @property
    def busy(self) -> int:
        return len(self._tasks) + len(self._readers)

    # -- reading and dispatch -------------------------------------------------------------

    async def _read(self, sub: Subscription, origin: Origin, inhand: asyncio.Semaphore) -> None:
        keyed = self.spec.key is not None
        try:
            while True:
                await inhand.acquire()
                try:
                    delivery = await sub.__anext__()
                except BaseException:
                    inhand.release()
                    raise
                if keyed:
                    self._enqueue(delivery, origin, inhand)
                else:
                    self._spawn(self._one(delivery, origin, inhand))
        except StopAsyncIteration:
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("aiobus: subscriber %s stopped receiving: %r", self.spec.name, exc)
            self.service._fail(exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"aiobus {self.spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, delivery: Delivery, origin: Origin, inhand: asyncio.Semaphore) -> None:
        assert self._slots is not None
        async with self._slots:
            await self._process(delivery, origin, None)
        inhand.release()

    def _enqueue(self, delivery: Delivery, origin: Origin, inhand: asyncio.Semaphore) -> None:
        assert self.spec.key is not None
        try:
            key = self.spec.key(delivery)
            if key is not None:
                hash(key)  # an unhashable key fails this message here, not the reader
        except Exception as exc:  # a broken key function fails this message, not the service
            self._spawn(self._lane_of_one(delivery, origin, inhand, exc))
            return
        if key is None:
            self._spawn(self._lane_of_one(delivery, origin, inhand, None))
            return
        entry = (delivery, origin, inhand)
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(entry)
            return
        lane = self._lanes[key] = deque([entry])
        self._spawn(self._run_lane(key, lane))

    async def _lane_of_one(
        self,
        delivery: Delivery,
        origin: Origin,
        inhand: asyncio.Semaphore,
        error: Exception | None,
    ) -> None:
        assert self._slots is not None
        async with self._slots:
            await self._process(delivery, origin, error)
        inhand.release()

    async def _run_lane(self, key: Hashable, lane: Lane) -> None:
        assert self._slots is not None
        try:
            while lane:
                delivery, origin, inhand = lane[0]
                async with self._slots:
                    await self._process(delivery, origin, None)
                lane.popleft()  # only now: until settled, the next one with this key waits
                inhand.release()
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    # -- handling -------------------------------------------------------------------------

    async def _invoke(self, ctx: HandleContext) -> Any:
        return await self.spec.invoker(ctx.delivery)

    async def _process(
        self, delivery: Delivery, origin: Origin, early_error: Exception | None
    ) -> None:
        stats = self.stats
        stats.received += 1
        stats.in_progress += 1
        try:
            # Metadata counts only where the service put it: on its own retry route.
            meta = self.service.carrier.unwrap(delivery) if origin.trusted else {}
            original = meta.get(TOPIC)
            if original:
                delivery.topic = original
            # 1-based: failures recorded on a republished copy, plus this copy's deliveries
            # (the broker's count where its queue keeps one; a redelivery is at least 2).
            attempt = attempts_before(meta) + origin.counting.deliveries(delivery)
            ctx = HandleContext(self.service, self.spec.name, delivery, attempt, meta)
            if self.spec.ack == "first":
                try:
                    await delivery.ack()
                except AiobusError as exc:  # at-most-once: not acked, so not handled here
                    log.warning(
                        "aiobus: %s could not ack first (%r); not handling it", self.spec.name, exc
                    )
                    return
            try:
                if early_error is not None:
                    raise early_error
                result = await self.handle(ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stats.failed += 1
                await self._failed(ctx, origin, exc)
            else:
                await self._succeeded(ctx, origin, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Settling failed (link died, connection closed): the delivery is unsettled; the
            # broker delivers it again where it can (AMQP; MQTT on a persistent session).
            # The service goes on.
            log.warning("aiobus: %s could not settle a message: %r", self.spec.name, exc)
        finally:
            stats.in_progress -= 1

    async def _succeeded(self, ctx: HandleContext, origin: Origin, result: Any) -> None:
        delivery = ctx.delivery
        ack = self.spec.ack
        if ack == "manual" and not delivery.settled:
            await self._failed(
                ctx,
                origin,
                NotSettled(
                    f"handler {self.spec.name} (ack='manual') returned without settling "
                    f"the message on {delivery.topic!r}"
                ),
            )
            return
        if delivery.reply_to:
            try:
                body, content_type = encode_value(result)
            except TypeError as exc:
                self.stats.failed += 1
                await self._failed(ctx, origin, exc)
                return
            try:
                await self._reply(delivery, body, content_type, None)
            except Exception as exc:  # the work is done: redoing it would not help the reply
                log.warning(
                    "aiobus: %s could not reply to %r: %r", self.spec.name, delivery.reply_to, exc
                )
        if ack == "on_success" and not delivery.settled:
            await delivery.ack()
        self.stats.succeeded += 1
        if delivery.message_id:
            self._first_errors.pop(delivery.message_id, None)

    def _can_requeue(self, origin: Origin) -> bool:
        """A broker requeue is bounded only where the queue counts deliveries; until its
        deliveries have shown which it is, one requeue is taken: the redelivery tells."""
        return self.service.bus.capabilities.nack and origin.counting.counts is not False

    async def _failed(self, ctx: HandleContext, origin: Origin, error: Exception) -> None:
        delivery = ctx.delivery
        name = self.spec.name
        if self.spec.ack == "first" or delivery.settled:
            # Already acked (at-most-once) or settled by a manual handler: nothing to undo,
            # but a requester still deserves its answer.
            if delivery.reply_to:
                with contextlib.suppress(Exception):
                    await self._reply(delivery, b"", None, error)
            log.warning(
                "aiobus: %s failed on %r after settling: %s", name, delivery.topic, describe(error)
            )
            return
        decision = decide(
            self.spec.on_error, ctx.attempt, error, broker_requeue=self._can_requeue(origin)
        )
        if decision.action == "republish" and self.retry_topic is None:
            # Declared as counting deliveries, found not to: nothing can carry the count.
            decision = Decision(
                "dead_letter",
                f"its queue keeps no delivery count, so attempt {ctx.attempt} cannot be "
                f"retried without a retry queue ({describe(error)})",
            )
        log.warning(
            "aiobus: %s failed attempt %d on %r: %s -> %s",
            name,
            ctx.attempt,
            delivery.topic,
            describe(error),
            decision.action,
        )
        try:
            if decision.action == "requeue":
                self._remember_first_error(delivery, error)
                await delivery.nack(requeue=True)
                self.stats.requeued += 1
            elif decision.action == "republish":
                copy = self._retry_copy(ctx, error)
                if decision.delay > 0:
                    self.service.scheduler.schedule(decision.delay, lambda: self._send(copy))
                else:
                    await self._send(copy)
                # The copy is confirmed (or owned by the scheduler): only now the original goes.
                await delivery.ack()
                self.stats.retried += 1
            else:
                if delivery.reply_to:
                    try:
                        await self._reply(delivery, b"", None, error)
                    except Exception as exc:
                        log.warning(
                            "aiobus: %s could not send the error reply to %r: %r",
                            name,
                            delivery.reply_to,
                            exc,
                        )
                await self._dead_letter(ctx, error, decision.reason)
                if delivery.message_id:
                    self._first_errors.pop(delivery.message_id, None)
        except Exception as exc:
            log.error(
                "aiobus: %s could not %s a failed message (%r); giving it back to the broker",
                name,
                decision.action.replace("_", "-"),
                exc,
            )
            await self._give_back(delivery)

    async def _give_back(self, delivery: Delivery) -> None:
        """Never ack what could not be retried or dead-lettered: nack it back where the
        protocol can; elsewhere (MQTT) leave it unacked so the session delivers it again."""
        if delivery.settled:
            return
        consumer_can_nack = self.service.bus.capabilities.nack
        if consumer_can_nack:
            with contextlib.suppress(AiobusError):
                await delivery.nack(requeue=True)

    def _remember_first_error(self, delivery: Delivery, error: Exception) -> None:
        """A broker requeue returns the message unchanged: its first error can only be kept
        here (by message id, bounded), for the dead letter this process may write later."""
        if not delivery.message_id:
            return
        errors = self._first_errors
        errors.setdefault(delivery.message_id, describe(error))
        errors.move_to_end(delivery.message_id)
        while len(errors) > _FIRST_ERRORS:
            errors.popitem(last=False)

    def _first_error(self, ctx: HandleContext, error: Exception) -> str:
        known = ctx.meta.get(FIRST_ERROR)
        if known is None and ctx.delivery.message_id:
            known = self._first_errors.get(ctx.delivery.message_id)
        return known if known is not None else describe(error)

    # -- copies ---------------------------------------------------------------------------

    def _copy(self, delivery: Delivery, topic: str, meta: dict[str, str], kind: Any) -> Outbound:
        service = self.service
        wrapped = service.carrier.wrap(delivery.body, delivery.headers, meta, delivery.content_type)
        options: dict[str, Any] = {}
        if service.carrier.headers and delivery.content_type is not None:
            options["content_type"] = delivery.content_type
        if delivery.message_id is not None:
            options["message_id"] = delivery.message_id
        if service.bus.capabilities.correlation:
            if delivery.correlation_id is not None:
                options["correlation_id"] = delivery.correlation_id
            if delivery.reply_to is not None:
                options["reply_to"] = delivery.reply_to
        if service.bus.capabilities.unroutable:
            # A copy nothing receives must fail its publish, not vanish: the original is only
            # acked once its copy is somewhere.
            options["mandatory"] = True
        return Outbound(topic, wrapped.body, kind, wrapped.headers, options)

    def _retry_copy(self, ctx: HandleContext, error: Exception) -> Outbound:
        assert self.retry_topic is not None
        delivery = ctx.delivery
        meta = {
            ATTEMPT: str(ctx.attempt),
            TOPIC: delivery.topic,
            FIRST_ERROR: self._first_error(ctx, error)[:_ERROR_TEXT],
        }
        return self._copy(delivery, self.retry_topic, meta, "retry")

    async def _send(self, call: Outbound) -> None:
        await self.service._publish(call)

    async def _dead_letter(self, ctx: HandleContext, error: Exception, reason: str) -> None:
        delivery = ctx.delivery
        topic = self.spec.dead_letter_topic
        if topic is None:
            log.error(
                "aiobus: %s dead-letters a message on %r by reject: %s",
                self.spec.name,
                delivery.topic,
                reason,
            )
            await delivery.reject()
        else:
            meta = {
                ATTEMPT: str(ctx.attempt),
                TOPIC: delivery.topic,
                REASON: reason[:_ERROR_TEXT],
                ERROR_TYPE: type(error).__name__,
                FIRST_ERROR: self._first_error(ctx, error)[:_ERROR_TEXT],
                LAST_ERROR: describe(error)[:_ERROR_TEXT],
                SUBSCRIBER: self.spec.name,
            }
            await self._until_landed(
                topic, lambda: self._copy(delivery, topic, meta, "dead_letter")
            )
            log.error(
                "aiobus: %s dead-lettered a message on %r to %r: %s",
                self.spec.name,
                delivery.topic,
                topic,
                reason,
            )
            await delivery.ack()
        self.stats.dead_lettered += 1

    async def _until_landed(self, topic: str, make: Callable[[], Outbound]) -> None:
        """Publish a dead letter, trying again with backoff while the original stays
        unsettled; give up (raise) only when the service stops or the copy itself is bad."""
        service = self.service
        backoff = Backoff(*service.dead_letter_backoff)
        bursts = service.dead_letter_failures
        while True:
            try:
                await self._send(make())  # a fresh copy: middleware may change what it gets
            except Exception as exc:
                if not is_retryable(exc) or service.stopping.is_set():
                    raise
                bursts.failed(topic, self.spec.name, exc)
                if await wait_or_stop(backoff.next_delay(), service.stopping):
                    raise
                continue
            bursts.landed(topic)
            return

    async def _reply(
        self, request: Delivery, body: bytes, content_type: str | None, error: BaseException | None
    ) -> None:
        service = self.service
        assert request.reply_to is not None
        meta: dict[str, str] = {}
        if error is not None:
            meta = {ERROR: str(error)[:2000], ERROR_TYPE: type(error).__name__}
        wrapped = service.carrier.wrap(body, None, meta, content_type)
        options: dict[str, Any] = {
            "correlation_id": request.correlation_id or request.message_id,
        }
        if service.carrier.headers and content_type is not None:
            options["content_type"] = content_type
        await service._publish(
            Outbound(request.reply_to, wrapped.body, "reply", wrapped.headers or None, options)
        )
