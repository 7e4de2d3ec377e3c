"""``python -m benchmarks core [--count N] [--rounds R]``: prints a table with ratios."""

from __future__ import annotations

import argparse
import asyncio


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=["core"], help="which benchmark to run")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.suite == "core":
        from . import core

        asyncio.run(core.run(args.count, args.rounds))


if __name__ == "__main__":
    main()
