"""Broker URLs -> typed, validated settings; passwords never shown.

Accepts one URL, comma-separated hosts in one URL (``amqp://u:p@h1:5672,h2:5673/vhost``), or a
list of URLs for the same broker cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from .auth import Credentials
from .errors import ConfigError
from .settings import OPTIONS_BY_PROTOCOL, CommonOptions, build_options


@dataclass(frozen=True, slots=True)
class SchemeInfo:
    protocol: str
    default_port: int
    tls: bool = False
    websocket: bool = False


SCHEMES: dict[str, SchemeInfo] = {
    "mqtt": SchemeInfo("mqtt", 1883),
    "mqtts": SchemeInfo("mqtt", 8883, tls=True),
    "mqtt+ws": SchemeInfo("mqtt", 80, websocket=True),
    "mqtt+wss": SchemeInfo("mqtt", 443, tls=True, websocket=True),
    "amqp": SchemeInfo("amqp091", 5672),
    "amqps": SchemeInfo("amqp091", 5671, tls=True),
    "amqp1": SchemeInfo("amqp10", 5672),
    "amqp1s": SchemeInfo("amqp10", 5671, tls=True),
    "memory": SchemeInfo("memory", 0),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything one connection needs, validated. ``repr`` and ``str`` hide the password."""

    scheme: str
    protocol: str
    endpoints: tuple[Endpoint, ...]
    credentials: Credentials | None
    path: str
    """AMQP 0-9-1 virtual host, WebSocket path, or the memory broker's name."""
    tls: bool
    websocket: bool
    options: CommonOptions

    def redacted_url(self) -> str:
        user = ""
        if self.credentials is not None:
            user = quote(self.credentials.username, safe="")
            if self.credentials.password is not None:
                user += ":***"
            user += "@"
        hosts = ",".join(str(e) for e in self.endpoints)
        if self.protocol == "memory":
            hosts = self.path
        path = ""
        if self.protocol == "amqp091":
            path = "/" + quote(self.path, safe="")
        elif self.websocket:
            path = self.path
        return f"{self.scheme}://{user}{hosts}{path}"

    def __str__(self) -> str:
        return self.redacted_url()

    def __repr__(self) -> str:
        return f"Settings({self.redacted_url()!r}, options={self.options!r})"


_PASSWORD_IN_URL = re.compile(r"(//[^:/@]*:)[^@/]*@")


def redact(text: str) -> str:
    """Hide ``user:password@`` in any text that might carry a URL (errors, logs)."""
    return _PASSWORD_IN_URL.sub(r"\1***@", text)


def parse(urls: str | Sequence[str], **options: Any) -> Settings:
    """Parse one URL or a list of URLs for the same broker into ``Settings``."""
    if isinstance(urls, str):
        return _parse_one(urls, options)
    if not urls:
        raise ConfigError("no URL given")
    parsed = [_parse_one(u, options) for u in urls]
    first = parsed[0]
    for other in parsed[1:]:
        same = (other.scheme, other.credentials, other.path, other.options)
        if same != (first.scheme, first.credentials, first.path, first.options):
            raise ConfigError(
                f"all URLs of one connection must differ only in host and port: "
                f"{first.redacted_url()} vs {other.redacted_url()}"
            )
    endpoints = tuple(e for s in parsed for e in s.endpoints)
    return Settings(
        scheme=first.scheme,
        protocol=first.protocol,
        endpoints=endpoints,
        credentials=first.credentials,
        path=first.path,
        tls=first.tls,
        websocket=first.websocket,
        options=first.options,
    )


def _parse_one(url: str, kwargs: Mapping[str, Any]) -> Settings:
    if not isinstance(url, str):
        raise ConfigError(f"URL must be a str, got {type(url).__name__}")
    shown = redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"URL {shown!r} has no scheme (expected one of {_schemes()})")
    scheme = scheme.lower()
    info = SCHEMES.get(scheme)
    if info is None:
        raise ConfigError(
            f"unknown URL scheme {scheme!r} in {shown!r} (expected one of {_schemes()})"
        )
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ConfigError(f"URL {shown!r} has a fragment '#{fragment}', which means nothing here")
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    path = slash + path

    creds: Credentials | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        creds = Credentials(unquote(user), unquote(password) if has_password else None)

    try:
        query_pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # pragma: no cover - parse_qsl is lenient unless strict
        raise ConfigError(f"bad query string in {shown!r}: {exc}") from None
    query: dict[str, str] = {}
    for key, value in query_pairs:
        if key in query:
            raise ConfigError(f"query parameter {key!r} given twice in {shown!r}")
        query[key] = value

    where = f"{scheme}:// URLs"
    options = build_options(OPTIONS_BY_PROTOCOL[info.protocol], query, kwargs, where)

    if info.protocol == "memory":
        if creds is not None:
            raise ConfigError(f"memory:// URLs take no user or password: {shown!r}")
        if path not in ("", "/"):
            raise ConfigError(f"memory:// URLs take no path: {shown!r}")
        name = unquote(netloc) or "default"
        return Settings(scheme, "memory", (), None, name, False, False, options)

    endpoints = tuple(_endpoint(part, info.default_port, shown) for part in netloc.split(","))
    if info.protocol == "amqp091":
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
    elif info.websocket:
        vhost = path or "/mqtt"
    elif path not in ("", "/"):
        raise ConfigError(f"{scheme}:// URLs take no path, got {path!r} in {shown!r}")
    else:
        vhost = ""
    if not info.tls and (options.ca_file or options.certfile):
        raise ConfigError(
            f"TLS options (ca_file, certfile) given for the plain-text scheme {scheme}://; "
            f"use {_tls_scheme(scheme)}://"
        )
    return Settings(
        scheme, info.protocol, endpoints, creds, vhost, info.tls, info.websocket, options
    )


def _endpoint(part: str, default_port: int, shown: str) -> Endpoint:
    if part.startswith("["):
        host, bracket, after = part[1:].partition("]")
        if not bracket:
            raise ConfigError(f"unclosed '[' in host {part!r} of {shown!r}")
        if after and not after.startswith(":"):
            raise ConfigError(f"junk {after!r} after IPv6 host in {shown!r}")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ConfigError(f"empty host in {shown!r}")
    if any(c in host for c in " \t\r\n/\\"):
        raise ConfigError(f"host {host!r} in {shown!r} contains characters a host cannot have")
    if port_text == "":
        if ":" in part and not part.startswith("["):
            raise ConfigError(f"empty port after {host!r} in {shown!r}")
        return Endpoint(unquote(host), default_port)
    if not port_text.isdigit():
        raise ConfigError(f"port {port_text!r} in {shown!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} in {shown!r} is out of range 1-65535")
    return Endpoint(unquote(host), port)


def _schemes() -> str:
    return ", ".join(SCHEMES)


def _tls_scheme(scheme: str) -> str:
    return {"mqtt": "mqtts", "mqtt+ws": "mqtt+wss", "amqp": "amqps", "amqp1": "amqp1s"}.get(
        scheme, scheme
    )
