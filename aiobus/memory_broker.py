"""An in-process broker with the semantics of the real ones, and faults a test can drive.

Topic routing with wildcards (RabbitMQ topic-exchange or MQTT syntax, per binding), private
queues per subscriber, named queues shared by competing consumers, prefetch, ack / nack /
requeue with ``redelivered`` and a delivery count, confirms, mandatory returns, TTL, MQTT-style
retained messages, and fault injection: kill every link now, refuse connections, require
credentials, nack the next N publishes, hold confirms back.

Connections reach a broker by name (``memory://name``); ``aiobus.testing`` gives each test a
fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError
from .topics import TopicMatcher, is_wildcard

if TYPE_CHECKING:
    from .transports.memory import MemoryConsumer, MemoryLink


class Stored:
    """A message as the broker holds it."""

    __slots__ = (
        "body",
        "content_type",
        "correlation_id",
        "delivery_count",
        "expires",
        "headers",
        "message_id",
        "priority",
        "qos",
        "redelivered",
        "reply_to",
        "retain",
        "timestamp",
        "topic",
    )

    def __init__(self, topic: str, body: bytes, **props: Any) -> None:
        self.topic = topic
        self.body = body
        self.headers: dict[str, Any] | None = props.get("headers")
        self.content_type: str | None = props.get("content_type")
        self.message_id: str | None = props.get("message_id")
        self.correlation_id: str | None = props.get("correlation_id")
        self.reply_to: str | None = props.get("reply_to")
        self.priority: int | None = props.get("priority")
        self.qos: int | None = props.get("qos")
        self.retain: bool = props.get("retain", False)
        self.expires: float | None = props.get("expires")
        self.timestamp: float = props.get("timestamp", 0.0)
        self.redelivered = False
        self.delivery_count = 0

    def copy(self) -> Stored:
        other = Stored.__new__(Stored)
        for name in Stored.__slots__:
            setattr(other, name, getattr(self, name))
        return other


class MemoryQueue:
    def __init__(self, broker: MemoryBroker, name: str, owner: MemoryLink | None) -> None:
        self.broker = broker
        self.name = name
        #: The link of a private (exclusive, auto-delete) queue; None for a named shared one.
        self.owner = owner
        self.messages: deque[Stored] = deque()
        self.consumers: list[MemoryConsumer] = []
        self._next = 0
        self._dispatching = False

    def __repr__(self) -> str:
        ready, consumers = len(self.messages), len(self.consumers)
        return f"<MemoryQueue {self.name!r} {ready} ready {consumers} consumers>"

    def enqueue(self, stored: Stored) -> None:
        self.messages.append(stored)
        if self.consumers:
            self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, round robin (competing consumers)."""
        if self._dispatching:
            return  # re-entered from a consumer's callback: the outer loop carries on
        self._dispatching = True
        try:
            messages, consumers = self.messages, self.consumers
            now = 0.0
            while messages and consumers:
                n = len(consumers)
                for i in range(n):
                    consumer = consumers[(self._next + i) % n]
                    if consumer.has_room():
                        self._next = (self._next + i + 1) % n
                        break
                else:
                    return
                stored = messages.popleft()
                if stored.expires is not None:
                    now = now or time.monotonic()
                    if stored.expires <= now:
                        continue
                consumer.deliver(stored)
        finally:
            self._dispatching = False

    def requeue(self, stored: Iterable[Stored]) -> None:
        """Back to the head of the queue, in their original order, marked redelivered."""
        items = list(stored)
        for s in items:
            s.redelivered = True
        self.messages.extendleft(reversed(items))


