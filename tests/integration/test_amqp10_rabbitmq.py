"""The AMQP 1.0 adapter against the private RabbitMQ 4 node (native AMQP 1.0)."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

import aiobus
import aiobus.amqp1
from aiobus.amqp1 import exchange_address, queue_address
from aiobus.events import State
from tests.helpers import other_tasks, through_outage, unique

pytestmark = pytest.mark.rabbitmq

FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "connect_timeout": 15, "close_timeout": 3}


async def declare(rabbitmq: Any, name: str, *, bind: str | None = None, **arguments: Any) -> str:
    """Declare a durable queue with AMQP 0-9-1 (AMQP 1.0 names queues, it does not make them)."""
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True, arguments=arguments or None)
        if bind is not None:
            await queue.bind("amq.topic", bind)
    return name


async def test_round_trip_keeps_properties_and_headers(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("props"))
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        async with bus.subscribe(queue_address(q)) as sub:
            await bus.publish(
                queue_address(q),
                b"\x00body\xff",
                headers={"tenant": "a", "n": 7, "ok": True},
                content_type="application/octet-stream",
                message_id="m-1",
                correlation_id="c-1",
                reply_to="/queues/replies",
                ttl=60,
                priority=3,
            )
            msg = await sub.get(timeout=10)
            assert msg.body == b"\x00body\xff" and type(msg.body) is bytes
            assert msg.headers == {"tenant": "a", "n": 7, "ok": True}
            assert msg.content_type == "application/octet-stream"
            assert (msg.message_id, msg.correlation_id) == ("m-1", "c-1")
            assert msg.reply_to == "/queues/replies"
            assert msg.topic == queue_address(q)
            assert msg.timestamp is not None
            assert not msg.redelivered and msg.delivery_count == 0
            header = msg.raw.message
            assert header.durable and header.priority == 3 and header.ttl == 60
            await msg.ack()


async def test_amqp091_consumers_get_the_raw_bytes(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("raw"))
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        await bus.publish(queue_address(q), b"plain bytes", headers={"h": "v"})
    connection = await aio_pika.connect(rabbitmq.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(q)
        got = await queue.get(timeout=5)
        assert got is not None
        assert got.body == b"plain bytes"
        assert got.headers.get("h") == "v"
        await got.ack()


async def test_rejected_by_a_reject_publish_queue_is_nacked(rabbitmq: Any) -> None:
    q = await declare(
        rabbitmq, unique("full"), **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        await bus.publish(queue_address(q), b"1")
        with pytest.raises(aiobus.Nacked) as info:
            await bus.publish(queue_address(q), b"2")
        assert info.value.code == "rejected"  # RabbitMQ 4.0 sends no error condition here


async def test_released_when_no_binding_routes_is_unroutable(rabbitmq: Any) -> None:
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        with pytest.raises(aiobus.Unroutable):
            await bus.publish(exchange_address("amq.topic", unique("nobody")), b"x")
        confirm = await bus.publish(
            exchange_address("amq.topic", unique("nobody")), b"x", mandatory=False
        )
        assert confirm.protocol == "amqp10"


@pytest.mark.parametrize("form", ["v2-exchange", "v1-exchange", "v1-topic", "v1-queue", "bare"])
async def test_address_forms_rabbitmq_understands(rabbitmq: Any, form: str) -> None:
    key = unique("key")
    q = await declare(rabbitmq, unique("addr"), bind=key)
    address = {
        "v2-exchange": f"/exchanges/amq.topic/{key}",
        "v1-exchange": f"/exchange/amq.topic/{key}",
        "v1-topic": f"/topic/{key}",
        "v1-queue": f"/amq/queue/{q}",
        "bare": q,
    }[form]
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        await bus.publish(address, form)
        async with bus.subscribe(queue_address(q)) as sub:
            msg = await sub.get(timeout=10)
            assert msg.text() == form
            await msg.ack()


async def test_bad_address_ends_only_its_own_session(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("good"))
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        async with bus.subscribe(queue_address(q)) as good:
            with pytest.raises(aiobus.SubscriptionError, match="/queues/missing-") as info:
                async with bus.subscribe(queue_address(unique("missing"))):
                    pass
            assert "not-found" in str(info.value)
            # The other links did not notice: no reconnect, consumer and sender still work.
            assert bus.state is State.CONNECTED
            await bus.publish(queue_address(q), b"after")
            msg = await good.get(timeout=10)
            assert msg.body == b"after"
            await msg.ack()
            with pytest.raises(aiobus.Unroutable):  # anonymous relay: released, typed
                await bus.publish(queue_address(unique("missing")), b"x")


async def test_nack_counts_a_redelivery_release_does_not(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("qq"), **{"x-queue-type": "quorum"})
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        async with bus.subscribe(queue_address(q)) as sub:
            await bus.publish(queue_address(q), b"x")
            first = await sub.get(timeout=10)
            await aiobus.amqp1.release(first)
            second = await sub.get(timeout=10)
            assert second.delivery_count == 0  # released: not a failed delivery
            await second.nack(requeue=True)
            third = await sub.get(timeout=10)
            assert third.redelivered and third.delivery_count == 1
            await third.reject()
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.5)


async def test_credit_is_prefetch_and_follows_settlement(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("credit"))
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        await asyncio.gather(*(bus.publish(queue_address(q), str(i)) for i in range(12)))
        async with bus.subscribe(queue_address(q), prefetch=5) as sub:
            got = [await sub.get(timeout=10) for _ in range(5)]
            with pytest.raises(TimeoutError):  # five unsettled: no more credit
                await sub.get(timeout=0.5)
            await got[0].ack()
            sixth = await sub.get(timeout=10)
            assert sixth.text() == "5"
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.3)


async def test_queue_and_durable_do_not_apply_to_an_address(rabbitmq: Any) -> None:
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        with pytest.raises(aiobus.ConfigError, match="queue="):
            bus.subscribe("/queues/x", queue="x")
        with pytest.raises(aiobus.ConfigError, match="durable="):
            bus.subscribe("/queues/x", durable=True)
        with pytest.raises(aiobus.ConfigError):
            bus.publish("/queues/x", b"x", qos=1)
        with pytest.raises(aiobus.InvalidTopic):
            bus.publish("/exchanges/amq.topic/a.*", b"x")


async def test_sasl_anonymous_and_a_credentials_callable_per_attempt(rabbitmq: Any) -> None:
    anonymous = rabbitmq.amqp1_url.replace("guest:guest@", "")
    async with aiobus.amqp1.connect(anonymous, **FAST) as bus:
        await bus.publish(exchange_address("amq.topic", "x"), b"x", mandatory=False)
    calls = []

    def credentials() -> tuple[str, str]:
        calls.append(1)
        return ("guest", "guest")

    async with aiobus.amqp1.connect(anonymous, credentials=credentials, **FAST) as bus:
        await through_outage(bus, lambda: rabbitmq.ctl("close_all_connections", "test"), timeout=20)
        await bus.publish(exchange_address("amq.topic", "x"), b"x", mandatory=False)
    assert len(calls) == 2


async def test_bad_password_is_an_authentication_error(rabbitmq: Any) -> None:
    url = rabbitmq.amqp1_url.replace("guest:guest", "guest:wrong")
    # RabbitMQ answers a failed SASL PLAIN only after a delay of a few seconds.
    with pytest.raises(aiobus.AuthenticationError):
        async with aiobus.amqp1.connect(url, connect_timeout=30):
            pass


async def test_tls_with_the_test_ca(rabbitmq: Any) -> None:
    async with aiobus.amqp1.connect(
        rabbitmq.amqp1s_url, ca_file=rabbitmq.ca_file, server_hostname="localhost", **FAST
    ) as bus:
        await bus.publish(exchange_address("amq.topic", "tls"), b"x", mandatory=False)
    async with aiobus.amqp1.connect(  # a client certificate the broker verifies
        rabbitmq.amqp1s_url,
        ca_file=rabbitmq.ca_file,
        certfile=rabbitmq.client_cert,
        keyfile=rabbitmq.client_key,
        **FAST,
    ) as bus:
        await bus.publish(exchange_address("amq.topic", "tls"), b"x", mandatory=False)
    with pytest.raises(aiobus.PermanentConnectError, match="TLS"):
        async with aiobus.amqp1.connect(rabbitmq.amqp1s_url, **FAST):  # system CAs only
            pass
    with pytest.raises(aiobus.PermanentConnectError, match="TLS"):  # wrong name
        async with aiobus.amqp1.connect(
            rabbitmq.amqp1s_url, ca_file=rabbitmq.ca_file, server_hostname="example.org", **FAST
        ):
            pass


async def test_clean_shutdown_leaves_nothing(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("shut"))
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        link = bus._link
        async with bus.subscribe(queue_address(q)) as sub:
            await bus.publish(queue_address(q), b"x")
            msg = await sub.get(timeout=10)
            await msg.ack()
        sub2 = bus.subscribe(queue_address(q))
        await sub2.__aenter__()
    assert link is not None
    sock = link._sock  # type: ignore[attr-defined]
    assert sock is not None and sock.is_closing()
    assert link._sock_closed.done()  # type: ignore[attr-defined]
    assert link.conn.state & link.conn.LOCAL_CLOSED  # type: ignore[attr-defined]
    assert not other_tasks()


async def test_large_message_spans_many_frames(rabbitmq: Any) -> None:
    q = await declare(rabbitmq, unique("large"))
    body = bytes(range(256)) * 4096  # 1 MiB: dozens of transfer frames each way
    async with aiobus.amqp1.connect(rabbitmq.amqp1_url, **FAST) as bus:
        async with bus.subscribe(queue_address(q)) as sub:
            await bus.publish(queue_address(q), body, headers={"n": 1})
            msg = await sub.get(timeout=10)
            assert msg.body == body and msg.headers == {"n": 1}
            await msg.ack()
