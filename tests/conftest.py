"""Test set-up: 8 fake CPU devices, forced before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", ""),
        "--xla_force_host_platform_device_count=8",
    ]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
