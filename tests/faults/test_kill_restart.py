"""Broker killed (SIGKILL) and restarted during a stream of confirmed publishes, with a consumer
running: every confirmed message arrives at least once, every publish settles by its deadline,
the consumer resumes with no user code."""

from __future__ import annotations

from typing import Any

from tests.faults.conftest import amqp091_target, amqp10_target, mqtt_target
from tests.faults.scenarios import ChaosTarget, CycleResult, kill_restart_cycle
from tests.helpers import other_tasks


def check(result: CycleResult, messages: int) -> None:
    assert result.lost == 0, result
    assert result.late == 0, result
    assert result.confirmed + sum(result.failed.values()) == messages, result
    assert result.confirmed > 0, result
    assert result.reconnect is not None, result


async def test_memory_link_killed_mid_stream(memory_chaos: ChaosTarget) -> None:
    result = await kill_restart_cycle(memory_chaos, messages=600, kill_after=200)
    check(result, 600)
    assert result.confirmed == 600  # the in-process broker keeps everything
    assert not other_tasks()


async def test_rabbitmq_amqp091_killed_and_restarted_mid_stream(rabbitmq: Any) -> None:
    target = await amqp091_target(rabbitmq)
    result = await kill_restart_cycle(target, messages=600, kill_after=200)
    check(result, 600)
    assert not other_tasks()


async def test_rabbitmq_amqp10_killed_and_restarted_mid_stream(rabbitmq: Any) -> None:
    target = await amqp10_target(rabbitmq)
    result = await kill_restart_cycle(target, messages=600, kill_after=200)
    check(result, 600)
    assert not other_tasks()


async def test_rabbitmq_mqtt_killed_and_restarted_mid_stream(rabbitmq: Any) -> None:
    target = mqtt_target("rabbitmq-mqtt5", rabbitmq.mqtt_url, lambda: rabbitmq.restart(hard=True))
    result = await kill_restart_cycle(target, messages=600, kill_after=200)
    check(result, 600)
    assert not other_tasks()


async def test_mosquitto_killed_and_restarted_mid_stream(mosquitto: Any) -> None:
    target = mqtt_target("mosquitto-mqtt5", mosquitto.url, lambda: mosquitto.restart(hard=True))
    result = await kill_restart_cycle(target, messages=600, kill_after=200)
    check(result, 600)
    assert not other_tasks()
