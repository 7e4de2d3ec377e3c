"""A TCP proxy on loopback that misbehaves on command, for fault tests (yours and ours).

    async with FaultProxy("127.0.0.1", 5672) as proxy:
        url = proxy.rewrite("amqp://guest:guest@127.0.0.1:5672/")
        async with aiobus.connect(url, heartbeat=2) as bus:
            proxy.blackhole()      # both sockets stay open, nothing is forwarded (half-open)
            ...
            proxy.restore()        # bytes flow again (held bytes are delivered, as TCP would)
            proxy.cut()            # every connection is reset (RST), new ones are welcome
            proxy.refuse()         # new connections are reset at once until restore()
            proxy.latency(0.2)     # every chunk waits 200 ms
            proxy.throttle(10_000) # bytes per second, each direction

It forwards at the TCP level, so it works for every protocol, TLS included.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

#: The proxy's own tasks carry this name, so leak checks can tell them from the code under test.
TASK_NAME = "aiobus-faultproxy"


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Pair:
    """One client connection and its upstream twin."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as a crashed peer or a dropped route would look from the other end."""
    # ValueError: uvloop builds the socket object on demand, which fails once the transport
    # has closed its descriptor; such a connection is gone already.
    with contextlib.suppress(OSError, ValueError):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._latency = 0.0
        self._rate: float | None = None
        self.stats = ProxyStats()

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, *self._listen)
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        pairs = list(self._pairs)
        for pair in pairs:
            pair.reset()
        tasks = [t for p in pairs for t in p.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the proxy first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def host(self) -> str:
        return self._listen[0]

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def rewrite(self, url: str) -> str:
        """The same URL, pointed at the proxy instead of the broker."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"{self.host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    # -- faults -------------------------------------------------------------------------------

    def restore(self) -> None:
        """Back to a healthy network: forward, accept, no delay, no limit."""
        self._refusing = False
        self._latency = 0.0
        self._rate = None
        self._flowing.set()

    def cut(self) -> int:
        """Reset every live connection now; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.reset()
        self._pairs.clear()
        self.stats.cut += len(pairs)
        return len(pairs)

    def blackhole(self) -> None:
        """Keep every socket open and forward nothing, either way (a half-open link)."""
        self._flowing.clear()

    def refuse(self) -> None:
        """Reset new connections as they arrive, until ``restore()``."""
        self._refusing = True

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        self._rate = bytes_per_second

    # -- forwarding ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.set_name(TASK_NAME)
        if self._refusing:
            self.stats.refused += 1
            _reset(writer)
            return
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._pairs.discard(pair)
            _reset(writer)
            return
        self.stats.accepted += 1
        pair.upstream = up_writer
        loop = asyncio.get_running_loop()
        pair.tasks = [
            loop.create_task(self._pump(reader, up_writer, pair, up=True), name=TASK_NAME),
            loop.create_task(self._pump(up_reader, writer, pair, up=False), name=TASK_NAME),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        self._pairs.discard(pair)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair, *, up: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # Held, not dropped: when the network heals, TCP would deliver these too.
                await self._flowing.wait()
                if self._latency:
                    await asyncio.sleep(self._latency)
                if self._rate:
                    await asyncio.sleep(len(data) / self._rate)
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended: end the other, so neither peer waits on a dead twin.
            pair.reset()
