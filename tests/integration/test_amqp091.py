"""AMQP 0-9-1 against the private RabbitMQ 4 node: confirms, outcomes, topology, consumers."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aio_pika
import pytest

import aiobus
from aiobus.amqp import Binding, Exchange, Queue
from aiobus.transports.amqp091 import TopologyMismatch
from tests.helpers import Pushes, other_tasks, through_outage, unique, wait_for_state

# Every test here runs on both publish paths (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("publish_path")


async def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue``, asked of the broker with the raw driver."""
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)


async def test_pipelined_confirms_and_nack_on_reject_publish_overflow(rabbitmq: Any) -> None:
    q = unique("full")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url,
        topology=[
            Queue(q, max_length=1, overflow="reject-publish"),
        ],
    ) as bus:
        first = await bus.publish(q, b"1", exchange="")
        assert first.broker_id is not None
        with pytest.raises(aiobus.Nacked, match=r"basic\.nack"):
            await bus.publish(q, b"2", exchange="")
        confirms = await asyncio.gather(
            *(bus.publish(unique("k"), b"x", mandatory=False) for _ in range(500))
        )
        assert len({c.broker_id for c in confirms}) == 500


async def test_unroutable_and_the_mandatory_opt_out(rabbitmq: Any) -> None:
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        with pytest.raises(aiobus.Unroutable, match="NO_ROUTE") as err:
            await bus.publish(unique("nobody"), b"x")
        assert err.value.code == 312
        await bus.publish(unique("nobody"), b"x", mandatory=False)


async def test_missing_exchange_is_a_typed_error_and_the_connection_goes_on(
    rabbitmq: Any,
) -> None:
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        with pytest.raises(aiobus.Unroutable, match="exchange 'no-such' does not exist"):
            await bus.publish("k", b"x", exchange="no-such")
        await bus.publish("k", b"x", mandatory=False)
        assert bus.is_connected


async def test_exchange_deleted_under_a_publisher_closes_the_channel_and_recovers(
    rabbitmq: Any,
) -> None:
    name = unique("gone")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url, topology=[Exchange(name)], backoff_initial=0.01
    ) as bus:
        await bus.publish("k", b"x", exchange=name, mandatory=False)
        async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
            channel = await admin.channel()
            await channel.exchange_delete(name)
        bus._topology.clear()  # the application no longer declares it either
        async with bus.events() as events:
            with pytest.raises(aiobus.Unroutable, match="does not exist"):
                await bus.publish("k", b"x", exchange=name, mandatory=False)
            async with asyncio.timeout(10):
                kinds = [e.kind async for e in _until_connected(events)]
        assert "link_lost" in kinds
        await bus.publish("k", b"x", mandatory=False)


async def _until_connected(events: Any) -> Any:
    async for event in events:
        yield event
        if event.kind == "state" and event.state is aiobus.State.CONNECTED:
            return


async def test_properties_travel(rabbitmq: Any) -> None:
    topic = unique("props")
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        async with bus.subscribe(topic) as sub:
            await bus.publish(
                topic,
                "text",
                headers={"tenant": "a", "n": 3},
                correlation_id="c1",
                reply_to="replies",
                message_id="m1",
                ttl=60,
                priority=5,
            )
            await bus.publish(topic, b"transient", persistent=False)
            msg = await sub.get(timeout=10)
            props = msg.raw.header.properties
            assert (msg.text(), msg.message_id, msg.correlation_id, msg.reply_to) == (
                "text",
                "m1",
                "c1",
                "replies",
            )
            assert msg.headers == {"tenant": "a", "n": 3}
            assert msg.content_type == "text/plain; charset=utf-8"
            assert props.expiration == "60000" and props.priority == 5
            assert props.delivery_mode == 2 and msg.timestamp is not None
            await msg.ack()
            transient = await sub.get(timeout=10)
            assert transient.raw.header.properties.delivery_mode == 1
            await transient.ack()


