"""Conformance target: AMQP 0-9-1 on the private RabbitMQ 4 node."""

from __future__ import annotations

import pytest

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


TARGETS = {"rabbitmq-amqp091": _rabbitmq}
