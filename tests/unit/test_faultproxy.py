"""The fault proxy itself, against an echo server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aiobus.testing import FaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(timeout):
        return await reader.readexactly(len(data))


async def test_passes_traffic_and_rewrites_urls(echo: tuple[str, int]) -> None:
    async with FaultProxy(*echo) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        assert proxy.rewrite("amqp://u:p@broker:5672/v?x=1") == (
            f"amqp://u:p@127.0.0.1:{proxy.port}/v?x=1"
        )
        writer.close()
        await writer.wait_closed()


async def test_cut_resets_live_connections(echo: tuple[str, int]) -> None:
    async with FaultProxy(*echo) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        await roundtrip(reader, writer, b"x")
        assert proxy.cut() == 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(5):
                await reader.readexactly(1)
        writer.close()
        # a new connection works
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        assert await roundtrip(reader, writer, b"y") == b"y"
        writer.close()


async def test_blackhole_holds_bytes_until_restored(echo: tuple[str, int]) -> None:
    async with FaultProxy(*echo) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        proxy.blackhole()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await reader.readexactly(4)
        proxy.restore()
        async with asyncio.timeout(5):
            assert await reader.readexactly(4) == b"held"
        writer.close()


async def test_refuse_resets_new_connections(echo: tuple[str, int]) -> None:
    async with FaultProxy(*echo) as proxy:
        proxy.refuse()
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await roundtrip(reader, writer, b"x")
        writer.close()
        assert proxy.stats.refused == 1
        proxy.restore()
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        assert await roundtrip(reader, writer, b"ok") == b"ok"
        writer.close()


async def test_latency_and_throttle_slow_the_link(echo: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    async with FaultProxy(*echo) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        proxy.latency(0.1)
        started = loop.time()
        await roundtrip(reader, writer, b"slow")
        assert loop.time() - started >= 0.2  # 0.1 s each way
        proxy.restore()
        proxy.throttle(100_000)
        started = loop.time()
        await roundtrip(reader, writer, b"z" * 20_000)
        assert loop.time() - started >= 0.2  # 20 kB at 100 kB/s, both ways
        writer.close()
