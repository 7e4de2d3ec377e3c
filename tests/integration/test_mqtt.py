"""The MQTT transport against the private Mosquitto 2 broker (MQTT 3.1.1 and 5), real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

import aiobus
from aiobus.events import State
from aiobus.mqtt import Will
from tests.helpers import other_tasks, through_outage, wait_for_state
from tests.helpers import unique as uniq
from tests.integration.mqtt_support import link_of

pytestmark = pytest.mark.mosquitto

FAST = {"backoff_initial": 0.01, "backoff_max": 0.3}


class _Watch:
    """A set that wakes waiters on every change: waiting on a condition without polling."""

    def __init__(self) -> None:
        self.items: set[int] = set()
        self._changed = asyncio.Event()

    def add(self, item: int) -> None:
        self.items.add(item)
        self._changed.set()

    async def until(self, condition: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


# -- publishing -------------------------------------------------------------------------------


async def test_qos_0_1_2_with_retain_round_trip(mosquitto: Any, protocol: int) -> None:
    root = uniq()
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as bus:
        for qos in (0, 1, 2):
            confirm = await bus.publish(f"{root}/q{qos}", f"v{qos}", qos=qos, retain=True)
            assert confirm.protocol == "mqtt"
            # QoS 0 resolves when written (no packet id); 1 and 2 carry the packet id.
            assert (confirm.broker_id is None) == (qos == 0)
        async with bus.subscribe(f"{root}/#", qos=2) as sub:
            got = {}
            for _ in range(3):
                msg = await sub.get(timeout=5)
                got[msg.topic] = (msg.text(), msg.retain, msg.qos)
                await msg.ack()
            # QoS 0 can be overtaken by nothing here: one connection, in order.
            assert got == {f"{root}/q{q}": (f"v{q}", True, q) for q in (0, 1, 2)}
            await bus.publish(f"{root}/q1", b"live", qos=1)
            live = await sub.get(timeout=5)
            assert (live.body, live.retain) == (b"live", False)
            await live.ack()
        for qos in (0, 1, 2):  # clear the retained messages
            await bus.publish(f"{root}/q{qos}", b"", retain=True)


async def test_many_publishes_are_pipelined(mosquitto: Any, protocol: int) -> None:
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as bus:
        link = link_of(bus)
        futures = [bus.publish(f"{uniq()}/p", b"x", qos=1 + i % 2) for i in range(400)]
        peak = 0
        while not all(f.done() for f in futures):
            peak = max(peak, len(link._out))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
        assert peak > 10, "publishes went one round trip at a time"
        if protocol == 5:
            # Mosquitto's CONNACK Receive Maximum (max_inflight_messages, default 20) is the
            # window: never more unacknowledged than that.
            assert link.max_in_flight == 20
            assert peak <= 20
        assert not link._out


async def test_mqtt5_refusal_reason_codes(mosquitto_acl: Any) -> None:
    async with aiobus.connect(mosquitto_acl.url, protocol=5, **FAST) as bus:
        for qos in (1, 2):
            with pytest.raises(aiobus.Nacked) as caught:
                await bus.publish(f"denied/{uniq()}", b"x", qos=qos)
            assert caught.value.code == 0x87
            assert "authorized" in caught.value.reason.lower()
        # 0x10 "no matching subscribers" is a success; the link is still fine afterwards.
        confirm = await bus.publish(f"allowed/{uniq()}", b"x", qos=1)
        assert confirm.broker_id is not None


async def test_mqtt311_denied_publish_is_acked_by_the_broker(mosquitto_acl: Any) -> None:
    # MQTT 3.1.1 has no reason codes: Mosquitto acks and drops (see brokers.md).
    async with aiobus.connect(mosquitto_acl.url, protocol=4, **FAST) as bus:
        await bus.publish(f"denied/{uniq()}", b"x", qos=1)


async def test_mqtt5_properties_round_trip(mosquitto: Any) -> None:
    topic = f"{uniq()}/props"
    async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as bus:
        async with bus.subscribe(topic) as sub:
            await bus.publish(
                topic,
                b"{}",
                headers={"tenant": "a", "trace": "t-1"},
                content_type="application/json",
                correlation_id="c-9",
                reply_to="replies/1",
                message_id="m-9",
                ttl=60,
            )
            msg = await sub.get(timeout=5)
            assert msg.headers == {"tenant": "a", "trace": "t-1"}
            assert msg.content_type == "application/json"
            assert msg.correlation_id == "c-9"
            assert msg.reply_to == "replies/1"
            assert msg.message_id == "m-9"
            assert getattr(msg.raw.properties, "MessageExpiryInterval", 0) in (59, 60)
            await msg.ack()
            # An implied content type travels too (dict -> JSON).
            await bus.publish(topic, {"a": 1})
            implied = await sub.get(timeout=5)
            assert implied.content_type == "application/json" and implied.json() == {"a": 1}
            await implied.ack()


async def test_bad_input_is_refused_at_the_call(mosquitto: Any, protocol: int) -> None:
    async with aiobus.connect(
        mosquitto.url, protocol=protocol, max_message_size=1000, **FAST
    ) as bus:
        for topic in ("a/+/b", "a/#", ""):
            with pytest.raises(aiobus.InvalidTopic):
                bus.publish(topic, b"x")
        with pytest.raises(aiobus.InvalidTopic):
            bus.publish("a" * 65_536, b"x")
        with pytest.raises(aiobus.MessageTooLarge):
            bus.publish("a/b", b"x" * 1001)
        for qos in (3, -1, True):
            with pytest.raises(aiobus.ConfigError):
                bus.publish("a/b", b"x", qos=qos)  # type: ignore[arg-type]
        with pytest.raises(aiobus.ConfigError):
            bus.publish("a/b", b"x", mandatory=True)
        with pytest.raises(aiobus.ConfigError):
            bus.publish("a/b", b"x", priority=5)
        if protocol == 4:
            for extra in (
                {"headers": {"a": "b"}},
                {"correlation_id": "c"},
                {"ttl": 5},
                {"content_type": "text/plain"},
                {"reply_to": "r"},
            ):
                with pytest.raises(aiobus.ConfigError):
                    bus.publish("a/b", b"x", **extra)  # type: ignore[arg-type]
        with pytest.raises(aiobus.ConfigError):
            bus.subscribe("a/b", durable=True)
        assert bus.pending == 0, "nothing may be queued by a refused call"


async def test_broker_maximum_packet_size_is_enforced_at_the_call(tmp_path: Any) -> None:
    from tests.harness.mosquitto import MosquittoBroker

    broker = MosquittoBroker(extra_config=["max_packet_size 2000"])
    broker.start()
    try:
        async with aiobus.connect(broker.url, protocol=5, **FAST) as bus:
            await bus.publish("size/ok", b"x" * 1000)
            with pytest.raises(aiobus.MessageTooLarge):
                bus.publish("size/big", b"x" * 5000)
    finally:
        broker.close()


# -- subscribing ------------------------------------------------------------------------------


async def test_wildcards_overlap_and_unsubscribe(mosquitto: Any, protocol: int) -> None:
    root = uniq()
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(f"{root}/+/temp") as plus, bus.subscribe(f"{root}/#") as hash_:
            async with bus.subscribe(f"{root}/other") as other:
                await bus.publish(f"{root}/kitchen/temp", b"t")
                await bus.publish(f"{root}/kitchen/humidity", b"h")
                a = await plus.get(timeout=5)
                assert a.body == b"t"
                b1, b2 = await hash_.get(timeout=5), await hash_.get(timeout=5)
                assert {b1.body, b2.body} == {b"t", b"h"}
                for m in (a, b1, b2):
                    await m.ack()
                with pytest.raises(TimeoutError):
                    await other.get(timeout=0.3)
            # plus left: only '#' still gets the next one, and acking it is enough.
        async with bus.subscribe(f"{root}/#") as again:
            await bus.publish(f"{root}/kitchen/temp", b"t2")
            msg = await again.get(timeout=5)
            assert msg.body == b"t2"
            await msg.ack()


async def test_subscriptions_with_the_same_filter_each_get_a_copy(mosquitto: Any) -> None:
    topic = f"{uniq()}/same"
    async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as bus:
        async with bus.subscribe(topic) as one, bus.subscribe(topic) as two:
            await bus.publish(topic, b"x")
            a, b = await one.get(timeout=5), await two.get(timeout=5)
            assert a.body == b.body == b"x"
            await a.ack()
            await b.ack()
            async with bus.subscribe(topic) as three:
                pass  # leaving one of three does not unsubscribe the filter for the others
            del three
            await bus.publish(topic, b"y")
            assert (await one.get(timeout=5)).body == b"y"


async def test_shared_subscription_splits_across_connections(mosquitto: Any, protocol: int) -> None:
    topic, group = f"{uniq()}/work", uniq("g")
    async with (
        aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as pub,
        aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as w1,
        aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as w2,
        w1.subscribe(topic, queue=group) as s1,
        w2.subscribe(f"$share/{group}/{topic}") as s2,
    ):
        await asyncio.gather(*(pub.publish(topic, str(i)) for i in range(20)))
        seen = _Watch()

        async def drain(sub: aiobus.Subscription, into: list[int]) -> None:
            while True:
                msg = await sub.get()
                into.append(int(msg.text()))
                seen.add(int(msg.text()))
                await msg.ack()

        first: list[int] = []
        second: list[int] = []
        tasks = [asyncio.create_task(drain(s1, first)), asyncio.create_task(drain(s2, second))]
        try:
            await seen.until(lambda: len(first) + len(second) >= 20, timeout=10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        got = first + second
        assert sorted(got) == list(range(20)), "each message goes to exactly one member"
        assert first and second, "both members of the group received messages"


async def test_qos1_unacked_comes_again_on_a_persistent_session(
    mosquitto: Any, protocol: int
) -> None:
    topic = f"{uniq()}/redeliver"
    session = {"clean_session": False} if protocol == 4 else {"session_expiry": 60}
    async with (
        aiobus.connect(
            mosquitto.url, protocol=protocol, client_id=uniq("c"), **session, **FAST
        ) as bus,
        bus.subscribe(topic, qos=1) as sub,
    ):
        await bus.publish(topic, b"acked")
        await bus.publish(topic, b"unacked")
        first = await sub.get(timeout=5)
        assert first.body == b"acked"
        await first.ack()
        # A confirmed publish on the same link proves the PUBACK before it was written.
        await bus.publish(f"{topic}/sync", b"")
        second = await sub.get(timeout=5)
        assert second.body == b"unacked" and not second.redelivered
        # Drop the link from our side (no DISCONNECT): the broker keeps the session.
        await through_outage(bus, lambda: link_of(bus)._pipe.transport.abort(), timeout=10)
        with pytest.raises(aiobus.StaleDelivery):
            await second.ack()
        again = await sub.get(timeout=5)
        assert again.body == b"unacked" and again.redelivered
        await again.ack()
        with pytest.raises(TimeoutError):
            await sub.get(timeout=0.3)


async def test_offline_messages_arrive_after_reconnect(mosquitto: Any, protocol: int) -> None:
    topic, client_id = f"{uniq()}/offline", uniq("dev")
    session: dict[str, Any] = (
        {"clean_session": False}
        if protocol == 4
        else {"session_expiry": 300, "clean_session": False}
    )
    opts = dict(protocol=protocol, client_id=client_id, **session, **FAST)
    async with aiobus.connect(mosquitto.url, **opts) as bus:
        async with bus.subscribe(topic, qos=1):
            pass
    # The subscription is left by UNSUBSCRIBE on exit; subscribe again and go offline.
    async with aiobus.connect(mosquitto.url, **opts) as bus:
        sub = bus.subscribe(topic, qos=1)
        await sub.__aenter__()
        # Leave without UNSUBSCRIBE: the broker keeps the subscription in the session.
        await bus.close()
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as pub:
        await asyncio.gather(*(pub.publish(topic, str(i), qos=1) for i in range(5)))
    async with aiobus.connect(mosquitto.url, **opts) as bus:
        assert link_of(bus).session_present
        async with bus.subscribe(topic, qos=1) as sub:
            got = []
            for _ in range(5):
                msg = await sub.get(timeout=5)
                got.append(msg.text())
                await msg.ack()
            assert got == [str(i) for i in range(5)]


async def test_qos2_pubrel_after_reconnect_is_answered(mosquitto: Any) -> None:
    """paho in manual-ack mode leaves a PUBREL for a packet id it does not know unanswered;
    aiobus answers it and hands the message over exactly once."""
    topic = f"{uniq()}/qos2"
    opts = dict(protocol=5, client_id=uniq("q2"), session_expiry=60, **FAST)
    async with aiobus.connect(mosquitto.url, **opts) as bus, bus.subscribe(topic, qos=2) as sub:
        link = link_of(bus)
        assert link._client is not None
        client_cls = type(link._client)
        swallowed = asyncio.get_running_loop().create_future()
        original = client_cls._handle_pubrel

        def drop_first_pubrel(self: Any) -> Any:
            if not swallowed.done():
                swallowed.set_result(None)
                self._in_packet["packet"] = bytearray()  # not answered: the link dies first
                return aiobus.transports.mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            return original(self)

        client_cls._handle_pubrel = drop_first_pubrel  # type: ignore[method-assign]
        try:
            async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as pub:
                await pub.publish(topic, b"once", qos=2)
                await asyncio.wait_for(swallowed, 5)
                await through_outage(bus, lambda: link._pipe.transport.abort(), timeout=10)
                msg = await sub.get(timeout=5)
                assert msg.body == b"once"
                await msg.ack()
                # The broker's QoS 2 flow for this client is not stuck: the next one arrives.
                await pub.publish(topic, b"next", qos=2)
                assert (await sub.get(timeout=5)).body == b"next"
                with pytest.raises(TimeoutError):
                    await sub.get(timeout=0.3)
        finally:
            client_cls._handle_pubrel = original  # type: ignore[method-assign]


async def test_full_buffer_holds_without_dropping_or_deadlocking(
    mosquitto: Any, protocol: int
) -> None:
    topic = f"{uniq()}/slow"
    async with aiobus.connect(mosquitto.url, protocol=protocol, heartbeat=1, **FAST) as bus:
        async with bus.subscribe(topic, prefetch=5, qos=1) as sub, bus.events() as events:
            # Publishing from the same connection completes although nobody reads.
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(200)))
            # Not reading does not kill the link: keep-alive round trips go on meanwhile.
            client = link_of(bus)._client
            assert client is not None
            send_ping = client._send_pingreq
            pings = 0
            three_pings = asyncio.Event()

            def count_ping() -> Any:
                nonlocal pings
                pings += 1
                if pings == 3:
                    three_pings.set()
                return send_ping()

            client._send_pingreq = count_ping  # type: ignore[method-assign]
            await asyncio.wait_for(three_pings.wait(), 10)
            assert bus.state is State.CONNECTED and sub.room == 0
            got = []
            for _ in range(200):
                msg = await sub.get(timeout=5)
                got.append(int(msg.text()))
                await msg.ack()
            assert got == list(range(200))
            await events.aclose()  # what it holds is all that happened meanwhile
            assert not [e async for e in events if e.kind == "link_lost"]


# -- connection life ---------------------------------------------------------------------------


async def test_client_id_is_generated_once_per_connection(mosquitto: Any) -> None:
    async with aiobus.connect(mosquitto.url, **FAST) as bus:
        first = link_of(bus).session.client_id
        await through_outage(bus, lambda: link_of(bus)._pipe.transport.abort(), timeout=10)
        assert link_of(bus).session.client_id == first
        assert bus.driver._client_id.decode() == first
    async with aiobus.connect(mosquitto.url, **FAST) as other:
        assert link_of(other).session.client_id != first


async def test_credentials_callable_is_called_per_attempt(mosquitto: Any) -> None:
    calls = []

    async def creds() -> tuple[str, str]:
        calls.append(1)
        return ("user", f"token-{len(calls)}")

    async with aiobus.connect(mosquitto.url, credentials=creds, **FAST) as bus:
        await through_outage(bus, lambda: link_of(bus)._pipe.transport.abort(), timeout=10)
        assert bus.driver._password == b"token-2"
    assert len(calls) == 2


async def test_last_will_is_published_when_the_socket_dies(mosquitto: Any, protocol: int) -> None:
    topic = f"{uniq()}/will"
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as watcher:
        async with watcher.subscribe(topic, qos=1) as sub:
            will = Will(topic, b"gone", qos=1, retain=False)
            async with aiobus.connect(
                mosquitto.url, protocol=protocol, will=will, **FAST
            ) as device:
                # A clean close sends DISCONNECT and no will; a dead socket does.
                await through_outage(
                    device, lambda: link_of(device)._pipe.transport.abort(), timeout=10
                )
                msg = await sub.get(timeout=5)
                assert (msg.body, msg.qos) == (b"gone", 1)
                await msg.ack()
            extra = None
            with contextlib.suppress(TimeoutError):
                extra = await sub.get(timeout=0.3)
            assert extra is None, (
                f"the clean close sent a will: {extra!r} {extra and extra.raw.dup}"
            )


async def test_broker_killed_mid_stream_loses_no_confirmed_message(
    mosquitto: Any, protocol: int
) -> None:
    """SIGKILL mid-stream: no publish hangs, subscriptions come back without user code, and no
    message the broker had confirmed and saved is lost.

    Mosquitto confirms from memory and saves its database afterwards (autosave), so a kill -9
    can lose what it confirmed in the last moments: that is the broker's durability window,
    and the test bounds it with ``wait_persisted`` before the kill. Every message confirmed
    after the restart must arrive as well."""
    topic = f"{uniq()}/kill"
    count = 3000
    session = {"clean_session": False} if protocol == 4 else {"session_expiry": 300}
    sub_opts = dict(protocol=protocol, client_id=uniq("k"), **session, **FAST)
    received = _Watch()
    done = _Watch()
    async with aiobus.connect(mosquitto.url, **sub_opts) as subscriber:
        async with subscriber.subscribe(topic, qos=1, prefetch=1000) as sub:

            async def consume() -> None:
                async for msg in sub:
                    received.add(int(msg.text().strip("<>")))
                    await msg.ack()

            consumer = asyncio.create_task(consume())
            async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as pub:
                futures = [pub.publish(topic, f"<{i}>", timeout=20) for i in range(count)]
                for i, fut in enumerate(futures):
                    fut.add_done_callback(lambda f, i=i: done.add(i))
                await done.until(lambda: len(done.items) >= count // 4, timeout=10)
                # The loop is blocked from here to the restart: nothing more is confirmed.
                before = {i for i in done.items if not futures[i].exception()}
                unreceived = before - received.items
                if unreceived:
                    mosquitto.wait_persisted(f"<{max(unreceived)}>".encode())
                mosquitto.kill()
                mosquitto.start()
                results = await asyncio.wait_for(
                    asyncio.gather(*futures, return_exceptions=True), 30
                )
                after = [pub.publish(topic, f"<{count + i}>") for i in range(100)]
                await asyncio.gather(*after)
            confirmed = {i for i, r in enumerate(results) if isinstance(r, aiobus.Confirm)}
            failed = [r for r in results if not isinstance(r, aiobus.Confirm)]
            assert all(isinstance(r, aiobus.PublishError) for r in failed), failed[:3]
            must_arrive = before | set(range(count, count + 100))
            try:
                with contextlib.suppress(TimeoutError):
                    await received.until(lambda: must_arrive <= received.items, timeout=20)
            finally:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
            lost = sorted(must_arrive - received.items)
            assert not lost, f"lost {len(lost)} confirmed messages: {lost[:5]}..{lost[-5:]}"
            # What the broker confirmed in its unsaved window may or may not have survived.
            assert len(confirmed) >= len(before)


class _Proxy:
    """A loopback TCP proxy whose ``stall()`` silently stops forwarding (a half-open link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not self.stalled:
                    dst.write(data)
        if self.stalled:
            return  # half-open: not even the far side's close gets through (the broker's
            # own keep-alive would otherwise close the link before the client notices)
        with contextlib.suppress(OSError):
            dst.close()

    def stall(self) -> None:
        self.stalled = True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for w in self.writers:
            w.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_half_open_link_is_detected_by_keep_alive(mosquitto: Any) -> None:
    proxy = _Proxy(mosquitto.port)
    port = await proxy.start()
    try:
        url = f"mqtt://127.0.0.1:{port}"
        async with aiobus.connect(url, heartbeat=1, **FAST) as bus, bus.events() as events:
            started = asyncio.get_running_loop().time()
            proxy.stall()
            event = await wait_for_state(events, State.RECONNECTING, timeout=5)
            took = asyncio.get_running_loop().time() - started
            assert "keep-alive" in event.reason
            assert took < 3.0, f"half-open link noticed after {took:.1f}s (keep-alive 1s)"
            proxy.stalled = False
            await wait_for_state(events, State.CONNECTED, timeout=10)
    finally:
        await proxy.close()


async def test_cancelled_connect_leaves_nothing_behind() -> None:
    # A server that accepts TCP and never answers CONNECT.
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append((reader, writer))

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    threads = threading.active_count()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), aiobus.connect(f"mqtt://127.0.0.1:{port}", **FAST):
                pass
        with pytest.raises(aiobus.ConnectTimeout):
            async with aiobus.connect(f"mqtt://127.0.0.1:{port}", connect_timeout=0.5, **FAST):
                pass
        assert threading.active_count() == threads, "connecting started a thread"
        assert not other_tasks()
        assert accepted
        # Every socket aiobus opened is closed: the server reads CONNECT, then EOF, on each.
        for reader, _ in accepted:
            async with asyncio.timeout(2):
                data = await reader.read()
            assert data[:1] == b"\x10"
    finally:
        for _, writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_bad_credentials_fail_at_once(tmp_path: Any) -> None:
    from tests.harness.mosquitto import MosquittoBroker

    broker = MosquittoBroker(extra_config=[])
    # allow_anonymous false with an empty password file: every login is refused.
    text = broker.conf_file.read_text().replace("allow_anonymous true", "allow_anonymous false")
    pw = broker.dir / "passwords"
    pw.write_text("")
    broker.conf_file.write_text(
        text.replace(
            "per_listener_settings false", f"per_listener_settings false\npassword_file {pw}"
        )
    )
    broker.start()
    try:
        for protocol in (4, 5):
            started = asyncio.get_running_loop().time()
            with pytest.raises(aiobus.AuthenticationError):
                async with aiobus.connect(
                    broker.url, protocol=protocol, credentials=("u", "wrong")
                ):
                    pass
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        broker.close()


