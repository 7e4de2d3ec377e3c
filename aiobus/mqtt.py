"""MQTT with its full typed option set: ``aiobus.mqtt.connect(...)``.

Importing this module does not import paho: the driver loads when a connection opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .connection import Connection
from .errors import ConfigError
from .url import parse

__all__ = ["Will", "connect"]

_SCHEMES = ("mqtt://", "mqtts://", "mqtt+ws://", "mqtt+wss://")


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker when this client's link dies without DISCONNECT.

    ``payload`` may be bytes or str (UTF-8). With MQTT 5, ``delay`` (seconds) asks the broker to
    wait that long first (a quick reconnect then cancels the will), and ``properties`` are
    user properties.
    """

    topic: str
    payload: bytes | str = b""
    qos: int = 1
    retain: bool = False
    delay: int = 0
    headers: dict[str, str] | None = None

    @classmethod
    def coerce(cls, value: Any) -> Will:
        if isinstance(value, Will):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise ConfigError(f"will: {exc}") from None
        raise ConfigError(f"will must be an aiobus.mqtt.Will or a dict, not {type(value).__name__}")


def connect(
    url_or_host: str | Sequence[str] = "localhost",
    *,
    port: int | None = None,
    tls: bool = False,
    websocket_path: str | None = None,
    username: str | None = None,
    password: str | None = None,
    **options: Any,
) -> Connection:
    """An MQTT connection: ``async with aiobus.mqtt.connect("broker", protocol=5) as bus``.

    ``url_or_host`` is an ``mqtt://``, ``mqtts://``, ``mqtt+ws://`` or ``mqtt+wss://`` URL (or a
    list of them), or a bare host name, completed by ``port``, ``tls``, ``websocket_path``,
    ``username`` and ``password``. Every other keyword is an ``MqttOptions`` field (``protocol``,
    ``client_id``, ``qos``, ``clean_session``, ``session_expiry``, ``receive_maximum``,
    ``max_receive_size``, ``will``, ``heartbeat`` (keep-alive), ``ca_file``, ``certfile``,
    ``keyfile``, ...), checked here with a ``ConfigError`` naming the option.
    """
    if isinstance(url_or_host, str) and "://" not in url_or_host:
        from urllib.parse import quote

        scheme = "mqtt"
        if websocket_path is not None:
            scheme = "mqtt+wss" if tls else "mqtt+ws"
        elif tls:
            scheme = "mqtts"
        user = ""
        if username is not None:
            user = quote(username, safe="")
            if password is not None:
                user += ":" + quote(password, safe="")
            user += "@"
        host = f"[{url_or_host}]" if ":" in url_or_host else url_or_host
        where = f":{port}" if port is not None else ""
        path = websocket_path or ""
        if path and not path.startswith("/"):
            path = "/" + path
        url: str | Sequence[str] = f"{scheme}://{user}{host}{where}{path}"
    else:
        if port is not None or tls or websocket_path is not None:
            raise ConfigError(
                "port, tls and websocket_path go with a bare host; a URL says them itself"
            )
        if username is not None or password is not None:
            if "credentials" in options:
                raise ConfigError("give either username/password or credentials, not both")
            options["credentials"] = (username or "", password)
        url = url_or_host
    urls = [url] if isinstance(url, str) else list(url)
    for one in urls:
        if not one.lower().startswith(_SCHEMES):
            raise ConfigError(f"aiobus.mqtt.connect takes MQTT URLs ({', '.join(_SCHEMES)})")
    return Connection(parse(url, **options))
