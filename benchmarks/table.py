"""Rounds, medians and the printed table every benchmark shares."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def spread(self) -> str:
        if len(self.samples) < 2:
            return ""
        return f"{min(self.samples):,.0f}-{max(self.samples):,.0f}"


async def rate(count: int, body: Callable[[], Awaitable[None]]) -> float:
    """Messages per second for one run of ``body`` that handles ``count`` messages."""
    started = time.perf_counter()
    await body()
    return count / (time.perf_counter() - started)


def print_table(title: str, rows: list[Row], baseline: dict[str, str]) -> None:
    """``baseline`` maps a row to the row it is compared with (printed as a ratio)."""
    by_name = {r.name: r for r in rows}
    width = max(len(r.name) for r in rows) + 2
    print(f"\n{title}")
    print(f"{'':{width}} {'median':>12} {'range':>19}  {'ratio':>8}")
    for row in rows:
        ratio = ""
        base = by_name.get(baseline.get(row.name, ""))
        if base is not None and base.median:
            ratio = f"{row.median / base.median:.2f}x"
        print(f"{row.name:{width}} {row.median:>12,.0f} {row.spread():>19}  {ratio:>8}  {row.unit}")
