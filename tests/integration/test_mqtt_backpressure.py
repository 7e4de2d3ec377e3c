"""MQTT backpressure against the real brokers: per subscription on the way in (a full
subscription holds only its own QoS 1/2 messages, within the Receive Maximum aiobus sends, and
drops QoS 0, counted and reported), write backpressure on the way out (QoS 0 included), and
QoS 2 completed only once the message is in a buffer, so a link loss cannot lose it."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest

import aiobus
from aiobus.faultproxy import FaultProxy
from tests.helpers import Pushes, through_outage
from tests.helpers import unique as uniq
from tests.integration.mqtt_support import link_of

FAST = {"backoff_initial": 0.01, "backoff_max": 0.3}


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(
    params=[
        pytest.param("mosquitto", marks=pytest.mark.mosquitto),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    """An MQTT URL of Mosquitto 2 or RabbitMQ 4 (QoS 0/1 only)."""
    if request.param == "mosquitto":
        return str(request.getfixturevalue("mosquitto").url)
    return str(request.getfixturevalue("rabbitmq").mqtt_url)


async def _take(sub: aiobus.Subscription, count: int) -> list[str]:
    got = []
    for _ in range(count):
        msg = await sub.get(timeout=10)
        got.append(msg.text())
        await msg.ack()
    return got


# -- inbound: per subscription ------------------------------------------------------------------


async def test_a_full_subscription_holds_only_its_own_messages(
    broker_url: str, protocol: int
) -> None:
    """One subscription full (QoS 1, nobody reading): another on the same connection keeps
    receiving, and this connection's own publishes keep confirming (PUBACKs are read)."""
    root = uniq()
    slow_topic, fast_topic, own_topic = f"{root}/slow", f"{root}/fast", f"{root}/own"
    async with aiobus.connect(broker_url, protocol=protocol, **FAST) as bus:
        async with (
            bus.subscribe(slow_topic, prefetch=2, qos=1) as slow,
            bus.subscribe(fast_topic, qos=1) as fast,
        ):
            pushes = Pushes(slow)
            async with aiobus.connect(broker_url, protocol=protocol, **FAST) as pub:
                # 2 fill the buffer, 3 wait unacked in the link: 5 slots of the broker's
                # window (RabbitMQ 10, Mosquitto 20), so the rest of it serves the others.
                await asyncio.gather(*(pub.publish(slow_topic, str(i)) for i in range(5)))
                await pushes.until(lambda: slow.room == 0)
                await asyncio.gather(*(pub.publish(fast_topic, str(i)) for i in range(30)))
                assert await _take(fast, 30) == [str(i) for i in range(30)]
            async with asyncio.timeout(10):
                await asyncio.gather(*(bus.publish(own_topic, str(i)) for i in range(50)))
            assert slow.buffered == 2 and bus.state is aiobus.State.CONNECTED
            assert await _take(slow, 5) == [str(i) for i in range(5)]
            assert slow.dropped == 0


async def test_qos0_for_a_full_subscription_is_dropped_counted_and_reported(
    broker_url: str, protocol: int
) -> None:
    """A QoS 0 flood to a full subscription: the surplus is dropped (the broker does not keep
    QoS 0), counted in ``Subscription.dropped`` and reported once in ``events()``; the socket
    is never paused, so another subscription and this connection's confirms go on."""
    root = uniq()
    slow_topic, fast_topic, own_topic = f"{root}/slow", f"{root}/fast", f"{root}/own"
    count = 3000
    async with aiobus.connect(broker_url, protocol=protocol, **FAST) as bus:
        async with (
            bus.events() as events,
            bus.subscribe(slow_topic, prefetch=6, qos=0) as slow,
            bus.subscribe(fast_topic, qos=1) as fast,
        ):
            async with aiobus.connect(broker_url, protocol=protocol, **FAST) as pub:
                flood = [pub.publish(slow_topic, str(i), qos=0) for i in range(count)]
                own = [bus.publish(own_topic, str(i), qos=1) for i in range(200)]
                async with asyncio.timeout(20):
                    await asyncio.gather(*flood, *own)
                # Published after the flood on the same connection: once these are here,
                # every flood message has reached us (or was dropped by the broker itself).
                await asyncio.gather(*(pub.publish(fast_topic, str(i)) for i in range(20)))
                assert await _take(fast, 20) == [str(i) for i in range(20)]
            assert slow.buffered == 6
            assert slow.dropped == count - 6
            assert await _take(slow, 6) == [str(i) for i in range(6)]
            await events.aclose()
            seen = [e async for e in events]
            reports = [e for e in seen if e.kind == "deliveries_dropped"]
            assert [e.dropped for e in reports] == [count - 6]
            assert slow_topic in reports[0].reason
            assert not [e for e in seen if e.kind == "link_lost"]


def _unacked_in_flight(bus: aiobus.Connection) -> tuple[list[int], dict[str, int]]:
    """Watch how many QoS 1 messages the broker has in flight to us (delivered, not
    PUBACKed) at each arrival."""
    client = link_of(bus)._client
    assert client is not None
    seen: list[int] = []
    state = {"open": 0}
    on_message = client.on_message
    ack = client.ack

    def arrived(c: Any, userdata: Any, msg: Any) -> None:
        if msg.qos == 1:
            state["open"] += 1
            seen.append(state["open"])
        on_message(c, userdata, msg)

    def acked(mid: int, qos: int) -> Any:
        if qos == 1:
            state["open"] -= 1
        return ack(mid, qos)

    client.on_message = arrived
    client.ack = acked  # type: ignore[method-assign]
    return seen, state


