"""Shared transformer blocks: norms, dense layers with logical axes, rotary embeddings, attention.

Every parameter is created with logical axis names (see `alpamayo_jax/sharding.py` for the rules
that map them to mesh axes). Norms and softmax run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any


def dtype_of(name: str | Dtype) -> Dtype:
    """Resolves a dtype given by name in a config ('float32', 'bfloat16')."""
    return jnp.dtype(name) if isinstance(name, str) else name


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation (a no-op outside a mesh/rules context)."""
    return nn.with_logical_constraint(x, tuple(names))


def _norm_scale(module: nn.Module, size: int, param_dtype: Dtype, axis_name: str) -> jax.Array:
    return module.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)), (size,), param_dtype
    )


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _norm_scale(self, x.shape[-1], self.param_dtype, self.axis_name)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


class RMSNormScale(nn.Module):
    """The scale `[size]` of an RMSNorm (same parameter path and axis), for a kernel that applies the
    norm itself (the fused attention kernels of `decode_attention`)."""

    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, size: int) -> jax.Array:
        return _norm_scale(self, size, self.param_dtype, self.axis_name)


def pre_norm(
    h_bld: jax.Array, folded: bool, eps: float, dtype: Dtype, param_dtype: Dtype, name: str
) -> tuple[jax.Array, jax.Array | None]:
    """The input of the projections after a pre-norm (call inside a compact module).

    Checkpoint layout: (RMSNorm(h), None). Folded (the inference layout): the norm's scale lives in
    the next kernels (`fold_norm_scale`), so the projections read h as it is and the caller multiplies
    their output rows by the returned 1 / RMS(h) `[B, L, 1]` (float32; `scale_rows`): one fewer
    elementwise pass over h per norm.
    """
    if not folded:
        return RMSNorm(eps, dtype, param_dtype, name=name)(h_bld), None
    h32 = h_bld.astype(jnp.float32)
    return h_bld, jax.lax.rsqrt(jnp.mean(h32 * h32, axis=-1, keepdims=True) + eps)


def scale_rows(y_bl_: jax.Array, inv_rms_bl1: jax.Array | None) -> jax.Array:
    """`y [B, L, ...]` times the per-token factor of a folded `pre_norm` (identity for None)."""
    if inv_rms_bl1 is None:
        return y_bl_
    factor = inv_rms_bl1.reshape(*inv_rms_bl1.shape[:2], *(1,) * (y_bl_.ndim - 2))
    return (y_bl_.astype(jnp.float32) * factor).astype(y_bl_.dtype)


