"""Which exits keep a session's subscription (issue 12), as a table: pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from aiobus.errors import ConfigError
from aiobus.settings import MqttOptions
from aiobus.transports.base import CancelReason
from aiobus.transports.mqtt_session import keeps_subscription

PERSISTENT_311 = MqttOptions(protocol=4, client_id="w", clean_session=False)
PERSISTENT_5 = MqttOptions(protocol=5, client_id="w", session_expiry=60)
CLEAN_311 = MqttOptions(protocol=4)
CLEAN_5 = MqttOptions(protocol=5)


@pytest.mark.parametrize("opts", [PERSISTENT_311, PERSISTENT_5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize(
    ("reason", "kept"),
    [("leave", True), ("cancelled", True), ("closing", True), ("unsubscribe", False)],
)
def test_persistent_session_keeps_all_but_an_explicit_unsubscribe(
    opts: MqttOptions, reason: CancelReason, kept: bool
) -> None:
    assert keeps_subscription(opts, reason) is kept


@pytest.mark.parametrize("opts", [CLEAN_311, CLEAN_5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize(
    ("reason", "kept"),
    [("leave", False), ("cancelled", False), ("closing", True), ("unsubscribe", False)],
)
def test_clean_session_unsubscribes_on_a_live_connection(
    opts: MqttOptions, reason: CancelReason, kept: bool
) -> None:
    # "closing" sends no UNSUBSCRIBE: the clean session ends with the connection anyway.
    assert keeps_subscription(opts, reason) is kept


@pytest.mark.parametrize(
    "options",
    [
        {"clean_session": False},
        {"protocol": 5, "session_expiry": 1},
        {"protocol": 5, "session_expiry": 60, "clean_session": False, "client_id": ""},
    ],
)
def test_a_persistent_session_needs_a_client_id(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="needs a fixed client_id"):
        MqttOptions(**options)


def test_a_clean_session_needs_none() -> None:
    assert MqttOptions(protocol=5).client_id is None
    assert MqttOptions(protocol=4, clean_session=True).client_id is None
