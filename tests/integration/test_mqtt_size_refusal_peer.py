"""MQTT 5 DISCONNECT 0x95 (Packet too large) from a scripted broker, deterministically.

A real Mosquitto closes the socket with the client's input unread, so its kernel may send a
RST and the client may never read the DISCONNECT. The peer here writes DISCONNECT 0x95, shuts
down its write side and reads until the client closes: the client always reads the refusal.
It states no Maximum Packet Size in CONNACK (or the one it is given), so the rules for a broker
that names neither the packet nor its limit are what is tested: the largest message in flight
is a suspect at the first refusal and blamed only if it is the largest again at the next; a
small message that merely was in flight at one refusal is re-sent, never failed. A limit the
broker stated, or one learned before, that a refusal disproves (nothing in flight is over it)
is judged by the same rule: a wrong limit never makes a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import pytest

import aiobus
from tests.conformance.test_poison_publish import link_losses
from tests.helpers import unique

FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "protocol": 5}
REFUSED_OVER = 512  # whole PUBLISH packet bytes the peer takes at most
#: What the adapter says for DISCONNECT 0x95 (paho's name for the reason code).
REFUSAL_TEXT = "Packet too large"

CONNECT, PUBLISH, PINGREQ, DISCONNECT = 1, 3, 12, 14
PACKET_TOO_LARGE = b"\xe0\x01\x95"  # DISCONNECT, remaining length 1, reason 0x95


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes, int] | None:
    """One MQTT packet: (first byte, everything after the remaining length, whole size), or
    None at the end of the stream. The reader buffers what arrives in parts."""
    first = await reader.read(1)
    if not first:
        return None
    remaining = shift = 0
    length_bytes = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length_bytes += 1
        remaining |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    body = await reader.readexactly(remaining)
    return first[0], body, 1 + length_bytes + remaining


def varint_at(data: bytes, pos: int) -> tuple[int, int]:
    """A variable byte integer at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class RefusingPeer:
    """A scripted MQTT 5 broker on 127.0.0.1:0. CONNACK states ``max_packet`` (Maximum Packet
    Size) or no limit. A PUBLISH whose whole packet is over ``refuse_over`` bytes, and the
    first ``refuse_first`` PUBLISH packets whatever their size, get DISCONNECT 0x95; every
    other one is recorded and (QoS 1) acknowledged."""

    def __init__(
        self,
        *,
        max_packet: int | None = None,
        refuse_over: int | None = None,
        refuse_first: int = 0,
    ) -> None:
        self.max_packet = max_packet
        self.refuse_over = refuse_over
        self.refuse_first = refuse_first
        self.accepted: list[bytes] = []  # payloads, in arrival order, duplicates included
        self.refused: list[int] = []  # whole packet sizes of the PUBLISH packets refused
        self.connects = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RefusingPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()  # only one a client left open (none, normally)
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _connack(self) -> bytes:
        props = b"" if self.max_packet is None else b"\x27" + struct.pack("!I", self.max_packet)
        # Session present 0, reason 0 (success), then the properties.
        return bytes([0x20, 3 + len(props), 0x00, 0x00, len(props)]) + props

    def _refuses(self, size: int) -> bool:
        if self.refuse_first > 0:
            self.refuse_first -= 1
            return True
        return self.refuse_over is not None and size > self.refuse_over

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        self._writers.append(writer)
        try:
            while (packet := await read_packet(reader)) is not None:
                header, body, size = packet
                kind = header >> 4
                if kind == CONNECT:
                    self.connects += 1
                    writer.write(self._connack())
                elif kind == PINGREQ:
                    writer.write(b"\xd0\x00")
                elif kind == DISCONNECT:
                    return
                elif kind == PUBLISH:
                    if self._refuses(size):
                        self.refused.append(size)
                        writer.write(PACKET_TOO_LARGE)
                        writer.write_eof()  # a FIN after the DISCONNECT, never a RST
                        while await reader.read(65536):
                            pass  # what the client sent meanwhile: unread input causes RST
                        return
                    qos = (header >> 1) & 0x03
                    pos = 2 + int.from_bytes(body[:2], "big")  # after the topic
                    packet_id = body[pos : pos + 2]
                    if qos:
                        pos += 2
                    props_len, pos = varint_at(body, pos)
                    self.accepted.append(body[pos + props_len :])
                    if qos == 1:
                        writer.write(b"\x40\x02" + packet_id)  # PUBACK, reason omitted: success
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.mark.parametrize("stated", [None, 4096], ids=["no-limit-stated", "stated-limit-too-high"])
async def test_largest_in_flight_at_two_refusals_in_a_row_fails_alone(stated: int | None) -> None:
    """With no limit stated, or one the broker does not keep (it refuses far below it),
    nothing in flight is over a known limit: the suspect rule decides, never a loop."""
    topic = f"size/{unique()}"
    async with RefusingPeer(max_packet=stated, refuse_over=REFUSED_OVER) as peer:
        async with aiobus.connect(peer.url, **FAST) as bus, link_losses(bus) as lost:
            before = [bus.publish(topic, f"b{i}", qos=1) for i in range(20)]
            poison = bus.publish(topic, b"x" * 600, qos=1)
            after = [bus.publish(topic, f"a{i}", qos=1) for i in range(20)]
            async with asyncio.timeout(15):  # a bound, well inside the publish deadline
                outcomes = await asyncio.gather(*before, poison, *after, return_exceptions=True)
            refused = outcomes.pop(len(before))
            assert isinstance(refused, aiobus.MessageTooLarge), refused
            assert all(isinstance(o, aiobus.Confirm) for o in outcomes), outcomes
            # Refused at the first link (a suspect only) and at the second (blamed), and
            # never written again: its size is the whole packet the peer measured.
            size = refused.size
            assert peer.refused == [size, size]
            assert size > 600
            assert refused.limit == size - 1
            assert len(lost) == 2
            for event in lost:
                assert REFUSAL_TEXT in str(event.error), event.error
            expected = {f"{side}{i}".encode() for side in "ba" for i in range(20)}
            assert set(peer.accepted) == expected  # duplicates allowed: re-sent after a drop
            # Learned for the connection: refused at the call now, nothing queued.
            with pytest.raises(aiobus.MessageTooLarge) as at_call:
                bus.publish(topic, b"x" * 600, qos=1)
            assert (at_call.value.size, at_call.value.limit) == (size, size - 1)
            assert bus.pending == 0
            async with asyncio.timeout(15):
                await bus.publish(topic, "end", qos=1)
            assert peer.accepted[-1] == b"end"
            assert len(lost) == 2
            assert peer.connects == 3


