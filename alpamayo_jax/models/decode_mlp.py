"""A decode step's whole SwiGLU MLP in one Pallas-Triton kernel (split over the MLP units).

At batch 1 a decode layer's MLP is three bandwidth-bound passes in XLA: the gate_up GEMV (50 MB of
weights for the 2B backbone), the SwiGLU product, and the down GEMV with its split-K sum. Each kernel
boundary costs the GPU 1.5-2 us of ramp-down and ramp-up (docs/PERFORMANCE.md), three per layer and
token. Here each program owns `chunk` consecutive MLP units m: it reads their gate and up rows
`[chunk, E]` and their down rows `[chunk, E]` (one contiguous stream of 3 x chunk x E weights), forms
the units' activations silu(gate . x) * (up . x) for the row's folded pre-norm, and writes the down
projection's float32 partial sum over its units `[B, E]`. XLA sums the partials into the residual
(one small reduction, fused with the add). The folded norm's 1/RMS is computed from the row itself,
so no XLA kernel precedes this one either.

Weights: `gate_up [2, M, E]` (output-major: gate rows then up rows, the post-norm's scale folded in;
the inference layout of `vlm.MLP`) and `down [M, E]` (the checkpoint layout). On a non-GPU backend
the kernel runs in Pallas interpret mode (CPU tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Rows (tokens) the kernel takes: each row keeps its own gate/up accumulators in registers.
MAX_ROWS = 4


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _kernel(h_ref, gate_up_ref, down_ref, out_ref, *, eps: float, block_k: int, block_n: int):
    """One program: h `[B, E]` (whole), gate_up `[2, chunk, E]` and down `[chunk, E]` (this program's
    units) -> out `[B, E]` float32, the down projection summed over this program's units only.
    Rounded to the storage dtype where the unfused path (`vlm.MLP` + `layers.scale_rows`) rounds."""
    rows, width = h_ref.shape
    chunk = down_ref.shape[0]
    dtype = down_ref.dtype
    f32 = jnp.float32

    def gate_up_body(i, accs):
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        w_gate = gate_up_ref[0, :, cols].astype(f32)  # [chunk, block_k]
        w_up = gate_up_ref[1, :, cols].astype(f32)
        new = []
        for r in range(rows):
            x = h_ref[r, cols].astype(f32)[None, :]  # [1, block_k]
            gate, up, squares = accs[r]
            new.append((gate + w_gate * x, up + w_up * x, squares + x * x))
        return tuple(new)

    zeros = functools.partial(jnp.zeros, dtype=f32)
    init = tuple((zeros((chunk, block_k)), zeros((chunk, block_k)), zeros((1, block_k))) for _ in range(rows))
    accs = jax.lax.fori_loop(0, width // block_k, gate_up_body, init)

    def rounded(x):
        return x.astype(dtype).astype(f32)

    acts = []
    for gate, up, squares in accs:
        inv_rms = jax.lax.rsqrt(jnp.sum(squares) / width + eps)  # as `layers.pre_norm`
        gate = rounded(rounded(gate.sum(axis=1)) * inv_rms)  # [chunk]
        up = rounded(rounded(up.sum(axis=1)) * inv_rms)
        acts.append(rounded(rounded(gate * rounded(jax.nn.sigmoid(gate))) * up)[:, None])  # [chunk, 1]

    def down_body(j, carry):
        cols = pl.ds(pl.multiple_of(j * block_n, block_n), block_n)
        w_down = down_ref[:, cols].astype(f32)  # [chunk, block_n]
        for r in range(rows):
            out_ref[r, cols] = jnp.sum(w_down * acts[r], axis=0)
        return carry

    jax.lax.fori_loop(0, width // block_n, down_body, 0)


def mlp_partials(
    h_be: jax.Array,
    gate_up_2me: jax.Array,
    down_me: jax.Array,
    *,
    eps: float,
    chunk: int = 16,
    block_k: int = 256,
    block_n: int = 256,
    num_warps: int = 4,
    num_stages: int = 3,
    interpret: bool | None = None,
) -> jax.Array:
    """Float32 partial sums `[M / chunk, B, E]` of `down(silu(gate(n)) * up(n))`, n = h / RMS(h)
    (`eps`: the folded pre-norm's), over each program's `chunk` MLP units; their sum over the first
    axis is the MLP's output. `h_be [B, E]` (B <= MAX_ROWS), `gate_up_2me [2, M, E]`, `down_me [M, E]`.
    `interpret` None: interpret unless on a GPU. Raises ValueError naming a shape the kernel cannot take.
    """
    if h_be.ndim != 2 or not 1 <= h_be.shape[0] <= MAX_ROWS:
        raise ValueError(f"h_be {h_be.shape} must be [B, E] with 1 <= B <= {MAX_ROWS}")
    rows, width = h_be.shape
    if gate_up_2me.ndim != 3 or gate_up_2me.shape[0] != 2 or gate_up_2me.shape[2] != width:
        raise ValueError(f"gate_up_2me {gate_up_2me.shape} must be [2, M, E] with E = {width}")
    units = gate_up_2me.shape[1]
    if down_me.shape != (units, width):
        raise ValueError(f"down_me {down_me.shape} must be [M, E] = [{units}, {width}]")
    if gate_up_2me.dtype != down_me.dtype:
        raise ValueError(f"gate_up_2me and down_me dtypes differ: {gate_up_2me.dtype}, {down_me.dtype}")
    for name, value in (("chunk", chunk), ("block_k", block_k), ("block_n", block_n)):
        if not _is_power_of_two(value):
            raise ValueError(f"{name} = {value} must be a power of two")
    if units % chunk or width % block_k or width % block_n:
        raise ValueError(
            f"chunk = {chunk} must divide M = {units}, block_k = {block_k} and block_n = {block_n} "
            f"must divide E = {width}"
        )
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    programs = units // chunk
    return pl.pallas_call(
        functools.partial(_kernel, eps=eps, block_k=block_k, block_n=block_n),
        grid=(programs,),
        in_specs=[
            pl.BlockSpec((rows, width), lambda p: (0, 0)),
            pl.BlockSpec((2, chunk, width), lambda p: (0, p, 0)),
            pl.BlockSpec((chunk, width), lambda p: (p, 0)),
        ],
        out_specs=pl.BlockSpec((None, rows, width), lambda p: (p, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((programs, rows, width), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="decode_mlp",
    )(h_be, gate_up_2me, down_me)


def decode_mlp(
    h_be: jax.Array, gate_up_2me: jax.Array, down_me: jax.Array, *, eps: float, **tiles
) -> jax.Array:
    """The MLP's output `[B, E]` in h's dtype (the partials of `mlp_partials` summed in float32)."""
    return mlp_partials(h_be, gate_up_2me, down_me, eps=eps, **tiles).sum(axis=0).astype(h_be.dtype)
