"""A residual add and the next folded pre-norm's 1/RMS in one Pallas-Triton kernel (few-row calls).

In a decode step (one token) and a flow step (the expert's 64 action tokens), `h + delta` followed by
`layers.pre_norm`'s factor rsqrt(mean(h^2) + eps) is two or three XLA kernels of about 1.3 us each
(the add with its sum of squares as one multi-output reduction, then a separate one-element rsqrt
kernel; docs/PERFORMANCE.md, session 11). Here one program per row loads both rows, writes the rounded
sum and its factor. The result equals `h + delta` in h's dtype and `pre_norm`'s factor of it (up to
the order of the float32 sum of squares). Off the GPU the kernel runs in Pallas interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _kernel(h_ref, delta_ref, out_ref, inv_rms_ref, *, eps: float):
    """One row: out = h + delta (rounded to out's dtype), inv_rms = rsqrt(mean(out^2) + eps)."""
    f32 = jnp.float32
    out = (h_ref[...].astype(f32) + delta_ref[...].astype(f32)).astype(out_ref.dtype)
    out_ref[...] = out
    out32 = out.astype(f32)
    inv_rms_ref[...] = jax.lax.rsqrt(jnp.sum(out32 * out32) / out32.shape[0] + eps).reshape(1)


def supported(width: int) -> bool:
    """Whether the kernel takes rows of `width` (a Triton block holds a power-of-two row)."""
    return width >= 16 and width & (width - 1) == 0


def residual_rms(
    h_bld: jax.Array,
    delta_bld: jax.Array,
    eps: float,
    *,
    num_warps: int | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(h + delta `[B, L, E]` in h's dtype, its RMSNorm factor `[B, L, 1]` float32) in one kernel.

    The pair that `h = h + delta; layers.pre_norm(h, folded=True, ...)` returns, for a power-of-two
    width E (`supported`); one program per token row, so meant for few rows (decode and flow steps).
    """
    b, length, width = h_bld.shape
    if delta_bld.shape != h_bld.shape:
        raise ValueError(f"delta_bld {delta_bld.shape} must match h_bld {h_bld.shape}")
    if not supported(width):
        raise ValueError(f"h_bld width E = {width} must be a power of two >= 16")
    rows = b * length
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    row_spec = pl.BlockSpec((None, width), lambda r: (r, 0))
    out, inv_rms = pl.pallas_call(
        functools.partial(_kernel, eps=eps),
        grid=(rows,),
        in_specs=[row_spec, row_spec],
        out_specs=[row_spec, pl.BlockSpec((None, 1), lambda r: (r, 0))],
        out_shape=[
            jax.ShapeDtypeStruct((rows, width), h_bld.dtype),
            jax.ShapeDtypeStruct((rows, 1), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(
            num_warps=num_warps or (4 if width <= 2048 else 8), num_stages=1
        ),
        interpret=interpret,
        name="residual_rms",
    )(h_bld.reshape(rows, width), delta_bld.reshape(rows, width))
    return out.reshape(b, length, width), inv_rms.reshape(b, length, 1)
