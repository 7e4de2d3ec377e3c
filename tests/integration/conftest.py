"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from aiobus.transports.amqp091 import Amqp091Link


@pytest.fixture(params=[True, False], ids=["fast-path", "slow-path"])
def publish_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """AMQP 0-9-1 publishes written into aiormq's channel (the default), or through aiormq's
    ``basic_publish`` (``Amqp091Link.fast_publish = False``): a test using it runs both."""
    monkeypatch.setattr(Amqp091Link, "fast_publish", request.param)
    return bool(request.param)
