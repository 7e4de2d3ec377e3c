"""Typed payloads: decode a body into a handler's annotated type, encode what a handler returns.

JSON into dataclasses (nested ones too), into pydantic models when pydantic is installed (found
by duck typing: ``model_validate_json``, so pydantic stays an optional dependency), and
bytes / str / dict / list / scalars otherwise. The decoder is chosen once at registration, so
an unsupported annotation is a ``ConfigError`` then, and a bad body a ``DecodeError`` later.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from ..errors import ConfigError
from ..message import JSON, Delivery, encode_body
from .errors import DecodeError

Decoder = Callable[[Delivery], Any]

_MISSING = object()
_SCALARS: tuple[type, ...] = (int, float, bool, str)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and callable(getattr(tp, "model_validate_json", None))


def decoder_for(annotation: Any) -> Decoder:
    """The decoder for a handler's body parameter annotation (raises ``ConfigError``)."""
    if annotation in (_MISSING, Any, object, None):
        return _auto
    if annotation is bytes:
        return lambda d: d.body
    if annotation is str:
        return _text
    if _is_pydantic(annotation):
        return _pydantic(annotation)
    _check_json_type(annotation)
    target = _name(annotation)

    def decode(delivery: Delivery) -> Any:
        return _convert(annotation, _load_json(delivery, target), target, delivery.topic)

    return decode


def _auto(delivery: Delivery) -> Any:
    """No annotation: JSON by content type, text as str, anything else as bytes."""
    content_type = (delivery.content_type or "").split(";")[0].strip().lower()
    if content_type == JSON or content_type.endswith("+json"):
        return _load_json(delivery, "JSON")
    if content_type.startswith("text/"):
        return _text(delivery)
    return delivery.body


def _text(delivery: Delivery) -> str:
    try:
        return delivery.body.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"not UTF-8 ({exc.reason} at byte {exc.start})", target="str", topic=delivery.topic
        ) from None


def _load_json(delivery: Delivery, target: str) -> Any:
    try:
        return json.loads(delivery.body)
    except ValueError as exc:
        raise DecodeError(f"not JSON ({exc})", target=target, topic=delivery.topic) from None


def _pydantic(model: Any) -> Decoder:
    def decode(delivery: Delivery) -> Any:
        try:
            return model.model_validate_json(delivery.body)
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            raise DecodeError(str(exc), target=model.__name__, topic=delivery.topic) from None

    return decode


def _check_json_type(tp: Any) -> None:
    """Refuse at registration what ``_convert`` could never produce."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                _check_json_type(arg)
        return
    if origin in (list, dict, tuple, typing.Literal):
        for arg in typing.get_args(tp):
            if origin is not typing.Literal and arg is not Ellipsis:
                _check_json_type(arg)
        return
    if tp in (Any, object, type(None), list, dict) or tp in _SCALARS:
        return
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        for hint in typing.get_type_hints(tp).values():
            _check_json_type(hint)
        return
    if _is_pydantic(tp):
        return
    raise ConfigError(
        f"cannot decode a body into {_name(tp)}: use bytes, str, dict, list, a scalar, "
        "a dataclass or a pydantic model"
    )


def _convert(tp: Any, value: Any, target: str, topic: str, path: str = "body") -> Any:
    def fail(why: str) -> DecodeError:
        return DecodeError(f"{path}: {why}", target=target, topic=topic)

    if tp in (Any, object):
        return value
    if tp is type(None):
        if value is not None:
            raise fail(f"expected null, got {type(value).__name__}")
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, target, topic, path)
            except DecodeError as exc:
                errors.append(str(exc))
        raise fail(f"matches none of {_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise fail(f"{value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise fail(f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v, target, topic, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected an object, got {type(value).__name__}")
        args = typing.get_args(tp)
        if not args:
            return value
        return {k: _convert(args[1], v, target, topic, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, target, topic, path)
    if _is_pydantic(tp):
        try:
            return tp.model_validate(value)
        except Exception as exc:
            raise fail(str(exc)) from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and tp in _SCALARS:
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise fail(f"expected {tp.__name__}, got {type(value).__name__}")
        return value
    raise fail(f"cannot build a {_name(tp)}")


def _dataclass(tp: type, value: Any, target: str, topic: str, path: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(
            f"{path}: expected an object, got {type(value).__name__}", target=target, topic=topic
        )
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise DecodeError(f"{path}: unknown field(s) {unknown}", target=target, topic=topic)
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in value
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise DecodeError(f"{path}: missing field(s) {missing}", target=target, topic=topic)
    kwargs = {
        name: _convert(hints.get(name, Any), v, target, topic, f"{path}.{name}")
        for name, v in value.items()
    }
    return tp(**kwargs)


# -- encoding ---------------------------------------------------------------------------------


def encode_value(value: object) -> tuple[bytes, str | None]:
    """bytes / str / dict / list as ``publish`` takes them; dataclasses and pydantic models as
    JSON; None and scalars as JSON. Anything else is a ``TypeError`` naming the type."""
    if isinstance(value, (bytes, bytearray, memoryview, str, dict, list)):
        return encode_body(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode_body(dataclasses.asdict(value))
    dump = getattr(value, "model_dump_json", None)
    if callable(dump) and not isinstance(value, type):
        return str(dump()).encode(), JSON
    if value is None or isinstance(value, (int, float, bool)):
        return json.dumps(value).encode(), JSON
    raise TypeError(
        f"cannot encode a {type(value).__name__}: return or publish bytes, str, dict, list, "
        "a scalar, None, a dataclass or a pydantic model"
    )
