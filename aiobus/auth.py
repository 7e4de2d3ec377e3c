"""Credentials: static pairs, callables called before every connect attempt, signed tokens."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str | None = None

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "'***'"
        return f"Credentials(username={self.username!r}, password={shown})"


def as_credentials(value: Any) -> Credentials:
    if isinstance(value, Credentials):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        user, password = value
        if isinstance(user, str) and (password is None or isinstance(password, str)):
            return Credentials(user, password)
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
