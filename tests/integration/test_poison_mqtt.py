"""MQTT: a publish over the broker's Maximum Packet Size fails alone.

Mosquitto runs with ``max_packet_size 512``. The size that counts is the whole PUBLISH packet
in bytes (fixed header, topic, packet id, every property with UTF-8 lengths, aiobus's own
message-id user property, payload), checked at the call against CONNACK's Maximum Packet Size.
Where the broker refuses anyway, the message in flight over the limit fails with
``MessageTooLarge``, the limit holds at the call from then on, and the others are re-sent: one
link loss, never a loop. The rule for a broker that states no limit at all (blame the largest in
flight at two DISCONNECT 0x95 in a row) is proven against a scripted peer in
``test_mqtt_size_refusal_peer.py``: Mosquitto closes the socket with our next packets unread, so
its kernel may answer with a reset that destroys the DISCONNECT before we read it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import aiobus
from aiobus.publishing import Outgoing
from aiobus.transports.mqtt_session import packet_size, publish_properties
from tests.conformance.test_poison_publish import link_losses
from tests.harness.mosquitto import MosquittoBroker
from tests.helpers import unique
from tests.integration.mqtt_support import session_of

FAST = {"backoff_initial": 0.01, "backoff_max": 0.2}
MAX_PACKET = 512


@pytest.fixture(scope="module")
def small_packets() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(extra_config=[f"max_packet_size {MAX_PACKET}"])
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def body_for_exact_size(topic: str, qos: int, size: int, **fields: Any) -> bytes:
    """A body that makes the whole MQTT 5 PUBLISH exactly ``size`` bytes."""
    probe = Outgoing(topic, b"", qos=qos, message_id="m-1", **fields)
    overhead = packet_size(topic.encode(), 0, qos, publish_properties(probe))
    body = b"x" * (size - overhead)
    probe.body = body
    # The remaining-length field can grow by a byte with the body: adjust once.
    grown = packet_size(topic.encode(), len(body), qos, publish_properties(probe)) - size
    return body[: len(body) - grown]


@pytest.mark.parametrize("qos", [0, 1])
async def test_exact_packet_size_is_checked_at_the_call(
    small_packets: MosquittoBroker, qos: int
) -> None:
    topic = f"size/{unique()}"
    fields: dict[str, Any] = {
        "headers": {"tenant": "é" * 20},  # 20 characters, 40 bytes: counted in bytes
        "content_type": "text/plain",
        "correlation_id": "c-1",
    }
    async with aiobus.connect(small_packets.url, protocol=5, **FAST) as bus:
        async with bus.subscribe(topic, qos=1) as sub:
            fits = body_for_exact_size(topic, qos, MAX_PACKET, **fields)
            await bus.publish(topic, fits, qos=qos, message_id="m-1", **fields)
            got = await sub.get(timeout=10)
            assert got.body == fits
            await got.ack()
            with pytest.raises(aiobus.MessageTooLarge) as refused:
                bus.publish(topic, fits + b"x", qos=qos, message_id="m-1", **fields)
            assert (refused.value.size, refused.value.limit) == (MAX_PACKET + 1, MAX_PACKET)
            assert bus.pending == 0


async def test_refusal_by_size_fails_alone_and_the_limit_is_learned(
    small_packets: MosquittoBroker,
) -> None:
    topic = f"size/{unique()}"
    async with aiobus.connect(small_packets.url, protocol=5, **FAST) as bus:
        # Forget the Maximum Packet Size this link's CONNACK stated, so the oversized packet
        # reaches the broker and is refused on the wire (DISCONNECT 0x95, or a reset that
        # destroyed it: which one is up to the two kernels). Either way the next link's
        # CONNACK states the limit again and the poison fails against it, alone.
        session_of(bus).max_packet = None
        async with bus.subscribe(topic, qos=1) as sub, link_losses(bus) as lost:
            before = [bus.publish(topic, f"b{i}", qos=1) for i in range(20)]
            poison = bus.publish(topic, b"x" * 600, qos=1)
            after = [bus.publish(topic, f"a{i}", qos=1) for i in range(20)]
            async with asyncio.timeout(15):  # never the publish's own deadline
                with pytest.raises(aiobus.MessageTooLarge) as refused:
                    await poison
                await asyncio.gather(*before, *after)
            assert refused.value.size > 600
            assert refused.value.limit == MAX_PACKET
            assert len(lost) == 1
            with pytest.raises(aiobus.MessageTooLarge):
                bus.publish(topic, b"x" * 600, qos=1)  # learned: refused at the call now
            await bus.publish(topic, "end", qos=1)
            seen: set[str] = set()
            async with asyncio.timeout(15):
                async for msg in sub:
                    with contextlib.suppress(aiobus.StaleDelivery):  # read from the old link
                        await msg.ack()
                    if msg.text() == "end":
                        break
                    seen.add(msg.text())
            assert seen == {f"b{i}" for i in range(20)} | {f"a{i}" for i in range(20)}
