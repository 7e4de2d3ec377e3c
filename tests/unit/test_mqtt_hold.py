"""The MQTT consumer's side of backpressure, as pure logic: what a full subscription holds,
what it drops, and when a burst of drops is reported (the brokers' side is in
tests/integration/test_mqtt_backpressure.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from paho.mqtt.client import MQTTMessage

from aiobus.message import Delivery
from aiobus.settings import MqttOptions
from aiobus.transports.base import SubscriptionSpec
from aiobus.transports.mqtt_receive import Inbound, MqttConsumer


class _Sink:
    """A bounded buffer the test drains by hand."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self.items: list[Delivery] = []
        self.callback: Callable[[], None] | None = None

    def push(self, delivery: Delivery) -> bool:
        self.items.append(delivery)
        return True

    @property
    def room(self) -> int:
        return max(0, self.capacity - len(self.items))

    @property
    def buffered(self) -> int:
        return len(self.items)

    def on_space(self, callback: Callable[[], None] | None) -> None:
        self.callback = callback

    def take(self) -> Delivery:
        item = self.items.pop(0)
        if self.callback is not None:
            self.callback()
        return item


class _Hooks:
    alive = True

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def notify(
        self, kind: str, reason: str, error: BaseException | None = None, *, dropped: int = 0
    ) -> None:
        self.events.append((kind, dropped))


class _Link:
    def __init__(self) -> None:
        self.opts = MqttOptions()
        self.released: list[int] = []
        self.completed: list[int] = []

    def release(self, inbound: Inbound) -> None:
        self.released.append(inbound.mid)

    def handed_over(self, inbound: Inbound, key: object) -> None:
        self.completed.append(inbound.mid)


def _consumer(capacity: int) -> tuple[MqttConsumer, _Sink, _Hooks, _Link]:
    sink, hooks, link = _Sink(capacity), _Hooks(), _Link()
    hooks_: Any = hooks
    link_: Any = link
    consumer = MqttConsumer(hooks_, link_, SubscriptionSpec("t/#"), sink, "t/#", 1)
    return consumer, sink, hooks, link


def _offer(consumer: MqttConsumer, sink: _Sink, mid: int, qos: int) -> None:
    msg = MQTTMessage(mid, b"t/x")
    msg.qos = qos
    msg.payload = str(mid).encode()
    inbound = Inbound(mid, 1) if qos else None
    fields: Any = ({}, None, None, None, None)
    now = datetime.now(UTC)
    if consumer.held or sink.room <= 0:
        consumer.hold(msg, "t/x", inbound, fields, now)
    else:
        consumer.deliver(msg, "t/x", inbound, fields, now)


def test_a_burst_of_qos0_drops_is_reported_once_when_the_buffer_is_half_empty() -> None:
    consumer, sink, hooks, _ = _consumer(4)
    for mid in range(10):
        _offer(consumer, sink, mid, 0)
    assert sink.buffered == 4 and sink.dropped == 6 and hooks.events == []
    sink.take()
    _offer(consumer, sink, 10, 0)  # room for one: taken, the burst goes on
    _offer(consumer, sink, 11, 0)
    assert sink.dropped == 7 and hooks.events == []
    sink.take()
    assert hooks.events == []  # one in four free: still behind
    sink.take()
    assert hooks.events == [("deliveries_dropped", 7)]
    assert sink.callback is None  # nothing to do per take any more
    for mid in range(12, 20):
        _offer(consumer, sink, mid, 0)
    sink.take()
    sink.take()
    assert hooks.events == [("deliveries_dropped", 7), ("deliveries_dropped", 6)]
    assert sink.dropped == 13


def test_qos1_and_2_for_a_full_buffer_wait_in_order_and_are_never_dropped() -> None:
    consumer, sink, hooks, link = _consumer(2)
    for mid in range(1, 7):
        _offer(consumer, sink, mid, 1 if mid % 2 else 2)
    assert [d.tag for d in sink.items] == [1, 2]
    assert len(consumer.held) == 4 and sink.dropped == 0
    assert link.completed == [2]  # QoS 2 is completed only once it is in the buffer
    _offer(consumer, sink, 7, 0)  # QoS 0 behind held messages is dropped, not reordered
    got = []
    while sink.items:
        got.append(sink.take().tag)
    assert got == [1, 2, 3, 4, 5, 6]
    assert link.completed == [2, 4, 6]
    assert sink.dropped == 1 and not consumer.held and sink.callback is None
    assert hooks.events == [("deliveries_dropped", 1)]