async def test_messages_from_other_clients_need_no_aiobus_headers(rabbitmq: Any) -> None:
    topic = unique("interop")
    async with aiobus.connect(rabbitmq.amqp_url) as bus, bus.subscribe(topic) as sub:
        async with await aio_pika.connect(rabbitmq.amqp_url) as conn:
            channel = await conn.channel()
            exchange = await channel.get_exchange("amq.topic")
            await exchange.publish(aio_pika.Message(b"plain", headers={"h": "v"}), topic)
        msg = await sub.get(timeout=10)
        assert (msg.topic, msg.body, msg.headers) == (topic, b"plain", {"h": "v"})
        await msg.ack()


async def test_pattern_subscription_gets_an_exclusive_queue_gone_on_exit(rabbitmq: Any) -> None:
    root = unique("fan")
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        async with bus.subscribe(f"{root}.*") as a, bus.subscribe(f"{root}.#") as b:
            await bus.publish(f"{root}.x", b"both")
            assert (await a.get(timeout=10)).body == b"both"
            assert (await b.get(timeout=10)).body == b"both"
            private_queue = a.consumer.queue  # type: ignore[union-attr]
            assert private_queue.startswith("amq.gen-")
        with pytest.raises(aiobus.Unroutable):
            await bus.publish(f"{root}.x", b"nobody now")


async def test_named_queue_is_durable_shared_and_stays(rabbitmq: Any) -> None:
    q, topic = unique("work"), unique("jobs")
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        async with (
            bus.subscribe(topic, queue=q, prefetch=1) as w1,
            bus.subscribe(topic, queue=q, prefetch=1) as w2,
        ):
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(2)))
            m1, m2 = await w1.get(timeout=10), await w2.get(timeout=10)
            assert {m1.text(), m2.text()} == {"0", "1"}
            await m1.ack()
            await m2.ack()
        await bus.publish(topic, b"kept for later")
    assert await queue_depth(rabbitmq.amqp_url, q) == 1


async def test_prefetch_bounds_what_is_delivered_and_the_rest_stays(rabbitmq: Any) -> None:
    q, topic = unique("pf"), unique("pf")
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        async with bus.subscribe(topic, queue=q, prefetch=5) as sub:
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(30)))
            window = [await sub.get(timeout=10) for _ in range(5)]
            # Five unacked: basic.qos forbids a sixth, so 25 must still be on the broker.
            assert await queue_depth(rabbitmq.amqp_url, q) == 25
            got = [m.text() for m in window]
            for m in window:
                await m.ack()
            async for msg in sub:
                got.append(msg.text())
                await msg.ack()
                if len(got) == 30:
                    break
            assert got == [str(i) for i in range(30)]


async def test_no_ack_subscription_stays_bounded(rabbitmq: Any) -> None:
    q, topic = unique("na"), unique("na")
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        async with bus.subscribe(topic, queue=q, prefetch=3, no_ack=True) as sub:
            await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(20)))
            got = [(await sub.get(timeout=10)).text() for _ in range(20)]
            assert got == [str(i) for i in range(20)]
            assert sub.room == 3


async def test_nack_requeue_and_reject_dead_letter(rabbitmq: Any) -> None:
    q, dlq, topic = unique("main"), unique("dlq"), unique("dl")
    dlx = unique("dlx")
    topology = [
        Exchange(dlx, type="fanout"),
        Queue(dlq),
        Binding(dlq, dlx),
        Queue(q, dead_letter_exchange=dlx, queue_type="quorum"),
        Binding(q, "amq.topic", topic),
    ]
    async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=topology) as bus:
        async with bus.subscribe("", queue=q) as sub, bus.subscribe("", queue=dlq) as dead:
            await bus.publish(topic, b"x")
            first = await sub.get(timeout=10)
            assert first.delivery_count == 1 and not first.redelivered
            await first.nack(requeue=True)
            again = await sub.get(timeout=10)
            assert again.redelivered and again.delivery_count == 2
            await again.reject()
            dead_one = await dead.get(timeout=10)
            assert dead_one.body == b"x"
            await dead_one.ack()


async def test_fanout_broadcast_reaches_every_subscriber(rabbitmq: Any) -> None:
    fan = unique("bcast")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url, topology=[Exchange(fan, type="fanout")]
    ) as bus:
        async with bus.subscribe("", exchange=fan) as a, bus.subscribe("", exchange=fan) as b:
            await bus.publish("", b"to all", exchange=fan)
            assert (await a.get(timeout=10)).body == b"to all"
            assert (await b.get(timeout=10)).body == b"to all"


