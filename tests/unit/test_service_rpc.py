"""Request/reply and middleware on the memory broker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aiobus
from aiobus import DeadLetter, Delivery, Middleware, Service
from aiobus.memory_broker import MemoryBroker
from aiobus.publishing import Confirm
from tests.helpers import other_tasks


@pytest.fixture
async def bus(memory_broker: MemoryBroker) -> AsyncIterator[aiobus.Connection]:
    async with aiobus.connect(memory_broker.url()) as connection:
        yield connection


@dataclasses.dataclass
class Quote:
    sku: str
    qty: int


@dataclasses.dataclass
class Price:
    sku: str
    total: float


async def test_a_handler_that_returns_answers_the_request(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    @svc.subscriber("prices.quote")
    async def quote(q: Quote) -> Price:
        return Price(q.sku, q.qty * 2.5)

    async with svc.serving():
        price = await svc.request("prices.quote", Quote("a", 4), timeout=5, response_type=Price)
        untyped = await svc.request("prices.quote", {"sku": "b", "qty": 1}, timeout=5)
    assert price == Price("a", 10.0)
    assert untyped == {"sku": "b", "total": 2.5}


async def test_concurrent_requests_each_get_their_own_reply(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    @svc.subscriber("math.square", concurrency=8)
    async def square(n: int) -> int:
        return n * n

    async with svc.serving():
        results = await asyncio.gather(
            *(svc.request("math.square", n, timeout=5) for n in range(50))
        )
    assert results == [n * n for n in range(50)]


async def test_a_handler_returning_none_still_answers(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    @svc.subscriber("jobs.fire")
    async def fire(body: bytes) -> None:
        pass

    async with svc.serving():
        assert await svc.request("jobs.fire", b"x", timeout=5) is None


async def test_a_handler_that_raises_answers_with_a_typed_error(
    bus: aiobus.Connection, memory_broker: MemoryBroker
) -> None:
    svc = Service(bus)
    calls = 0

    @svc.subscriber("prices.quote", on_error=aiobus.Requeue(max_attempts=2))
    async def quote(q: Quote) -> Price:
        nonlocal calls
        calls += 1
        raise LookupError(f"unknown sku {q.sku}")

    async with svc.serving():
        with pytest.raises(aiobus.RemoteError) as info:
            await svc.request("prices.quote", Quote("zz", 1), timeout=5)
    err = info.value
    assert err.error_type == "LookupError"
    assert err.message == "unknown sku zz"
    assert err.topic == "prices.quote"
    assert calls == 2  # retried within the policy; answered once, when it gave up
    assert len(memory_broker.dead_lettered) == 1


async def test_a_bad_request_body_is_answered_with_the_decode_error(
    bus: aiobus.Connection,
) -> None:
    svc = Service(bus)

    @svc.subscriber("prices.quote", on_error=DeadLetter())
    async def quote(q: Quote) -> Price:
        raise AssertionError("never called")

    async with svc.serving():
        with pytest.raises(aiobus.RemoteError, match="DecodeError: cannot decode the body into"):
            await svc.request("prices.quote", {"sku": 1}, timeout=5)


async def test_nobody_answering_is_a_typed_timeout(bus: aiobus.Connection) -> None:
    svc = Service(bus)
    async with bus.subscribe("prices.quote") as silent, svc.serving():
        with pytest.raises(aiobus.RequestTimeout) as info:
            await svc.request("prices.quote", b"x", timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        request = await silent.get(timeout=5)
        assert request.reply_to
        assert request.correlation_id
        # A late answer finds nobody waiting and is dropped quietly.
        await bus.publish(request.reply_to, b"late", correlation_id=request.correlation_id)
        await request.ack()
    assert svc._replies is None


async def test_request_needs_the_service_running(bus: aiobus.Connection) -> None:
    svc = Service(bus)
    with pytest.raises(aiobus.ServiceNotRunning):
        await svc.request("a.b", b"x", timeout=1)
    with pytest.raises(aiobus.ConfigError, match="timeout"):
        await svc.request("a.b", b"x", timeout=-1)


async def test_request_reply_leaves_no_task_behind(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    @svc.subscriber("echo")
    async def echo(body: str) -> str:
        return body

    before = other_tasks()
    async with svc.serving():
        assert await svc.request("echo", "hi", timeout=5) == "hi"
    assert other_tasks() <= before


# -- middleware ------------------------------------------------------------------------------


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Confirm:
        self.log.append(f"{self.name}>publish:{call.kind}")
        try:
            return await call_next(call)  # type: ignore[no-any-return]
        finally:
            self.log.append(f"{self.name}<publish:{call.kind}")

    async def on_handle(self, ctx: aiobus.HandleContext, call_next: Any) -> Any:
        self.log.append(f"{self.name}>handle")
        try:
            return await call_next(ctx)
        except Exception as exc:
            self.log.append(f"{self.name}!{type(exc).__name__}")
            raise
        finally:
            self.log.append(f"{self.name}<handle")


async def test_middleware_order_first_given_is_outermost(bus: aiobus.Connection) -> None:
    log: list[str] = []
    svc = Service(bus, middleware=[Recorder("a", log)])
    svc.use(Recorder("b", log))

    @svc.subscriber("echo")
    async def echo(body: str) -> str:
        log.append("handler")
        return body

    async with svc.serving():
        await svc.request("echo", "x", timeout=5)
    assert log[:2] == ["a>publish:request", "b>publish:request"]
    # The handler may run before or after the request's confirm comes back through the
    # chain: what is fixed is the nesting within each chain.
    handle = [e for e in log if "handle" in e or e == "handler"]
    assert handle == ["a>handle", "b>handle", "handler", "b<handle", "a<handle"]
    reply = [e for e in log if e.endswith(":reply")]
    assert reply == ["a>publish:reply", "b>publish:reply", "b<publish:reply", "a<publish:reply"]
    request = [e for e in log if e.endswith(":request")]
    assert request == [
        "a>publish:request",
        "b>publish:request",
        "b<publish:request",
        "a<publish:request",
    ]
    # The reply is published inside nothing: after the handle chain has returned.
    assert log.index("a<handle") < log.index("a>publish:reply")


async def test_middleware_sees_failures_and_every_kind_of_publish(bus: aiobus.Connection) -> None:
    log: list[str] = []
    svc = Service(bus, middleware=[Recorder("m", log)])
    done = asyncio.Event()

    @svc.subscriber(
        "jobs",
        queue="work",
        on_error=aiobus.Retry(max_attempts=2, delay=0.001, dead_letter=DeadLetter("dead")),
    )
    async def job(body: bytes) -> None:
        raise ValueError("x")

    async with bus.subscribe("dead") as dead, svc.serving():
        await svc.publish("jobs", b"x")
        await (await dead.get(timeout=5)).ack()
        done.set()
    kinds = [e.split(":")[1] for e in log if e.startswith("m>publish")]
    assert kinds == ["publish", "retry", "dead_letter"]
    assert log.count("m!ValueError") == 2


async def test_a_tracing_middleware_stamps_headers_the_handler_sees(
    bus: aiobus.Connection,
) -> None:
    class Trace(Middleware):
        async def on_publish(self, call: aiobus.Outbound, call_next: Any) -> Confirm:
            call.headers = {**(call.headers or {}), "trace-id": "t-1"}
            return await call_next(call)  # type: ignore[no-any-return]

        async def on_handle(self, ctx: aiobus.HandleContext, call_next: Any) -> Any:
            ctx.extra["trace"] = ctx.delivery.headers.get("trace-id")
            return await call_next(ctx)

    svc = Service(bus, middleware=[Trace()])

    @svc.subscriber("echo")
    async def echo(msg: Delivery) -> str:
        return str(msg.headers.get("trace-id"))

    async with svc.serving():
        assert await svc.request("echo", b"", timeout=5) == "t-1"


async def test_a_middleware_that_raises_fails_the_handling(bus: aiobus.Connection) -> None:
    class Deny(Middleware):
        async def on_handle(self, ctx: aiobus.HandleContext, call_next: Any) -> Any:
            raise PermissionError("denied by policy")

    svc = Service(bus, middleware=[Deny()])

    @svc.subscriber("echo", on_error=DeadLetter())
    async def echo(body: bytes) -> bytes:
        raise AssertionError("never called")

    async with svc.serving():
        with pytest.raises(aiobus.RemoteError, match="PermissionError: denied by policy"):
            await svc.request("echo", b"", timeout=5)
    with pytest.raises(TypeError, match="Middleware"):
        svc.use(object())  # type: ignore[arg-type]


async def test_an_ack_first_handler_that_raises_still_answers(bus: aiobus.Connection) -> None:
    svc = Service(bus)

    @svc.subscriber("echo", ack="first")
    async def echo(body: bytes) -> bytes:
        raise RuntimeError("at-most-once, but answered")

    async with svc.serving():
        with pytest.raises(aiobus.RemoteError, match="at-most-once, but answered"):
            await svc.request("echo", b"", timeout=5)
