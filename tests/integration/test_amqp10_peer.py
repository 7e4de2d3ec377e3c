"""The AMQP 1.0 adapter against a scripted peer, for what no broker produces on demand."""

from __future__ import annotations

import asyncio
import time

import pytest
from proton import Disposition, Message

import aiobus
import aiobus.amqp1
from aiobus.events import State
from tests.helpers import other_tasks, wait_for_state
from tests.integration.amqp10_peer import Script, ScriptedPeer, amqp091_server

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "connect_timeout": 5, "close_timeout": 2}


async def test_modified_is_retried_then_nacked() -> None:
    async with ScriptedPeer(Script(outcome="modified")) as peer:
        async with aiobus.amqp1.connect(peer.url, modified_retries=2, **FAST) as bus:
            with pytest.raises(aiobus.Nacked) as info:
                await bus.publish("/queues/q", b"x", timeout=5)
            assert info.value.code == "modified"
            assert len(peer.messages) == 3  # the first send and two retries
            assert {m.id for m in peer.messages} == {peer.messages[0].id}


async def test_modified_undeliverable_is_nacked_at_once() -> None:
    async with ScriptedPeer(Script(outcome="undeliverable")) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            with pytest.raises(aiobus.Nacked, match="undeliverable=True"):
                await bus.publish("/queues/q", b"x", timeout=5)
            assert len(peer.messages) == 1


async def test_rejected_keeps_the_condition_and_description() -> None:
    async with ScriptedPeer(Script(outcome="reject")) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            with pytest.raises(aiobus.Nacked, match="scripted rejection") as info:
                await bus.publish("/queues/q", b"x", timeout=5)
            assert info.value.code == "amqp:precondition-failed"


async def test_released_is_unroutable_unless_mandatory_is_off() -> None:
    async with ScriptedPeer(Script(outcome="release")) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            with pytest.raises(aiobus.Unroutable):
                await bus.publish("/queues/q", b"x", timeout=5)
            confirm = await bus.publish("/queues/q", b"y", mandatory=False, timeout=5)
            assert confirm.protocol == "amqp10"


async def test_nothing_is_sent_without_credit() -> None:
    async with ScriptedPeer(Script(credit=0)) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            futures = [bus.publish("/queues/q", b"x", timeout=0.5) for _ in range(5)]
            for fut in futures:
                with pytest.raises(aiobus.PublishTimeout):
                    await fut
            assert peer.messages == []


async def test_many_transfers_in_flight_within_credit() -> None:
    async with ScriptedPeer(Script(outcome="hold", credit=7)) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            futures = [bus.publish("/queues/q", str(i), timeout=1) for i in range(20)]
            await peer.wait_messages(7)
            await asyncio.sleep(0)  # one more loop turn: nothing beyond the credit arrives
            assert [m.body for m in peer.messages] == [str(i).encode() for i in range(7)]
            for fut in futures:
                with pytest.raises(aiobus.PublishTimeout):
                    await fut
            assert len(peer.messages) == 7


async def test_presettled_resolves_once_written() -> None:
    async with ScriptedPeer(Script(outcome="hold")) as peer:
        async with aiobus.amqp1.connect(peer.url, presettled=True, **FAST) as bus:
            await asyncio.gather(*(bus.publish("/queues/q", b"x", timeout=5) for _ in range(3)))
            await peer.wait_messages(3)


async def test_detached_consumer_fails_its_subscription_only() -> None:
    async with ScriptedPeer(Script(detach={"/queues/gone": "amqp:resource-deleted"})) as peer:
        async with aiobus.amqp1.connect(peer.url, **FAST) as bus:
            async with bus.subscribe("/queues/gone") as sub:
                with pytest.raises(aiobus.SubscriptionError, match="/queues/gone") as info:
                    await sub.get(timeout=5)
                assert "amqp:resource-deleted" in str(info.value)
            assert bus.state is State.CONNECTED
            await bus.publish("/queues/q", b"still fine", timeout=5)


async def test_ended_session_takes_only_its_own_link() -> None:
    script = Script(
        end_session={"/queues/missing": "amqp:not-found"},
        to_send=[Message(body=b"for the good one", inferred=True)],
    )
    async with ScriptedPeer(script) as peer:
        async with (
            aiobus.amqp1.connect(peer.url, **FAST) as bus,
            bus.subscribe("/queues/good") as good,
        ):
            with pytest.raises(aiobus.SubscriptionError, match="'/queues/missing'"):
                async with bus.subscribe("/queues/missing"):
                    pass
            msg = await good.get(timeout=5)
            assert msg.body == b"for the good one"
            await msg.ack()
            await bus.publish("/queues/q", b"x", timeout=5)
            assert bus.state is State.CONNECTED


async def test_per_address_sender_ended_by_the_peer_fails_typed() -> None:
    script = Script(end_session={"/queues/missing": "amqp:not-found"})
    async with ScriptedPeer(script) as peer:
        async with aiobus.amqp1.connect(peer.url, anonymous_relay="never", **FAST) as bus:
            with pytest.raises(aiobus.Nacked, match="'/queues/missing'") as info:
                await bus.publish("/queues/missing", b"x", timeout=5)
            assert info.value.code == "amqp:not-found"
            await bus.publish("/queues/fine", b"x", timeout=5)
            assert peer.messages[-1].body == b"x"


