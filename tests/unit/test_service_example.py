"""examples/service.py runs to completion on the memory broker and exits 0."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import other_tasks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "service.py"


async def test_the_service_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("aiobus_example_service", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        assert await module.main("memory://example-test") == 0
    finally:
        del sys.modules[spec.name]
    out = capsys.readouterr().out
    assert "quote: Price(sku='apple', total=7.5)" in out
    assert "billed order 1: 3 x apple" in out
    assert "attempt 2 on shop.orders.created" in out
    assert not other_tasks()
