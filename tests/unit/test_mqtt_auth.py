"""The signature credentials for cloud MQTT gateways, against a value computed here by hand."""

from __future__ import annotations

import pytest

import aiobus
from aiobus.auth import mqtt_signature_credentials


def test_signature_mode_client_id_user_and_password() -> None:
    sig = mqtt_signature_credentials(
        access_key_id="LTAI4Fexample",
        secret_key="s3cr3t",
        instance_id="post-cn-0pp1",
        group_id="GID_meters",
        device_id="meter-42",
    )
    assert sig.client_id == "GID_meters@@@meter-42"
    assert sig.credentials.username == "Signature|LTAI4Fexample|post-cn-0pp1"
    # Computed independently: printf 'GID_meters@@@meter-42' |
    #   openssl dgst -sha1 -hmac s3cr3t -binary | base64
    assert sig.credentials.password == "mYpooR7LlfsV58GYr21CfjYuShk="
    assert "s3cr3t" not in repr(sig)
    assert sig.options() == {"client_id": sig.client_id, "credentials": sig.credentials}


def test_signature_options_are_accepted_by_mqtt_connect() -> None:
    sig = mqtt_signature_credentials(
        access_key_id="k", secret_key="s", instance_id="i", group_id="GID_g", device_id="d"
    )
    bus = aiobus.mqtt.connect("mqtt://broker.example:1883", **sig.options())
    assert bus.settings.options.client_id == "GID_g@@@d"  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", ["access_key_id", "secret_key", "instance_id", "group_id"])
def test_signature_needs_every_part(missing: str) -> None:
    parts = dict(
        access_key_id="k", secret_key="s", instance_id="i", group_id="GID_g", device_id="d"
    )
    parts[missing] = ""
    with pytest.raises(aiobus.ConfigError):
        mqtt_signature_credentials(**parts)
