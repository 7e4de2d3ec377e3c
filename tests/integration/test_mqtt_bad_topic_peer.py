"""An inbound PUBLISH whose topic is not UTF-8 (a scripted broker sends one: a conforming
broker must not forward one [MQTT-1.5.4-1], so none does on demand): reported in
``events()`` as ``delivery_undecodable`` with the reason, acknowledged (QoS 1) or completed
(QoS 2) so the broker's window does not shrink, and the messages behind it are delivered."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from tests.integration.mqtt_peer import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    ScriptedPeer,
    ack,
    connack,
    packet_id,
    raw_publish,
    suback,
    unsuback,
)

BAD_TOPIC = b"bad/\xff\xfe"


@pytest.mark.parametrize("qos", [1, 2], ids=["qos1", "qos2"])
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_a_topic_that_is_not_utf8_is_reported_and_acked(protocol: int, qos: int) -> None:
    v5 = protocol == 5
    pubacks: list[int] = []
    acked = asyncio.Event()

    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        got = await peer.next_packet(n, r)
        assert got is not None and got[0] >> 4 == CONNECT
        w.write(connack(v5=v5))
        while (got := await peer.next_packet(n, r)) is not None:
            first, body = got
            kind = first >> 4
            if kind == SUBSCRIBE:
                w.write(suback(body, v5=v5))
                w.write(raw_publish(BAD_TOPIC, b"poison", qos=qos, mid=7, v5=v5))
                w.write(raw_publish(b"bad/ok", b"fine", qos=1, mid=8, v5=v5))
            elif kind == UNSUBSCRIBE:
                w.write(unsuback(body, v5=v5))
            elif kind == PUBREC:  # QoS 2: release it, then PUBCOMP completes it
                w.write(ack(PUBREL, packet_id(body)))
            elif kind in (PUBACK, PUBCOMP):
                pubacks.append(packet_id(body))
                if 7 in pubacks:
                    acked.set()
            elif kind == PINGREQ:
                w.write(b"\xd0\x00")
            elif kind == DISCONNECT:
                return

    async with ScriptedPeer(script) as peer:
        async with aiobus.connect(peer.url, protocol=protocol) as bus, bus.events() as events:
            async with bus.subscribe("bad/#", qos=1) as sub:
                async with asyncio.timeout(10):
                    got = await sub.get()
                    assert got.body == b"fine"
                    await got.ack()
                    async for event in events:
                        if event.kind == "delivery_undecodable":
                            break
                    await acked.wait()
    assert "not UTF-8" in event.reason and repr(BAD_TOPIC) in event.reason
    assert ("acknowledged" if qos == 1 else "completed") in event.reason
    assert isinstance(event.error, aiobus.InvalidMessage)
    assert sorted(pubacks) == [7, 8]
