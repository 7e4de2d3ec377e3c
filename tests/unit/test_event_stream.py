"""Event streams (issue 11): several readers of one stream, every reader ends with it, and a
stream read too slowly says how many events it dropped instead of dropping them silently."""

from __future__ import annotations

import asyncio

import aiobus
from aiobus.events import Event, EventHub, EventStream, State
from aiobus.memory_broker import MemoryBroker
from tests.helpers import other_tasks, through_outage

READERS = 3


class StreamReaders:
    """``READERS`` tasks reading one stream. Each, once it holds an event, waits until every
    reader holds one: were one reader handed everything and the others never woken, that wait
    would never end."""

    def __init__(self, stream: EventStream) -> None:
        self.got: list[list[Event]] = [[] for _ in range(READERS)]
        self.everyone_has_one = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self._read(stream, self.got[n]), name=f"events reader {n}")
            for n in range(READERS)
        ]

    async def _read(self, stream: EventStream, mine: list[Event]) -> None:
        async for event in stream:
            mine.append(event)
            if all(self.got):
                self.everyone_has_one.set()
            await self.everyone_has_one.wait()

    async def all_ended(self, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            outcomes = await asyncio.gather(*self.tasks, return_exceptions=True)
        assert outcomes == [None] * READERS  # each ``async for`` just ended

    def check_each_event_reached_exactly_one_reader(self) -> None:
        seen = [id(e) for mine in self.got for e in mine]
        assert len(seen) == len(set(seen))
        for mine in self.got:
            assert [e.time for e in mine] == sorted(e.time for e in mine)


async def test_three_readers_share_one_stream_and_all_end_when_the_connection_closes(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        readers = StreamReaders(bus.events())
        await through_outage(bus, memory_broker.kill_links)  # three events: one each
        async with asyncio.timeout(5):
            await readers.everyone_has_one.wait()
    await readers.all_ended()
    readers.check_each_event_reached_exactly_one_reader()
    kinds = {(e.kind, e.state) for mine in readers.got for e in mine}
    assert ("state", State.CLOSED) in kinds  # what was left was handed out before the end
    assert not other_tasks()


async def test_three_readers_all_end_when_the_stream_is_closed(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        async with bus.events() as stream:
            readers = StreamReaders(stream)
            await through_outage(bus, memory_broker.kill_links)
            async with asyncio.timeout(5):
                await readers.everyone_has_one.wait()
        await readers.all_ended()
        assert bus.is_connected
    readers.check_each_event_reached_exactly_one_reader()


def _event(n: int) -> Event:
    return Event("state", State.CONNECTED, reason=f"event {n}", time=float(n))


async def test_a_stream_that_drops_events_says_how_many_before_the_ones_that_follow() -> None:
    hub = EventHub(backlog=3)
    stream = hub.listen()
    for n in range(1, 8):
        hub.emit(_event(n))
    hub.close()
    got = [event async for event in stream]
    overflow, *rest = got
    assert overflow.kind == "overflow"
    assert overflow.dropped == 4 == stream.dropped
    assert "4 events were dropped" in overflow.reason
    assert "keeps the last 3" in overflow.reason
    assert (overflow.state, overflow.time) == (State.CONNECTED, 5.0)  # the first after the gap
    assert [e.reason for e in rest] == ["event 5", "event 6", "event 7"]


async def test_each_overflow_reports_only_its_own_gap() -> None:
    hub = EventHub(backlog=2)
    stream = hub.listen()
    for n in range(1, 4):  # 1 is dropped
        hub.emit(_event(n))
    first = [await anext(stream), await anext(stream)]
    for n in range(4, 7):  # 3 (still unread) and 4 are dropped
        hub.emit(_event(n))
    hub.close()
    later = [event async for event in stream]
    assert [(e.kind, e.dropped, e.reason) for e in first + later] == [
        ("overflow", 1, first[0].reason),
        ("state", 0, "event 2"),
        ("overflow", 2, later[0].reason),
        ("state", 0, "event 5"),
        ("state", 0, "event 6"),
    ]
    assert stream.dropped == 3


async def test_a_stream_read_in_time_never_reports_an_overflow(
    memory_broker: MemoryBroker,
) -> None:
    async with aiobus.connect(memory_broker.url(), backoff_initial=0.001) as bus:
        stream = bus.events()
        await through_outage(bus, memory_broker.kill_links)
    events = [event async for event in stream]
    assert events and all(e.kind != "overflow" and e.dropped == 0 for e in events)
    assert stream.dropped == 0
