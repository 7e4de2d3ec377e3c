"""AMQP 1.0 addresses: checked at the call, never rewritten (they are the broker's names)."""

from __future__ import annotations

import re

from ..errors import InvalidTopic

_valid_publish_addresses: dict[str, None] = {}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_address(address: str, *, publishing: bool) -> None:
    """Addresses are the broker's own names; refuse only what no broker accepts, and routing
    keys with wildcards on publish (a pattern is never a destination)."""
    if publishing and type(address) is str and address in _valid_publish_addresses:
        return  # publishers reuse a few addresses: check each once
    _validate_address(address, publishing=publishing)
    if publishing:
        if len(_valid_publish_addresses) >= 4096:
            _valid_publish_addresses.clear()
        _valid_publish_addresses[address] = None


def _validate_address(address: str, *, publishing: bool) -> None:
    if not isinstance(address, str):
        raise InvalidTopic(f"an AMQP 1.0 address must be a str, not {type(address).__name__}")
    if not address:
        raise InvalidTopic("an AMQP 1.0 address must not be empty")
    if len(address.encode()) > 65535:
        raise InvalidTopic("an AMQP 1.0 address must be at most 65535 bytes")
    if _CONTROL.search(address):
        raise InvalidTopic(f"control character in AMQP 1.0 address {address!r}")
    if address.startswith("/queues/") and len(address) == len("/queues/"):
        raise InvalidTopic(f"address {address!r} names no queue")
    if address.startswith("/exchanges/") and len(address) == len("/exchanges/"):
        raise InvalidTopic(f"address {address!r} names no exchange")
    if publishing:
        for prefix in ("/exchanges/", "/exchange/", "/topic/"):
            if address.startswith(prefix):
                rest = address[len(prefix) :]
                key = rest if prefix == "/topic/" else rest.partition("/")[2]
                words = key.split(".")
                if "*" in words or "#" in words:
                    raise InvalidTopic(
                        f"routing key {key!r} in address {address!r} is a pattern; publish to "
                        "a concrete key"
                    )
