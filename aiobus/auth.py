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
