"""At-least-once across a graceful worker restart on a persistent MQTT session (issue 12).

A worker process (``async with connect(): async with subscribe():``, SIGTERM cancelling its
task) holds 5 unacknowledged QoS 1 messages, 2 in hand and 3 still in its buffer, when it is
stopped. Nothing it did not ack may be PUBACKed, and the session's subscription must survive
the shutdown, so a new process with the same client id receives those 5 and everything
published while no worker ran, in order, each once. Mosquitto 2 (persistence saved on every
change) and RabbitMQ 4, MQTT 3.1.1 ``clean_session=False`` and MQTT 5 ``session_expiry``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import aiobus
from tests.helpers import mqtt_persistent_session, unique

REPO = Path(__file__).resolve().parents[2]
FAST = {"backoff_initial": 0.01, "backoff_max": 0.5, "close_timeout": 3}
HELD = 5
WHILE_DOWN = 5


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=["mosquitto", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    broker = request.getfixturevalue(request.param)
    return str(broker.mqtt_url if request.param == "rabbitmq" else broker.url)


def session_options(protocol: int, client_id: str) -> dict[str, Any]:
    return mqtt_persistent_session(protocol, client_id, **FAST)


class Worker:
    """One ``tests.faults.mqtt_restart_worker`` process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Worker:
        env = dict(os.environ)
        # The worker runs on the same kind of event loop as this test.
        loop = asyncio.get_running_loop()
        env["AIOBUS_E2E_UVLOOP"] = "1" if type(loop).__module__.startswith("uvloop") else "0"
        env["PYTHONPATH"] = str(REPO)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-W", "error", "-m", "tests.faults.mqtt_restart_worker", *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        return cls(proc)

    async def line(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.proc.stdout.readline()
        if not raw:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode()
            raise AssertionError(f"the worker ended early:\n{err}")
        return raw.decode().strip()

    async def ended(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def publish_numbered(url: str, protocol: int, topic: str, numbers: range) -> None:
    async with aiobus.connect(url, protocol=protocol, **FAST) as bus:
        await asyncio.gather(*(bus.publish(topic, str(n), qos=1) for n in numbers))


@pytest.mark.timeout(120)
async def test_a_cancelled_worker_loses_nothing_across_a_restart(
    broker_url: str, protocol: int
) -> None:
    topic, client_id = f"{unique()}/jobs", unique("worker")
    options = json.dumps(session_options(protocol, client_id))
    holder = await Worker.start("hold", broker_url, topic, options)
    taker: Worker | None = None
    try:
        assert await holder.line() == "READY"
        await publish_numbered(broker_url, protocol, topic, range(HELD))
        assert await holder.line() == "HOLDING 2 3"
        holder.proc.send_signal(signal.SIGTERM)  # the task is cancelled: a graceful exit
        assert await holder.line() == "EXITED"
        assert await holder.ended() == 0
        # Published while no worker runs: the session's subscription must still be there.
        await publish_numbered(broker_url, protocol, topic, range(HELD, HELD + WHILE_DOWN))
        taker = await Worker.start("take", broker_url, topic, options, str(HELD + WHILE_DOWN))
        assert await taker.line() == "READY"
        got = json.loads(await taker.line())
        assert await taker.line() == "EXITED"
        assert await taker.ended() == 0
    finally:
        holder.kill()
        if taker is not None:
            taker.kill()
    bodies = [m["body"] for m in got]
    # All of them, each once, in publish order: the 5 the worker held first (the broker
    # re-sends its unacknowledged ones before what it queued), then those published later.
    assert bodies == [str(n) for n in range(HELD + WHILE_DOWN)], got
