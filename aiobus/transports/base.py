"""The small interface every protocol adapter implements.

An adapter owns only the wire: connect, write messages and report each one's outcome, attach
consumers, report that the link died. Reconnect, replay, deadlines, ordering, windows and states
live in the core and behave the same on every protocol.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..errors import ConfigError, MessageTooLarge, NotSupported

if TYPE_CHECKING:
    from ..auth import Credentials
    from ..message import Delivery
    from ..publishing import Outbox, Outgoing
    from ..url import Endpoint, Settings


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a protocol can do; the conformance suite asserts the typed error where it cannot."""

    nack: bool = True
    unroutable: bool = True
    headers: bool = True
    priority: bool = True
    ttl: bool = True
    retain: bool = False
    qos: bool = False
    shared_queue: bool = True
    delivery_count: bool = False
    topology: bool = False
    correlation: bool = True
    """A message carries ``correlation_id`` and ``reply_to`` (not on MQTT 3.1.1)."""
    reply: str = "topic"
    """How a requester receives replies: ``"topic"`` is a private subscription on a reply topic
    (any transport with per-connection subscriptions); adapters may name a native mechanism
    (RabbitMQ direct reply-to, an AMQP 1.0 dynamic node, an MQTT 5 response topic) that the
    service layer then uses instead."""


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    pattern: str
    queue: str | None = None
    durable: bool | None = None
    exclusive: bool | None = None
    prefetch: int = 100
    qos: int | None = None
    no_ack: bool = False
    exchange: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DeliverySink(Protocol):
    """Where a consumer puts deliveries: the subscription's bounded buffer."""

    capacity: int
    #: Deliveries the consumer dropped because the buffer was full and the broker would not
    #: keep them (MQTT QoS 0); the consumer counts them here.
    dropped: int

    def push(self, delivery: Delivery) -> bool:
        """Buffer a delivery; False (not kept) once the subscription has ended."""
        ...

    @property
    def room(self) -> int: ...

    @property
    def buffered(self) -> int: ...

    def on_space(self, callback: Callable[[], None] | None) -> None: ...


class LinkHooks:
    """The core's ears for one link. After the link is lost every call is ignored, so a dead
    link's late outcomes can never settle a message that was re-sent on a newer link."""

    __slots__ = (
        "_consumer_lost",
        "_lost",
        "_notify",
        "_outbox",
        "_settle_lost",
        "alive",
        "generation",
        "state",
    )

    def __init__(
        self,
        outbox: Outbox,
        generation: int,
        loop: asyncio.AbstractEventLoop,
        on_consumer_lost: Callable[[DeliverySink, BaseException], None] | None = None,
        on_settle_lost: Callable[[Delivery], None] | None = None,
        on_notify: Callable[[str, str, BaseException | None, int], None] | None = None,
        state: Any = None,
    ) -> None:
        self._outbox = outbox
        #: What the adapter keeps for the connection across its links
        #: (``Link.new_connection_state``): the same object for every link of a connection.
        self.state = state
        self._notify = on_notify
        self._lost: asyncio.Future[BaseException] = loop.create_future()
        self._consumer_lost = on_consumer_lost
        self._settle_lost = on_settle_lost
        self.alive = True
        self.generation = generation

    def settled(self, msg: Outgoing, broker_id: Any = None) -> None:
        if self.alive:
            self._outbox.settle(msg, broker_id)

    def failed(self, msg: Outgoing, exc: BaseException) -> None:
        """The per-message channel: this message fails alone (the broker refused it, or it
        cannot be sent as it is); the link stays up and the message is never re-sent."""
        if self.alive:
            self._outbox.fail(msg, exc)

    def too_large(self, msg: Outgoing, size: int, limit: int) -> None:
        """The broker refused by size without naming the message (MQTT DISCONNECT 0x95, an
        AMQP 0-9-1 channel closed with 406): the adapter found ``msg`` (encoded ``size``
        bytes) over the ``limit`` the broker states. It fails alone with ``MessageTooLarge``
        and the limit is checked at ``publish()`` from now on for this connection; the
        adapter then reports the link lost as usual, so the others in flight are re-sent or
        failed by their outage policy."""
        self._outbox.learn_size_limit(limit)
        if self.alive:
            self._outbox.fail(msg, MessageTooLarge(size, limit))

    def size_limit_stated(self, limit: int) -> None:
        """The broker announced its message size limit (AMQP 1.0 ``max-message-size`` on
        attach): ``publish()`` checks it from now on for this connection."""
        self._outbox.learn_size_limit(limit)

    def in_flight(self) -> list[Outgoing]:
        """The messages taken for this link and not settled yet, oldest first: where a
        broker refuses by size without naming the message, the adapter looks among these
        for the one(s) over the limit it states. Empty once the link is lost."""
        return list(self._outbox.in_flight.values()) if self.alive else []

    def waiting_tags(self) -> set[Any]:
        """The adapter handles (``Outgoing.tag``) of the messages waiting to be written,
        the re-sends of earlier links among them: an adapter whose handles outlive a link
        (MQTT packet ids on a resumed session) keeps new handles clear of these. A scan of
        the queue: for a link's start, not per message."""
        return {msg.tag for msg in self._outbox.queue.values() if msg.tag is not None}

    @property
    def size_limit(self) -> int | None:
        """The smallest size limit a broker's refusal taught this connection, if any:
        ``Link.encode`` fails a larger message alone instead of writing it."""
        return self._outbox.size_limit

    def for_side_link(self, loop: asyncio.AbstractEventLoop, state: Any = None) -> LinkHooks:
        """Hooks for a short-lived link an adapter opens for its own purposes (MQTT 3.1.1
        ends a session by a clean connect): it publishes and attaches nothing, so it needs
        no ears of the core beyond knowing when it dies; ``state`` is its own."""
        return LinkHooks(self._outbox, self.generation, loop, state=state)

    def lost(self, exc: BaseException) -> None:
        """The link is dead. Safe to call more than once and from any callback."""
        if self.alive:
            self.alive = False
            if not self._lost.done():
                self._lost.set_result(exc)

    async def wait_lost(self) -> BaseException:
        return await asyncio.shield(self._lost)

    def notify(
        self, kind: str, reason: str, error: BaseException | None = None, *, dropped: int = 0
    ) -> None:
        """Tell the application something happened on this link that it cannot see
        otherwise (AMQP 1.0: an inbound message that could not be decoded and was settled,
        ``delivery_undecodable``; MQTT: QoS 0 messages dropped for a full subscription,
        ``deliveries_dropped`` with their number in ``dropped``): an ``Event`` of ``kind`` in
        ``events()`` and a log line. Ignored once the link is lost."""
        if self.alive and self._notify is not None:
            self._notify(kind, reason, error, dropped)

    def settle_lost(self, delivery: Delivery) -> None:
        """``process()`` handled ``delivery`` but its link died before it could be settled:
        the core reports it (the link is dead, so unlike the others this is not ignored)."""
        if self._settle_lost is not None:
            self._settle_lost(delivery)

    def consumer_lost(self, sink: DeliverySink, exc: BaseException) -> None:
        """The broker ended one consumer (queue deleted, link detached) while the link lives:
        the core re-attaches that subscription once, or fails it loudly."""
        if self.alive and self._consumer_lost is not None:
            self._consumer_lost(sink, exc)


