"""Where the service's own metadata (attempt, original topic, dead-letter reason, a remote
error) travels: in headers where the protocol has them, else in an envelope around the body.

MQTT 3.1.1 has no headers, yet a message retried there still has to say which attempt it is,
and a dead letter why it died. The envelope is only ever put on messages the service itself
republishes (its private retry topics, dead-letter topics, replies), never on a user's publish.

Trust: anybody can publish ``x-aiobus-*`` headers or an envelope-looking body. The service acts
on this metadata only for deliveries on its own retry route (see ``runner.Source.trusted``);
everywhere else it is left as it came and changes nothing. ``wrap`` drops any ``x-aiobus-*``
header it is given before adding the service's own, so a forged one never reaches a copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..message import Delivery

PREFIX = "x-aiobus-"
ATTEMPT = "x-aiobus-attempt"
"""Failed attempts before this copy was published (absent: none)."""
TOPIC = "x-aiobus-topic"
"""The topic the message was first published to (on retry copies and dead letters)."""
REASON = "x-aiobus-reason"
"""Why a message was dead-lettered."""
ERROR_TYPE = "x-aiobus-error-type"
"""The type name of the error that failed it (dead letters and error replies)."""
ERROR = "x-aiobus-error"
"""On a reply: the handler raised; the value is its message."""
SUBSCRIBER = "x-aiobus-subscriber"
"""The subscriber that failed the message (dead letters)."""
FIRST_ERROR = "x-aiobus-first-error"
"""The error of the first failed attempt, ``Type: message`` (retry copies and dead letters)."""
LAST_ERROR = "x-aiobus-last-error"
"""The error of the attempt that gave up, ``Type: message`` (dead letters)."""

_ENVELOPE = b"aiobus-envelope/1\n"


@dataclass(frozen=True, slots=True)
class Wrapped:
    body: bytes
    headers: dict[str, Any] | None


class Carrier:
    """Puts metadata on an outgoing copy and reads it back from a delivery."""

    def __init__(self, headers: bool) -> None:
        self.headers = headers

    def wrap(
        self,
        body: bytes,
        headers: dict[str, Any] | None,
        meta: dict[str, str],
        content_type: str | None = None,
    ) -> Wrapped:
        if self.headers:
            merged = {k: v for k, v in (headers or {}).items() if not _ours(k)}
            merged.update(meta)
            return Wrapped(body, merged)
        inner: dict[str, Any] = dict(meta)
        if content_type is not None:
            inner["content-type"] = content_type
        return Wrapped(_ENVELOPE + json.dumps(inner).encode() + b"\n" + body, None)

    def unwrap(self, delivery: Delivery) -> dict[str, str]:
        """The metadata on a delivery; an enveloped body is replaced by the original one."""
        body = delivery.body
        if body.startswith(_ENVELOPE):
            header_end = body.find(b"\n", len(_ENVELOPE))
            if header_end > 0:
                try:
                    inner = json.loads(body[len(_ENVELOPE) : header_end])
                except ValueError:
                    inner = None
                if isinstance(inner, dict):
                    delivery.body = body[header_end + 1 :]
                    content_type = inner.pop("content-type", None)
                    if isinstance(content_type, str) and delivery.content_type is None:
                        delivery.content_type = content_type
                    return {str(k): str(v) for k, v in inner.items()}
        return {k: str(v) for k, v in delivery.headers.items() if _ours(k)}


def _ours(key: str) -> bool:
    return key.startswith(PREFIX)


def attempts_before(meta: dict[str, str]) -> int:
    """Failed attempts recorded on a republished copy; garbage counts as none."""
    try:
        return max(0, int(meta.get(ATTEMPT, "0")))
    except ValueError:
        return 0
