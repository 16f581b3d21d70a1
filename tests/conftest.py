"""Test set-up: 8 fake CPU devices, forced before JAX is imported anywhere, and LLVM at -O0.

The tests' programs are tiny, so their time is XLA's compile: without LLVM's optimisation passes the
CPU backend compiles about 30% faster (a tiny stage-1 train step 23 -> 16 s) and runs slower (235 ->
443 ms per step), which the tests' few steps do not notice. XLA's HLO passes are the same; only the
machine code is generated without optimisation (both sides of every comparison in the tests run under
the same setting). Set `--xla_backend_optimization_level` in XLA_FLAGS to override.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").split()
if not any(f.startswith("--xla_backend_optimization_level") for f in _flags):
    _flags.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join([*_flags, "--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
