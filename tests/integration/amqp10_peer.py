"""A small scripted AMQP 1.0 peer: proton's engine as a server, on an asyncio socket.

It produces on demand what no broker here will: a ``modified`` outcome, credit withheld, a link
detached with an error, a session ended, silence until the client's idle time-out, deliveries
with amqp-value bodies, and it records every disposition the client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import proton
from proton import Condition, Disposition, Event, Message

from aiobus.transports.stream import StreamTransport, stream_transport


@dataclass
class Script:
    """What the peer does; tests change it between steps."""

    outcome: str = "accept"
    """For transfers from the client: accept, reject, release, modified, undeliverable, hold."""
    credit: int = 100
    """Credit granted to each client sender (0: withhold) and replenished per settled message."""
    detach: dict[str, str] = field(default_factory=dict)
    """Client receivers on these addresses are attached, then detached with this condition."""
    end_session: dict[str, str] = field(default_factory=dict)
    """Attaching to these addresses ends the whole session with this condition."""
    to_send: list[Message] = field(default_factory=list)
    """Sent to the first client receiver as credit allows."""
    silent: bool = False
    """Stop answering anything (no frames, no heartbeats) once the connection is open."""
    offer_relay: bool = True
    max_message_size: int = 0
    """Announced on the peer's attach of each client sender (0: none)."""
    channel_max: int | None = None
    """The highest channel number the peer allows (None: proton's default)."""


class PeerConnection(asyncio.Protocol):
    def __init__(self, peer: ScriptedPeer) -> None:
        self.peer = peer
        self.transport = proton.Transport(proton.Transport.SERVER)
        self.conn = proton.Connection()
        self.collector = proton.Collector()
        self.conn.collect(self.collector)
        sasl = self.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        sasl.allow_insecure_mechs = True
        if peer.script.channel_max is not None:
            self.transport.channel_max = peer.script.channel_max
        self.transport.bind(self.conn)
        self.sock: StreamTransport | None = None
        self.opened = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = stream_transport(transport)  # uvloop's is no asyncio.Transport subclass
        self.peer.connections.append(self)
        self.peer.connected.set()

    def data_received(self, data: bytes) -> None:
        if self.opened and self.peer.script.silent:
            return  # a half-open connection: we read and never answer
        while data:
            cap = self.transport.capacity()
            if cap <= 0:
                break
            self.transport.push(data[:cap])
            data = data[cap:]
            self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def process(self) -> None:
        while (ev := self.collector.peek()) is not None:
            self.handle(ev)
            self.collector.pop()
        self.flush()

    def flush(self) -> None:
        if self.sock is None or self.sock.is_closing():
            return
        if self.opened and self.peer.script.silent:
            return
        while (n := self.transport.pending()) > 0:
            out = self.transport.peek(n)
            self.transport.pop(n)
            if out:
                self.sock.write(out)

    def handle(self, ev: Any) -> None:
        script = self.peer.script
        t = ev.type
        if t == Event.CONNECTION_REMOTE_OPEN:
            if script.offer_relay:
                self.conn.offered_capabilities = proton.symbol("ANONYMOUS-RELAY")
            self.conn.open()
            self.opened = True
        elif t == Event.SESSION_REMOTE_OPEN:
            ev.session.open()
        elif t == Event.LINK_REMOTE_OPEN:
            self.link_opened(ev.link)
        elif t == Event.LINK_FLOW:
            if ev.link.is_sender:
                self.send_queued(ev.link)
        elif t == Event.DELIVERY:
            dlv = ev.delivery
            if dlv.link.is_receiver:
                self.received(dlv)
            elif dlv.updated:
                self.peer.dispositions.append(
                    (dlv.remote_state, dlv.remote.failed, dlv.remote.undeliverable)
                )
                dlv.settle()
                self.peer.disposed.set()
        elif t == Event.LINK_REMOTE_CLOSE:
            ev.link.close()
            self.peer.detached.append(ev.link.remote_target.address)
            self.peer.detach_seen.set()
        elif t == Event.SESSION_REMOTE_CLOSE:
            ev.session.close()
            self.peer.sessions_ended += 1
            self.peer.detach_seen.set()
        elif t == Event.CONNECTION_REMOTE_CLOSE:
            self.conn.close()

    def link_opened(self, link: Any) -> None:
        script = self.peer.script
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode  # honour a pre-settled receiver
        address = link.remote_source.address if link.is_sender else link.remote_target.address
        if link.is_receiver and script.max_message_size:
            link.max_message_size = script.max_message_size
        if address in script.end_session:
            link.session.condition = Condition(script.end_session[address], "scripted end")
            link.session.close()
            return
        link.open()
        if address in script.detach:
            link.condition = Condition(script.detach[address], f"scripted detach of {address}")
            link.close()
            return
        if link.is_receiver:
            self.peer.attached.append(address)
            self.peer.attach_seen.set()
            if script.credit:
                link.flow(script.credit)
        else:
            self.send_queued(link)

    def send_queued(self, link: Any) -> None:
        queue = self.peer.script.to_send
        while queue and link.credit > 0:
            message = queue.pop(0)
            message.send(link)

    def received(self, dlv: Any) -> None:
        if not dlv.readable or dlv.partial:
            return
        link = dlv.link
        data = link.recv(dlv.pending)
        link.advance()
        message = Message()
        message.decode(data)
        self.peer.messages.append(message)
        self.peer.got.set()
        outcome = self.peer.script.outcome
        if outcome == "hold":
            return
        if outcome == "accept":
            dlv.update(Disposition.ACCEPTED)
        elif outcome == "reject":
            dlv.local.condition = Condition("amqp:precondition-failed", "scripted rejection")
            dlv.update(Disposition.REJECTED)
        elif outcome == "release":
            dlv.update(Disposition.RELEASED)
        elif outcome in ("modified", "undeliverable"):
            dlv.local.failed = True
            dlv.local.undeliverable = outcome == "undeliverable"
            dlv.update(Disposition.MODIFIED)
        dlv.settle()
        if self.peer.script.credit:
            link.flow(1)

    def grant(self, credit: int) -> None:
        """Credit for every client sender that has none now."""
        link = self.conn.link_head(proton.Endpoint.LOCAL_ACTIVE)
        while link is not None:
            if link.is_receiver:
                link.flow(credit)
            link = link.next(proton.Endpoint.LOCAL_ACTIVE)
        self.flush()

    def abort(self) -> None:
        if self.sock is not None:
            self.sock.abort()


