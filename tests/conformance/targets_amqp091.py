"""Conformance targets: AMQP 0-9-1 on the private RabbitMQ 4 node, on both publish paths
(frames written into aiormq's channel, the default; aiormq's ``basic_publish``)."""

from __future__ import annotations

import pytest

from aiobus.transports.amqp091 import Amqp091Link
from tests.conformance.conftest import Target


def _rabbitmq(request: pytest.FixtureRequest) -> Target:
    node = request.getfixturevalue("rabbitmq")

    def kill_link() -> None:
        # The broker drops every client connection, as a broker-side failure would.
        node.ctl("close_all_connections", "conformance test")

    return Target(
        name="rabbitmq-amqp091",
        url=node.amqp_url,
        syntax="amqp",
        can_nack=True,
        can_unroutable=True,
        can_headers=True,
        kill_link=kill_link,
        options={"backoff_initial": 0.01},
    )


def _rabbitmq_slow_path(request: pytest.FixtureRequest) -> Target:
    request.getfixturevalue("monkeypatch").setattr(Amqp091Link, "fast_publish", False)
    target = _rabbitmq(request)
    target.name = "rabbitmq-amqp091-slow-path"
    return target


TARGETS = {"rabbitmq-amqp091": _rabbitmq, "rabbitmq-amqp091-slow-path": _rabbitmq_slow_path}