async def test_topology_mismatch_names_the_queue_and_argument(rabbitmq: Any) -> None:
    assert TopologyMismatch is aiobus.TopologyMismatch  # still importable where it was
    q = unique("mm")
    async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=[Queue(q, message_ttl=1)]):
        pass
    with pytest.raises(aiobus.TopologyMismatch, match=rf"queue '{q}'.*x-message-ttl") as err:
        async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=[Queue(q, message_ttl=2)]):
            pass
    clash = err.value
    assert (clash.queue, clash.exchange, clash.argument) == (q, None, "x-message-ttl")
    assert (clash.expected, clash.actual) == ("2000", "1000")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url, topology=[Queue(q, message_ttl=2)], on_mismatch="recreate"
    ) as bus:
        await bus.publish(q, b"x", exchange="")


async def test_an_exchange_clash_names_the_exchange_and_what_differs(rabbitmq: Any) -> None:
    name = unique("xmm")
    async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=[Exchange(name, type="fanout")]):
        pass
    with pytest.raises(aiobus.TopologyMismatch, match=rf"exchange '{name}'") as err:
        async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=[Exchange(name)]):
            pass
    clash = err.value
    assert (clash.queue, clash.exchange, clash.argument) == (None, name, "type")
    assert (clash.expected, clash.actual) == ("topic", "fanout")


@pytest.mark.parametrize(
    ("durable", "arguments", "argument", "expected", "actual"),
    [
        (True, {"x-queue-type": "quorum"}, "x-queue-type", "classic", "quorum"),
        (True, {"x-message-ttl": 1000}, "x-message-ttl", None, "1000"),
        (False, {}, "durable", "true", "false"),
    ],
    ids=["quorum", "argument", "durable"],
)
async def test_subscribe_to_a_queue_that_clashes_raises_topology_mismatch(
    rabbitmq: Any,
    durable: bool,
    arguments: dict[str, Any],
    argument: str,
    expected: str | None,
    actual: str,
) -> None:
    q = unique("smm")
    async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
        channel = await admin.channel()
        await channel.declare_queue(q, durable=durable, arguments=arguments)
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        with pytest.raises(aiobus.TopologyMismatch, match=rf"queue '{q}'") as err:
            async with bus.subscribe(unique("t"), queue=q):
                pass
        assert "declare=False" in str(err.value)  # what to change
        clash = err.value
        assert (clash.queue, clash.argument) == (q, argument)
        assert (clash.expected, clash.actual) == (expected, actual)
        assert bus.is_connected
        await bus.publish(q, b"the connection goes on", exchange="", mandatory=False)


async def test_topology_and_subscriptions_come_back_after_the_broker_drops_us(
    rabbitmq: Any,
) -> None:
    q, topic = unique("restore"), unique("restore")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url,
        backoff_initial=0.01,
        topology=[
            Queue(q, durable=False, auto_delete=False),
            Binding(q, "amq.topic", topic),
        ],
    ) as bus:
        async with bus.subscribe("", queue=q) as sub:
            async with bus.events() as events:
                async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
                    channel = await admin.channel()
                    await channel.queue_delete(q)
                # The broker drops the connection: the queue and its binding are declared
                # again on the next link, and the subscription attached.
                await asyncio.to_thread(rabbitmq.ctl, "close_all_connections", "test")
                await wait_for_state(events, aiobus.State.RECONNECTING, timeout=10)
                await wait_for_state(events, aiobus.State.CONNECTED, timeout=10)
            assert sub.live
            await bus.publish(topic, b"after")
            msg = await sub.get(timeout=10)
            assert msg.body == b"after"
            await msg.ack()


async def test_over_the_maximum_size_raises_at_the_call(rabbitmq: Any) -> None:
    async with aiobus.connect(rabbitmq.amqp_url) as bus:
        with pytest.raises(aiobus.MessageTooLarge, match="16777216") as err:
            bus.publish("k", b"x" * (16 * 1024 * 1024 + 1))
        assert bus.pending == 0
    # The limit is aiobus's own option, and the error says so (and what to change).
    assert err.value.option == "max_message_size"
    assert "max_message_size option" in str(err.value)
    assert "max_message_size= to connect()" in str(err.value)
    assert "broker's maximum" not in str(err.value)


