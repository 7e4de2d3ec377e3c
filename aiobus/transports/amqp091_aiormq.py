"""The aiormq internals the AMQP 0-9-1 adapter relies on: checked once at import, used here.

aiobus publishes on a channel of its own (``Amqp091Link``) and writes its frames into aiormq's
channel (the fast path), or calls aiormq's ``basic_publish`` (``fast_publish = False``). Both
leave publisher confirms to aiormq: its ``delivery_tag`` counter, its ``confirmations`` futures
(failed by aiormq when the channel closes) and its reader, which matches a ``basic.return`` to a
publish and fails that publish's confirmation.

aiormq matches a return by message id (``message_id_delivery_tag``): two messages in flight
with one id (users set ids; retry copies keep them) would get each other's outcome. ``Returns``
takes the place of that map on aiobus's publish channel and decides from aiobus's own records
of the messages in flight: the return names the message id, exchange and routing key, and of
the messages in flight with all three, the broker returns them in the order they were published
(it returns a message while routing it, and routes a channel's messages in order), so the
earliest not yet returned is the one.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiormq.abc import ChannelFrame
from aiormq.channel import Channel

if TYPE_CHECKING:
    from ..publishing import Outgoing

#: What aiobus needs of ``aiormq.channel.Channel``: the attributes its ``__init__`` sets, the
#: methods it has, and what its return handler reads (all checked by ``self_test``).
_INIT_ASSIGNS = (
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "number",
)
_METHODS = ("_split_body", "create_future", "lock", "_on_return_frame")
_RETURN_READS = ("message_id_delivery_tag", "get", "confirmations", "pop")


def aiormq_version() -> str:
    try:
        return importlib.metadata.version("aiormq")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (not pip-installed)
        return "(version unknown)"


def missing_internals(channel_class: type = Channel) -> list[str]:
    """What of ``_METHODS``, ``_INIT_ASSIGNS`` and ``_RETURN_READS`` the channel class lacks."""
    missing = [f"Channel.{name}" for name in _METHODS if not hasattr(channel_class, name)]
    init = getattr(vars(channel_class).get("__init__"), "__code__", None)
    assigned = init.co_names if init is not None else ()
    missing += [f"Channel().{name}" for name in _INIT_ASSIGNS if name not in assigned]
    on_return = getattr(getattr(channel_class, "_on_return_frame", None), "__code__", None)
    reads = on_return.co_names if on_return is not None else ()
    missing += [
        f"Channel._on_return_frame using {name}" for name in _RETURN_READS if name not in reads
    ]
    if not callable(getattr(ChannelFrame, "marshall", None)):
        missing.append("ChannelFrame.marshall")
    return missing


def self_test(channel_class: type = Channel) -> None:
    """Raise ``ImportError`` naming the installed aiormq version if it lacks an internal the
    adapter uses (a newer aiormq may rename them): a clear error at import, never a silent
    change of behaviour on a link."""
    missing = missing_internals(channel_class)
    if missing:
        raise ImportError(
            f"aiobus's AMQP 0-9-1 adapter needs aiormq internals that the installed aiormq "
            f"{aiormq_version()} does not have: {', '.join(missing)}. aiobus is tested with "
            "aiormq 7.2 (pyproject pins aiormq>=7.2,<8): install a tested aiormq version"
        )


self_test()

#: The message a slow-path ``basic_publish`` task is publishing: aiormq registers its delivery
#: tag by message id only; ``Returns`` keeps the message itself.
publishing: ContextVar[Outgoing | None] = ContextVar("aiobus_amqp091_publishing", default=None)


class Returns:
    """aiormq's ``message_id_delivery_tag`` on aiobus's publish channel: the messages in flight
    by message id (one, or a list in publish order where ids repeat), each with its delivery
    tag in ``msg.tag``; a ``basic.return`` is matched by id, exchange and routing key to the
    earliest one not returned yet."""

    __slots__ = ("_by_id", "_default_exchange", "_frame", "_reader")

    def __init__(self, default_exchange: str) -> None:
        self._by_id: dict[str, Outgoing | list[Outgoing]] = {}
        self._default_exchange = default_exchange
        self._frame: Any = None
        self._reader: asyncio.Task[Any] | None = None

    def install(self, channel: Any) -> None:
        """Take the place of the channel's map, and see each Basic.Return frame aiormq's
        reader hands its return handler (the exchange and routing key the match needs)."""
        handler: Callable[[Any], Awaitable[None]] = channel._on_return_frame

        async def on_return(frame: Any) -> None:
            self._frame, self._reader = frame, asyncio.current_task()
            try:
                await handler(frame)
            finally:
                self._frame = self._reader = None

        channel._on_return_frame = on_return
        channel.message_id_delivery_tag = self

    def add(self, msg: Outgoing) -> None:
        """``msg`` was written with delivery tag ``msg.tag``, after every message added before."""
        by_id = self._by_id
        held = by_id.setdefault(msg.message_id, msg)
        if held is msg:
            return
        if isinstance(held, list):
            held.append(msg)
        else:
            by_id[msg.message_id] = [held, msg]

    def remove(self, msg: Outgoing) -> None:
        """``msg`` is settled (or its publish is over): a return can no longer be for it."""
        by_id = self._by_id
        held = by_id.get(msg.message_id)
        if held is msg:
            del by_id[msg.message_id]
        elif isinstance(held, list) and msg in held:
            held.remove(msg)
            if len(held) == 1:
                by_id[msg.message_id] = held[0]

    def _returned(self, message_id: str) -> int | None:
        frame = self._frame
        held = self._by_id.get(message_id)
        if held is None:
            return None
        for msg in held if isinstance(held, list) else (held,):
            exchange = msg.exchange if msg.exchange is not None else self._default_exchange
            if exchange == frame.exchange and msg.topic == frame.routing_key:
                self.remove(msg)  # returned once: the next return with this id is another's
                tag: int = msg.tag
                return tag
        return None

    # -- what aiormq calls ------------------------------------------------------------------

    def get(self, message_id: str, default: int | None = None) -> int | None:
        """aiormq's lookup. Inside its return handler, the tag of the message returned; in a
        ``basic_publish`` (its forget and rollback steps) nothing, so aiormq removes nothing:
        aiobus removes its own record when that publish is over."""
        if self._frame is not None and asyncio.current_task() is self._reader:
            found = self._returned(message_id)
            return default if found is None else found
        return default

    def __setitem__(self, message_id: str, tag: int) -> None:
        """aiormq's ``basic_publish`` registering ``tag``: the message that task publishes."""
        msg = publishing.get()
        if msg is not None and msg.message_id == message_id:
            msg.tag = tag
            self.add(msg)

    def pop(self, message_id: str, default: int | None = None) -> int | None:
        return default  # only after a ``get`` that found it, which never happens outside returns

    def __len__(self) -> int:
        return len(self._by_id)