class MemoryBroker:
    _registry: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, MemoryQueue] = {}
        self._exact: dict[str, list[MemoryQueue]] = {}
        self._wild: list[tuple[TopicMatcher, MemoryQueue]] = []
        self._bindings: set[tuple[str, str, str]] = set()
        self.retained: dict[str, Stored] = {}
        self.links: set[MemoryLink] = set()
        self.dead_lettered: list[tuple[Stored, str]] = []
        #: Fault controls.
        self.refusing = False
        self.credentials: tuple[str, str | None] | None = None
        self.nack_budget = 0
        self.holding = False
        self._held: list[tuple[Any, Callable[[], None]]] = []
        #: While set, every consumer attach waits here first (``attaches_held``).
        self.attach_gate: asyncio.Event | None = None
        #: Attaches waiting at the gate right now.
        self.attaches_waiting = 0
        self.published = 0
        self.connects = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    # -- the registry ----------------------------------------------------------------------

    @classmethod
    def get(cls, name: str) -> MemoryBroker:
        broker = cls._registry.get(name)
        if broker is None:
            broker = cls._registry[name] = MemoryBroker(name)
        return broker

    @classmethod
    def drop(cls, name: str) -> None:
        broker = cls._registry.pop(name, None)
        if broker is not None:
            broker.kill_links("broker dropped")

    def url(self, topics: str = "amqp") -> str:
        """The URL that reaches this broker (``topics="mqtt"`` routes like an MQTT broker)."""
        suffix = "?topics=mqtt" if topics == "mqtt" else ""
        return f"memory://{self.name}{suffix}"

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.name!r} {len(self.queues)} queues {len(self.links)} links>"

    # -- faults a test drives --------------------------------------------------------------

    def kill_links(self, reason: str = "killed by the test") -> int:
        """Every link dies now, as if the broker process were killed. Returns how many."""
        links = list(self.links)
        for link in links:
            link.die(reason)
        return len(links)

    def refuse_connections(self, refuse: bool = True) -> None:
        self.refusing = refuse

    def require_credentials(self, username: str | None, password: str | None = None) -> None:
        """Only these credentials may connect from now on (None: anyone)."""
        self.credentials = None if username is None else (username, password)

    def nack_next(self, count: int) -> None:
        """The next ``count`` publishes are refused (as basic.nack would)."""
        self.nack_budget += count

    @contextmanager
    def confirms_held(self) -> Iterator[None]:
        """Withhold every publish outcome inside the block; release them on exit."""
        self.hold_confirms()
        try:
            yield
        finally:
            self.release_confirms()

    def hold_confirms(self) -> None:
        self.holding = True

    def release_confirms(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for link, settle in held:
            if link.hooks.alive:
                settle()

    def hold_attaches(self) -> None:
        """Every consumer attach waits until ``release_attaches()``: a test can enter or
        leave subscriptions while a restore is half done."""
        if self.attach_gate is None:
            self.attach_gate = asyncio.Event()

    def release_attaches(self) -> None:
        gate, self.attach_gate = self.attach_gate, None
        if gate is not None:
            gate.set()

    async def _pass_attach_gate(self) -> None:
        gate = self.attach_gate
        if gate is None:
            return
        self.attaches_waiting += 1
        self._check_waiters()
        try:
            await gate.wait()
        finally:
            self.attaches_waiting -= 1

    def hold(self, link: Any, settle: Callable[[], None]) -> None:
        self._held.append((link, settle))

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (bounded) until ``condition()`` holds; checked after every publish the broker
        routes, so a test can wait for "10 messages written" without polling."""
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _check_waiters(self) -> None:
        for condition, future in list(self._waiters):
            if not future.done() and condition():
                future.set_result(None)

    # -- topology --------------------------------------------------------------------------

    def declare_queue(self, name: str, owner: MemoryLink | None) -> MemoryQueue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = MemoryQueue(self, name, owner)
        elif queue.owner is not None and queue.owner is not owner:
            raise ConfigError(f"queue {name!r} is exclusive to another connection")
        return queue

    def bind(self, queue: MemoryQueue, pattern: str, syntax: str) -> None:
        key = (queue.name, pattern, syntax)
        if key in self._bindings:
            return
        self._bindings.add(key)
        if is_wildcard(pattern, syntax):  # type: ignore[arg-type]
            self._wild.append((TopicMatcher(pattern, syntax), queue))  # type: ignore[arg-type]
        else:
            self._exact.setdefault(pattern, []).append(queue)
        if self.retained and syntax == "mqtt":
            matcher = TopicMatcher(pattern, "mqtt")
            for topic, stored in self.retained.items():
                if matcher.matches(topic):
                    queue.enqueue(stored.copy())

    def delete_queue(self, queue: MemoryQueue) -> int:
        """Remove a queue and its bindings; returns how many messages were dropped."""
        if self.queues.get(queue.name) is not queue:
            return 0
        del self.queues[queue.name]
        self._bindings = {b for b in self._bindings if b[0] != queue.name}
        self._wild = [(m, q) for m, q in self._wild if q is not queue]
        for topic in list(self._exact):
            remaining = [q for q in self._exact[topic] if q is not queue]
            if remaining:
                self._exact[topic] = remaining
            else:
                del self._exact[topic]
        dropped = len(queue.messages)
        queue.messages.clear()
        for consumer in list(queue.consumers):
            consumer.ended_by_broker(f"queue {queue.name!r} was deleted")
        return dropped

    # -- routing ---------------------------------------------------------------------------

    def route(self, stored: Stored) -> int:
        """Put a copy in every queue with a matching binding; returns how many."""
        self.published += 1
        if self._waiters:
            self._check_waiters()
        topic = stored.topic
        if stored.retain:
            if stored.body:
                self.retained[topic] = stored.copy()
            else:
                self.retained.pop(topic, None)  # an empty retained message clears it (MQTT)
        queues = self._exact.get(topic)
        targets: list[MemoryQueue] = list(queues) if queues else []
        for matcher, queue in self._wild:
            if matcher.matches(topic) and queue not in targets:
                targets.append(queue)
        if len(targets) == 1:
            targets[0].enqueue(stored)
        else:
            for queue in targets:
                queue.enqueue(stored.copy())
        return len(targets)
