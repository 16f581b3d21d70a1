"""A batch-1 decode step's projections after the attention as three Pallas-Triton matrix-vector kernels.

In the fused inference layout (`vlm.TextConfig.fused_decode`) one decoded token leaves the attention
as a row `attn [H * D]`; the rest of the layer is

    h1 = h + o @ attn                                 (`residual_matvec`)
    a  = silu(g) * u,  [g; u] = (gate_up @ h1) / rms(h1)   (`gate_up_swiglu`: the folded post-norm)
    h2 = h1 + down @ a                                (`residual_matvec`)

which XLA runs as seven kernels (three reductions over the weights plus the residual adds, the
post-norm's factor and SwiGLU, 1.1-1.6 us each on an H100; docs/PERFORMANCE.md, session 13). Here each
projection's kernel streams its weight once and does the small work around it in its prologue and
epilogue: every program of `gate_up_swiglu` reads the whole input row (4 KiB at ar1_2b), so it takes
the row's 1/RMS itself. Results equal the unfused layer, rounded to the storage dtype at the same
points (`layers.matvec`, `layers.scale_rows`, SwiGLU, the add), up to the order of float32 sums.

Weights are output-major (`layers.DenseOutMajor`): o and down `[F, K]`, gate_up `[2, M, E]`, so a
program's rows are contiguous. Off the GPU the kernels run in Pallas interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Tiles (output rows per program, input columns per loop step, warps, pipeline stages): the fastest of
# a sweep of 74 / 68 settings at ar1_2b shapes on an H100 (device time per layer, session 13: o 4.63 us,
# down 10.61, gate_up 18.83; docs/PERFORMANCE.md).
RESIDUAL_TILES = (2, 2048, 4, 3)
GATE_UP_TILES = (1, 2048, 4, 3)
# The kernels stream a weight at about 2.7 TB/s on an H100 against 3.0-3.1 for XLA's reductions, and
# save four small kernels per layer. Per decode layer of the policy program (session 13): ar1_2b (84 MB
# of o, gate_up and down weights) 2.5 us faster, ar1_10b (335 MB) 3.6 us slower; a straight line through
# both breaks even near 187 MB. `pays_off` keeps the kernels below this many bytes.
MAX_LAYER_BYTES = 160e6


def layer_bytes(width: int, mlp_dim: int, attn_width: int, itemsize: int) -> int:
    """Bytes of one layer's o `[width, attn_width]`, gate_up `[2, mlp_dim, width]` and down weights."""
    return (width * attn_width + 3 * mlp_dim * width) * itemsize


def pays_off(width: int, mlp_dim: int, attn_width: int, itemsize: int) -> bool:
    """Whether a decode step is faster with these kernels than with XLA's (`MAX_LAYER_BYTES`)."""
    return layer_bytes(width, mlp_dim, attn_width, itemsize) <= MAX_LAYER_BYTES


def _block(n: int, block: int) -> int:
    """The largest power of two <= `block` dividing n."""
    b = block
    while b > 1 and n % b:
        b //= 2
    return b


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def _rows(kernel_f_: jax.Array, x: jax.Array, name: str) -> None:
    if x.shape[0] != 1 or x.ndim != 2:
        raise ValueError(f"{name}: x {x.shape} must be one row [1, K]")
    if kernel_f_.shape[-1] != x.shape[1]:
        raise ValueError(f"{name}: kernel {kernel_f_.shape} must end in the row's length K = {x.shape[1]}")


