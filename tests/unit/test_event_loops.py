"""Both event loops: every async test runs on each, in debug mode, and the adapters' stream
interface fits the transports each loop makes (plain TCP and TLS)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import uvloop

from aiobus.transports.stream import StreamTransport, stream_transport
from tests.harness.tls import TLSFiles


def _loop_name(request: pytest.FixtureRequest) -> str:
    """The loop this test was parametrised with, from its id (``test_x[uvloop]``)."""
    name = request.node.name
    assert name.endswith(("[asyncio]", "[uvloop]")), f"{name} is not parametrised by loop"
    return name.rsplit("[", 1)[1].rstrip("]")


async def test_the_loop_in_the_test_id_is_the_loop_the_test_runs_on(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    if _loop_name(request) == "uvloop":
        assert isinstance(loop, uvloop.Loop)
    else:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert not isinstance(loop, uvloop.Loop)


async def test_asyncio_debug_mode_is_on_for_every_loop() -> None:
    assert asyncio.get_running_loop().get_debug() is True


class _Capture(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def _connect(ssl_server: ssl.SSLContext | None, ssl_client: ssl.SSLContext | None) -> None:
    """Connect to a local server and check the client's transport is a stream transport."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_server)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            _Capture,
            "127.0.0.1",
            port,
            ssl=ssl_client,
            server_hostname="127.0.0.1" if ssl_client is not None else None,
        )
        try:
            assert protocol.transport is transport
            checked = stream_transport(transport)
            assert isinstance(checked, StreamTransport)
            assert checked.get_extra_info("peername")[1] == port
            checked.set_write_buffer_limits(high=65536)
            assert checked.get_write_buffer_size() >= 0
            checked.pause_reading()
            checked.resume_reading()
            if ssl_client is not None:
                assert checked.get_extra_info("peercert") is not None
        finally:
            transport.abort()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_plain_tcp_transport_has_the_stream_interface() -> None:
    await _connect(None, None)


async def test_a_tls_transport_has_the_stream_interface(tls_files: TLSFiles) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(tls_files.server_cert), str(tls_files.server_key))
    await _connect(server_ctx, tls_files.client_context())


def test_a_transport_without_the_stream_methods_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"BaseTransport is not a byte-stream transport") as err:
        stream_transport(asyncio.BaseTransport())
    assert "write" in str(err.value)
    assert "pause_reading" in str(err.value)