@pytest.mark.parametrize("stated", [None, 4096], ids=["no-limit-stated", "limit-stated"])
async def test_a_small_message_alone_at_one_refusal_is_re_sent(stated: int | None) -> None:
    topic = f"size/{unique()}"
    async with RefusingPeer(max_packet=stated, refuse_first=1) as peer:
        async with aiobus.connect(peer.url, **FAST) as bus, link_losses(bus) as lost:
            async with asyncio.timeout(15):
                await bus.publish(topic, "small", qos=1)
            assert len(peer.refused) == 1  # the one refusal, of this message
            assert peer.accepted == [b"small"]
            assert len(lost) == 1
            assert REFUSAL_TEXT in str(lost[0].error), lost[0].error
            # Nothing was learned from one refusal: a larger message (under a stated limit)
            # goes out as before.
            async with asyncio.timeout(15):
                await bus.publish(topic, b"y" * 600, qos=1)
            assert peer.accepted == [b"small", b"y" * 600]
            assert len(lost) == 1
            assert peer.connects == 2


async def test_a_learned_limit_a_refusal_disproves_is_lowered() -> None:
    """A 1,000-byte body teaches a limit just under its packet; a 600-byte one is refused
    too, though under that limit: it is blamed at the second refusal and the lower limit is
    learned, instead of the link flapping until its deadline."""
    topic = f"size/{unique()}"
    async with RefusingPeer(refuse_over=REFUSED_OVER) as peer:
        async with aiobus.connect(peer.url, **FAST) as bus:
            async with asyncio.timeout(15):
                with pytest.raises(aiobus.MessageTooLarge) as first:
                    await bus.publish(topic, b"x" * 1000, qos=1)
                assert first.value.size > 1000
                behind = bus.publish(topic, "behind", qos=1)
                with pytest.raises(aiobus.MessageTooLarge) as second:
                    await bus.publish(topic, b"y" * 600, qos=1)
                await behind
            assert 600 < second.value.size < first.value.size
            assert second.value.limit == second.value.size - 1
            assert peer.refused == [first.value.size] * 2 + [second.value.size] * 2
            assert peer.accepted[-1:] == [b"behind"]
            with pytest.raises(aiobus.MessageTooLarge) as at_call:
                bus.publish(topic, b"y" * 600, qos=1)
            assert at_call.value.limit == second.value.size - 1
