"""Kernel-level profile of a compiled function: where the device time goes.

Captures a `jax.profiler` trace, reads its Chrome-trace JSON and sums device-event durations by
kernel name (no TensorBoard needed).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax


def device_kernel_summary(trace_path: str, top: int = 25) -> dict[str, Any]:
    """Totals per kernel name over the device streams of a Chrome trace (`*.trace.json.gz`)."""
    with gzip.open(trace_path, "rb") as f:
        trace = json.load(f)
    events = trace.get("traceEvents", [])
    pids = {
        e["pid"]: e["args"].get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {
        pid for pid, name in pids.items() if "/device:GPU" in name or "GPU" in name.upper().split(":")[0]
    }
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    busy = 0.0
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in device_pids:
            continue
        dur = float(e.get("dur", 0.0)) / 1e3
        totals[e["name"]] += dur
        counts[e["name"]] += 1
        busy += dur
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {
        "device_busy_ms": busy,
        "kernels": [{"name": name[:120], "total_ms": ms, "count": counts[name]} for name, ms in ranked],
        "device_processes": sorted(pids[p] for p in device_pids),
    }


def profile(
    fn: Callable[..., Any], *args: Any, runs: int = 3, log_dir: str | None = None, top: int = 25
) -> dict[str, Any]:
    """Compiles and warms `fn`, traces `runs` calls; returns wall ms per call and the summary of the
    `top` kernels."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    log_dir = log_dir or tempfile.mkdtemp(prefix="jax-trace-")
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(runs):
            jax.block_until_ready(fn(*args))
        wall_ms = (time.perf_counter() - start) * 1e3 / runs
    traces = sorted(
        glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz")), key=os.path.getmtime
    )
    summary = device_kernel_summary(traces[-1], top) if traces else {"error": f"no trace under {log_dir}"}
    summary["wall_ms_per_call"] = wall_ms
    summary["runs"] = runs
    return summary
