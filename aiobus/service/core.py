"""``Service``: handlers registered on a connection, run until cancelled, drained on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any, TypeVar

from ..connection import Connection
from ..errors import ConfigError
from ..message import Delivery
from ..publishing import Confirm
from .carrier import ERROR, ERROR_TYPE, Carrier
from .codec import _MISSING, decoder_for, encode_value
from .counting import declared_counting, declared_queue, quorum_delivery_limit
from .deadletters import (
    DEFAULT_QUEUE,
    FailureBursts,
    can_hold_queue,
    declare_queue,
    describe_missing,
    queue_exists,
    queue_for,
)
from .errors import RemoteError, RequestTimeout, ServiceNotRunning
from .handler import (
    Handler,
    SubscriberSpec,
    check_ack,
    check_concurrency,
    invoker_for,
    key_func,
    safe_name,
)
from .middleware import Middleware, Outbound, publish_chain
from .policy import DeadLetter, ErrorPolicy, Requeue, Retry, check_policy
from .rpc import ReplyChannel, SubscribeFn, reply_channel_for
from .runner import Runner, Source, SubscriberStats
from .scheduler import RetryScheduler

log = logging.getLogger("aiobus.service")

H = TypeVar("H", bound=Handler)


class Service:
    """Handlers on one connection::

    svc = aiobus.Service(bus)

    @svc.subscriber("orders.created", queue="billing", on_error=aiobus.Retry(max_attempts=5))
    async def bill(order: Order) -> None: ...

    async with svc.serving():      # or: await svc.serve()  (until cancelled)
        total = await svc.request("prices.quote", {"sku": "a"}, timeout=5)
    """

    def __init__(
        self,
        bus: Connection,
        *,
        middleware: Sequence[Middleware] = (),
        dead_letter_topic: str | None = None,
        dead_letter_queue: str | None = DEFAULT_QUEUE,
        declare_dead_letter_queue: bool = True,
        dead_letter_backoff: tuple[float, float] = (1.0, 60.0),
        drain_timeout: float = 10.0,
        max_scheduled_retries: int = 10_000,
        subscribe: SubscribeFn | None = None,
        address: Callable[[str], str] | None = None,
    ) -> None:
        """``subscribe`` and ``address`` are for protocols whose subscriptions need more than
        ``bus.subscribe`` until their adapter offers it (AMQP 1.0 consumes from queues it does
        not create): ``subscribe(pattern, queue=, prefetch=, **options)`` is used for every
        subscription the service opens, and ``address(name)`` turns the service's own topic
        names (private retry and reply topics) into what is published to and subscribed.

        ``dead_letter_queue``: the queue behind each dead-letter topic, a name with an optional
        ``{topic}`` (default ``aiobus-dead-{topic}``): where the connection can (AMQP 0-9-1,
        memory) the service declares it bound to the topic, or with
        ``declare_dead_letter_queue=False`` only checks at start that it exists; None: neither.
        ``dead_letter_backoff``: ``(first, most)`` seconds between tries of a dead-letter
        publish that failed."""
        if not isinstance(bus, Connection):
            raise TypeError(f"Service needs an aiobus Connection, not {type(bus).__name__}")
        _check_seconds("drain_timeout", drain_timeout)
        if not isinstance(max_scheduled_retries, int) or max_scheduled_retries < 0:
            raise ConfigError(
                f"max_scheduled_retries must be an int >= 0, got {max_scheduled_retries!r}"
            )
        if dead_letter_topic is not None:
            DeadLetter(dead_letter_topic)  # the same check as a policy's topic
        if dead_letter_queue is not None and (
            not isinstance(dead_letter_queue, str) or not dead_letter_queue
        ):
            raise ConfigError(
                f"dead_letter_queue must be a non-empty str or None, got {dead_letter_queue!r}"
            )
        _check_backoff(dead_letter_backoff)
        if not isinstance(declare_dead_letter_queue, bool):
            raise ConfigError(
                f"declare_dead_letter_queue must be a bool, got {declare_dead_letter_queue!r}"
            )
        self.dead_letter_queue = dead_letter_queue
        self.declare_dead_letter_queue = declare_dead_letter_queue
        self.dead_letter_backoff = (float(dead_letter_backoff[0]), float(dead_letter_backoff[1]))
        self.dead_letter_failures = FailureBursts()
        self.stopping = asyncio.Event()
        """Set when the drain begins: waits (dead-letter backoff) end and give up."""
        self._dead_letter_queues: set[tuple[str, str]] = set()
        self.bus = bus
        self._running = False
        self.middleware: list[Middleware] = []
        for mw in middleware:
            self.use(mw)
        self.dead_letter_topic = dead_letter_topic
        self._custom_subscribe = subscribe is not None
        self.open_subscription: SubscribeFn = subscribe if subscribe is not None else bus.subscribe
        self.address: Callable[[str], str] = address if address is not None else _same
        self.drain_timeout = drain_timeout
        self.carrier = Carrier(headers=bus.capabilities.headers)
        self.scheduler = RetryScheduler(max_scheduled_retries)
        self._instance = secrets.token_hex(4)
        self._specs: dict[str, tuple[SubscriberSpec, list[Source], str | None]] = {}
        self._runners: dict[str, Runner] = {}
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self._replies: ReplyChannel | None = None
        self._replies_lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "serving" if self._running else "idle"
        return f"<Service {len(self._specs)} subscriber(s) {state} on {self.bus!r}>"

    # -- registration ---------------------------------------------------------------------

    def use(self, middleware: Middleware) -> None:
        """Add a middleware inside those already added (the first added is the outermost)."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"middleware must be a Middleware, not {type(middleware).__name__}")
        if self._running:
            raise ConfigError("add middleware before the service is serving")
        self.middleware.append(middleware)

    def subscriber(
        self,
        pattern: str,
        *,
        queue: str | None = None,
        prefetch: int | None = None,
        concurrency: int = 1,
        ack: str = "on_success",
        on_error: ErrorPolicy | None = None,
        key: str | Callable[[Delivery], Hashable | None] | None = None,
        name: str | None = None,
        **subscribe_options: Any,
    ) -> Callable[[H], H]:
        """Register the decorated coroutine as a handler; the function itself is returned
        unchanged (call it directly in tests). See ``add_subscriber``."""

        def register(fn: H) -> H:
            self.add_subscriber(
                fn,
                pattern,
                queue=queue,
                prefetch=prefetch,
                concurrency=concurrency,
                ack=ack,
                on_error=on_error,
                key=key,
                name=name,
                **subscribe_options,
            )
            return fn

        return register

    def add_subscriber(
        self,
        fn: Handler,
        pattern: str,
        *,
        queue: str | None = None,
        prefetch: int | None = None,
        concurrency: int = 1,
        ack: str = "on_success",
        on_error: ErrorPolicy | None = None,
        key: str | Callable[[Delivery], Hashable | None] | None = None,
        name: str | None = None,
        **subscribe_options: Any,
    ) -> None:
        """Everything is checked here, so a mistake is a ``ConfigError`` at start-up.

        - ``queue``/``prefetch``/``subscribe_options``: as ``Connection.subscribe``.
        - ``concurrency``: handler calls at once (never more unacked messages than prefetch).
        - ``ack``: ``"on_success"`` (default: ack after the handler returns), ``"first"``
          (ack before calling it: at-most-once, no error policy), ``"manual"`` (the handler
          settles; returning without settling is a ``NotSettled`` failure).
        - ``on_error``: ``Requeue(...)`` (default ``Requeue(max_attempts=3)``), ``Retry(...)``
          or ``DeadLetter(...)``.
        - ``key``: a header name or ``fn(delivery) -> key``: same key, handled in order.
        """
        if self._running:
            raise ConfigError("register subscribers before the service is serving")
        invoker = invoker_for(fn)
        if name is None:
            # "Class.method" or "function"; a nested function keeps only its own part.
            name = str(getattr(fn, "__qualname__", repr(fn))).rsplit("<locals>.", 1)[-1]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty str, got {name!r}")
        if name in self._specs:
            raise ConfigError(f"a subscriber named {name!r} is already registered; pass name=")
        ack_mode = check_ack(ack)
        concurrency = check_concurrency(concurrency)
        bus = self.bus
        if prefetch is None:
            prefetch = bus.options.prefetch
        elif not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise ConfigError(f"prefetch must be a positive int, got {prefetch!r}")
        if ack_mode == "first" and on_error is not None:
            raise ConfigError(
                "ack='first' is at-most-once: a failed message is already acked, "
                "so on_error cannot apply; use ack='on_success' to retry"
            )
        policy = check_policy(on_error if on_error is not None else Requeue())
        caps = bus.capabilities
        unopened: object = None
        if not self._custom_subscribe:
            # The subscription checks its pattern and options now (nothing is attached yet).
            unopened = bus.subscribe(pattern, queue=queue, prefetch=prefetch, **subscribe_options)

        dead_letter_topic: str | None = None
        if ack_mode != "first":
            chosen = policy if isinstance(policy, DeadLetter) else policy.dead_letter
            dead_letter_topic = chosen.topic or self.dead_letter_topic
            if dead_letter_topic is None and not caps.nack:
                raise ConfigError(
                    f"{bus.protocol} has no reject, so a message that fails for good needs a "
                    "dead-letter topic: DeadLetter(topic=...) in the policy or "
                    "Service(dead_letter_topic=...)"
                )
        # A requeue needs no retry route only where the queue is known to count deliveries;
        # elsewhere its deliveries tell at run time, and the route must be there already.
        counted = caps.nack and (
            declared_counting(bus.protocol, unopened, queue, self.declared_topology()) is True
        )
        needs_retry_topic = ack_mode != "first" and (
            isinstance(policy, Retry) or (isinstance(policy, Requeue) and not counted)
        )
        sources = [Source(pattern, queue, prefetch, dict(subscribe_options))]
        retry_topic: str | None = None
        if needs_retry_topic:
            if prefetch < 2:
                raise ConfigError(
                    f"subscriber {name!r}: prefetch must be >= 2 with this error policy on "
                    f"{bus.protocol}: retries come back through a private retry queue, which "
                    "takes a share of the prefetch (never more unacked messages than prefetch); "
                    "with Requeue, a queue declared as counting deliveries (a quorum Queue in "
                    "the connection's topology) needs none"
                )
            retry_share = max(1, prefetch // 5)
            sources[0] = Source(pattern, queue, prefetch - retry_share, dict(subscribe_options))
            if queue is not None:
                # Shared by every instance consuming the queue, like the queue itself.
                retry_topic = self.address(f"aiobus-retry-{safe_name(queue)}")
                retry_queue: str | None = f"{queue}-aiobus-retry"
            else:
                retry_topic = self.address(f"aiobus-retry-{safe_name(name)}-{self._instance}")
                retry_queue = None
            if not self._custom_subscribe:
                bus.subscribe(retry_topic, queue=retry_queue, prefetch=retry_share)
            sources.append(Source(retry_topic, retry_queue, retry_share, {}, trusted=True))
        spec = SubscriberSpec(
            name=name,
            pattern=pattern,
            invoker=invoker,
            queue=queue,
            prefetch=prefetch,
            concurrency=concurrency,
            ack=ack_mode,
            on_error=policy,
            key=key_func(key),
            dead_letter_topic=dead_letter_topic,
            options=dict(subscribe_options),
        )
        self._specs[name] = (spec, sources, retry_topic)

    @property
    def subscribers(self) -> dict[str, SubscriberSpec]:
        return {name: entry[0] for name, entry in self._specs.items()}

    def stats(self, name: str) -> SubscriberStats:
        """Counters of the subscriber ``name`` in the current (or last) run."""
        runner = self._runners.get(name)
        if runner is None:
            if name not in self._specs:
                raise KeyError(f"no subscriber named {name!r}")
            return SubscriberStats()
        return runner.stats

    # -- running --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def serve(self, *, drain_timeout: float | None = None) -> None:
        """Run every handler until cancelled (then drain and re-raise the cancellation), or
        until a subscription fails for good (then drain and raise its error)."""
        async with self.serving(drain_timeout=drain_timeout):
            await self._failed.wait()

    @contextlib.asynccontextmanager
    async def serving(self, *, drain_timeout: float | None = None) -> AsyncIterator[Service]:
        """Handlers run inside the block. On the way out: stop taking messages, let handlers
        in progress finish for up to ``drain_timeout`` seconds, cancel the rest (their
        messages go back to the broker unacked), publish pending delayed retries, close the
        subscriptions. No task the service started outlives the block."""
        if drain_timeout is not None:
            _check_seconds("drain_timeout", drain_timeout)
        if self._running:
            raise ConfigError("the service is already serving")
        self._running = True
        self._failure = None
        self._failed.clear()
        self.stopping.clear()
        try:
            self._warn_delivery_limits()
            await self._prepare_dead_letters()
            for name, (spec, sources, retry_topic) in self._specs.items():
                runner = Runner(self, spec, sources, retry_topic)
                self._runners[name] = runner
                await runner.start()
            yield self
        finally:
            await self._drain(self.drain_timeout if drain_timeout is None else drain_timeout)
            self._running = False
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._failed.set()

    async def _drain(self, timeout: float) -> None:
        self.stopping.set()
        runners = list(self._runners.values())
        for runner in runners:
            await runner.stop_reading()
        try:
            async with asyncio.timeout(timeout):
                for runner in runners:
                    await runner.wait_idle()
                await self.scheduler.flush()
        except TimeoutError:
            log.warning(
                "aiobus: handlers still running after drain_timeout=%ss; cancelling "
                "them, their messages go back to the broker",
                timeout,
            )
            for runner in runners:
                await runner.cancel_handlers()
            try:
                # Delayed retries own messages already acked: give them their own chance.
                async with asyncio.timeout(self.bus.options.close_timeout):
                    await self.scheduler.flush()
            except TimeoutError:
                log.error(
                    "aiobus: %d delayed retries could not be published in time", self.scheduler.busy
                )
                await self.scheduler.cancel()
        for runner in runners:
            await runner.close()
        replies, self._replies = self._replies, None
        if replies is not None:
            await replies.close()
        assert not any(r.busy for r in runners)
        assert not self.scheduler.busy

    # -- what the service checks and prepares when it starts -------------------------------

    def declared_topology(self) -> tuple[Any, ...]:
        """The topology items the connection declares: its ``topology=`` option and what
        ``bus.declare()`` added."""
        return self.bus.topology

    def _warn_delivery_limits(self) -> None:
        """A quorum queue drops (or dead-letters by its own policy) a message past its
        delivery limit: a ``Requeue`` allowing more attempts would never reach its own
        dead letter there."""
        topology = self.declared_topology()
        for spec, _, _ in self._specs.values():
            policy = spec.on_error
            if spec.ack == "first" or not isinstance(policy, Requeue):
                continue
            queue = declared_queue(spec.queue, topology)
            limit = quorum_delivery_limit(queue) if queue is not None else None
            if limit is not None and policy.max_attempts > limit:
                log.warning(
                    "aiobus: subscriber %s allows max_attempts=%d, but quorum queue %r has a "
                    "delivery limit of %d: the broker drops or dead-letters the message before "
                    "the service's own dead letter (raise x-delivery-limit or lower "
                    "max_attempts)",
                    spec.name,
                    policy.max_attempts,
                    spec.queue,
                    limit,
                )

    def dead_letter_topics(self) -> list[str]:
        """The dead-letter topics the registered subscribers publish to."""
        topics: list[str] = []
        for spec, _, _ in self._specs.values():
            topic = spec.dead_letter_topic
            if topic is not None and topic not in topics:
                topics.append(topic)
        return topics

    async def _prepare_dead_letters(self) -> None:
        """Declare a queue behind each dead-letter topic where the connection can, then check
        that something receives it where that can be checked: one WARNING per topic if not
        (the dead letters would wait unsettled, retried with backoff)."""
        bus = self.bus
        if self.dead_letter_queue is None or not can_hold_queue(bus):
            return
        for topic in self.dead_letter_topics():
            queue = queue_for(self.dead_letter_queue, topic)
            if self.declare_dead_letter_queue and (topic, queue) not in self._dead_letter_queues:
                try:
                    await declare_queue(bus, topic, queue)
                except Exception as exc:  # refused (permissions, a clashing queue): say so
                    log.warning(
                        "aiobus: could not declare dead-letter queue %r for %r: %r",
                        queue,
                        topic,
                        exc,
                    )
                else:
                    self._dead_letter_queues.add((topic, queue))
            try:
                exists = await queue_exists(bus, queue)
            except Exception as exc:  # the check is advice: it must not stop the service
                log.debug("aiobus: could not check dead-letter queue %r: %r", queue, exc)
                exists = None
            if exists is False:
                self.bus.notify("dead_letter_unreceived", describe_missing(topic, queue, exists))

    # -- publishing and requests ----------------------------------------------------------

    async def _send(self, call: Outbound) -> Confirm:
        return await self.bus.publish(call.topic, call.body, headers=call.headers, **call.options)

    async def _publish(self, call: Outbound) -> Confirm:
        return await publish_chain(self.middleware, self._send)(call)

    async def publish(
        self, topic: str, body: object, *, headers: dict[str, Any] | None = None, **options: Any
    ) -> Confirm:
        """``Connection.publish`` through the middleware; ``body`` may also be a dataclass,
        a pydantic model or a JSON scalar. Resolves on the broker's confirm."""
        data, content_type = encode_value(body)
        if content_type is not None and self.bus.capabilities.headers:
            # Only where messages carry properties (not MQTT 3.1.1, where an explicit
            # content type is a ConfigError).
            options.setdefault("content_type", content_type)
        return await self._publish(Outbound(topic, data, "publish", headers, options))

    async def request(
        self,
        topic: str,
        body: object,
        *,
        timeout: float = 30.0,
        response_type: Any = None,
        headers: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Publish a request and return the reply's body, decoded into ``response_type``
        (default: JSON / text / bytes by content type). Raises ``RequestTimeout`` if nobody
        answers in time, ``RemoteError`` if the handler raised, ``NotSupported`` where the
        protocol cannot carry a correlation id (MQTT 3.1.1), ``ServiceNotRunning`` outside
        ``serving()``."""
        _check_seconds("timeout", timeout)
        decode = decoder_for(_MISSING if response_type is None else response_type)
        replies = await self._reply_channel()
        data, content_type = encode_value(body)
        correlation_id = secrets.token_hex(16)
        options = {
            "content_type": content_type,
            **options,
            "correlation_id": correlation_id,
            "reply_to": replies.address,
        }
        if self.bus.capabilities.ttl:
            options.setdefault("ttl", timeout)  # a request nobody takes in time is moot
        waiter = replies.expect(correlation_id)
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self._publish(Outbound(topic, data, "request", headers, options))
                reply = await waiter
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(topic, timeout) from None
            raise
        finally:
            replies.forget(correlation_id)
        meta = self.carrier.unwrap(reply)
        if ERROR in meta:
            raise RemoteError(meta.get(ERROR_TYPE, "Exception"), meta[ERROR], topic=topic)
        return decode(reply)

    async def _reply_channel(self) -> ReplyChannel:
        if not self._running:
            raise ServiceNotRunning(
                "request() needs the service running: call it inside `async with svc.serving():`"
            )
        async with self._replies_lock:
            if self._replies is not None and not self._replies.alive:
                dead, self._replies = self._replies, None  # its subscription failed: anew
                await dead.close()
            if self._replies is None:
                channel = reply_channel_for(self.bus, self.open_subscription, self.address)
                await channel.open()
                self._replies = channel
            return self._replies


def _same(name: str) -> str:
    return name


def _check_backoff(value: object) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] <= value[1]
        or math.isinf(value[1])
    ):
        raise ConfigError(
            "dead_letter_backoff must be (first, most) seconds with 0 < first <= most, "
            f"got {value!r}"
        )


def _check_seconds(name: str, value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not value > 0
        or math.isinf(value)
    ):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
