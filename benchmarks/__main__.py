"""``python -m benchmarks SUITE [--count N] [--rounds R]``: prints a table with ratios.

A suite is a module ``benchmarks/<suite>.py`` with ``async def run(args)``; it may add its own
options with ``def add_arguments(parser)``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
from pathlib import Path

_NOT_SUITES = {"table", "__main__", "chaos"}  # chaos: python -m benchmarks.chaos


def suites() -> list[str]:
    here = str(Path(__file__).parent)
    return sorted(
        m.name
        for m in pkgutil.iter_modules([here])
        if m.name not in _NOT_SUITES and not m.name.startswith("_")
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=suites(), help="which benchmark to run")
    parser.add_argument("--count", type=int, default=None, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    known, _ = parser.parse_known_args()
    module = importlib.import_module(f"benchmarks.{known.suite}")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(module.run(args))


if __name__ == "__main__":
    main()
