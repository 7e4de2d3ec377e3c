"""End to end: a worker process with 1,000 publishes in flight and a message in hand gets
SIGTERM and exits within ``close_timeout`` + 1 s, every future settled, no task left; on
memory:// and on every real broker (cut off by a black-holed proxy, so nothing confirms)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiobus.testing import FaultProxy
from tests.faults.targets import NET_TARGETS

CLOSE_TIMEOUT = 2.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", *NET_TARGETS])
async def worker_target(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "memory":
        yield {
            "url": "memory://sigterm",
            "topic": "jobs",
            "subscribe": {"pattern": "jobs", "queue": "jobs"},
            "publish": {},
            "proxy": None,
        }
        return
    net = await NET_TARGETS[request.param](request)
    async with FaultProxy(*net.host_port) as proxy:
        yield {
            "url": proxy.rewrite(net.url),
            "topic": net.topic,
            "subscribe": net.subscribe,
            "publish": net.publish_options,
            "proxy": proxy,
            "connect": net.connect_options,
        }


async def test_sigterm_with_a_thousand_in_flight_exits_in_time(
    worker_target: dict[str, Any],
) -> None:
    loop = asyncio.get_running_loop()
    env = dict(os.environ)
    env["AIOBUS_E2E_UVLOOP"] = "1" if type(loop).__module__.startswith("uvloop") else "0"
    env["PYTHONPATH"] = str(REPO)
    url = worker_target["url"]
    if worker_target.get("connect"):
        sep = "&" if "?" in url else "?"
        url += sep + "&".join(f"{k}={v}" for k, v in worker_target["connect"].items())
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", "-m", "tests.e2e.sigterm_worker",
        url,
        worker_target["topic"],
        json.dumps(worker_target["subscribe"]),
        json.dumps(worker_target["publish"]),
        str(CLOSE_TIMEOUT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert (await worker.stdout.readline()).strip() == b"READY"
            if worker_target["proxy"] is not None:
                worker_target["proxy"].blackhole()
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
            line = (await worker.stdout.readline()).decode()
            assert line.startswith("PUBLISHED"), line
            assert int(line.split()[1]) == 1000  # all in flight, none confirmed
        started = loop.time()
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(CLOSE_TIMEOUT + 5):
            out, err = await worker.communicate()
        took = loop.time() - started
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, err.decode()[-3000:]
    assert took < CLOSE_TIMEOUT + 1.0, f"exit took {took:.2f}s"
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["outcomes"] == {"ConnectionClosed": 1000}, report
    assert report["tasks_left"] == [], report
    assert b"never retrieved" not in err, err.decode()[-3000:]