def fold_norm_scale(kernel: jax.Array, scale_e: jax.Array, axis: int) -> jax.Array:
    """A kernel with an RMSNorm's scale `[E]` multiplied into its input axis `axis` (of size E)."""
    shape = [1] * kernel.ndim
    shape[axis] = scale_e.shape[0]
    folded = kernel.astype(jnp.float32) * scale_e.astype(jnp.float32).reshape(shape)
    return folded.astype(kernel.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with scale and bias, computed in float32 (the ViT and mergers use it).

    `affine_to_next`: return `(x_hat, (scale, bias))`, the normalised x without the affine and the
    affine for the next `Dense(norm_affine=...)` to apply to its kernel (`fold_norm_affine`). The
    same function, but the per-step product is on the `[E, F]` weights instead of the `[rows, E]`
    activations, and the backward pass has no column reductions over rows for the affine's gradients.
    """

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"
    affine_to_next: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        d = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (d,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            (d,),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine_to_next:
            return y.astype(self.dtype), (scale, bias)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def fold_norm_affine(
    kernel_e_: jax.Array, bias_: jax.Array | None, scale_e: jax.Array, shift_e: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(kernel, float32 bias) of `(x_hat * scale + shift) @ kernel + bias` as a dense layer of x_hat:
    `x_hat @ (scale * kernel) + (shift @ kernel + bias)`; kernel `[E, *F]` (its dtype kept, as
    `fold_norm_scale`), bias `[*F]` or None."""
    bias = jnp.tensordot(shift_e.astype(jnp.float32), kernel_e_.astype(jnp.float32), axes=1)
    bias = bias if bias_ is None else bias + bias_.astype(jnp.float32)
    return fold_norm_scale(kernel_e_, scale_e, axis=0), bias


class Dense(nn.Module):
    """`x @ kernel (+ bias)` over the last axis of x into `features` (a tuple gives several out axes).

    `axes` names the kernel's axes: (input axis, *output axes); the bias takes the output names.
    `split_first_output`: return a tuple over the first output axis, each part its own matmul with a
    slice of the kernel (a fused q/k/v kernel read as three: no slices of the activation, whose
    gradient would be a concatenation copy; the input gradient is a sum of three GEMMs instead).
    """

    features: int | tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    split_first_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, norm_affine: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """`norm_affine`: the (scale, shift) of a `LayerNorm(affine_to_next=True)` whose x_hat is `x`,
        applied to the kernel and bias (`fold_norm_affine`)."""
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        kernel_shape = (x.shape[-1], *features)
        init = self.kernel_init
        if len(features) > 1:
            init = _fan_in_init(self.kernel_init, x.shape[-1], int(np.prod(features)))
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, self.axes), kernel_shape, self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                features,
                self.param_dtype,
            )
        if norm_affine is not None:
            kernel, bias = fold_norm_affine(kernel, bias, *norm_affine)
        x = x.astype(self.dtype)

        def project(kernel_e_, bias_):
            y = jnp.tensordot(x, kernel_e_.astype(self.dtype), axes=((x.ndim - 1,), (0,)))
            return y if bias_ is None else y + bias_.astype(self.dtype)

        if self.split_first_output:
            return tuple(project(kernel[:, j], None if bias is None else bias[j]) for j in range(features[0]))
        return project(kernel, bias)


def _fan_in_init(base_init, fan_in: int, fan_out: int):
    """Initialises a multi-output kernel as if it were 2D [fan_in, fan_out]."""

    def init(rng, shape, dtype=jnp.float32):
        return base_init(rng, (fan_in, fan_out), dtype).reshape(shape)

    return init


# ------------------------------------------------------------------------------------- activations

_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (`jax.nn.gelu(x, approximate=True)`), with a backward pass that reads
    only x and the incoming gradient.

    The forward is jax's. The backward writes the derivative through the logistic form
    (0.5 * (1 + tanh(u)) = sigmoid(2u)), so it shares no subexpression with the forward. Under
    remat, XLA otherwise computes the tanh once and keeps it for both the recomputed output and the
    gradient: an extra write and read of a `[rows, mlp]` array per layer (measured: the ViT's tanh
    kernel, 0.9 ms per layer at batch 12 on an H100).
    """
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu_tanh(x), x


def _gelu_tanh_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    x32 = x.astype(jnp.float32)
    x2 = x32 * x32
    s = jax.nn.sigmoid(2.0 * _GELU_C * x32 * (1.0 + _GELU_A * x2))  # 0.5 * (1 + tanh(u))
    du = 2.0 * _GELU_C * (1.0 + 3.0 * _GELU_A * x2)  # d(2u)/dx
    grad = s + x32 * s * (1.0 - s) * du
    return ((g.astype(jnp.float32) * grad).astype(g.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


# ----------------------------------------------------------------------------------------- rotary


def rotate_half(x: jax.Array) -> jax.Array:
    """The rotate-half convention of the reference: [-x2, x1]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x_blhd: jax.Array, cos_bld: jax.Array, sin_bld: jax.Array) -> jax.Array:
    """Rotates heads of `x [B, L, H, D]` by angles given as cos/sin `[B, L, D]` (float32 math)."""
    x32 = x_blhd.astype(jnp.float32)
    cos, sin = cos_bld[:, :, None, :], sin_bld[:, :, None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x_blhd.dtype)


