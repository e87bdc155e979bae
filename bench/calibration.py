"""The calibration workload: a small fixed computation every run times, so that latencies measured on
two machines (or on one machine in two states) can be compared as multiples of it
(``pricebench compare --normalise``).

The workload is the kind of work most pricers do: Black-Scholes call prices of 65,536 fixed parameter
sets in float64 with numpy (``exp``, ``log``, ``sqrt`` and ``scipy.special.ndtr`` over arrays that fit
in the L2/L3 caches), under the run's pinned thread count. It uses no BLAS, so Intel MKL's vendor
check does not enter it, and its inputs are generated from a fixed seed, so it is the same work
everywhere. It is timed twice, before the first cell and after the last, and each time recorded in
``run.json`` under ``calibration``: a slow-down of the machine during the run shows as a difference.

What normalising can and cannot correct (README "Comparing runs"): a uniformly faster or slower CPU
(clock, turbo, generation, a VM's share of it) scales every cell and this workload alike and cancels.
Differences in one part of the machine do not: vector width (AVX-512 against AVX2), cache sizes
against a large batch, memory bandwidth, a vendor's library fast path, a GPU (the workload is CPU-only,
so cuda cells are never normalised by it), or a neighbour that was busy for part of the run only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import environment
from bench.timing import measure

VERSION = "1"
SIZE = 65_536
DESCRIPTION = (f"Black-Scholes calls, {SIZE:,} fixed float64 parameter sets, numpy + scipy.special.ndtr "
               f"(workload v{VERSION})")


def _inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(20261205)
    S = np.full(SIZE, 100.0)
    K = rng.uniform(60.0, 140.0, SIZE)
    T = rng.uniform(0.05, 3.0, SIZE)
    r = rng.uniform(0.0, 0.08, SIZE)
    sigma = rng.uniform(0.05, 0.8, SIZE)
    return S, K, T, r, sigma


def workload(S, K, T, r, sigma) -> np.ndarray:
    from scipy.special import ndtr

    sd = sigma * np.sqrt(T)
    d1 = (np.log(S / K) + (r + 0.5 * sigma * sigma) * T) / sd
    return S * ndtr(d1) - K * np.exp(-r * T) * ndtr(d1 - sd)


_CACHED: tuple[np.ndarray, ...] | None = None


def measure_next_to_cell() -> float:
    """The workload's median time from 5 quick samples (about 10 ms), taken just before and just after a
    cell's timing under the cell's thread limit: ``compare`` leaves a cell out of its latency verdict
    where the machine itself was slow next to it (a neighbour on the physical host, a clock change)."""
    global _CACHED
    if _CACHED is None:
        _CACHED = _inputs()
    args = _CACHED
    timing, _ = measure(lambda: workload(*args), repeats=5, min_time=0.002)
    return timing.median


def measure_workload(threads: int | None = 1, repeats: int = 9) -> dict[str, Any]:
    """Time the workload under ``threads``: median, interquartile range and the raw samples (seconds per call)."""
    args = _inputs()
    with environment.limit_threads(threads):
        timing, out = measure(lambda: workload(*args), repeats=repeats, min_time=0.005)
    checksum = float(np.sum(out))  # the same everywhere to ~1e-9: proves the same work ran
    return {"median_s": timing.median, "iqr_s": timing.iqr, "samples": timing.samples, "loops": timing.loops,
            "checksum": checksum}


def summary(before: dict[str, Any], after: dict[str, Any] | None = None) -> dict[str, Any]:
    """What run.json stores: both measurements, the figure latencies are divided by (the faster of the
    two medians: a neighbour busy during one of them slows only that one), and the drift between them."""
    medians = [before["median_s"]] + ([after["median_s"]] if after else [])
    out: dict[str, Any] = {"workload": DESCRIPTION, "version": VERSION, "before": before,
                           "median_s": min(medians)}
    if after:
        out["after"] = after
        out["drift"] = after["median_s"] / before["median_s"] - 1.0
    return out
