"""How an MQTT subscription or connection ends (issue 12), against the private Mosquitto 2
and RabbitMQ 4:
nothing the application did not ack is PUBACKed, a persistent session keeps its subscription
on every exit but an explicit unsubscribe, ``end_session`` ends it, and the client id a
persistent session needs is checked and reported."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import aiobus
from tests.helpers import Pushes, mqtt_persistent_session, unique
from tests.integration.mqtt_support import link_of

FAST = {"backoff_initial": 0.01, "backoff_max": 0.3, "close_timeout": 3}


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(
    params=[
        pytest.param("mosquitto", marks=pytest.mark.mosquitto),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    broker = request.getfixturevalue(request.param)
    return str(broker.mqtt_url if request.param == "rabbitmq" else broker.url)


def persistent(protocol: int, client_id: str) -> dict[str, Any]:
    return mqtt_persistent_session(protocol, client_id, **FAST)


async def publish(url: str, protocol: int, topic: str, bodies: list[str]) -> None:
    async with aiobus.connect(url, protocol=protocol, **FAST) as bus:
        await asyncio.gather(*(bus.publish(topic, body, qos=1) for body in bodies))


async def hold_five(
    sub: aiobus.Subscription, url: str, protocol: int, topic: str
) -> list[aiobus.Delivery]:
    """"0" to "4" published; two in hand, three in the buffer, none acked."""
    pushes = Pushes(sub)
    await publish(url, protocol, topic, [str(n) for n in range(5)])
    in_hand = [await sub.get(timeout=10), await sub.get(timeout=10)]
    await pushes.until(lambda: sub.buffered >= 3)
    return in_hand


async def take(sub: aiobus.Subscription, count: int) -> list[str]:
    bodies = []
    for _ in range(count):
        msg = await sub.get(timeout=10)
        bodies.append(msg.text())
        await msg.ack()
    with pytest.raises(TimeoutError):  # and nothing more (no duplicate)
        await sub.get(timeout=0.3)
    return bodies


async def test_left_unacked_hold_their_window_share_only_and_come_back(
    url: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription that leaves a live connection PUBACKs nothing: another subscription
    on that connection still receives (the messages left unacked hold that many slots of
    the broker's window: Mosquitto's 20, RabbitMQ's 10), and the next connection of the
    session gets them, with what was published after the leave, in order."""
    topic, other, client_id = f"{unique()}/jobs", f"{unique()}/other", unique("w")
    options = persistent(protocol, client_id)
    async with aiobus.connect(url, **options) as bus:
        async with bus.subscribe(topic, qos=1, prefetch=10) as sub:
            await hold_five(sub, url, protocol, topic)
        # Left normally: the persistent session keeps the subscription (no UNSUBSCRIBE), so
        # what the broker still sends for it here waits unacknowledged for the next run.
        await publish(url, protocol, topic, ["5", "6"])
        async with bus.subscribe(other, qos=1) as second:
            bodies = [str(n) for n in range(30)]
            await publish(url, protocol, other, bodies)
            assert await take(second, 30) == bodies
        # Said once: what arrives for the left subscription holds the broker's window.
        held = [r for r in caplog.records if "left unacknowledged" in r.getMessage()]
        assert len(held) == 1 and repr(topic) in held[0].getMessage(), held
    async with (
        aiobus.connect(url, **options) as bus,
        bus.subscribe(topic, qos=1) as sub,
    ):
        assert link_of(bus).session_present
        assert await take(sub, 7) == [str(n) for n in range(7)]


async def test_subscribing_again_takes_what_came_after_the_leave(url: str, protocol: int) -> None:
    """What the broker sent for a left subscription on this connection goes to a new
    subscription with the same filter (in order, before anything newer); what the old one
    held unacked comes back on the session's next connection."""
    topic, client_id = f"{unique()}/jobs", unique("w")
    options = persistent(protocol, client_id)
    async with aiobus.connect(url, **options) as bus:
        async with bus.subscribe(topic, qos=1, prefetch=10) as sub:
            await hold_five(sub, url, protocol, topic)
        await publish(url, protocol, topic, ["5", "6"])
        async with bus.subscribe(topic, qos=1) as again:
            await publish(url, protocol, topic, ["7"])
            assert await take(again, 3) == ["5", "6", "7"]
    async with (
        aiobus.connect(url, **options) as bus,
        bus.subscribe(topic, qos=1) as sub,
    ):
        assert await take(sub, 5) == [str(n) for n in range(5)]