def mrope_axis_of_frequency(head_dim: int, sections: Sequence[int]) -> np.ndarray:
    """For each of the head_dim/2 frequencies, which position stream (0=t, 1=h, 2=w) drives it.

    Interleaved M-RoPE of Qwen3-VL: frequency j uses h if j % 3 == 1 and j < 3*sections[1], w if
    j % 3 == 2 and j < 3*sections[2], else t.
    """
    half = head_dim // 2
    if sum(sections) != half:
        raise ValueError(f"mrope sections {tuple(sections)} must sum to head_dim/2 = {half}")
    axis = np.zeros(half, dtype=np.int32)
    for stream, offset in ((1, 1), (2, 2)):
        axis[offset : 3 * sections[stream] : 3] = stream
    return axis


def mrope_cos_sin(
    positions_3bl: jax.Array, head_dim: int, theta: float, sections: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
    """cos/sin `[B, L, head_dim]` (float32) for 3-stream (t, h, w) positions `[3, B, L]`."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    axis = mrope_axis_of_frequency(head_dim, sections)
    pos_fbl = positions_3bl.astype(jnp.float32)[axis]  # [F, B, L]
    angles = jnp.einsum("fbl,f->blf", pos_fbl, jnp.asarray(inv_freq, jnp.float32))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


# -------------------------------------------------------------------------------------- attention

# The name of attention outputs on the XLA path, for remat policies (the cuDNN kernel's residuals are
# matched by primitive instead: see `vlm.attention_saveable`).
ATTENTION_OUT = "attention_out"


def attention(
    q_blhd: jax.Array,
    k_bskd: jax.Array,
    v_bskd: jax.Array,
    mask_bls: jax.Array | None = None,
    *,
    implementation: str | None = None,
    kv_lengths_b: jax.Array | None = None,
) -> jax.Array:
    """Grouped-query softmax attention through `jax.nn.dot_product_attention`.

    q `[B, L, H, D]`, k/v `[B, S, K, D]` with H a multiple of K; `mask_bls` True where attention is
    allowed, or `kv_lengths_b` marking the first n keys of each row valid (which cuDNN takes
    natively). Fully masked rows return finite values (they are ignored downstream).
    """
    mask = None if mask_bls is None else mask_bls[:, None, :, :]
    out = jax.nn.dot_product_attention(
        q_blhd, k_bskd, v_bskd, mask=mask, key_value_seq_lengths=kv_lengths_b, implementation=implementation
    )
    return out if implementation == "cudnn" else checkpoint_name(out, ATTENTION_OUT)


def causal_attention(
    q_blhd: jax.Array, k_blkd: jax.Array, v_blkd: jax.Array, valid_bl: jax.Array, implementation: str | None
) -> jax.Array:
    """Causal self-attention over one right-padded sequence (valid tokens first in each row).

    On cuDNN this is the fused causal kernel alone: with the padding after the valid tokens, the causal
    mask already hides every padded key from every valid query, so per-row lengths would only change
    the padded rows (and cost the kernel about 10%: 108 vs 97 us per ar1_2b prefill layer on an H100).
    Elsewhere an explicit mask. Queries on padding produce values that nothing reads.
    """
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q_blhd, k_blkd, v_blkd, is_causal=True, implementation="cudnn")
    length = valid_bl.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None] & valid_bl[:, None, :]
    return attention(q_blhd, k_blkd, v_blkd, mask, implementation=implementation)


def two_part_attention(
    q_blhd: jax.Array,
    k1_bksd: jax.Array,
    v1_bksd: jax.Array,
    mask1_bs: jax.Array,
    k2_bktd: jax.Array,
    v2_bktd: jax.Array,
) -> jax.Array:
    """Softmax attention over the union of two key sets without concatenating them.

    Part 1 is large and read-only (a KV cache or the VLM prefix, kv-head-major `[B, K, S, D]` so no
    transpose is needed; valid slots `mask1_bs`), part 2 small and always visible (the new token in
    decode, or the 64 action tokens; `[B, K, T, D]`). The memory-bound paths read each cache byte once.
    """
    b, length, h, d = q_blhd.shape
    k = k1_bksd.shape[1]
    f32 = jnp.float32
    q = (q_blhd.astype(f32) * d**-0.5).astype(q_blhd.dtype).reshape(b, length, k, h // k, d)
    q = jnp.moveaxis(q, 1, 3)  # [B, K, G, L, D]
    s1 = jnp.einsum("bkgld,bksd->bkgls", q, k1_bksd.astype(q.dtype), preferred_element_type=f32)
    s1 = jnp.where(mask1_bs[:, None, None, None, :], s1, -jnp.inf)
    s2 = jnp.einsum("bkgld,bktd->bkglt", q, k2_bktd.astype(q.dtype), preferred_element_type=f32)
    m = jnp.maximum(s1.max(axis=-1), s2.max(axis=-1))[..., None]
    p1, p2 = jnp.exp(s1 - m), jnp.exp(s2 - m)
    denom = p1.sum(axis=-1) + p2.sum(axis=-1)
    out = jnp.einsum("bkgls,bksd->bkgld", p1.astype(v1_bksd.dtype), v1_bksd, preferred_element_type=f32)
    out += jnp.einsum("bkglt,bktd->bkgld", p2.astype(v2_bktd.dtype), v2_bktd, preferred_element_type=f32)
    out = out / denom[..., None]
    return jnp.moveaxis(out, 3, 1).reshape(b, length, h, d).astype(q_blhd.dtype)


# ----------------------------------------------------------------------------- fused projections


class DenseOutMajor(nn.Module):
    """`x @ kernel.T` with the kernel stored output-major `[*features, in]` (`axes`: output names, then
    the input name): the inference layout of the projections that a batch-1 decode step turns into
    matrix-vector products (XLA rewrites the small ones, qkv and o, as multiply + reduce itself, which
    reads the weight at full bandwidth only when the reduced input axis is the minor one).

    `row_reduce`: a single row (`x` holding one token) runs as `matvec` (multiply + row reduction in
    float32) instead of the dot that XLA would run as a GEMV kernel with its epilogue and split-K sum
    as separate kernels (the MLP's; docs/PERFORMANCE.md, session 9).
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    row_reduce: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, apply: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    ) -> jax.Array:
        """`apply(x, kernel)`, when given, replaces the product (a caller's fused kernel, such as
        `decode_mlp`'s); both arrive in the compute dtype."""
        fan_out = int(np.prod(self.features))

        def init(rng, shape, dtype=jnp.float32):
            kernel = nn.initializers.lecun_normal()(rng, (x.shape[-1], fan_out), dtype)
            return kernel.T.reshape(shape)

        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.axes),
            (*self.features, x.shape[-1]),
            self.param_dtype,
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if apply is not None:
            return apply(x, kernel)
        if self.row_reduce and math.prod(x.shape[:-1]) == 1:
            return matvec(kernel, x)
        return jnp.tensordot(x, kernel, axes=((x.ndim - 1,), (len(self.features),)))


