"""The wire under the MQTT adapter: an asyncio connection that paho reads and writes as a socket.

paho-mqtt's ``Client`` is a protocol engine with a blocking connect (DNS, TCP, TLS and the
WebSocket handshake run synchronously, which is why aiomqtt puts them in an executor thread
that cancellation cannot stop). Here asyncio makes the connection (``loop.create_connection``,
TLS included, cancellable, no thread), and paho gets a ``_Pipe``: a socket-like object whose
``recv`` reads what the transport delivered and whose ``send`` queues bytes that are written in
one ``transport.write`` per loop turn. Write backpressure: the transport's ``pause_writing`` /
``resume_writing`` (``write_paused``, ``writable()``), which the link's publish waits on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, _WebsocketWrapper
from paho.mqtt.enums import MQTTErrorCode

from ..errors import PermanentConnectError, ProtocolMismatch, TransientConnectError
from .stream import StreamTransport, stream_transport

_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class SizeGuard:
    """Follows MQTT packet boundaries in the bytes as they arrive, from each fixed header's
    Remaining Length, and finds a packet over ``limit`` bytes (whole packet, as MQTT 5's
    Maximum Packet Size counts it) as soon as its header is in, before its body is buffered.
    Per chunk it only hops from header to header: no copy, no buffering."""

    __slots__ = ("_count", "_in_header", "_length", "_skip", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skip = 0  # bytes of the current packet's body still to come
        self._in_header = False  # inside a Remaining Length (after the first byte)
        self._length = 0
        self._count = 0  # Remaining Length bytes read so far

    def feed(self, data: bytes | bytearray) -> int | None:
        """None, or the size of the first packet over the limit (-1: a malformed Remaining
        Length, more than 4 bytes) whose header ``data`` completes."""
        n = len(data)
        skip = self._skip
        if skip >= n:
            self._skip = skip - n
            return None
        pos = skip
        in_header, length, count = self._in_header, self._length, self._count
        limit = self.limit
        while pos < n:
            if not in_header:
                pos += 1  # the packet type byte
                in_header = True
                length = count = 0
                continue
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << (7 * count)
            count += 1
            if byte & 0x80:
                if count == 4:
                    return -1
                continue
            size = 1 + count + length
            if size > limit:
                return size
            in_header = False
            pos += length
        self._skip = pos - n
        self._in_header, self._length, self._count = in_header, length, count
        return None


class _Pipe(asyncio.Protocol):
    """An asyncio protocol that also looks enough like a non-blocking socket for paho."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: StreamTransport | None = None
        self._rx = bytearray()
        self._pos = 0
        self._tx: list[bytes | bytearray] = []
        self._flush_handle: asyncio.Handle | None = None
        self.eof = False
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.last_in = loop.time()
        self.last_out = self.last_in
        #: The transport's buffer is over its high-water mark (``pause_writing``): publishes
        #: wait in the outbox (``writable()``) instead of growing it without bound.
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        #: Called when bytes arrive (the link parses them) and when the peer goes away.
        self.on_data: Callable[[], None] | None = None
        self.on_lost: Callable[[BaseException | None], None] | None = None
        #: The inbound cap on the MQTT stream (TCP and TLS: the pipe's bytes are MQTT), and
        #: what is called, instead of buffering, with a packet's size when one is over it.
        self.guard: SizeGuard | None = None
        self.on_oversize: Callable[[int], None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # By interface, not class: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = stream_transport(transport)

    def data_received(self, data: bytes) -> None:
        guard = self.guard
        if guard is not None:
            over = guard.feed(data)
            if over is not None:
                self.refuse_oversize(over)
                return
        if self._pos >= len(self._rx):
            self._rx = bytearray(data)
            self._pos = 0
        else:
            self._rx += data
        self.last_in = self._loop.time()
        if self.on_data is not None:
            self.on_data()

    def eof_received(self) -> bool:
        self.eof = True
        if self.on_data is not None:
            self.on_data()
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def writable(self) -> None:
        """Until the transport takes more (``resume_writing``) or the connection is gone."""
        while self.write_paused and not self.closed.done():
            waiter = self._writable
            if waiter is None:
                waiter = self._writable = self._loop.create_future()
            await asyncio.wait((waiter, self.closed), return_when=asyncio.FIRST_COMPLETED)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self.closed.done():
            self.closed.set_result(exc)
        if self.on_lost is not None:
            self.on_lost(exc)

    # -- what paho calls -------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        pos = self._pos
        end = len(self._rx)
        if pos >= end:
            if self.eof:
                return b""
            raise BlockingIOError
        stop = pos + bufsize
        if stop >= end:
            data = bytes(self._rx[pos:]) if pos else bytes(self._rx)
            self._rx = bytearray()
            self._pos = 0
            return data
        self._pos = stop
        return bytes(self._rx[pos:stop])

    def send(self, data: bytes | bytearray) -> int:
        if self.closed.done():
            raise ConnectionResetError("the MQTT connection is closed")
        self._tx.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)
        return len(data)

    def setblocking(self, flag: bool) -> None:
        """The transport is non-blocking already."""

    def fileno(self) -> int:
        return -1

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    # -- ours ------------------------------------------------------------------------------

    def refuse_oversize(self, size: int) -> None:
        """A packet over the inbound cap (``size`` bytes; -1: a malformed length): nothing
        more is read or buffered, the link is told (it reports and closes the link), and the
        connection is aborted."""
        self.guard = None
        self.eof = True
        self._rx = bytearray()
        self._pos = 0
        callback = self.on_oversize
        if callback is not None:
            callback(size)
        if self.transport is not None:
            self.transport.abort()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed to paho."""
        return len(self._rx) - self._pos

    def flush(self) -> None:
        """Write everything paho queued in one go: one syscall per loop turn, not per packet."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        tx = self._tx
        if not tx or self.transport is None or self.transport.is_closing():
            tx.clear()
            return
        self.transport.write(tx[0] if len(tx) == 1 else b"".join(tx))
        tx.clear()
        self.last_out = self._loop.time()

    async def read_until(self, marker: bytes, limit: int = 65536) -> bytes:
        """For the WebSocket handshake: bytes up to and including ``marker``."""
        while True:
            at = self._rx.find(marker, self._pos)
            if at >= 0:
                end = at + len(marker)
                head = bytes(self._rx[self._pos : end])
                self._pos = end
                return head
            if self.eof or self.closed.done():
                raise TransientConnectError(
                    "the server closed the connection during the WebSocket handshake"
                )
            if self.buffered > limit:
                raise ProtocolMismatch("no WebSocket handshake answer in the first 64 KiB")
            waiter: asyncio.Future[None] = self._loop.create_future()
            self.on_data = functools.partial(_wake, waiter)
            # A reset (no EOF first) only completes ``closed``: it must end the wait too.
            on_closed = functools.partial(_wake_when_closed, waiter)
            self.closed.add_done_callback(on_closed)
            try:
                await waiter
            finally:
                self.on_data = None
                self.closed.remove_done_callback(on_closed)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_when_closed(waiter: asyncio.Future[None], closed: asyncio.Future[object]) -> None:
    _wake(waiter)


