"""Conformance targets: MQTT 3.1.1 and 5 on Mosquitto 2.

RabbitMQ 4's MQTT plugin is not a target here: it has no shared subscriptions (CONNACK Shared
Subscription Available = 0), and the contract uses ``queue=`` (a shared subscription on MQTT)
in several tests; tests/integration/test_mqtt_rabbitmq.py covers it instead.

MQTT cannot nack (``NotSupported``) nor report unroutable messages (``mandatory=True`` is a
``ConfigError``); MQTT 3.1.1 carries no headers or other properties.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conformance.conftest import Target

_FAST = {"backoff_initial": 0.01, "backoff_max": 0.5}


def _mosquitto(protocol: int) -> Callable[[pytest.FixtureRequest], Target]:
    def make(request: pytest.FixtureRequest) -> Target:
        broker = request.getfixturevalue("mosquitto")
        return Target(
            name=f"mosquitto-mqtt{protocol}",
            url=broker.url,
            syntax="mqtt",
            can_nack=False,
            can_unroutable=False,
            can_headers=protocol == 5,
            # A clean stop: every client's link is dropped by the broker.
            kill_link=broker.restart,
            options={"protocol": protocol, **_FAST},
        )

    return make


TARGETS = {
    "mosquitto-mqtt4": _mosquitto(4),
    "mosquitto-mqtt5": _mosquitto(5),
}
