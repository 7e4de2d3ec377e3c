"""The short soak CI runs: a few kill/restart cycles per protocol, nothing lost, nothing late.
The full table (20 cycles) comes from ``python -m benchmarks.chaos --cycles 20``."""

from __future__ import annotations

from benchmarks.chaos import PROTOCOLS, soak
from tests.faults.scenarios import format_table


async def test_short_soak_every_protocol_loses_nothing() -> None:
    rows = await soak(list(PROTOCOLS), cycles=3, messages=300)
    print("\n" + format_table(rows))
    for row in rows:
        assert row["lost"] == 0, row
        assert row["late"] == 0, row
        assert row["confirmed"] > 0, row
