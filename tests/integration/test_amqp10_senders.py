"""AMQP 1.0 senders against the scripted peer: messages waiting for credit (or for a sender
slot) are withdrawn at their deadline or on cancel, per-address senders are bounded and closed
when idle, and the peer's max-message-size is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import proton
import pytest
from proton import Message

import aiobus
import aiobus.amqp1
from tests.integration.amqp10_peer import Script, ScriptedPeer

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "connect_timeout": 5, "close_timeout": 2}


def active_sessions(bus: aiobus.Connection) -> int:
    """Sessions this client has begun and not ended (proton's own count)."""
    conn = bus._link.conn  # type: ignore[union-attr]
    count = 0
    session = conn.session_head(proton.Endpoint.LOCAL_ACTIVE)
    while session is not None:
        count += 1
        session = session.next(proton.Endpoint.LOCAL_ACTIVE)
    return int(count)


@pytest.mark.parametrize("relay", ["auto", "never"])
async def test_waiting_for_credit_is_withdrawn_at_the_deadline(relay: Any) -> None:
    async with ScriptedPeer(Script(credit=0)) as peer:
        async with aiobus.amqp1.connect(peer.url, anonymous_relay=relay, **FAST) as bus:
            with pytest.raises(aiobus.PublishTimeout) as info:
                await bus.publish("/queues/q", b"late", timeout=0.3)
            assert info.value.maybe_delivered is False
            later = bus.publish("/queues/q", b"on time", timeout=5)
            await peer.wait_attached(1)
            peer.grant(10)
            await later
            assert [m.body for m in peer.messages] == [b"on time"]
            assert bus.pending == 0


async def test_cancelled_while_waiting_for_credit_is_never_sent() -> None:
    async with ScriptedPeer(Script(credit=0)) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            cancelled = bus.publish("/queues/q", b"cancelled", timeout=5)
            await asyncio.sleep(0)  # the pump takes it: written to the link, held for credit
            assert bus._outbox.in_flight  # type: ignore[union-attr]
            cancelled.cancel()
            assert not bus._outbox.in_flight  # type: ignore[union-attr]  # slot given back
            later = bus.publish("/queues/q", b"kept", timeout=5)
            await peer.wait_attached(1)
            peer.grant(10)
            await later
            assert [m.body for m in peer.messages] == [b"kept"]


async def test_written_and_unsettled_at_the_deadline_may_be_delivered() -> None:
    async with ScriptedPeer(Script(outcome="hold")) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            with pytest.raises(aiobus.PublishTimeout) as info:
                await bus.publish("/queues/q", b"x", timeout=0.3)
            assert info.value.maybe_delivered is True
            assert len(peer.messages) == 1


async def test_the_peers_max_message_size_is_kept() -> None:
    async with ScriptedPeer(Script(max_message_size=1000)) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            await bus.publish("/queues/q", b"small", timeout=5)  # the sender is attached
            with pytest.raises(aiobus.MessageTooLarge) as info:
                bus.publish("/queues/q", b"x" * 1001)  # refused at the call
            assert info.value.limit == 1000 and info.value.size == 1001
            # Under the limit by its body, over it once encoded: it fails alone, unsent.
            with pytest.raises(aiobus.MessageTooLarge) as encoded:
                await bus.publish("/queues/q", b"x" * 995, timeout=5)
            assert encoded.value.limit == 1000 and encoded.value.size > 1000
            await bus.publish("/queues/q", b"after", timeout=5)
            assert [m.body for m in peer.messages] == [b"small", b"after"]


async def test_a_per_address_sender_the_peer_limits_is_kept_too() -> None:
    async with ScriptedPeer(Script(max_message_size=1000)) as peer:
        async with aiobus.amqp1.connect(peer.url, anonymous_relay="never", **FAST) as bus:
            # Published before the attach is answered: checked before the wire all the same.
            with pytest.raises(aiobus.MessageTooLarge) as info:
                await bus.publish("/queues/a", b"x" * 1500, timeout=5)
            assert info.value.limit == 1000
            await bus.publish("/queues/a", b"fits", timeout=5)
            assert [m.body for m in peer.messages] == [b"fits"]


async def test_per_address_senders_are_bounded_least_recently_used_first() -> None:
    async with ScriptedPeer() as peer:
        async with aiobus.amqp1.connect(
            peer.url, anonymous_relay="never", max_senders=2, sender_idle=60, **FAST
        ) as bus:
            for address in ("/queues/a", "/queues/b", "/queues/a", "/queues/c", "/queues/d"):
                await bus.publish(address, address, timeout=5)
                assert active_sessions(bus) <= 2
            # c took b's slot (a was used after b), d took a's.
            assert await peer.wait_detached(2) == ["/queues/b", "/queues/a"]
            assert peer.attached == ["/queues/a", "/queues/b", "/queues/c", "/queues/d"]
            assert len(peer.messages) == 5


async def test_an_address_waits_for_a_slot_within_its_deadline() -> None:
    async with ScriptedPeer(Script(outcome="hold")) as peer:
        async with aiobus.amqp1.connect(
            peer.url, anonymous_relay="never", max_senders=1, sender_idle=60, **FAST
        ) as bus:
            held = bus.publish("/queues/a", b"held", timeout=1.5)
            await peer.wait_messages(1)
            # The only slot is busy (a's message is unsettled): b waits, and is withdrawn.
            with pytest.raises(aiobus.PublishTimeout) as info:
                await bus.publish("/queues/b", b"never", timeout=0.3)
            assert info.value.maybe_delivered is False
            with pytest.raises(aiobus.PublishTimeout) as written:
                await held
            assert written.value.maybe_delivered is True
            assert peer.attached == ["/queues/a"]
            assert [m.body for m in peer.messages] == [b"held"]


async def test_a_waiting_address_gets_the_slot_once_it_is_idle() -> None:
    async with ScriptedPeer(Script(credit=0)) as peer:
        async with aiobus.amqp1.connect(
            peer.url, anonymous_relay="never", max_senders=1, sender_idle=60, **FAST
        ) as bus:
            first = bus.publish("/queues/a", b"a", timeout=5)
            second = bus.publish("/queues/b", b"b", timeout=5)
            await peer.wait_attached(1)
            peer.grant(10)  # a's message goes, is accepted: a is idle, b takes its slot
            await first
            await peer.wait_attached(2)
            peer.grant(10)
            await second
            assert peer.attached == ["/queues/a", "/queues/b"]
            assert await peer.wait_detached(1) == ["/queues/a"]
            assert active_sessions(bus) == 1


async def test_idle_senders_are_closed() -> None:
    async with ScriptedPeer() as peer:
        async with aiobus.amqp1.connect(
            peer.url, anonymous_relay="never", sender_idle=0.2, **FAST
        ) as bus:
            await bus.publish("/queues/a", b"a", timeout=5)
            await bus.publish("/queues/b", b"b", timeout=5)
            assert sorted(await peer.wait_detached(2)) == ["/queues/a", "/queues/b"]
            # Their sessions, spare for as long again, are ended too.
            await peer.wait_sessions_ended(2)
            assert active_sessions(bus) == 0
            # Used again later: a new sender, the message goes through.
            await bus.publish("/queues/a", b"again", timeout=5)
            assert peer.attached == ["/queues/a", "/queues/b", "/queues/a"]


async def test_senders_leave_a_channel_for_a_subscription() -> None:
    # Channels 0-3: four sessions. Senders take at most three, so a subscription attaches.
    async with ScriptedPeer(Script(channel_max=3, to_send=[Message(body=b"in")])) as peer:
        async with aiobus.amqp1.connect(
            peer.url, anonymous_relay="never", sender_idle=60, **FAST
        ) as bus:
            for i in range(6):
                await bus.publish(f"/queues/{i}", b"x", timeout=5)
                assert active_sessions(bus) <= 3
            async with bus.subscribe("/queues/in") as sub:
                got = await sub.get(timeout=5)
                assert got.body == b"in"
                await got.ack()
                await bus.publish("/queues/0", b"y", timeout=5)
            assert len(peer.messages) == 7