@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("options", "window"),
    [({"prefetch": 4}, 4), ({"prefetch": 50, "receive_maximum": 3}, 3)],
    ids=["prefetch", "receive_maximum"],
)
async def test_receive_maximum_bounds_what_the_broker_sends(
    mosquitto: Any, options: dict[str, Any], window: int
) -> None:
    """MQTT 5 CONNECT carries Receive Maximum: ``receive_maximum``, else the connection's
    ``prefetch`` (without it Mosquitto sends 20, its own limit), however large the
    subscription's buffer: the broker sends that many and no more until we PUBACK.

    Only the first window is asserted exactly: Mosquitto 2.0.11 can go over a client's
    Receive Maximum after PUBACKs (eclipse-mosquitto/mosquitto#2301)."""
    topic = f"{uniq()}/window"
    async with aiobus.connect(mosquitto.url, protocol=5, **options, **FAST) as bus:
        seen, state = _unacked_in_flight(bus)
        async with bus.subscribe(topic, qos=1, prefetch=100) as sub:
            pushes = Pushes(sub)
            async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as pub:
                await asyncio.gather(*(pub.publish(topic, str(i)) for i in range(40)))
            await pushes.until(lambda: sub.buffered >= window)
            # A round trip on our connection: what the broker had sent before it is read.
            await bus.publish(f"{topic}/other", b"x")
            assert seen == list(range(1, window + 1))
            assert await _take(sub, 40) == [str(i) for i in range(40)]
        assert state["open"] == 0


# -- outbound: write backpressure ---------------------------------------------------------------


@pytest.mark.mosquitto
async def test_qos0_publishes_wait_for_a_slow_link_within_max_buffered(
    mosquitto: Any, protocol: int
) -> None:
    """A link that takes nothing (black-holed): QoS 0 publishes stop resolving once the
    transport is paused, wait in the outbox, and ``max_buffered`` refuses more at the call
    (``BufferFull``) instead of the transport's buffer growing without bound; when the link
    flows again they all go out."""
    topic = f"{uniq()}/slow-link"
    url = urlsplit(mosquitto.url)
    assert url.hostname is not None and url.port is not None
    body = bytes(128 * 1024)
    async with FaultProxy(url.hostname, url.port) as proxy:
        async with aiobus.connect(
            proxy.rewrite(mosquitto.url), protocol=protocol, max_buffered=20, **FAST
        ) as bus:
            link = link_of(bus)
            assert link._pipe is not None and link._pipe.transport is not None
            transport = link._pipe.transport
            proxy.blackhole()
            futures: list[Any] = []
            with pytest.raises(aiobus.BufferFull):
                # 40 MiB: far more than the socket buffers of the path take. Without write
                # backpressure every one of them resolves, written into the transport.
                for _ in range(320):
                    fut = bus.publish(topic, body, qos=0)
                    futures.append(fut)
                    await asyncio.wait({fut}, timeout=0.1)
            unresolved = [f for f in futures if not f.done()]
            assert 0 < len(unresolved) <= 20
            assert transport.get_write_buffer_size() < 1024 * 1024
            proxy.restore()
            async with asyncio.timeout(20):
                await asyncio.gather(*futures)


# -- QoS 2: exactly once to the application across a link loss -----------------------------------


@pytest.mark.mosquitto
async def test_qos2_held_for_a_full_subscription_survives_a_link_loss(mosquitto: Any) -> None:
    """QoS 2 messages released while the subscription's buffer is full are not completed
    (no PUBCOMP) until they are in it: the link dies, the broker releases them again on the
    resumed session, and the application gets each exactly once, in order."""
    topic = f"{uniq()}/qos2-held"
    opts = dict(protocol=5, client_id=uniq("q2held"), session_expiry=60, **FAST)
    async with aiobus.connect(mosquitto.url, **opts) as bus:
        async with bus.subscribe(topic, qos=2, prefetch=1) as sub:
            link = link_of(bus)
            client = link._client
            assert client is not None
            released = asyncio.Event()
            count = 0
            handle_pubrel = client._handle_pubrel

            def counting() -> Any:
                nonlocal count
                rc = handle_pubrel()
                count += 1
                if count == 3:
                    released.set()
                return rc

            client._handle_pubrel = counting  # type: ignore[method-assign]
            async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as pub:
                await asyncio.gather(*(pub.publish(topic, str(i), qos=2) for i in range(3)))
                await asyncio.wait_for(released.wait(), 10)
                # One in the buffer, two released and waiting for room: the link dies now.
                assert sub.buffered == 1
                await through_outage(bus, lambda: link._pipe.transport.abort(), timeout=10)
                assert await _take(sub, 3) == ["0", "1", "2"]
                with pytest.raises(TimeoutError):
                    await sub.get(timeout=0.5)
                # The broker's QoS 2 flow for this client is not stuck: the next one arrives.
                await pub.publish(topic, b"next", qos=2)
                assert (await sub.get(timeout=5)).body == b"next"