#: Why a consumer is cancelled: its subscription left its ``async with`` (normally or by an
#: exception), its task was cancelled, the connection is closing, or the application called
#: ``Subscription.unsubscribe()``. An adapter may keep broker state for some of them (MQTT
#: keeps a persistent session's subscription for every one but ``"unsubscribe"``).
CancelReason = Literal["leave", "cancelled", "closing", "unsubscribe"]


class Consumer(ABC):
    """A consumer attached on one link; deliveries settle through it."""

    protocol: ClassVar[str] = ""
    can_nack: ClassVar[bool] = True

    def __init__(self, hooks: LinkHooks) -> None:
        self._hooks = hooks
        self.cancelled = False
        #: What the broker granted at attach, as the adapter reports it (MQTT: ``"qos"``,
        #: the QoS of the SUBACK); ``Subscription`` shows it.
        self.granted: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self._hooks.alive and not self.cancelled

    @property
    def hooks(self) -> LinkHooks:
        """The hooks of the link this consumer is attached on."""
        return self._hooks

    def settle_lost(self, delivery: Delivery) -> None:
        self._hooks.settle_lost(delivery)

    @abstractmethod
    async def ack(self, delivery: Delivery) -> None: ...

    @abstractmethod
    async def nack(self, delivery: Delivery, requeue: bool) -> None: ...

    @abstractmethod
    async def cancel(self, *, reason: CancelReason) -> None:
        """Stop consuming; unsettled deliveries go back to the broker (where the protocol
        can give them back; nothing the application did not ack is ever acknowledged).
        ``reason`` says why (``CancelReason``)."""