async def test_half_open_connection_is_detected_by_the_idle_timeout() -> None:
    async with ScriptedPeer() as peer:
        async with aiobus.amqp1.connect(peer.url, heartbeat=2, **FAST) as bus:
            await bus.publish("/queues/q", b"x", timeout=5)
            async with bus.events() as events:
                peer.script.silent = True
                started = time.monotonic()
                event = await wait_for_state(events, State.RECONNECTING, timeout=8)
                assert "idle" in event.reason
                assert time.monotonic() - started < 5  # about two intervals


async def test_server_speaking_amqp091_is_a_clear_error() -> None:
    server, port = await amqp091_server()
    async with server:
        started = time.monotonic()
        with pytest.raises(aiobus.ProtocolMismatch, match="amqp://"):
            async with aiobus.connect(f"amqp1://127.0.0.1:{port}", **FAST):
                pass
        assert time.monotonic() - started < 2


async def test_settlements_map_to_outcomes_and_bodies_decode() -> None:
    to_send = [
        Message(body=b"raw", inferred=True),
        Message(body="text"),
        Message(body={"k": [1, 2]}),
        Message(body=b"four", inferred=True, properties={"h": "v"}, subject="s1"),
    ]
    async with ScriptedPeer(Script(to_send=to_send)) as peer:
        async with (
            aiobus.amqp1.connect(peer.url, **FAST) as bus,
            bus.subscribe("/queues/in", prefetch=4) as sub,
        ):
            got = [await sub.get(timeout=5) for _ in range(4)]
            assert got[0].body == b"raw"
            assert got[1].body == b"text" and got[1].content_type.startswith("text/plain")
            assert got[2].json() == {"k": [1, 2]}
            assert got[2].content_type == "application/json"
            assert got[3].headers == {"h": "v"} and got[3].raw.subject == "s1"
            await got[0].ack()
            await got[1].nack(requeue=True)
            await got[2].reject()
            await aiobus.amqp1.release(got[3])
            async with asyncio.timeout(5):
                while len(peer.dispositions) < 4:
                    peer.disposed.clear()
                    await peer.disposed.wait()
            assert sorted(peer.dispositions) == [
                (Disposition.ACCEPTED, False, False),
                (Disposition.REJECTED, False, False),
                (Disposition.RELEASED, False, False),
                (Disposition.MODIFIED, True, False),  # delivery-failed: the broker counts it
            ]
            with pytest.raises(aiobus.AlreadySettled):
                await aiobus.amqp1.release(got[3])
    assert not other_tasks()


async def test_in_flight_publishes_fail_at_once_when_the_link_dies_with_outage_fail() -> None:
    async with ScriptedPeer(Script(outcome="hold")) as peer:
        async with aiobus.amqp1.connect(peer.url, outage="fail", **FAST) as bus:
            futures = [bus.publish("/queues/q", b"x", timeout=30) for _ in range(5)]
            await peer.wait_messages(5)
            started = time.monotonic()
            peer.drop_connections()
            for fut in futures:
                with pytest.raises(aiobus.LinkLost) as info:
                    await fut
                assert info.value.maybe_delivered
            assert time.monotonic() - started < 2  # noticed at once, not at the deadline


async def test_no_ack_subscription_gets_presettled_deliveries_within_its_buffer() -> None:
    to_send = [Message(body=str(i).encode(), inferred=True) for i in range(10)]
    async with ScriptedPeer(Script(to_send=to_send)) as peer:
        async with (
            aiobus.amqp1.connect(peer.url, **FAST) as bus,
            bus.subscribe("/queues/in", prefetch=3, no_ack=True) as sub,
        ):
            got = [await sub.get(timeout=5) for _ in range(10)]
            assert [m.body for m in got] == [str(i).encode() for i in range(10)]
            assert all(m.settled for m in got)
        assert peer.dispositions == []  # pre-settled by the sender: nothing to settle


async def test_close_returns_promptly_when_the_peer_is_silent() -> None:
    async with ScriptedPeer() as peer:
        bus = aiobus.amqp1.connect(peer.url, heartbeat=0, **{**FAST, "close_timeout": 1})
        async with bus:
            await bus.publish("/queues/q", b"x", timeout=5)
            peer.script.silent = True
            started = time.monotonic()
        assert time.monotonic() - started < 4
        assert not other_tasks()


async def test_messages_never_sent_for_want_of_credit_fail_as_never_delivered() -> None:
    async with ScriptedPeer(Script(credit=0)) as peer:
        async with aiobus.amqp1.connect(peer.url, outage="fail", **FAST) as bus:
            futures = [bus.publish("/queues/q", b"x", timeout=30) for _ in range(3)]
            await asyncio.sleep(0)  # one loop turn: the pump hands them to the link
            link = bus._link
            assert link is not None and len(link._anon.queue) == 3  # type: ignore[attr-defined]
            peer.drop_connections()
            for fut in futures:
                with pytest.raises(aiobus.LinkLost) as info:
                    await fut
                assert not info.value.maybe_delivered
            assert peer.messages == []


async def test_paused_subscription_takes_no_more_credit() -> None:
    to_send = [Message(body=b, inferred=True) for b in (b"a", b"b", b"c")]
    async with ScriptedPeer(Script(to_send=to_send)) as peer:
        async with (
            aiobus.amqp1.connect(peer.url, **FAST) as bus,
            bus.subscribe("/queues/in", prefetch=2) as sub,
        ):
            first = await sub.get(timeout=5)
            sub.pause()
            await first.ack()  # settled, but paused: no credit goes back
            second = await sub.get(timeout=5)  # what is buffered stays readable
            assert (first.body, second.body) == (b"a", b"b")
            await second.ack()
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.3)
            assert [bytes(m.body) for m in peer.script.to_send] == [b"c"]  # still the peer's
