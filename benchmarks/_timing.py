"""Timing helpers shared by the benchmarks: medians of repeated runs, peak memory, a result table."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["block", "median_time", "peak_rss_bytes", "print_table"]


def block(value: Any) -> Any:
    """Wait for every JAX array in ``value`` (no-op for other objects) and return it."""
    try:
        import jax

        return jax.block_until_ready(value)
    except ImportError:  # pragma: no cover
        return value


def median_time(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    ``fn`` must finish its work before returning (call :func:`block` on JAX results, ``torch`` is eager).

    Returns:
        ``(median, all_times)``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - tic)
    return statistics.median(times), times


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def print_table(rows: list[dict], columns: list[str], *, file=None) -> None:
    """Print ``rows`` as an aligned plain-text table with the given column order."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for k, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=file or sys.stdout)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=file or sys.stdout)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


