"""The byte-stream transport interface the socket-level adapters (MQTT, AMQP 1.0) rely on.

``loop.create_connection`` hands a protocol an ``asyncio.BaseTransport``, but which class it is
depends on the event loop: the default loop's ``_SelectorSocketTransport`` and
``_SSLProtocolTransport`` subclass ``asyncio.Transport``, uvloop's ``TCPTransport`` and
``_SSLProtocolTransport`` do not (they implement the same methods without the ABC). So the
adapters check for the methods they call, not for a class.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

__all__ = ["StreamTransport", "stream_transport"]


@runtime_checkable
class StreamTransport(Protocol):
    """What the adapters call on a connected stream (a subset of ``asyncio.Transport``)."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int: ...


def stream_transport(transport: asyncio.BaseTransport) -> StreamTransport:
    """``transport`` as a :class:`StreamTransport`, whichever event loop made it.

    Raises ``TypeError`` naming the class and the missing methods: a loop whose stream
    transport lacks them cannot carry these protocols, and an assertion would say neither.
    """
    if isinstance(transport, StreamTransport):
        return transport
    missing = [name for name in _STREAM_METHODS if not callable(getattr(transport, name, None))]
    raise TypeError(
        f"the event loop's transport {type(transport).__module__}."
        f"{type(transport).__qualname__} is not a byte-stream transport: it lacks "
        f"{', '.join(missing)}"
    )


# The protocol's own methods, for the error text (derived, so the two cannot drift apart).
_STREAM_METHODS = tuple(
    name
    for name, value in vars(StreamTransport).items()
    if callable(value) and not name.startswith("_")
)
