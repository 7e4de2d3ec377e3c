"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiobus
from aiobus.events import Event, State
from aiobus.faultproxy import TASK_NAME as PROXY_TASK_NAME


def unique(prefix: str = "t") -> str:
    """A name no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def other_tasks() -> set[asyncio.Task[object]]:
    """Live tasks besides this one, leaving out a fault proxy's (it outlives connections)."""
    current = asyncio.current_task()
    return {
        t
        for t in asyncio.all_tasks()
        if t is not current and not t.done() and t.get_name() != PROXY_TASK_NAME
    }


async def wait_for_state(events: AsyncIterator[Event], state: State, timeout: float = 5) -> Event:
    async with asyncio.timeout(timeout):
        async for event in events:
            if event.kind == "state" and event.state is state:
                return event
    raise AssertionError(f"event stream ended before {state}")


async def through_outage(
    bus: aiobus.Connection, fault: Callable[[], object], timeout: float = 5
) -> None:
    """Run ``fault`` and return once the connection has lost its link and is connected again."""
    async with bus.events() as events:
        fault()
        await wait_for_state(events, State.RECONNECTING, timeout)
        await wait_for_state(events, State.CONNECTED, timeout)


class Attempts(aiobus.Middleware):
    """Records the attempt number of every handler call (service tests)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def on_handle(self, ctx: aiobus.HandleContext, call_next: Any) -> Any:
        self.seen.append(ctx.attempt)
        return await call_next(ctx)


class Pushes:
    """Wakes a waiter whenever the consumer pushes a delivery into ``sub``'s buffer: the
    library has no event for a buffer's fill, so the subscription's ``push`` is wrapped
    (observed, not replaced) to wait on the condition without polling."""

    def __init__(self, sub: aiobus.Subscription) -> None:
        self._changed = asyncio.Event()
        original = sub.push

        def push(delivery: aiobus.Delivery) -> bool:
            accepted = original(delivery)
            self._changed.set()
            return accepted

        sub.push = push

    async def until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def mqtt_persistent_session(protocol: int, client_id: str, **options: Any) -> dict[str, Any]:
    """Options for an MQTT session the broker keeps across connections: 3.1.1
    ``clean_session=False``; MQTT 5 also a session expiry."""
    session: dict[str, Any] = {"clean_session": False}
    if protocol == 5:
        session["session_expiry"] = 600
    return {"protocol": protocol, "client_id": client_id, **session, **options}