class _WsSocket(_WebsocketWrapper):
    """paho's WebSocket framing over our pipe; the handshake was done asynchronously before.
    The inbound cap follows the MQTT stream here, after de-framing: paho reads a packet's
    fixed header before it asks for (and the framing buffers) its body."""

    aiobus_guard: SizeGuard | None = None
    aiobus_pipe: _Pipe | None = None

    def _do_handshake(self, extra_headers: Any) -> None:
        self.connected = True

    def recv(self, length: int) -> bytes:
        data: bytes = super().recv(length)
        guard = self.aiobus_guard
        if guard is not None and data:
            over = guard.feed(data)
            if over is not None:
                self.aiobus_guard = None
                if self.aiobus_pipe is not None:
                    self.aiobus_pipe.refuse_oversize(over)
                return b""  # paho: the connection is gone
        return data


async def websocket_handshake(pipe: _Pipe, host: str, port: int, path: str, tls: bool) -> None:
    """The HTTP/1.1 upgrade (RFC 6455) with subprotocol ``mqtt``, without blocking the loop."""
    key = base64.b64encode(os.urandom(16))
    default_port = 443 if tls else 80
    host_port = host if port == default_port else f"{host}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()
    assert pipe.transport is not None
    pipe.transport.write(request)
    head = await pipe.read_until(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        what = lines[0] or "nothing"
        if len(status) >= 2 and status[1] in ("401", "403"):
            raise PermanentConnectError(f"WebSocket upgrade refused: {what}")
        if len(status) >= 2 and status[1] == "404":
            raise PermanentConnectError(f"WebSocket path {path!r} not found: {what}")
        raise ProtocolMismatch(f"WebSocket upgrade refused: {what}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise ProtocolMismatch("WebSocket handshake: wrong Sec-WebSocket-Accept")


def websocket_over(
    pipe: _Pipe, host: str, port: int, path: str, guard: SizeGuard | None = None
) -> Any:
    """paho's frame codec on top of the pipe (TLS, if any, is below the pipe, in asyncio);
    ``guard`` caps the MQTT packets that come out of it."""
    sock: Any = pipe
    ws = _WsSocket(sock, host, port, False, path, None)
    ws.aiobus_guard = guard
    ws.aiobus_pipe = pipe
    return ws


class PahoClient(Client):
    """paho's client with the hooks aiobus needs where paho's own behaviour is wrong for it.

    * ``_create_socket``: hands paho the connection asyncio made, so ``connect()`` never
      blocks and no thread is involved.
    * ``_handle_pubackcomp`` / ``_handle_pubrec``: outcomes go to the link with their MQTT 5
      reason code (paho ignores PUBREC codes and sends PUBREL even after a refusal), and
      publishes are tracked by the link, not in paho's ``_out_messages`` (no ``MQTTMessage``
      per publish, no paho in-flight limit: the core's window is the one).
    * ``_handle_pubrel``: paho pops the message from ``_in_messages`` and hands it over at
      once, and in manual-ack mode never answers (a PUBREL for a packet id it does not know,
      as after a reconnect on a persistent session, would leave the broker's QoS 2 flow stuck
      forever). Here the message stays in ``_in_messages`` and goes to the link
      (``aiobus_released``), which sends PUBCOMP once it is in the subscriptions' buffers; a
      PUBREL for an unknown id (completed before) is answered with PUBCOMP at once.
    * ``_mid_generate``: SUBSCRIBE and UNSUBSCRIBE (``_send_subscribe``/``_send_unsubscribe``)
      take their packet ids from the link's allocator, the one publishes use, so no id held
      by any packet in flight is reused [MQTT-2.2.1-3] (paho's own counter knows nothing of
      aiobus's publishes).
    """

    aiobus_sock: Any = None
    aiobus_link: Any = None
    aiobus_released: Any = None

    def _create_socket(self) -> Any:
        return self.aiobus_sock

    def _handle_pubackcomp(self, cmd: str) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        code = packet[2] if len(packet) > 2 else 0
        self.aiobus_link.on_acked(mid, code, packet, cmd == "PUBCOMP")
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubrec(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        code = packet[2] if len(packet) > 2 else 0
        if self.aiobus_link.on_pubrec(mid, code, packet):
            return self._send_pubrel(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubrel(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        msg = self._in_messages.get(mid)
        if msg is None:
            rc: MQTTErrorCode = self._send_pubcomp(mid)
            return rc
        self.aiobus_released(msg)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _mid_generate(self) -> int:
        mid: int = self.aiobus_link.next_packet_id()
        return mid

    def read_packet(self) -> MQTTErrorCode:
        """Parse one packet from what the pipe holds; MQTT_ERR_AGAIN once it is drained."""
        rc: MQTTErrorCode = self._packet_read()
        return rc


AGAIN = _AGAIN

#: paho-mqtt's private methods aiobus overrides or calls (docs/mqtt.md says why, each).
PAHO_PRIVATE = (
    "_create_socket",
    "_handle_pubackcomp",
    "_handle_pubrec",
    "_handle_pubrel",
    "_mid_generate",
    "_packet_read",
    "_send_publish",
    "_send_pubrel",
    "_send_pubcomp",
    "_send_pingreq",
    "_send_subscribe",
    "_send_unsubscribe",
)


def check_paho(client: type[Any] = Client) -> None:
    """At import: the installed paho-mqtt has every private method aiobus relies on, and its
    SUBSCRIBE/UNSUBSCRIBE take their packet id from ``_mid_generate`` (the hook that puts
    them in aiobus's one packet-id space). Otherwise an ``ImportError`` naming what is
    missing, instead of packet ids reused or a failure deep in a link."""
    missing = [name for name in PAHO_PRIVATE if not callable(getattr(client, name, None))]
    for sender in ("_send_subscribe", "_send_unsubscribe"):
        method = getattr(client, sender, None)
        code = getattr(method, "__code__", None)
        if code is not None and "_mid_generate" not in code.co_names:
            missing.append(f"{sender} calling _mid_generate")
    if missing:
        from importlib.metadata import version

        raise ImportError(
            f"aiobus's MQTT adapter needs paho-mqtt 2.x with Client.{', Client.'.join(missing)}; "
            f"the installed paho-mqtt {version('paho-mqtt')} does not have them "
            "(install paho-mqtt>=2,<3)"
        )


check_paho()