async def test_wrong_password_is_permanent(rabbitmq: Any) -> None:
    url = rabbitmq.amqp_url.replace("guest:guest", "guest:wrong")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiobus.AuthenticationError):
        async with aiobus.connect(url):
            pass
    assert loop.time() - started < 10
    assert not other_tasks()


async def test_unknown_vhost_is_permanent(rabbitmq: Any) -> None:
    url = rabbitmq.amqp_url.rstrip("/") + "/no-such-vhost"
    with pytest.raises(aiobus.PermanentConnectError):
        async with aiobus.connect(url):
            pass


async def test_amqp_1_0_server_is_told_apart(unused_tcp_port: int) -> None:
    async def amqp10_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"AMQP\x03\x01\x00\x00")  # SASL layer of AMQP 1.0
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(amqp10_peer, "127.0.0.1", unused_tcp_port)
    try:
        with pytest.raises(aiobus.ProtocolMismatch, match="amqp1://"):
            async with aiobus.connect(f"amqp://127.0.0.1:{unused_tcp_port}/", connect_timeout=5):
                pass
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_with_the_test_ca_and_a_client_certificate(rabbitmq: Any) -> None:
    async with aiobus.connect(
        rabbitmq.amqps_url,
        ca_file=rabbitmq.ca_file,
        certfile=rabbitmq.client_cert,
        keyfile=rabbitmq.client_key,
    ) as bus:
        topic = unique("tls")
        async with bus.subscribe(topic) as sub:
            await bus.publish(topic, b"secret")
            assert (await sub.get(timeout=10)).body == b"secret"


async def test_tls_verification_failure_is_permanent(rabbitmq: Any) -> None:
    # The system store does not know the test's CA: verification must fail, and at once.
    with pytest.raises(aiobus.PermanentConnectError, match="TLS verification failed"):
        async with aiobus.connect(rabbitmq.amqps_url, connect_timeout=20):
            pass


async def test_link_killed_by_the_broker_replays_and_reconnects(rabbitmq: Any) -> None:
    q, topic = unique("replay"), unique("replay")
    async with aiobus.connect(rabbitmq.amqp_url, backoff_initial=0.01) as bus:
        async with bus.subscribe(topic, queue=q, prefetch=1000) as sub:
            futures = [bus.publish(topic, str(i)) for i in range(2000)]
            await through_outage(
                bus, lambda: rabbitmq.ctl("close_all_connections", "test"), timeout=20
            )
            await asyncio.gather(*futures)
            seen: set[int] = set()
            async with asyncio.timeout(30):
                async for msg in sub:
                    seen.add(int(msg.text()))
                    await msg.ack()
                    if len(seen) == 2000:
                        break
    assert not other_tasks()


@pytest.mark.parametrize(
    ("durable", "arguments"),
    [
        (False, {"x-message-ttl": 60_000, "x-max-length": 1000}),
        (True, {"x-queue-type": "quorum"}),
        (True, {"x-queue-type": "stream"}),
    ],
    ids=["classic-with-arguments", "quorum", "stream"],
)
async def test_declare_false_consumes_a_queue_as_it_is(
    rabbitmq: Any, durable: bool, arguments: dict[str, Any]
) -> None:
    q = unique("asis")
    async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
        channel = await admin.channel()
        await channel.declare_queue(q, durable=durable, arguments=arguments)
    try:
        async with aiobus.connect(rabbitmq.amqp_url) as bus:
            async with bus.subscribe("", queue=q, declare=False, prefetch=10) as sub:
                await asyncio.gather(*(bus.publish(q, f"m{i}", exchange="") for i in range(3)))
                for i in range(3):
                    msg = await sub.get(timeout=10)
                    assert msg.text() == f"m{i}"
                    await msg.ack()
            assert bus.is_connected
        async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
            channel = await admin.channel()
            # Still as the other application declared it: the same declaration is no clash.
            await channel.declare_queue(q, durable=durable, arguments=arguments)
    finally:
        async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
            channel = await admin.channel()
            await channel.queue_delete(q)