class Link(ABC):
    """One connection attempt's worth of wire. A new instance per attempt."""

    protocol: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(
        self,
        settings: Settings,
        endpoint: Endpoint | None,
        credentials: Credentials | None,
        hooks: LinkHooks,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.credentials = credentials
        self.hooks = hooks
        #: A cap the broker imposes on unsettled publishes (MQTT receive maximum, credit).
        self.max_in_flight: int | None = None

    @classmethod
    def capabilities_for(cls, settings: Settings) -> Capabilities:
        """What this protocol can do with these settings (MQTT 3.1.1 and 5 differ); by default
        the class's ``capabilities``."""
        return cls.capabilities

    # -- checks made at the call, before anything is queued -------------------------------

    @classmethod
    def new_connection_state(cls, settings: Settings) -> Any:
        """What this adapter keeps for one connection across its links (MQTT: the session:
        client id, packet-id counter, what the broker said in CONNACK, QoS 2 flows). The
        core makes it once per connection and hands the same object to every link
        (``LinkHooks.state``) and to ``check_publish``; it goes with the connection. None by
        default."""
        return None

    @classmethod
    @abstractmethod
    def check_publish(cls, settings: Settings, msg: Outgoing) -> None:
        """Raise InvalidTopic / ConfigError / MessageTooLarge; fill protocol defaults."""

    @classmethod
    def check_publish_in(cls, settings: Settings, msg: Outgoing, state: Any) -> None:
        """``check_publish`` with the connection's ``state`` (``new_connection_state``), for
        limits a broker stated; the core calls this instead where the state is not None.
        By default the state is not needed."""
        cls.check_publish(settings, msg)

    @classmethod
    def check_subscribe(cls, settings: Settings, spec: SubscriptionSpec) -> None:
        """Raise InvalidTopic / ConfigError for what the protocol cannot honour."""
        if spec.extra:
            raise ConfigError(
                f"unknown subscribe options for {cls.protocol}: {', '.join(sorted(spec.extra))}"
            )

    # -- the wire -------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise a ConnectError subclass (permanent or transient) on failure."""

    @abstractmethod
    async def close(self) -> None:
        """Close politely; must return promptly even if the peer is gone. The core runs it
        within the close's deadline and calls ``abort()`` after, however it ended."""

    @abstractmethod
    async def abort(self) -> None:
        """Cut whatever is still open at once (the socket aborted, timers cancelled), after
        a ``close()`` that finished, failed or was cut short by the close deadline, and
        return once the driver's own tasks have ended (promptly: nothing waits for the peer
        any more). Idempotent."""

    # The adapter seam has two failure channels, kept apart by the core:
    #
    # - ``encode(msg)`` is per message. Whatever it raises fails that message alone (the core
    #   turns a driver's exception into ``InvalidMessage``); it is never written and never
    #   re-sent. Encoding belongs here, not in ``publish``, so that no driver error about one
    #   message's content can reach the wire channel.
    # - ``publish(batch)`` is the wire. Raising (or ``hooks.lost``) means the link is dead:
    #   the messages in flight are re-sent on the next link or failed by outage policy.
    #   An outcome the broker gives for one message goes through ``hooks.settled`` or
    #   ``hooks.failed`` (or ``hooks.too_large``), never through the link.

    def withdraw(self, msg: Outgoing) -> bool:
        """Give back ``msg``, taken for this link by ``publish`` but not written to the wire
        yet (AMQP 1.0 holds messages until a sender has credit), at its deadline or on its
        cancellation: True when the adapter held it and dropped it (it is never sent after),
        False when it may already be on the wire. By default ``publish`` writes at once."""
        return False

    #: False where ``encode`` has nothing to do, so the pump skips the call per message.
    encodes: ClassVar[bool] = True

    @classmethod
    def encoded_size(cls, settings: Settings, msg: Outgoing) -> int:
        """The message's size as the broker counts it against its limit, for the check at
        ``publish()`` once a broker's refusal taught the connection a limit; by default the
        body's length."""
        return len(msg.body)

    def encode(self, msg: Outgoing) -> None:
        """Make ``msg`` ready for this link: check it against this link's limits (the
        broker's maximum sizes, ``hooks.size_limit``) and store its encoded form in
        ``msg.wire``. Called for every send (a re-send after a reconnect encodes again).
        Raise for a message that cannot be sent as it is. By default the body is the
        encoded form."""
        msg.wire = msg.body

    @abstractmethod
    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Write the encoded messages in order; report each outcome through ``hooks``
        later. Raising means the wire is dead."""

    @abstractmethod
    async def attach(self, spec: SubscriptionSpec, sink: DeliverySink) -> Consumer: ...

    async def declare(self, items: Sequence[Any]) -> None:
        raise NotSupported(f"{self.protocol} has no declarative topology")

    @property
    def raw(self) -> Any:
        """The driver's own connection object: outside aiobus's guarantees."""
        return None

    @property
    def client_id(self) -> str | None:
        """The identity the broker knows this client by, where the protocol has one."""
        return None

    def end_session(self) -> None:  # noqa: B027  (most protocols keep no session)
        """Called before a polite ``close()`` by ``Connection.close(end_session=True)``: the
        close also ends what the broker keeps for this client beyond the connection."""
