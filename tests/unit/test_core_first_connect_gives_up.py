"""Regression: running out of ``max_attempts`` during the first connect raises, never hangs."""

from __future__ import annotations

import asyncio

import pytest

import aiobus
from aiobus.testing import fresh_memory_broker


async def test_max_attempts_exhausted_at_first_connect_raises() -> None:
    broker = fresh_memory_broker()
    broker.refusing = True
    async with asyncio.timeout(5):
        with pytest.raises(aiobus.TransientConnectError):
            async with aiobus.connect(broker.url(), max_attempts=2, backoff_initial=0.001):
                pass
