"""Broker URLs -> typed, validated settings; passwords never shown.

Accepts one URL, comma-separated hosts in one URL (``amqp://u:p@h1:5672,h2:5673/vhost``), or a
list of URLs for the same broker cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from .auth import Credentials
from .errors import ConfigError
from .settings import OPTIONS_BY_PROTOCOL, TRUE_TEXTS, CommonOptions, build_options


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


@dataclass(frozen=True, slots=True)
class _Parts:
    """A URL cut at its delimiters, nothing decoded or checked yet.

    Error messages show ``shown()``, which is rebuilt from these parts and never holds the
    password, so no message depends on spotting a password in raw text.
    """

    scheme: str
    username: str | None = field(repr=False)
    """Raw (still percent-encoded) user name; None without ``user@``."""
    has_password: bool
    password: str = field(repr=False)
    hosts: str
    path: str
    query: str
    fragment: str

    def shown(self, *, bare_user: bool = True) -> str:
        """The URL from its parts, the password as ``***``. ``bare_user=False``: a user name
        with no password after it is shown as ``***`` too (it may be a password typed
        without its user)."""
        user = ""
        if not bare_user and self.username is not None and not self.has_password:
            user = "***@"
        elif self.username is not None:
            user = self.username + (":***" if self.has_password else "") + "@"
        query = "?" + self.query if self.query else ""
        fragment = "#" + self.fragment if self.fragment else ""
        return f"{self.scheme}://{user}{self.hosts}{self.path}{query}{fragment}"


class _Unparsable(Exception):
    """The text cannot be cut into URL parts; ``shown`` is it without any user/password."""

    def __init__(self, shown: str, problem: str) -> None:
        super().__init__(problem)
        self.shown = shown
        self.problem = problem


def _split(url: str) -> _Parts:
    scheme, sep, rest = url.partition("://")
    if not sep or not _is_scheme(scheme):
        raise _Unparsable(_without_userinfo(url), f"has no scheme (expected one of {_schemes()})")
    # RFC 3986: the authority (userinfo@hosts) ends at the first '/', '?' or '#'.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        # Either the user name or password holds a raw '/', '?' or '#' (so part of it now
        # looks like a path, query or fragment) or a path or query holds a raw '@'. Which of
        # the two cannot be told, so nothing before that '@' may be shown.
        raise _Unparsable(
            _without_userinfo(url),
            "has a raw '@' after its host part: percent-encode '@', '/', '?', '#' and ':' in "
            "the user name and password (urllib.parse.quote(password, safe='')), and write "
            "'@' elsewhere as %40",
        )
    username: str | None = None
    has_password = False
    password = ""
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        username, colon, password = userinfo.partition(":")
        has_password = bool(colon)
    tail, _, fragment = tail.partition("#")
    path, _, query = tail.partition("?")
    return _Parts(
        scheme.lower(), username, has_password, password, authority, path, query, fragment
    )


def _is_scheme(text: str) -> bool:
    """RFC 3986 ``scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )``."""
    return (
        text[:1].isascii()
        and text[:1].isalpha()
        and all(c.isascii() and (c.isalnum() or c in "+-.") for c in text)
    )


def _without_userinfo(text: str) -> str:
    """Text that is not a URL one can cut, with everything up to its last '@' dropped."""
    if "@" not in text:
        return text
    scheme, sep, _ = text.partition("://")
    prefix = scheme + sep if sep and _is_scheme(scheme) else ""
    return prefix + "***@" + text.rpartition("@")[2]


def _parse_one(url: str, kwargs: Mapping[str, Any]) -> Settings:
    if not isinstance(url, str):
        raise ConfigError(f"URL must be a str, got {type(url).__name__}")
    try:
        parts = _split(url)
    except _Unparsable as exc:
        raise ConfigError(f"URL {exc.shown!r} {exc.problem}") from None
    shown = parts.shown()
    scheme = parts.scheme
    info = SCHEMES.get(scheme)
    if info is None:
        # An unknown scheme means the text may not be the URL it looks like (an unencoded
        # password can read as a user name): a bare user name is not shown.
        raise ConfigError(
            f"unknown URL scheme {scheme!r} in {parts.shown(bare_user=False)!r} "
            f"(expected one of {_schemes()})"
        )
    if parts.fragment:
        raise ConfigError(
            f"URL {shown!r} has a fragment '#{parts.fragment}', which means nothing here"
        )
    netloc, path = parts.hosts, parts.path
    creds: Credentials | None = None
    if parts.username is not None:
        password = unquote(parts.password) if parts.has_password else None
        creds = Credentials(unquote(parts.username), password)

    query = _query(parts.query, shown)
    _refuse_verify_off(query, shown)
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
    if not info.tls and (options.ca_file or options.certfile or not options.verify):
        raise ConfigError(
            f"TLS options (ca_file, certfile, verify) given for the plain-text scheme "
            f"{scheme}://; use {_tls_scheme(scheme)}://"
        )
    return Settings(
        scheme, info.protocol, endpoints, creds, vhost, info.tls, info.websocket, options
    )


def _query(text: str, shown: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in query:
            raise ConfigError(f"query parameter {key!r} given twice in {shown!r}")
        query[key] = value
    return query


def _refuse_verify_off(query: Mapping[str, str], shown: str) -> None:
    """A URL travels through config files, environment variables and logs, where one stray
    ``?verify=false`` would turn off server authentication unseen; only code may do that."""
    value = query.get("verify")
    if value is None or value.strip().lower() in TRUE_TEXTS:
        return
    raise ConfigError(
        f"verify={value!r} in the URL {shown!r}: turning TLS verification off is a "
        "keyword-only decision; pass verify=False to connect() (it logs a warning), or better, "
        "ca_file= with the CA that signed the broker's certificate"
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
