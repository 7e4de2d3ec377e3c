"""Credentials: static pairs, callables called before every connect attempt, signed tokens.

Every password lives in a ``Secret`` from the moment aiobus sees it (URL, keyword, callable):
its ``repr`` and ``str`` are ``'***'``, so no settings repr, error text or log line can carry
it; only the adapter that writes it on the wire calls ``reveal()``.
"""

from __future__ import annotations

import hmac
import inspect
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


class Secret:
    """A string that must reach the wire and nowhere else: ``repr``/``str`` show ``'***'``.

    Equal to a ``Secret`` or a ``str`` with the same value (compared in constant time).
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"a password must be a str, got {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The value itself, for the one call that sends it to the broker."""
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Secret cannot be changed")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


@dataclass(frozen=True, slots=True, init=False)
class Credentials:
    """A user name and an optional password, always held as a ``Secret``."""

    username: str
    password: Secret | None

    def __init__(self, username: str, password: str | Secret | None = None) -> None:
        if not isinstance(username, str):
            raise ConfigError(f"a user name must be a str, got {type(username).__name__}")
        if password is not None and not isinstance(password, Secret):
            password = Secret(password)
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "password", password)

    def reveal_password(self) -> str | None:
        """The password itself, for the adapter that sends it (None: no password)."""
        return None if self.password is None else self.password.reveal()


def as_credentials(value: Any) -> Credentials:
    if isinstance(value, Credentials):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        user, password = value
        if isinstance(user, str) and (password is None or isinstance(password, (str, Secret))):
            return Credentials(user, password)
        # The types only: the values may be the secret itself.
        kinds = ", ".join(type(v).__name__ for v in value)
        raise ConfigError(
            f"credentials must be a (username, password) tuple of str, got a tuple of ({kinds})"
        )
    raise ConfigError(
        "credentials must be Credentials or a (username, password) tuple of str, "
        f"got {type(value).__name__}"
    )


async def resolve_credentials(source: Any, fallback: Credentials | None) -> Credentials | None:
    """Call a credentials callable (sync or async) afresh: signed tokens expire between attempts."""
    if source is None:
        return fallback
    if callable(source):
        value = source()
        if inspect.isawaitable(value):
            value = await value
        return as_credentials(value)
    return as_credentials(source)


# --- cloud IoT AMQP 1.0 server-side subscriptions (signed SASL PLAIN) ------------------------


def iot_amqp_credentials(
    *,
    access_key: str,
    access_secret: str,
    consumer_group_id: str,
    iot_instance_id: str = "",
    client_id: str | None = None,
    clock: Any = None,
) -> Any:
    """A credentials callable for cloud IoT AMQP 1.0 server-side subscriptions (the
    ``aksign`` scheme): called before every connect attempt, it signs a fresh timestamp.

    User name: ``clientId|authMode=aksign,signMethod=hmacsha1,consumerGroupId=..,authId=..,
    iotInstanceId=..,timestamp=..|``; password: base64 of HMAC-SHA1 over
    ``authId=..&timestamp=..`` keyed with the access secret.
    """
    import base64
    import hashlib
    import hmac
    import socket
    import time

    if not access_key or not access_secret or not consumer_group_id:
        raise ConfigError("access_key, access_secret and consumer_group_id are required")
    cid = client_id or socket.gethostname()
    now = clock if clock is not None else time.time

    def sign() -> Credentials:
        timestamp = str(int(now() * 1000))
        username = (
            f"{cid}|authMode=aksign,signMethod=hmacsha1,consumerGroupId={consumer_group_id},"
            f"authId={access_key},iotInstanceId={iot_instance_id},timestamp={timestamp}|"
        )
        content = f"authId={access_key}&timestamp={timestamp}".encode()
        digest = hmac.new(access_secret.encode(), content, hashlib.sha1).digest()
        return Credentials(username, base64.b64encode(digest).decode())

    return sign


# --- cloud MQTT gateways with signature authentication ---------------------------------------


@dataclass(frozen=True, slots=True)
class MqttSignature:
    """What a signing cloud MQTT gateway wants: a client id and the signed credentials.

    ``aiobus.mqtt.connect(url, **signature.options())`` uses both.
    """

    client_id: str
    credentials: Credentials

    def options(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "credentials": self.credentials}


def mqtt_signature_credentials(
    *, access_key_id: str, secret_key: str, instance_id: str, group_id: str, device_id: str
) -> MqttSignature:
    """Signature mode of cloud MQTT gateways (e.g. Alibaba Cloud Message Queue for MQTT).

    Client id ``GroupID@@@DeviceID``; user name ``Signature|AccessKeyId|InstanceId``; password
    the base64 of HMAC-SHA1 over the client id, keyed with the secret key.
    """
    import base64
    import hashlib
    import hmac

    for name, value in (
        ("access_key_id", access_key_id),
        ("secret_key", secret_key),
        ("instance_id", instance_id),
        ("group_id", group_id),
        ("device_id", device_id),
    ):
        if not value:
            raise ConfigError(f"{name} is required for MQTT signature credentials")
    if "@@@" in group_id or "@@@" in device_id:
        raise ConfigError("group_id and device_id must not contain '@@@'")
    client_id = f"{group_id}@@@{device_id}"
    digest = hmac.new(secret_key.encode(), client_id.encode(), hashlib.sha1).digest()
    username = f"Signature|{access_key_id}|{instance_id}"
    return MqttSignature(client_id, Credentials(username, base64.b64encode(digest).decode()))