class ScriptedPeer:
    """``async with ScriptedPeer() as peer``: ``peer.url`` for the client."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.connections: list[PeerConnection] = []
        self.messages: list[Message] = []
        self.dispositions: list[tuple[Any, bool, bool]] = []
        self.attached: list[str | None] = []
        """Target addresses of client senders attached, in order."""
        self.detached: list[str | None] = []
        """Target addresses of client links the client detached, in order."""
        self.detach_seen = asyncio.Event()
        """Set on every detach or session end the client sends."""
        self.sessions_ended = 0
        """Sessions the client ended."""
        self.attach_seen = asyncio.Event()
        self.got = asyncio.Event()
        self.disposed = asyncio.Event()
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"amqp1://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedPeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: PeerConnection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(c.closed for c in self.connections))
        await self._server.wait_closed()

    def grant(self, credit: int) -> None:
        """Give every client sender ``credit`` now (with ``Script(credit=0)``)."""
        for conn in self.connections:
            conn.grant(credit)

    async def wait_attached(self, n: int, timeout: float = 5) -> list[str | None]:
        async with asyncio.timeout(timeout):
            while len(self.attached) < n:
                self.attach_seen.clear()
                await self.attach_seen.wait()
        return self.attached

    async def wait_detached(self, n: int, timeout: float = 5) -> list[str | None]:
        async with asyncio.timeout(timeout):
            while len(self.detached) < n:
                self.detach_seen.clear()
                await self.detach_seen.wait()
        return self.detached

    async def wait_sessions_ended(self, n: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while self.sessions_ended < n:
                self.detach_seen.clear()
                await self.detach_seen.wait()

    def drop_connections(self) -> None:
        for conn in self.connections:
            conn.abort()

    async def wait_messages(self, n: int, timeout: float = 5) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.got.clear()
                await self.got.wait()
        return self.messages


async def amqp091_server() -> tuple[asyncio.Server, int]:
    """A server that answers like an AMQP 0-9-1 broker: its protocol header, then close."""

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.sock = stream_transport(transport)

        def data_received(self, data: bytes) -> None:
            self.sock.write(b"AMQP\x00\x00\x09\x01")
            self.sock.close()

    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
