"""The aiormq internals the AMQP 0-9-1 adapter uses are checked at import."""

from __future__ import annotations

import importlib.metadata

import pytest
from aiormq.channel import Channel

from aiobus.transports import amqp091_aiormq


def test_the_installed_aiormq_has_every_internal_used() -> None:
    assert amqp091_aiormq.missing_internals() == []
    amqp091_aiormq.self_test()


def test_an_aiormq_without_them_is_a_clear_error_naming_its_version() -> None:
    class Renamed(Channel):  # an aiormq that renamed its return handler and tag map
        def __init__(self) -> None:
            self.delivery_tag = 0

    Renamed._on_return_frame = None  # type: ignore[assignment,method-assign]
    version = importlib.metadata.version("aiormq")
    with pytest.raises(ImportError, match=rf"installed aiormq {version} does not have") as err:
        amqp091_aiormq.self_test(Renamed)
    text = str(err.value)
    assert "Channel().message_id_delivery_tag" in text
    assert "Channel._on_return_frame using get" in text
    assert "Channel().delivery_tag" not in text
    assert "aiormq>=7.2,<8" in text
