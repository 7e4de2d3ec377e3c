"""Several tasks reading one subscription (a worker pool), on every transport (issue 11).

Each delivery reaches exactly one worker, in publish order per worker; every worker wakes for
deliveries, and every one of them ends when the subscription leaves or the connection closes.
A subscription iterated before ``async with`` fails at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from aiobus import SubscriptionNotEntered
from tests.conformance.conftest import Target
from tests.helpers import other_tasks

WORKERS = 3
MESSAGES = 30


class WorkerPool:
    """``WORKERS`` tasks iterating one subscription. Each worker, once it holds a message,
    waits until every worker holds one (a stand-in for each doing I/O per message): were one
    reader handed everything and the others never woken, that wait would never end."""

    def __init__(self, sub: Any) -> None:
        self.got: list[list[int]] = [[] for _ in range(WORKERS)]
        self.everyone_has_one = asyncio.Event()
        self.all_received = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self._work(sub, self.got[n]), name=f"worker {n}")
            for n in range(WORKERS)
        ]

    async def _work(self, sub: Any, mine: list[int]) -> None:
        async for msg in sub:
            mine.append(int(msg.text()))
            await msg.ack()
            if all(self.got):
                self.everyone_has_one.set()
            if sum(map(len, self.got)) == MESSAGES:
                self.all_received.set()
            await self.everyone_has_one.wait()

    async def outcomes(self, timeout: float = 10) -> list[BaseException | None]:
        """How each worker ended; fails if any is still waiting after ``timeout``."""
        async with asyncio.timeout(timeout):
            done = await asyncio.gather(*self.tasks, return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in done]

    def check_each_message_reached_exactly_one_worker(self) -> None:
        assert all(self.got), f"a worker got nothing: {self.got}"
        assert sorted(m for mine in self.got for m in mine) == list(range(MESSAGES))
        for mine in self.got:
            assert mine == sorted(mine), "a worker saw messages out of publish order"


async def _publish_all(bus: aiobus.Connection, topic: str) -> None:
    await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(MESSAGES)))


@pytest.mark.parametrize("ending", ["subscription_leaves", "connection_closes"])
async def test_a_worker_pool_shares_one_subscription_and_every_worker_ends(
    target: Target, ending: str
) -> None:
    """Each message to exactly one of the workers; all of them end: their ``async for``
    just stops when the subscription leaves, and raises ``ConnectionClosed`` when the
    connection closes."""
    topic = target.topic(target.unique(), "pool")
    async with aiobus.connect(target.url, **target.options) as bus:
        async with target.subscribe(bus, topic) as sub:
            pool = WorkerPool(sub)
            await _publish_all(bus, topic)
            async with asyncio.timeout(20):
                await pool.all_received.wait()
            if ending == "connection_closes":
                await bus.close()
                outcomes = await pool.outcomes()
        if ending == "subscription_leaves":
            assert await pool.outcomes() == [None] * WORKERS
        else:
            assert all(isinstance(o, aiobus.ConnectionClosed) for o in outcomes), outcomes
        pool.check_each_message_reached_exactly_one_worker()
    assert not other_tasks()


async def test_iterating_a_subscription_never_entered_fails_at_once(target: Target) -> None:
    async with aiobus.connect(target.url, **target.options) as bus:
        sub = bus.subscribe(target.topic(target.unique(), "never"))
        async with asyncio.timeout(5):  # at once: a hang here is the bug
            with pytest.raises(SubscriptionNotEntered, match=r"async with bus\.subscribe"):
                async for _ in sub:
                    pass
            with pytest.raises(SubscriptionNotEntered):
                await sub.get(timeout=1)
    assert issubclass(SubscriptionNotEntered, aiobus.AiobusError)
    assert issubclass(SubscriptionNotEntered, RuntimeError)
