"""The ``aiobus`` command."""

from __future__ import annotations

import pytest

from aiobus.cli import main


def test_demo_runs_on_the_embedded_broker_and_exits_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert "connected to memory://demo" in out
    assert out.count("received aiobus.demo") == 3
    assert "3 sent and confirmed, 3 received" in out
    assert "p99" in out


def test_demo_in_mqtt_routing_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--url", "memory://cli-mqtt?topics=mqtt", "--count", "2"]) == 0
    assert "received aiobus/demo" in capsys.readouterr().out


def test_bad_url_is_a_clear_error_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--url", "kafka://x"]) == 1
    assert "ConfigError: unknown URL scheme 'kafka'" in capsys.readouterr().err
