"""A scripted MQTT broker over a real socket on 127.0.0.1:0, for what no real broker does
on demand (a PUBCOMP 0x92 during recovery, a PUBLISH with a topic that is not UTF-8, a packet
over the client's limit). Each connection runs ``script(peer, n, reader, writer)``; the
packets the client sent are recorded in ``peer.packets`` as (connection, first byte, body)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from tests.integration.test_mqtt_size_refusal_peer import read_packet, varint_at

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, DISCONNECT = 8, 9, 10, 11, 12, 14

Script = Callable[
    ["ScriptedPeer", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


def connack(session_present: bool = False, v5: bool = True) -> bytes:
    """CONNACK, success; MQTT 5 with an empty property list."""
    flags = 1 if session_present else 0
    if v5:
        return bytes([0x20, 3, flags, 0, 0])
    return bytes([0x20, 2, flags, 0])


def packet_id(body: bytes) -> int:
    return int.from_bytes(body[:2], "big")


def publish_id(first: int, body: bytes) -> int | None:
    """The packet id of a PUBLISH (None for QoS 0)."""
    if not (first >> 1) & 3:
        return None
    topic_len = int.from_bytes(body[:2], "big")
    return int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")


def ack(kind: int, mid: int, reason: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP (``kind``), with a reason code if given (MQTT 5)."""
    first = (kind << 4) | (2 if kind == PUBREL else 0)
    if reason is None:
        return bytes([first, 2]) + struct.pack("!H", mid)
    return bytes([first, 3]) + struct.pack("!H", mid) + bytes([reason])


def suback(body: bytes, v5: bool = True) -> bytes:
    """Grants every filter of a SUBSCRIBE the QoS it asked."""
    mid = body[:2]
    pos = 2
    if v5:
        props_len, pos = varint_at(body, pos)
        pos += props_len
    codes = bytearray()
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2 + n
        codes.append(body[pos] & 3)
        pos += 1
    rest = (b"\x00" if v5 else b"") + bytes(codes)
    return bytes([0x90]) + varint(2 + len(rest)) + mid + rest


def unsuback(body: bytes, filters: int = 1, v5: bool = True) -> bytes:
    rest = (b"\x00" + b"\x00" * filters) if v5 else b""
    return bytes([0xB0]) + varint(2 + len(rest)) + body[:2] + rest


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def raw_publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, v5: bool = True) -> bytes:
    """A PUBLISH with ``topic`` as raw bytes (they need not be UTF-8)."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += b"\x00"
    body += payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


class ScriptedPeer:
    """The listening socket and the bookkeeping; ``script`` plays each connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connects = 0
        self.packets: list[tuple[int, int, bytes]] = []
        self.url = ""
        self.done: asyncio.Future[None] | None = None
        self._server: asyncio.Server | None = None
        self._handlers: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> ScriptedPeer:
        self.done = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def next_packet(self, n: int, reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
        """The client's next packet on connection ``n`` (recorded), None at its end."""
        got = await read_packet(reader)
        if got is None:
            return None
        first, body, _size = got
        self.packets.append((n, first, body))
        return first, body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        self._writers.append(writer)
        self.connects += 1
        try:
            await self.script(self, self.connects, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
