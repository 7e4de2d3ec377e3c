"""examples/iot_amqp1_consumer.py runs as written against RabbitMQ 4 (plain credentials)."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import aiobus
from tests.helpers import other_tasks

pytestmark = pytest.mark.rabbitmq

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "iot_amqp1_consumer.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("iot_amqp1_consumer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_iot_consumer_processes_twenty_at_once_and_accepts_after(
    rabbitmq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOT_ACCESS_KEY", raising=False)
    example = load_example()
    address = f"/queue/iot-{uuid.uuid4().hex[:8]}"  # RabbitMQ declares it on first attach
    count = 60
    async with aiobus.connect(rabbitmq.amqp1_url) as bus:
        await asyncio.gather(*(bus.publish(address, str(i)) for i in range(count)))

    active = 0
    most = 0
    gate = asyncio.Event()
    seen: list[bytes] = []

    async def handler(msg: aiobus.Delivery) -> None:
        nonlocal active, most
        assert not msg.settled  # accepted only after processing
        active += 1
        most = max(most, active)
        if active == example.CREDIT:
            gate.set()  # twenty in flight at once: let them all finish
        await gate.wait()
        seen.append(msg.body)
        active -= 1

    async with asyncio.timeout(30):
        settled = await example.consume(rabbitmq.amqp1_url, address, handler=handler, limit=count)
    assert settled == count
    assert most == example.CREDIT  # credit 20: never more unsettled at once
    assert sorted(seen) == sorted(str(i).encode() for i in range(count))
    async with aiobus.connect(rabbitmq.amqp1_url) as bus, bus.subscribe(address) as sub:
        with pytest.raises(TimeoutError):  # every one was accepted: nothing comes back
            await sub.get(timeout=0.5)
    assert not other_tasks()
