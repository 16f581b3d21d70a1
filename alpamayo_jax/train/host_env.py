"""Process environment for multi-GPU hosts: NVLink multicast (NVLS) stays off.

Call `disable_nvlink_multicast()` before JAX (and NCCL) start; child processes inherit the variables.
Explicit settings in the environment win.
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
