"""A registered subscriber: its options, checked once, and how its handler is called."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..message import Delivery
from .codec import _MISSING, Decoder, decoder_for
from .policy import ACK_MODES, AckMode, ErrorPolicy

Handler = Callable[..., Awaitable[Any]]
KeyFunc = Callable[[Delivery], Hashable | None]


@dataclass(frozen=True, slots=True)
class Invoker:
    """Calls a handler with the decoded body and/or the delivery, as its signature asks."""

    fn: Handler
    body_param: str | None
    delivery_params: tuple[str, ...]
    decode: Decoder

    async def __call__(self, delivery: Delivery) -> Any:
        kwargs: dict[str, Any] = dict.fromkeys(self.delivery_params, delivery)
        if self.body_param is not None:
            kwargs[self.body_param] = self.decode(delivery)
        return await self.fn(**kwargs)


def invoker_for(fn: Handler) -> Invoker:
    """Parameters annotated ``Delivery`` get the delivery; the one other parameter gets the
    body decoded into its annotation (none: JSON / text / bytes by content type)."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"handler {_qualname(fn)} must be an async def function")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise ConfigError(f"cannot resolve the annotations of {_qualname(fn)}: {exc}") from None
    body_param: str | None = None
    annotation: Any = _MISSING
    delivery_params: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigError(
                f"handler {_qualname(fn)}: parameter {param.name!r} must be a plain parameter"
            )
        hint = hints.get(param.name, _MISSING)
        if isinstance(hint, type) and issubclass(hint, Delivery):
            delivery_params.append(param.name)
        elif body_param is None:
            body_param, annotation = param.name, hint
        elif param.default is param.empty:
            raise ConfigError(
                f"handler {_qualname(fn)}: only one body parameter is possible, "
                f"{body_param!r} already is one and {param.name!r} is not a Delivery"
            )
    try:
        decode = decoder_for(annotation)
    except ConfigError as exc:
        raise ConfigError(f"handler {_qualname(fn)}: {exc}") from None
    return Invoker(fn, body_param, tuple(delivery_params), decode)


def _qualname(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(text: str) -> str:
    """A single topic level / routing-key word valid on every protocol."""
    return _UNSAFE.sub("_", text).strip("_")[:100] or "handler"


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    name: str
    pattern: str
    invoker: Invoker
    queue: str | None
    prefetch: int
    concurrency: int
    ack: AckMode
    on_error: ErrorPolicy
    key: KeyFunc | None
    dead_letter_topic: str | None
    options: dict[str, Any]


def check_ack(ack: object) -> AckMode:
    if ack not in ACK_MODES:
        raise ConfigError(f"ack must be one of {', '.join(map(repr, ACK_MODES))}, got {ack!r}")
    return ack  # type: ignore[return-value]


def check_concurrency(concurrency: object) -> int:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
    return concurrency


def key_func(key: object) -> KeyFunc | None:
    """``key="header-name"`` orders by that header; a callable by what it returns. A message
    whose key is None is not ordered against any other."""
    if key is None:
        return None
    if isinstance(key, str):
        if not key:
            raise ConfigError("key must be a non-empty header name or a callable")
        name = key

        def by_header(delivery: Delivery) -> Hashable | None:
            value = delivery.headers.get(name)
            return value if value is None or isinstance(value, Hashable) else repr(value)

        return by_header
    if callable(key):
        return typing.cast(KeyFunc, key)
    raise ConfigError(f"key must be a header name or a callable, got {key!r}")
