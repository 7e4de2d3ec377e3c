"""One adapter per protocol, loaded only when its scheme is used (drivers import slowly)."""

from __future__ import annotations

import importlib

from .base import Link

_ADAPTERS = {
    "memory": "aiobus.transports.memory:MemoryLink",
    "amqp091": "aiobus.transports.amqp091:Amqp091Link",
    "mqtt": "aiobus.transports.mqtt:MqttLink",
    "amqp10": "aiobus.transports.amqp10:Amqp10Link",
}


def adapter_for(protocol: str) -> type[Link]:
    from ..errors import NotSupported

    target = _ADAPTERS[protocol]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotSupported(f"the {protocol} transport is not available yet") from None
        raise
    cls: type[Link] = getattr(module, attr)
    return cls
