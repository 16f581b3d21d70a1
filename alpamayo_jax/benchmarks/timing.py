"""Timing with warm-up and medians; compile time kept apart from run time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def time_compiled(fn: Callable[..., Any], *args: Any, reps: int = 10, warmup: int = 2) -> dict[str, float]:
    """Runs `fn(*args)` once to compile, `warmup` more times, then `reps` timed runs.

    Returns {"compile_ms": first call, "median_ms", "min_ms"}. Every call blocks on its outputs.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return {"compile_ms": compile_ms, "median_ms": statistics.median(times), "min_ms": min(times)}
