"""Run the benchmarks: ``python -m bench [name ...]`` (all when no name is given)."""

from __future__ import annotations

import argparse
import importlib
import time

# Explicit list, in the order they run; each module has ``run() -> None``.
BENCHMARKS = [
    "changelog",
    "fanout",
    "simulation",
    "anomaly",
    "audit",
    "ingest",
    "mqtt",
    "decision",
    "plant",
    "loop",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run")
    args = parser.parse_args()
    for name in args.names or BENCHMARKS:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"== {name}: not present in this checkout, skipped")
            continue
        print(f"== {name}")
        started = time.perf_counter()
        module.run()
        print(f"   ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
