"""The service layer: handlers with ack policies, retries, dead letters, request/reply and
middleware on top of a ``Connection``'s subscriptions. See docs/service.md."""

from __future__ import annotations

from .core import Service
from .errors import (
    DecodeError,
    NotSettled,
    RemoteError,
    RequestTimeout,
    ServiceError,
    ServiceNotRunning,
)
from .middleware import HandleContext, Middleware, Outbound
from .policy import DeadLetter, Requeue, Retry
from .runner import SubscriberStats

__all__ = [
    "DeadLetter",
    "DecodeError",
    "HandleContext",
    "Middleware",
    "NotSettled",
    "Outbound",
    "RemoteError",
    "RequestTimeout",
    "Requeue",
    "Retry",
    "Service",
    "ServiceError",
    "ServiceNotRunning",
    "SubscriberStats",
]
