"""Conformance target: MQTT 5 on RabbitMQ 4's MQTT plugin.

RabbitMQ 4.0 has no MQTT shared subscriptions and says so in its MQTT 5 CONNACK (Shared
Subscription Available = 0): competing consumers are asserted to fail with a typed error, and
the tests that only want a subscription of their own get a plain one. MQTT 3.1.1 has no way to
say it, and RabbitMQ takes ``$share/...`` there as a literal filter that matches nothing, so
3.1.1 on RabbitMQ is covered by tests/integration/test_mqtt_rabbitmq.py instead.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.conformance.conftest import Target


def _without_queue(bus: Any, pattern: str, **options: Any) -> AbstractAsyncContextManager[Any]:
    options.pop("queue", None)
    return bus.subscribe(pattern, **options)  # type: ignore[no-any-return]


def _rabbitmq(protocol: int) -> Callable[[pytest.FixtureRequest], Target]:
    def make(request: pytest.FixtureRequest) -> Target:
        node = request.getfixturevalue("rabbitmq")
        return Target(
            name=f"rabbitmq-mqtt{protocol}",
            url=node.mqtt_url,
            syntax="mqtt",
            can_nack=False,
            can_unroutable=False,
            can_headers=protocol == 5,
            can_share=False,
            kill_link=lambda: node.ctl("close_all_connections", "conformance test"),
            options={"protocol": protocol, "backoff_initial": 0.01, "backoff_max": 0.5},
            subscriber=_without_queue,
        )

    return make


TARGETS = {"rabbitmq-mqtt5": _rabbitmq(5)}
