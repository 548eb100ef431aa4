"""Simulation benchmarks: engine throughput against hand-written numpy, and samples to converge.

Run with ``python -c "from bench.simulation import run; run()"`` (or through ``make bench``).

1. Samples/s for a 6-input, 3-output process model at 10⁴, 10⁵ and 10⁶ samples, and the ratio to
   the same model written by hand in numpy (same draws, same expressions, same statistics minus
   the percentile intervals, which the hand-written version does not compute). Goal ≥ 0.8.
2. Time for one 10,000-sample run. Goal < 5 ms.
3. Samples an adaptive run needs to reach RSE 1 % with plain MC, Sobol and antithetic variates on
   a small fab model (etch yield loss against chamber temperature and RF power).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from opstwin.simulation.model import parse_model
from opstwin.simulation.monte_carlo import Method, MonteCarloEngine, RunSettings

PROCESS_MODEL: dict[str, Any] = {
    "inputs": {
        "temp_c": {"dist": "normal", "mean": 62.0, "std": 1.5},
        "rf_w": {"dist": "normal", "mean": 1500.0, "std": 40.0},
        "pressure": {"dist": "triangular", "low": 18.0, "mode": 20.0, "high": 24.0},
        "flow": {"dist": "uniform", "low": 95.0, "high": 105.0},
        "age_h": {"dist": "lognormal", "mu": 5.25, "sigma": 0.3},
        "thick": {"dist": "normal", "mean": 1.0, "std": 0.02},
    },
    "outputs": {
        "yield_": "0.92 - 0.004*abs(temp_c - 62) - 0.00002*(rf_w - 1500)**2 - 0.001*(pressure - 20)",
        "rate": "flow * sqrt(rf_w) / (1 + 0.01*age_h) * exp(-(temp_c - 62)**2 / 50)",
        "cd": "thick * (1 + 0.0005*(temp_c - 62)) + 0.0001*max(pressure - 21, 0)",
    },
}

FAB_MODEL: dict[str, Any] = {
    "inputs": {
        "temp_c": {"dist": "normal", "mean": 64.0, "std": 2.0},
        "rf_w": {"dist": "normal", "mean": 1550.0, "std": 60.0},
    },
    "outputs": {
        "yield_loss": "1 - (0.92 - 0.004*abs(temp_c - 62) - 0.00002*(rf_w - 1500)**2)",
    },
}

_PCTS = [5.0, 25.0, 50.0, 75.0, 95.0, 99.0]


def hand_written(n: int, seed: int) -> dict[str, dict[str, float]]:
    """The process model as someone would write it directly in numpy."""
    rng = np.random.default_rng(seed)
    temp_c = rng.normal(62.0, 1.5, n)
    rf_w = rng.normal(1500.0, 40.0, n)
    pressure = rng.triangular(18.0, 20.0, 24.0, n)
    flow = rng.uniform(95.0, 105.0, n)
    age_h = rng.lognormal(5.25, 0.3, n)
    thick = rng.normal(1.0, 0.02, n)
    outputs = {
        "yield_": 0.92
        - 0.004 * np.abs(temp_c - 62)
        - 0.00002 * (rf_w - 1500) ** 2
        - 0.001 * (pressure - 20),
        "rate": flow * np.sqrt(rf_w) / (1 + 0.01 * age_h) * np.exp(-((temp_c - 62) ** 2) / 50),
        "cd": thick * (1 + 0.0005 * (temp_c - 62)) + 0.0001 * np.maximum(pressure - 21, 0),
    }
    summary = {}
    for name, y in outputs.items():
        mean = float(y.mean())
        std = float(y.std(ddof=1))
        pct = np.percentile(y, _PCTS)
        summary[name] = {
            "mean": mean,
            "std": std,
            "min": float(y.min()),
            "max": float(y.max()),
            **{f"p{int(p)}": float(v) for p, v in zip(_PCTS, pct, strict=True)},
            "rse": std / np.sqrt(n) / abs(mean),
        }
    return summary


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _throughput() -> None:
    model = parse_model(PROCESS_MODEL)
    engine = MonteCarloEngine()
    print("1. throughput, 6 inputs / 3 outputs (best of N runs)")
    print(f"   {'samples':>9} {'engine/s':>12} {'numpy/s':>12} {'ratio':>6}")
    for n, repeats in ((10_000, 200), (100_000, 30), (1_000_000, 5)):
        settings = RunSettings(seed=7, samples=n)
        t_engine = _best_of(functools.partial(engine.run, model, settings), repeats)
        t_numpy = _best_of(functools.partial(hand_written, n, 7), repeats)
        ratio = t_numpy / t_engine
        print(f"   {n:>9,} {n / t_engine:>12.3g} {n / t_numpy:>12.3g} {ratio:>6.2f}")
    settings = RunSettings(seed=7, samples=10_000)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        engine.run(model, settings)
        times.append(time.perf_counter() - started)
    print(
        f"2. one 10,000-sample run: median {statistics.median(times) * 1000:.2f} ms, "
        f"best {min(times) * 1000:.2f} ms (goal < 5 ms)"
    )


def _convergence() -> None:
    model = parse_model(FAB_MODEL)
    engine = MonteCarloEngine()
    print("3. samples to reach RSE 1 % on the fab model (yield loss; adaptive, start 256)")
    seeds = range(10)
    methods: tuple[Method, ...] = ("mc", "sobol", "antithetic")
    for method in methods:
        used = []
        for seed in seeds:
            run = engine.sample(
                model,
                RunSettings(
                    seed=seed,
                    samples=256,
                    method=method,
                    adaptive=True,
                    target_rse=0.01,
                    max_samples=1_000_000,
                ),
            )
            if not run.converged:
                raise RuntimeError(f"{method} did not converge for seed {seed}")
            used.append(run.samples.size)
        print(
            f"   {method:<10} median {statistics.median(used):>8,.0f} samples "
            f"(min {min(used):,}, max {max(used):,}, {len(used)} seeds)"
        )


def run() -> None:
    """Print every simulation benchmark."""
    _throughput()
    _convergence()


if __name__ == "__main__":
    run()
