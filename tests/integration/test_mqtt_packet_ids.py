"""One packet-id space on Mosquitto 2 (MQTT 3.1.1 and 5): publishes, SUBSCRIBEs and
UNSUBSCRIBEs interleaved on one connection; every packet id written is recorded at the pipe."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiobus
from aiobus.transports.mqtt_wire import check_paho
from tests.helpers import unique
from tests.integration.mqtt_support import link_of

pytestmark = pytest.mark.mosquitto

PUBLISH, SUBSCRIBE, UNSUBSCRIBE = 3, 8, 10


def record_ids(bus: aiobus.Connection) -> list[tuple[int, int]]:
    """(packet type, packet id) of every PUBLISH (QoS 1/2), SUBSCRIBE and UNSUBSCRIBE the
    link writes from now on, read from the bytes paho hands the pipe."""
    pipe: Any = link_of(bus)._pipe
    seen: list[tuple[int, int]] = []
    send = pipe.send
    stream = bytearray()

    def spy(data: bytes | bytearray) -> int:
        stream.extend(data)
        while len(stream) >= 2:
            remaining = shift = 0
            pos = 1
            while True:
                if pos >= len(stream):
                    return int(send(data))
                byte = stream[pos]
                pos += 1
                remaining |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            if len(stream) < pos + remaining:
                break
            kind, flags = stream[0] >> 4, stream[0] & 0x0F
            body = stream[pos : pos + remaining]
            if kind == PUBLISH and flags & 0x06:
                topic_len = int.from_bytes(body[:2], "big")
                seen.append((kind, int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")))
            elif kind in (SUBSCRIBE, UNSUBSCRIBE):
                seen.append((kind, int.from_bytes(body[:2], "big")))
            del stream[: pos + remaining]
        return int(send(data))

    pipe.send = spy
    return seen


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
async def test_publishes_and_subscriptions_share_one_packet_id_space(
    mosquitto: Any, protocol: int
) -> None:
    """Subscriptions come and go while 200 publishes (QoS 1, and QoS 2 on MQTT 5) are in
    flight: no packet id is written twice (the one counter does not wrap in a test this
    size), so none was reused while another packet held it; all are confirmed and received."""
    root = f"ids/{unique()}"
    async with aiobus.connect(mosquitto.url, protocol=protocol) as bus:
        seen = record_ids(bus)
        async with bus.subscribe(f"{root}/#", qos=1) as sink:

            async def churn(i: int) -> None:
                sub = bus.subscribe(f"{root}/other/{i}", qos=1)
                async with sub:
                    await sub.unsubscribe()

            # QoS 2 on MQTT 5 only: Mosquitto counts open QoS 2 flows against its inbound
            # quota (20) and on 3.1.1, which has no reason codes, PUBACKs a QoS 1 publish
            # over that quota and drops it (see docs/mqtt.md, Limits).
            mixed = protocol == 5
            async with asyncio.timeout(30):
                publishes = [
                    bus.publish(f"{root}/m", str(i), qos=1 + i % 2 if mixed else 1)
                    for i in range(200)
                ]
                await asyncio.gather(*(churn(i) for i in range(20)), *publishes)
                got = set()
                while len(got) < 200:
                    msg = await sink.get()
                    await msg.ack()
                    got.add(msg.text())
    kinds = [kind for kind, _ in seen]
    assert kinds.count(PUBLISH) == 200
    assert kinds.count(SUBSCRIBE) == 21 and kinds.count(UNSUBSCRIBE) == 21  # the sink left too
    ids = [mid for _, mid in seen]
    assert len(set(ids)) == len(ids), sorted(ids)


def test_paho_hooks_are_checked() -> None:
    """The import-time check names what an incompatible paho-mqtt lacks."""

    class Old:
        def _send_subscribe(self) -> int:
            return 1  # a generator of its own: would reuse ids

    with pytest.raises(ImportError) as missing:
        check_paho(Old)
    text = str(missing.value)
    assert "_mid_generate" in text and "_send_subscribe calling _mid_generate" in text
    check_paho()  # the installed one passes
