"""Delayed republishing for ``Retry``: a timer per pending copy, owned by the service.

The consumer never sleeps: the original is acked at once and the copy waits here. The number
waiting is bounded (``limit``); past it a copy is published at once instead of waiting, so
memory stays bounded and nothing blocks. ``flush()`` (graceful shutdown) publishes everything
still waiting, at once, and returns when the broker has confirmed it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("aiobus.service")

Send = Callable[[], Awaitable[None]]


class RetryScheduler:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._timers: dict[int, tuple[asyncio.TimerHandle, Send]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._timers)

    @property
    def busy(self) -> int:
        """Copies waiting or being published."""
        return len(self._timers) + len(self._tasks)

    def schedule(self, delay: float, send: Send) -> None:
        if delay <= 0 or len(self._timers) >= self.limit:
            self._start(send)
            return
        ident = next(self._ids)
        handle = asyncio.get_running_loop().call_later(delay, self._due, ident)
        self._timers[ident] = (handle, send)

    def _due(self, ident: int) -> None:
        entry = self._timers.pop(ident, None)
        if entry is not None:
            self._start(entry[1])

    def _start(self, send: Send) -> None:
        task = asyncio.get_running_loop().create_task(self._run(send), name="aiobus retry")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, send: Send) -> None:
        try:
            await send()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The original was acked when the copy was scheduled: this is the one place a
            # Retry can lose a message, so it is loud.
            log.error("aiobus: a delayed retry could not be republished, message lost: %r", exc)

    async def flush(self) -> None:
        """Publish every waiting copy now and wait for all of them to be settled."""
        for handle, send in self._timers.values():
            handle.cancel()
            self._start(send)
        self._timers.clear()
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Hard stop (after ``flush`` timed out): nothing is left running."""
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
