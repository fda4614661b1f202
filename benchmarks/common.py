"""Small shared helpers for the benchmarks: timing and table printing."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def _times(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    return min(_times(fn, repeat))


def median_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    return statistics.median(_times(fn, repeat))


def print_table(title: str, rows: list[tuple[str, float]], baseline: str) -> None:
    """Print ``rows`` of (name, seconds) as a Markdown table with ratios to ``baseline``."""
    base = dict(rows)[baseline]
    print(f"\n{title}\n")
    print("| what | time | ratio to " + baseline + " |")
    print("| --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t * 1000:.1f} ms | {t / base:.2f}× |")
