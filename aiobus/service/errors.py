"""The service layer's errors: each names what went wrong and where."""

from __future__ import annotations

from ..errors import AiobusError


class ServiceError(AiobusError):
    """Base of the service layer's own errors."""


class DecodeError(ServiceError, ValueError):
    """A body could not be decoded into the handler's annotated type.

    It goes down the subscriber's error path like any handler failure; retrying cannot fix a
    malformed body, so the retry policies dead-letter it at once by default (``give_up_on``).
    """

    def __init__(self, message: str, *, target: str, topic: str = "") -> None:
        where = f" (message on {topic!r})" if topic else ""
        super().__init__(f"cannot decode the body into {target}: {message}{where}")
        self.target = target
        self.topic = topic


class NotSettled(ServiceError):
    """A handler with ``ack="manual"`` returned without acking, nacking or rejecting."""


class ServiceNotRunning(ServiceError):
    """The call needs the service running (inside ``serving()`` / ``serve()``)."""


class RequestTimeout(ServiceError, TimeoutError):
    """Nobody answered a request within its timeout."""

    def __init__(self, topic: str, timeout: float) -> None:
        super().__init__(f"no reply to the request on {topic!r} within {timeout}s")
        self.topic = topic
        self.timeout = timeout


class RemoteError(ServiceError):
    """The handler that took a request raised; ``error_type`` and ``message`` are its error's."""

    def __init__(self, error_type: str, message: str, *, topic: str = "") -> None:
        super().__init__(f"the handler for {topic!r} failed: {error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.topic = topic
