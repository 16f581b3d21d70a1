"""Benchmarks run by `tools/benchmark.py` (GPU numbers go to docs/PERFORMANCE.md)."""
