"""One packet-id space for every packet type [MQTT-2.2.1-3]: a SUBSCRIBE or UNSUBSCRIBE never
takes an id a PUBLISH still holds (unacknowledged, or waiting to be sent again on a resumed
session). A scripted MQTT 5 broker holds the PUBACKs back, so the ids are in flight for sure."""

from __future__ import annotations

import asyncio

import aiobus
from tests.helpers import unique
from tests.integration.mqtt_peer import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    ScriptedPeer,
    ack,
    connack,
    packet_id,
    publish_id,
    suback,
    unsuback,
)
from tests.integration.mqtt_support import link_of

FAST = {"protocol": 5, "backoff_initial": 0.01, "backoff_max": 0.2}


async def test_subscribe_and_unsubscribe_never_take_an_id_a_publish_holds() -> None:
    """Three QoS 1 publishes stay unacknowledged while the connection subscribes and
    unsubscribes, with the allocator's counter put back so that it must skip them."""
    published: list[int] = []
    requests: list[tuple[int, int]] = []  # (packet type, id)
    release: asyncio.Event = asyncio.Event()
    three_in: asyncio.Event = asyncio.Event()

    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        got = await peer.next_packet(n, r)
        assert got is not None and got[0] >> 4 == CONNECT
        w.write(connack())
        while (got := await peer.next_packet(n, r)) is not None:
            first, body = got
            kind = first >> 4
            if kind == PUBLISH:
                mid = publish_id(first, body)
                assert mid is not None
                published.append(mid)
                if len(published) == 3:
                    three_in.set()
            elif kind == SUBSCRIBE:
                requests.append((kind, packet_id(body)))
                w.write(suback(body))
            elif kind == UNSUBSCRIBE:
                requests.append((kind, packet_id(body)))
                w.write(unsuback(body))
                release.set()
                for mid in published:  # only now: they were in flight all along
                    w.write(ack(PUBACK, mid))
            elif kind == PINGREQ:
                w.write(b"\xd0\x00")
            elif kind == DISCONNECT:
                return

    async with ScriptedPeer(script) as peer:
        async with aiobus.connect(peer.url, **FAST) as bus:
            pending = [bus.publish(f"t/{i}", b"x", qos=1) for i in range(3)]
            async with asyncio.timeout(15):
                await three_in.wait()
                link_of(bus).session.next_mid = 0  # the next id would be a held one
                sub = bus.subscribe(f"f/{unique()}", qos=1)
                async with sub:
                    link_of(bus).session.next_mid = 1
                    await sub.unsubscribe()
                await asyncio.gather(*pending)
    assert sorted(published) == [1, 2, 3]
    assert [kind for kind, _ in requests] == [SUBSCRIBE, UNSUBSCRIBE]
    for _, mid in requests:
        assert mid not in published, (requests, published)


async def test_resumed_session_re_subscribes_clear_of_the_ids_it_will_re_send() -> None:
    """The link dies with three QoS 1 publishes unacknowledged; the broker resumes the
    session, so they go again with their ids, after the subscription is restored: its
    SUBSCRIBE must not take one of those ids."""
    first_link: list[int] = []
    second_link: list[int] = []
    resubscribed: list[int] = []
    three_in = asyncio.Event()

    async def script(
        peer: ScriptedPeer, n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        got = await peer.next_packet(n, r)
        assert got is not None and got[0] >> 4 == CONNECT
        w.write(connack(session_present=n > 1))
        while (got := await peer.next_packet(n, r)) is not None:
            first, body = got
            kind = first >> 4
            if kind == SUBSCRIBE:
                if n > 1:
                    resubscribed.append(packet_id(body))
                w.write(suback(body))
            elif kind == PUBLISH:
                mid = publish_id(first, body)
                assert mid is not None
                if n == 1:
                    first_link.append(mid)
                    if len(first_link) == 3:
                        three_in.set()
                        return  # the link dies, nothing acknowledged
                else:
                    second_link.append(mid)
                    w.write(ack(PUBACK, mid))
            elif kind == PINGREQ:
                w.write(b"\xd0\x00")
            elif kind == DISCONNECT:
                return

    async with ScriptedPeer(script) as peer:
        # A reconnect delay long enough for the test to act between the links.
        options = {**FAST, "session_expiry": 60, "client_id": f"c-{unique()}"}
        options["backoff_initial"] = options["backoff_max"] = 0.5
        async with aiobus.connect(peer.url, **options) as bus:
            session = link_of(bus).session
            async with bus.subscribe(f"f/{unique()}", qos=1):
                async with asyncio.timeout(15):
                    pending = [bus.publish(f"t/{i}", b"x", qos=1) for i in range(3)]
                    await three_in.wait()
                    # Put back so that the restore's SUBSCRIBE would take the first held id.
                    session.next_mid = min(first_link) - 1
                    await asyncio.gather(*pending)
    assert second_link[:3] == first_link  # sent again with their ids
    assert len(resubscribed) == 1
    assert resubscribed[0] not in first_link, (resubscribed, first_link)
