"""MQTT 5 recovery-aware reason codes, from a scripted broker (no real broker answers a
re-sent PUBREL with 0x92 on demand: Mosquitto either still has the flow or has lost the whole
session, and then says so in CONNACK, so the PUBREL is never re-sent)."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from tests.conformance.test_poison_publish import link_losses
from tests.helpers import unique
from tests.integration.mqtt_peer import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    ScriptedPeer,
    ack,
    connack,
    packet_id,
    publish_id,
)

SESSION = {
    "protocol": 5,
    "session_expiry": 60,
    "backoff_initial": 0.01,
    "backoff_max": 0.2,
}
NOT_FOUND = 0x92


async def qos2_broker(
    peer: ScriptedPeer,
    n: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    session_present: bool,
    on_pubrel: str,
) -> None:
    """PUBREC for every QoS 2 PUBLISH; a PUBREL is answered by ``on_pubrel``: "drop" (the
    link dies before PUBCOMP), "not-found" (PUBCOMP 0x92) or "complete" (PUBCOMP 0)."""
    got = await peer.next_packet(n, reader)
    assert got is not None and got[0] >> 4 == CONNECT
    writer.write(connack(session_present))
    while (got := await peer.next_packet(n, reader)) is not None:
        first, body = got
        kind = first >> 4
        if kind == PUBLISH:
            mid = publish_id(first, body)
            assert mid is not None
            writer.write(ack(PUBREC, mid))
        elif kind == PUBREL:
            if on_pubrel == "drop":
                return  # the socket is aborted: no PUBCOMP on this link
            reason = NOT_FOUND if on_pubrel == "not-found" else 0
            writer.write(ack(PUBCOMP, packet_id(body), reason))
        elif kind == PINGREQ:
            writer.write(b"\xd0\x00")
        elif kind == DISCONNECT:
            return


async def test_pubcomp_0x92_for_a_pubrel_re_sent_on_a_resumed_session_is_a_success() -> None:
    """The first link dies between PUBREL and PUBCOMP; the broker resumes the session, the
    client sends the PUBREL again, and the broker, which completed the message already,
    answers 0x92 (packet identifier not found): the publish succeeded, sent once."""

    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        if n == 1:
            await qos2_broker(peer, n, r, w, session_present=False, on_pubrel="drop")
        else:
            await qos2_broker(peer, n, r, w, session_present=True, on_pubrel="not-found")

    async with ScriptedPeer(script) as peer:
        async with aiobus.connect(peer.url, client_id=f"c-{unique()}", **SESSION) as bus:
            async with link_losses(bus) as lost:
                async with asyncio.timeout(15):
                    confirm = await bus.publish("t/qos2", b"once", qos=2)
            assert isinstance(confirm, aiobus.Confirm)
            assert len(lost) == 1
        publishes = [(c, first) for c, first, _ in peer.packets if first >> 4 == PUBLISH]
        pubrels = [c for c, first, _ in peer.packets if first >> 4 == PUBREL]
        assert [c for c, _ in publishes] == [1]  # the message itself went once
        assert pubrels == [1, 2]  # the PUBREL went again on the resumed session


async def test_pubcomp_0x92_outside_recovery_is_a_refusal() -> None:
    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await qos2_broker(peer, n, r, w, session_present=False, on_pubrel="not-found")

    async with ScriptedPeer(script) as peer:
        async with aiobus.connect(peer.url, client_id=f"c-{unique()}", **SESSION) as bus:
            async with asyncio.timeout(15):
                with pytest.raises(aiobus.Nacked) as refused:
                    await bus.publish("t/qos2", b"x", qos=2)
            assert refused.value.code == NOT_FOUND
            assert "not found" in str(refused.value).lower()
            # After a resumed-session 0x92 elsewhere: a later PUBCOMP 0x92 is still an error.
            async with asyncio.timeout(15):
                with pytest.raises(aiobus.Nacked):
                    await bus.publish("t/qos2", b"y", qos=2)