def residual_row(tree: Any, enabled: bool) -> Any:
    """The residual stream `[B, L, E]` after an add (or a tuple that starts with it and holds values
    computed from it, such as a folded norm's 1/RMS), behind an optimization barrier when `enabled`
    (the fused inference layout) and the stream holds one token. In a decode step XLA would otherwise
    fuse the add into the next projection's reduction as well, recomputing it for each of the kernel's
    rows (measured per ar1_2b layer on an H100: qkv 8.0 instead of 7.1 us, gate_up 19.1 instead of
    18.0); values passed along with it are still computed in the add's kernel."""
    h_bld = jax.tree_util.tree_leaves(tree)[0]
    if enabled and math.prod(h_bld.shape[:-1]) == 1:
        return jax.lax.optimization_barrier(tree)
    return tree


def matvec(kernel_fi: jax.Array, x_i: jax.Array) -> jax.Array:
    """One row `x [..., I]` (every leading axis of size 1) through an output-major kernel `[*F, I]`:
    the products and their sum over I in float32 (one XLA reduction fusion), returned `[..., *F]` in
    x's dtype."""
    y_f = jnp.sum(kernel_fi.astype(jnp.float32) * x_i.reshape(-1).astype(jnp.float32), axis=-1)
    return y_f.reshape(*x_i.shape[:-1], *kernel_fi.shape[:-1]).astype(x_i.dtype)