def _residual_kernel(x_ref, w_ref, h_ref, out_ref, *, block_k: int):
    """Rows r of this program: out[r] = h[r] + round(sum_k w[r, k] x[k])."""
    f32 = jnp.float32
    bm = w_ref.shape[0]

    def body(i, acc):
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        return acc + w_ref[:, cols].astype(f32) * x_ref[cols].astype(f32)[None, :]

    acc = jax.lax.fori_loop(0, x_ref.shape[0] // block_k, body, jnp.zeros((bm, block_k), f32))
    y = jnp.sum(acc, axis=1).astype(out_ref.dtype).astype(f32)  # `layers.matvec` rounds here
    out_ref[...] = (h_ref[...].astype(f32) + y).astype(out_ref.dtype)


def residual_matvec(
    x_1k: jax.Array,
    kernel_fk: jax.Array,
    h_1f: jax.Array,
    *,
    tiles: tuple[int, int, int, int] = RESIDUAL_TILES,
    interpret: bool | None = None,
) -> jax.Array:
    """`h + x @ kernel.T` for one row: x `[1, K]`, output-major kernel `[F, K]`, residual h `[1, F]`;
    returns `[1, F]` in h's dtype (the product rounded to x's dtype first, as `layers.matvec`)."""
    _rows(kernel_fk, x_1k, "residual_matvec")
    f, k = kernel_fk.shape
    if h_1f.shape != (1, f):
        raise ValueError(f"residual_matvec: h {h_1f.shape} must be [1, {f}] (the kernel's output rows)")
    bm, bk, warps, stages = tiles
    bm, bk = _block(f, bm), _block(k, bk)
    return pl.pallas_call(
        functools.partial(_residual_kernel, block_k=bk),
        grid=(f // bm,),
        in_specs=[
            pl.BlockSpec((None, k), lambda i: (0, 0)),
            pl.BlockSpec((bm, k), lambda i: (i, 0)),
            pl.BlockSpec((None, bm), lambda i: (0, i)),
        ],
        out_specs=pl.BlockSpec((None, bm), lambda i: (0, i)),
        out_shape=jax.ShapeDtypeStruct((1, f), h_1f.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
        interpret=_interpret(interpret),
        name="decode_residual_matvec",
    )(x_1k.astype(kernel_fk.dtype), kernel_fk, h_1f)


def _gate_up_kernel(h_ref, w_ref, out_ref, *, eps: float, block_k: int):
    """Rows r of this program: gate g[r] and up u[r] of the raw row h, each rounded, times 1/RMS(h)
    (rounded), then silu(g) (rounded) * u."""
    f32 = jnp.float32
    dtype = out_ref.dtype
    bm = w_ref.shape[1]
    width = h_ref.shape[0]

    def body(i, carry):
        squares, gate, up = carry
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        x = h_ref[cols].astype(f32)
        gate = gate + w_ref[0, :, cols].astype(f32) * x[None, :]
        up = up + w_ref[1, :, cols].astype(f32) * x[None, :]
        return squares + x * x, gate, up

    zeros = jnp.zeros((bm, block_k), f32)
    squares, gate, up = jax.lax.fori_loop(
        0, width // block_k, body, (jnp.zeros((block_k,), f32), zeros, zeros)
    )
    inv_rms = jax.lax.rsqrt(jnp.sum(squares) / width + eps)  # `layers.pre_norm`, folded

    def scaled(acc):  # `layers.matvec` then `layers.scale_rows`
        return (jnp.sum(acc, axis=1).astype(dtype).astype(f32) * inv_rms).astype(dtype).astype(f32)

    g, u = scaled(gate), scaled(up)
    silu = (g * jax.nn.sigmoid(g)).astype(dtype).astype(f32)
    out_ref[...] = (silu * u).astype(dtype)


def gate_up_swiglu(
    h_1e: jax.Array,
    kernel_2me: jax.Array,
    eps: float,
    *,
    tiles: tuple[int, int, int, int] = GATE_UP_TILES,
    interpret: bool | None = None,
) -> jax.Array:
    """SwiGLU's input `silu(g) * u` `[1, M]` of one raw residual row h `[1, E]` through the fused
    output-major gate_up kernel `[2, M, E]` (the post-norm's scale folded in; its 1/RMS with `eps`
    taken here, as `layers.pre_norm`)."""
    _rows(kernel_2me, h_1e, "gate_up_swiglu")
    two, m, e = kernel_2me.shape
    if two != 2:
        raise ValueError(f"gate_up_swiglu: kernel {kernel_2me.shape} must be [2, M, E] (gate, then up)")
    bm, bk, warps, stages = tiles
    bm, bk = _block(m, bm), _block(e, bk)
    return pl.pallas_call(
        functools.partial(_gate_up_kernel, eps=eps, block_k=bk),
        grid=(m // bm,),
        in_specs=[
            pl.BlockSpec((None, e), lambda i: (0, 0)),
            pl.BlockSpec((2, bm, e), lambda i: (0, i, 0)),
        ],
        out_specs=pl.BlockSpec((None, bm), lambda i: (0, i)),
        out_shape=jax.ShapeDtypeStruct((1, m), kernel_2me.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
        interpret=_interpret(interpret),
        name="decode_gate_up_swiglu",
    )(h_1e.astype(kernel_2me.dtype), kernel_2me)
