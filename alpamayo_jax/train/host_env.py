"""Process environment: NVLink multicast (NVLS) stays off on multi-GPU hosts, and the XLA flags and the
allocator's memory fraction that the training step is measured with.

Call these before JAX (and NCCL) start; child processes inherit the variables. Explicit settings in
the environment win.
"""

from __future__ import annotations

import os

NVLS_OFF = (
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
)


def disable_nvlink_multicast() -> None:
    for name, value in NVLS_OFF:
        os.environ.setdefault(name, value)


# XLA flags of the training step (GPU; the other backends ignore `xla_gpu_*`). Dynamic-slice fusion:
# dynamic slices inside the scanned layers' loops reach their GEMMs and custom calls by address instead
# of through a copy (the profile showed activation-sized memcpy kernels in the loops; measured: ar1_2b
# train step at batch 12 on an H100, 43.5% -> 44.0% MFU in the same call; docs/PERFORMANCE.md).
TRAIN_XLA_FLAGS = ("--xla_gpu_enable_dynamic_slice_fusion=true",)


# Share of the GPU memory JAX's allocator takes (its default is 0.75): a training process owns its GPU.
# The ar1_2b step's largest batch on an H100 80GB, 16 per device in the per-layer layout, peaks at
# 71.3 GB of the 74.4 GB this leaves; at 0.75 (59.6 GB), by the measured 1 GB per sample, about 4.
TRAIN_MEM_FRACTION = "0.94"


def add_training_xla_flags() -> None:
    """Appends `TRAIN_XLA_FLAGS` to XLA_FLAGS, except flags that XLA_FLAGS already sets, and sets
    XLA_PYTHON_CLIENT_MEM_FRACTION to `TRAIN_MEM_FRACTION` unless it is set."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", TRAIN_MEM_FRACTION)
    flags = os.environ.get("XLA_FLAGS", "").split()
    named = {flag.split("=")[0] for flag in flags}
    os.environ["XLA_FLAGS"] = " ".join(flags + [f for f in TRAIN_XLA_FLAGS if f.split("=")[0] not in named])