async def test_nothing_outlives_the_connection(mosquitto: Any, protocol: int) -> None:
    threads = threading.active_count()
    async with aiobus.connect(mosquitto.url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(f"{uniq()}/+") as sub:
            await bus.publish(f"{sub.pattern[:-2]}/x", b"x")
            await (await sub.get(timeout=5)).ack()
        link = link_of(bus)
    assert not other_tasks()
    assert link._pipe is not None and link._pipe.closed.done()
    assert threading.active_count() == threads


# -- TLS and WebSocket ------------------------------------------------------------------------


async def test_tls_with_ca_file_and_client_certificate(mosquitto: Any, protocol: int) -> None:
    topic = f"{uniq()}/tls"
    async with aiobus.connect(
        mosquitto.tls_url,
        protocol=protocol,
        ca_file=mosquitto.ca_file,
        certfile=mosquitto.client_cert,
        keyfile=mosquitto.client_key,
        **FAST,
    ) as bus:
        async with bus.subscribe(topic) as sub:
            await bus.publish(topic, b"secret")
            assert (await sub.get(timeout=5)).body == b"secret"
        assert link_of(bus)._pipe.transport.get_extra_info("peercert") is not None


async def test_tls_without_the_ca_is_a_permanent_error(mosquitto: Any) -> None:
    with pytest.raises(aiobus.PermanentConnectError, match="TLS"):
        async with aiobus.connect(mosquitto.tls_url, **FAST):
            pass


async def test_websocket(mosquitto: Any, protocol: int) -> None:
    topic = f"{uniq()}/ws"
    async with aiobus.connect(mosquitto.ws_url, protocol=protocol, **FAST) as bus:
        async with bus.subscribe(topic) as sub:
            await asyncio.gather(*(bus.publish(topic, b"w" * 300) for _ in range(50)))
            for _ in range(50):
                msg = await sub.get(timeout=5)
                assert msg.body == b"w" * 300
                await msg.ack()


async def test_aiobus_mqtt_connect_with_a_bare_host(mosquitto: Any) -> None:
    async with aiobus.mqtt.connect("127.0.0.1", port=mosquitto.port, protocol=5, qos=2) as bus:
        confirm = await bus.publish(f"{uniq()}/bare", b"x")
        assert confirm.broker_id is not None
        assert bus.settings.options.qos == 2  # type: ignore[attr-defined]


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mqtt_telemetry.py"


async def test_the_telemetry_example_runs(
    mosquitto: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    path = EXAMPLE
    spec = importlib.util.spec_from_file_location("mqtt_telemetry_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await asyncio.wait_for(module.main(mosquitto.url), 30)
    out = capsys.readouterr().out
    assert out.count("°C") == 15
    assert "status dev0: online" in out


@pytest.mark.parametrize("swallow", ["PUBREC", "PUBCOMP"])
async def test_qos2_publish_is_completed_once_on_a_resumed_session(
    mosquitto: Any, swallow: str
) -> None:
    """The link dies before PUBREC (the PUBLISH is re-sent with its packet id and DUP) or
    before PUBCOMP (the PUBREL is re-sent): the future resolves and the message arrives once."""
    topic = f"{uniq()}/q2pub"
    opts = dict(protocol=5, client_id=uniq("p2"), session_expiry=60, **FAST)
    async with (
        aiobus.connect(mosquitto.url, protocol=5, **FAST) as watcher,
        watcher.subscribe(topic, qos=2) as sub,
        aiobus.connect(mosquitto.url, **opts) as pub,
    ):
        link = link_of(pub)
        eaten = asyncio.get_running_loop().create_future()
        original = link.on_pubrec if swallow == "PUBREC" else link.on_acked

        def swallow_once(*args: Any) -> Any:
            if not eaten.done():
                eaten.set_result(None)
                return False  # as if the packet never came; the link dies right after
            return original(*args)

        setattr(link, "on_pubrec" if swallow == "PUBREC" else "on_acked", swallow_once)
        future = pub.publish(topic, b"exactly-once", qos=2, timeout=20)
        await asyncio.wait_for(eaten, 5)
        await through_outage(pub, lambda: link._pipe.transport.abort(), timeout=10)
        confirm = await asyncio.wait_for(future, 10)
        assert confirm.broker_id is not None
        msg = await sub.get(timeout=5)
        assert msg.body == b"exactly-once"
        await msg.ack()
        with pytest.raises(TimeoutError):
            await sub.get(timeout=0.5)


async def test_tls_client_certificate_required(tmp_path: Any) -> None:
    from tests.harness.mosquitto import MosquittoBroker

    # The last listener in the harness's configuration is the TLS one. TLS 1.2: the broker
    # refuses a missing client certificate inside the handshake. Under TLS 1.3 it checks the
    # certificate after the handshake, and the refusal can reach the client as a bare reset,
    # which cannot be told from a transient one (retried until connect_timeout).
    broker = MosquittoBroker(extra_config=["require_certificate true", "tls_version tlsv1.2"])
    broker.start()
    try:
        tls = dict(ca_file=broker.ca_file, connect_timeout=3, **FAST)
        async with aiobus.connect(
            broker.tls_url, certfile=broker.client_cert, keyfile=broker.client_key, **tls
        ) as bus:
            await bus.publish(f"{uniq()}/cert", b"x")
        started = asyncio.get_running_loop().time()
        with pytest.raises(aiobus.PermanentConnectError, match="TLS"):
            async with aiobus.connect(broker.tls_url, **tls):
                pass
        assert asyncio.get_running_loop().time() - started < 2, "retried a permanent error"
    finally:
        broker.close()


async def test_qos0_and_qos2_acks_stay_no_ops_across_a_reconnect(mosquitto: Any) -> None:
    topic = f"{uniq()}/noop"
    async with aiobus.connect(mosquitto.url, protocol=5, **FAST) as bus:
        async with bus.subscribe(topic, qos=2) as sub:
            await bus.publish(topic, b"zero", qos=0)
            await bus.publish(topic, b"two", qos=2)
            await bus.publish(topic, b"one", qos=1)
            got = {}
            for _ in range(3):
                msg = await sub.get(timeout=5)
                got[msg.body] = msg
            await through_outage(bus, lambda: link_of(bus)._pipe.transport.abort(), timeout=10)
            await got[b"zero"].ack()  # nothing to send: fine after the link died
            await got[b"two"].ack()
            with pytest.raises(aiobus.StaleDelivery):  # a QoS 1 PUBACK cannot be sent any more
                await got[b"one"].ack()
            with pytest.raises(aiobus.NotSupported):
                await got[b"two"].nack()