async def test_cancelled_subscription_keeps_the_session_subscription(
    url: str, protocol: int
) -> None:
    topic, client_id = f"{unique()}/jobs", unique("w")
    options = persistent(protocol, client_id)
    held = asyncio.Event()

    async def worker(bus: aiobus.Connection) -> None:
        async with bus.subscribe(topic, qos=1, prefetch=10) as sub:
            await hold_five(sub, url, protocol, topic)
            held.set()
            await asyncio.Event().wait()

    async with aiobus.connect(url, **options) as bus:
        task = asyncio.create_task(worker(bus))
        await held.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await publish(url, protocol, topic, ["5"])
    async with (
        aiobus.connect(url, **options) as bus,
        bus.subscribe(topic, qos=1) as sub,
    ):
        assert await take(sub, 6) == [str(n) for n in range(6)]


async def test_explicit_unsubscribe_drops_the_session_subscription(
    url: str, protocol: int
) -> None:
    """``Subscription.unsubscribe()``: UNSUBSCRIBE is sent, so what is published afterwards
    is not kept for the session; the messages left unacked are still not PUBACKed and come
    back on the next connection."""
    topic, client_id = f"{unique()}/jobs", unique("w")
    options = persistent(protocol, client_id)
    async with aiobus.connect(url, **options) as bus:
        assert bus.client_id == client_id
        async with bus.subscribe(topic, qos=1, prefetch=10) as sub:
            await hold_five(sub, url, protocol, topic)
            await sub.unsubscribe()
        assert not link_of(bus).session.kept
    await publish(url, protocol, topic, ["after the unsubscribe"])
    async with (
        aiobus.connect(url, **options) as bus,
        bus.subscribe(topic, qos=1) as sub,
    ):
        assert await take(sub, 5) == [str(n) for n in range(5)]


async def test_clean_session_leave_unsubscribes(url: str, protocol: int) -> None:
    async with aiobus.connect(url, protocol=protocol, **FAST) as bus:
        topic = f"{unique()}/clean"
        async with bus.subscribe(topic, qos=1):
            pass
        assert not link_of(bus).session.kept
        assert topic not in link_of(bus)._groups


async def test_end_session_discards_the_session(url: str, protocol: int) -> None:
    """MQTT 5: DISCONNECT with Session Expiry Interval 0; MQTT 3.1.1: a clean CONNECT with
    the same client id after the DISCONNECT. Either way nothing of the session is left."""
    topic, client_id = f"{unique()}/jobs", unique("w")
    options = persistent(protocol, client_id)
    async with aiobus.connect(url, **options) as bus:
        async with bus.subscribe(topic, qos=1, prefetch=10) as sub:
            await hold_five(sub, url, protocol, topic)
        await bus.close(end_session=True)
    await publish(url, protocol, topic, ["after the end"])
    async with (
        aiobus.connect(url, **options) as bus,
        bus.subscribe(f"{unique()}/sync", qos=1) as sync,
    ):
        assert not link_of(bus).session_present
        await publish(url, protocol, sync.pattern, ["sync"])
        assert (await sync.get(timeout=10)).text() == "sync"
        assert not link_of(bus)._orphans  # nothing of the old session was sent


async def test_effective_client_id_is_exposed_and_logged_once(
    url: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiobus")
    async with aiobus.connect(url, protocol=protocol, **FAST) as bus:
        generated = link_of(bus).client_id
        assert generated.startswith("aiobus-")
    client_id = unique("given")
    async with aiobus.connect(url, **persistent(protocol, client_id)) as bus:
        assert link_of(bus).client_id == client_id
    lines = [r.getMessage() for r in caplog.records if "MQTT client id" in r.getMessage()]
    assert len(lines) == 2, lines
    assert f"{generated!r} (generated), clean session" in lines[0]
    assert f"{client_id!r} (given), persistent session" in lines[1]


@pytest.mark.parametrize(
    "session", [{"clean_session": False}, {"protocol": 5, "session_expiry": 60}]
)
def test_persistent_session_without_client_id_is_a_config_error(
    session: dict[str, Any],
) -> None:
    with pytest.raises(aiobus.ConfigError, match="needs a fixed client_id"):
        aiobus.connect("mqtt://127.0.0.1:1", **session)