async def test_declare_false_on_a_missing_queue_is_a_subscription_error_naming_it(
    rabbitmq: Any,
) -> None:
    q = unique("missing")
    async with aiobus.connect(rabbitmq.amqp_url) as bus, bus.events() as events:
        with pytest.raises(aiobus.SubscriptionError, match=rf"queue '{q}' does not exist"):
            async with bus.subscribe("", queue=q, declare=False):
                pass
        assert bus.is_connected
        await bus.publish(unique("k"), b"the connection goes on", mandatory=False)
        async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
            channel = await admin.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(q, passive=True)  # nothing was declared
    kinds = [e.kind async for e in events]
    assert "link_lost" not in kinds and "subscription_reattached" not in kinds


def test_declare_false_options_are_checked_at_the_call() -> None:
    bus = aiobus.connect("amqp://guest:guest@127.0.0.1:1/")
    with pytest.raises(aiobus.ConfigError, match="name it with queue="):
        bus.subscribe("", declare=False)
    with pytest.raises(aiobus.ConfigError, match="binds nothing"):
        bus.subscribe("a.b", queue="q", declare=False)
    with pytest.raises(aiobus.ConfigError, match="binds nothing"):
        bus.subscribe("", queue="q", exchange="x", declare=False)
    with pytest.raises(aiobus.ConfigError, match="as it is"):
        bus.subscribe("", queue="q", durable=True, declare=False)
    with pytest.raises(aiobus.ConfigError, match="declare must be True or False"):
        bus.subscribe("", queue="q", declare="no")
    with pytest.raises(aiobus.ConfigError, match="unknown subscribe options"):
        bus.subscribe("", queue="q", decalre=False)


async def test_declare_false_queue_deleted_under_it_fails_that_subscription_alone(
    rabbitmq: Any,
) -> None:
    q, other = unique("gone"), unique("stays")
    async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
        channel = await admin.channel()
        await channel.declare_queue(q)
    async with (
        aiobus.connect(rabbitmq.amqp_url, backoff_initial=0.01) as bus,
        bus.subscribe("", queue=q, declare=False) as passive,
        bus.subscribe("", queue=other) as stays,
        bus.events() as events,
    ):
        async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
            channel = await admin.channel()
            await channel.queue_delete(q)
        with pytest.raises(aiobus.SubscriptionError, match=rf"queue '{q}' does not exist"):
            await passive.get(timeout=10)
        failed = [e async for e in _until_kind(events, "subscription_failed")]
        assert q in (failed[-1].reason or "")
        await bus.publish(other, b"still here", exchange="")
        assert (await stays.get(timeout=10)).body == b"still here"
        assert bus.is_connected


async def _until_kind(events: Any, kind: str, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        async for event in events:
            yield event
            if event.kind == kind:
                return


async def test_messages_in_flight_with_one_id_each_get_their_own_outcome(rabbitmq: Any) -> None:
    """basic.return names no delivery tag: a return must find its own message among those in
    flight, even where they share a message id (users set ids; retry copies reuse them)."""
    q = unique("dup")
    async with aiobus.amqp.connect(rabbitmq.amqp_url, topology=[Queue(q, durable=False)]) as bus:
        for round_ in range(10):
            same = f"same-{round_}"
            order = [
                (unique("nobody"), False),
                (q, True),
                (unique("nobody"), False),
                (q, True),
                (q, True),
                (unique("nobody"), False),
            ]
            if round_ % 2:
                order.reverse()
            futures = [bus.publish(key, b"x", exchange="", message_id=same) for key, _ in order]
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
            for (key, routed), outcome in zip(order, outcomes, strict=True):
                if routed:
                    assert isinstance(outcome, aiobus.Confirm), (key, outcome)
                else:
                    assert isinstance(outcome, aiobus.Unroutable), (key, outcome)
        assert await queue_depth(rabbitmq.amqp_url, q) == 30


@pytest.mark.parametrize("declared_by", ["topology", "subscribe"])
async def test_a_queue_deleted_under_its_consumer_is_declared_again_for_that_subscription_alone(
    rabbitmq: Any, declared_by: str
) -> None:
    q, topic, other = unique("del"), unique("del"), unique("other")
    topology = [Queue(q, durable=False), Binding(q, "amq.topic", topic)]
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url, topology=topology if declared_by == "topology" else ()
    ) as bus:
        pattern = "" if declared_by == "topology" else topic
        async with (
            bus.subscribe(pattern, queue=q) as sub,
            bus.subscribe("", queue=other, prefetch=10) as bystander,
            bus.events() as events,
        ):
            await asyncio.gather(*(bus.publish(other, f"b{i}", exchange="") for i in range(5)))
            await Pushes(bystander).until(lambda: bystander.buffered == 5)
            in_flight = [bus.publish(unique("k"), b"x", mandatory=False) for _ in range(300)]
            async with await aio_pika.connect(rabbitmq.amqp_url) as admin:
                channel = await admin.channel()
                await channel.queue_delete(q)  # the broker cancels our consumer
            kinds = [e.kind async for e in _until_kind(events, "subscription_reattached")]
            assert "link_lost" not in kinds and "subscription_failed" not in kinds
            async with asyncio.timeout(10):
                await asyncio.gather(*in_flight)  # confirmed on the same link, none re-sent
            await bus.publish(topic, b"after")  # the queue and its binding are back
            msg = await sub.get(timeout=10)
            assert msg.body == b"after"
            await msg.ack()
            for i in range(5):  # the other subscription's buffer is untouched
                kept = await bystander.get(timeout=10)
                assert kept.text() == f"b{i}"
                await kept.ack()
            assert bus.is_connected


