"""The AMQP 0-9-1 examples run as written against a real RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("device", ["dev-a"])
def test_device_queues_example(rabbitmq: Any, device: str) -> None:
    out = run_example("rabbitmq_device_queues.py", rabbitmq.amqp_url, device)
    assert "broadcast: confirmed" in out
    assert "command: confirmed" in out
    assert "to nobody: no queue took it (NO_ROUTE)" in out
    assert f"device {device} got {{'cmd': 'reboot'}} via devices.{device}" in out


def test_work_queue_example(rabbitmq: Any) -> None:
    out = run_example("work_queue.py", rabbitmq.amqp_url)
    assert "12 jobs confirmed by the broker" in out
    assert "(retried)" in out
    assert "all 12 jobs done" in out
