"""The inbound cap (``max_receive_size``): a packet over it closes the link at its fixed
header, before its body is buffered, with the size and the limit in the link_lost reason and
an ``inbound_too_large`` event; MQTT 5 CONNECT states it as Maximum Packet Size."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from tests.helpers import unique
from tests.integration.mqtt_peer import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBLISH,
    SUBSCRIBE,
    ScriptedPeer,
    ack,
    connack,
    publish_id,
    suback,
    varint,
)
from tests.integration.mqtt_support import link_of

LIMIT = 1024
DECLARED = 100 * 1024 * 1024  # the oversized packet's Remaining Length
FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "max_receive_size": LIMIT}


def connect_max_packet_size(body: bytes) -> int | None:
    """The Maximum Packet Size property of an MQTT 5 CONNECT body, if any."""
    pos = 2 + int.from_bytes(body[:2], "big") + 1 + 1 + 2  # name, level, flags, keep-alive
    length = shift = 0
    while True:
        byte = body[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    props = body[pos : pos + length]
    i = 0
    while i < len(props):
        ident = props[i]
        i += 1
        if ident == 0x27:
            return int.from_bytes(props[i : i + 4], "big")
        if ident == 0x11:  # Session Expiry Interval (4 bytes)
            i += 4
        elif ident in (0x21, 0x22):  # Receive Maximum, Topic Alias Maximum (2 bytes)
            i += 2
        elif ident in (0x17, 0x19):  # request problem / response information (1 byte)
            i += 1
        else:
            raise AssertionError(f"unexpected CONNECT property 0x{ident:02x}")
    return None


class Watched:
    """The largest amount of inbound data the client held, measured after every chunk the
    transport delivered: the pipe's buffer and paho's partial packet."""

    def __init__(self, bus: aiobus.Connection) -> None:
        link = link_of(bus)
        pipe: Any = link._pipe
        client: Any = link._client
        self.most = 0
        received = pipe.data_received

        def spy(data: bytes) -> None:
            received(data)
            held = pipe.buffered + len(client._in_packet.get("packet", b""))
            self.most = max(self.most, held)

        pipe.data_received = spy


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_an_oversized_packet_closes_the_link_at_its_header(protocol: int) -> None:
    sent = 0
    max_packet_sizes: list[int | None] = []

    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        nonlocal sent
        got = await peer.next_packet(n, r)
        assert got is not None and got[0] >> 4 == CONNECT
        if protocol == 5:
            max_packet_sizes.append(connect_max_packet_size(got[1]))
        w.write(connack(v5=protocol == 5))
        while (got := await peer.next_packet(n, r)) is not None:
            first, body = got
            kind = first >> 4
            if kind == SUBSCRIBE:
                w.write(suback(body, v5=protocol == 5))
                if n == 1:  # a rogue publisher's message, streamed until the client hangs up
                    topic = b"big"
                    head = b"\x30" + varint(DECLARED) + len(topic).to_bytes(2, "big") + topic
                    w.write(head)
                    chunk = b"\x00" * 65536
                    while sent < DECLARED:
                        w.write(chunk)
                        await w.drain()
                        sent += len(chunk)
                    return
            elif kind == PUBLISH:
                mid = publish_id(first, body)
                if mid is not None:
                    w.write(ack(PUBACK, mid))
            elif kind == PINGREQ:
                w.write(b"\xd0\x00")
            elif kind == DISCONNECT:
                return

    async with ScriptedPeer(script) as peer:
        async with aiobus.connect(peer.url, protocol=protocol, **FAST) as bus:
            async with bus.events() as events:
                watched = Watched(bus)
                async with asyncio.timeout(15):
                    async with bus.subscribe(f"f/{unique()}", qos=1):
                        kinds: dict[str, aiobus.Event] = {}
                        async for event in events:
                            kinds.setdefault(event.kind, event)
                            if "link_lost" in kinds:
                                break
                    await bus.publish("after", b"still working", qos=1)
            assert watched.most <= LIMIT, watched.most
    size = 1 + 4 + DECLARED
    for event in (kinds["inbound_too_large"], kinds["link_lost"]):
        text = str(event.error) if event.kind == "link_lost" else event.reason
        assert f"{size:,} bytes" in text and f"max_receive_size ({LIMIT:,} bytes)" in text, text
    assert sent < DECLARED  # the client hung up long before the body was through
    assert peer.connects == 2
    if protocol == 5:
        assert max_packet_sizes == [LIMIT, LIMIT]


@pytest.mark.mosquitto
@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("where", ["url", "ws_url"], ids=["tcp", "websocket"])
async def test_a_message_over_max_receive_size_from_mosquitto(
    mosquitto: Any, protocol: int, where: str
) -> None:
    """MQTT 3.1.1: Mosquitto forwards the 5,000-byte message and the subscriber's link is
    closed at its header (then reconnects: a clean session, so it is not sent again); over
    WebSocket the cap follows the MQTT stream after de-framing. MQTT 5: Mosquitto keeps the
    Maximum Packet Size of the CONNECT and drops the message for this client."""
    topic = f"cap/{unique()}"
    async with (
        aiobus.connect(getattr(mosquitto, where), protocol=protocol, **FAST) as small,
        aiobus.connect(mosquitto.url, protocol=protocol) as publisher,
        small.events() as events,
    ):
        async with small.subscribe(topic, qos=1) as sub:
            await publisher.publish(topic, b"x" * 5000, qos=1)
            if protocol == 4:
                async with asyncio.timeout(10):
                    async for event in events:
                        if event.kind == "inbound_too_large":
                            assert "max_receive_size (1,024 bytes)" in event.reason
                            assert f"{1 + 2 + 2 + len(topic) + 2 + 5000:,} bytes" in event.reason
                            break
                await small.wait_connected()
            await publisher.publish(topic, b"small", qos=1)
            got = await sub.get(timeout=10)
            assert got.body == b"small"
            await got.ack()