async def test_a_consumer_timeout_re_attaches_that_subscription_alone(rabbitmq: Any) -> None:
    """RabbitMQ closes the channel of a consumer that holds a delivery past its queue's
    consumer timeout (checked at each channel tick, made short here for new channels)."""
    was = await asyncio.to_thread(
        rabbitmq.ctl, "eval", "application:get_env(rabbit, channel_tick_interval)."
    )
    found = re.search(r"\{ok,\s*(\d+)\}", was)
    assert found, was  # RabbitMQ's own default is in its application environment
    await asyncio.to_thread(
        rabbitmq.ctl, "eval", "application:set_env(rabbit, channel_tick_interval, 200)."
    )
    try:
        await _consumer_timeout_re_attaches(rabbitmq)
    finally:  # channels opened from now on tick as before
        await asyncio.to_thread(
            rabbitmq.ctl,
            "eval",
            f"application:set_env(rabbit, channel_tick_interval, {found.group(1)}).",
        )


async def _consumer_timeout_re_attaches(rabbitmq: Any) -> None:
    q, other = unique("slow"), unique("other")
    async with aiobus.amqp.connect(
        rabbitmq.amqp_url,
        topology=[Queue(q, durable=False, arguments={"x-consumer-timeout": 1000})],
    ) as bus:
        async with (
            bus.subscribe("", queue=q) as sub,
            bus.subscribe("", queue=other) as bystander,
            bus.events() as events,
        ):
            await bus.publish(q, b"held too long", exchange="")
            await bus.publish(other, b"kept", exchange="")
            await Pushes(bystander).until(lambda: bystander.buffered == 1)
            held = await sub.get(timeout=10)
            assert not held.redelivered
            async with asyncio.timeout(30):
                kinds = [e.kind async for e in _until_kind(events, "subscription_reattached", 30)]
            assert "link_lost" not in kinds
            with pytest.raises(aiobus.StaleDelivery):
                await held.ack()
            again = await sub.get(timeout=10)  # the broker took it back and delivers it again
            assert again.body == b"held too long" and again.redelivered
            await again.ack()
            kept = await bystander.get(timeout=10)
            assert kept.body == b"kept"
            await kept.ack()
            assert bus.is_connected


async def test_the_connection_name_is_the_applications(rabbitmq: Any) -> None:
    name = unique("billing")
    async with aiobus.connect(rabbitmq.amqp_url, connection_name=name) as bus:
        listed = await asyncio.to_thread(rabbitmq.ctl, "list_connections", "client_properties")
        assert name in listed  # the broker shows the name the application gave
        assert bus.is_connected
    with pytest.raises(aiobus.ConfigError, match="connection_name"):
        aiobus.connect(rabbitmq.amqp_url, connection_name=5)