def qkv_projection(
    x_bld: jax.Array, num_heads: int, num_kv_heads: int, head_dim: int, fused: bool, **dense: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q `[B, L, H, D]`, k and v `[B, L, K, D]` from x (call inside a compact module).

    Unfused: three kernels `q`, `k`, `v` (the checkpoint layout). Fused (inference): one output-major
    kernel `qkv` `[K, H/K + 2, D, E]` holding, per KV head, its H/K query heads then its key and value,
    so a decode step reads all three in one pass and a tensor-parallel split over KV heads keeps
    groups together.
    """
    if not fused:
        q = Dense((num_heads, head_dim), ("embed", "q_heads", "head_dim"), name="q", **dense)(x_bld)
        k = Dense((num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="k", **dense)(x_bld)
        v = Dense((num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="v", **dense)(x_bld)
        return q, k, v
    group = num_heads // num_kv_heads
    qkv = fused_qkv(x_bld, num_heads, num_kv_heads, head_dim, **dense)
    q = qkv[..., :group, :].reshape(*x_bld.shape[:-1], num_heads, head_dim)
    return q, qkv[..., group, :], qkv[..., group + 1, :]


def fused_qkv(x_bld: jax.Array, num_heads: int, num_kv_heads: int, head_dim: int, **dense: Any) -> jax.Array:
    """The fused layout's raw projection `[B, L, K, H/K + 2, D]` (kernel `qkv`, see `qkv_projection`)."""
    group = num_heads // num_kv_heads
    return DenseOutMajor(
        (num_kv_heads, group + 2, head_dim), ("kv_heads", "qkv", "head_dim", "embed"), name="qkv", **dense
    )(x_bld)


def out_projection(
    out_blhd: jax.Array, width: int, fused: bool, apply: Callable | None = None, **dense: Any
) -> jax.Array:
    """The attention output projection `[B, L, H, D] -> [B, L, E]` (kernel `o`): `[H * D, E]` in the
    checkpoint layout, output-major `[E, H * D]` in the fused (inference) layout (where `apply`, if
    given, replaces the product: `DenseOutMajor`)."""
    out = out_blhd.reshape(*out_blhd.shape[:-2], out_blhd.shape[-2] * out_blhd.shape[-1])
    if fused:
        return DenseOutMajor((width,), ("embed", "q_heads_head_dim"), name="o", **dense)(out, apply)
    return Dense(width, ("q_heads_head_dim", "embed"), name="o", **dense)(out)


def fuse_qkv_params(p: dict, num_heads: int, num_kv_heads: int) -> dict:
    """Attention params in the checkpoint layout (kernels q, k, v, o `[H * D, E]`) -> the fused layout
    of `qkv_projection` / `out_projection` (output-major `qkv` `[K, H/K + 2, D, E]`, `o` `[E, H * D]`)."""
    q, k, v = (p[name]["kernel"] for name in ("q", "k", "v"))
    e, d = q.shape[0], q.shape[-1]
    q = q.reshape(e, num_kv_heads, num_heads // num_kv_heads, d)
    kernel = jnp.concatenate([q, k[:, :, None], v[:, :, None]], axis=2)
    rest = {name: value for name, value in p.items() if name not in ("q", "k", "v", "o")}
    return {
        **rest,
        "qkv": {"kernel": jnp.moveaxis(kernel, 0, -1)},
        "o": {**p["o"], "kernel": p["o"]["kernel"].T},
    }


def fuse_gate_up_params(p: dict) -> dict:
    """MLP params with kernels gate, up `[E, M]` and down `[M, E]` -> the fused layout of `vlm.MLP`:
    one output-major `gate_up` kernel `[2, M, E]` and an output-major `down` kernel `[E, M]`."""
    kernel = jnp.stack([p["gate"]["kernel"].T, p["up"]["kernel"].T])
    rest = {name: value for name, value in p.items() if name not in ("gate", "up", "down")}
    return {**rest, "gate_up": {"kernel": kernel}, "down": {**p["down"], "kernel": p["down"]["kernel"].T}}
