"""Benchmarks (`make bench`). Each module exposes ``run() -> None`` and prints its figures."""
