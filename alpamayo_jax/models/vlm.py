"""Qwen3-VL text decoder: the VLM backbone's language tower.

Grouped-query attention with per-head q/k RMSNorm, interleaved multimodal RoPE over (t, h, w)
position streams, SwiGLU MLP, layers under `nn.scan` with a configurable remat policy, and a
fixed-size KV cache so prefill and one-token decode compile once each. DeepStack visual features are
added to the hidden states after the first layers, at the image-token positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from alpamayo_jax.models import decode_attention, decode_mlp, layers, residual_norm

# How a one-token decode step attends to the KV cache: "xla" (einsums and reductions, the reference) or
# "pallas" (one fused flash-decoding kernel, `decode_attention.py`; interpreted off the GPU).
DECODE_ATTENTION = ("xla", "pallas")
# How a batch-1 decode step runs the rest of a fused-layout layer after the attention (o, the residual
# adds, the post-norm, gate_up, SwiGLU, down): "xla" (reductions and elementwise kernels) or "pallas"
# (`decode_mlp`'s matrix-vector kernels with that work in their prologues and epilogues).
DECODE_PROJECTIONS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Shape and numerics of the text decoder. Values are plain data (saved as JSON)."""

    vocab_size: int
    width: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 5e6
    mrope_sections: tuple[int, int, int] = (24, 20, 20)
    tie_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None
    scan_unroll: int = 1  # layers unrolled per scan step
    scan_layers: bool = True  # False: one parameter set per layer (inference: no per-layer weight slicing)
    # True (the inference layout): one output-major qkv and one gate_up kernel per layer, output-major o,
    # and the pre-norms' scales folded into qkv / gate_up (`alpamayo.to_layout` converts).
    fused_projections: bool = False
    decode_attention: str = "xla"  # one of DECODE_ATTENTION
    decode_projections: str = "xla"  # one of DECODE_PROJECTIONS; "pallas" applies with `fused_decode`

    @property
    def fused_decode(self) -> bool:
        """Decode steps run `decode_attention.fused_decode_attention` (q/k norm, rotary, the cache write
        and the attention in one kernel) and prefills `decode_attention.fused_prefill_qkv` (the same
        prologue and the cache write): the Pallas kernels on the per-layer fused inference layout, for
        a power-of-two width (the decode kernel reads the layer's input row whole for the folded norm)."""
        per_layer_fused = self.fused_projections and not self.scan_layers
        return self.decode_attention == "pallas" and per_layer_fused and self.width & (self.width - 1) == 0

    def fused_decode_row(self, h_bld: jax.Array) -> bool:
        """Whether a step on `h_bld` runs the layer after its attention as `decode_mlp`'s kernels: a
        one-token, batch-1 decode step with `fused_decode` and `decode_projections` "pallas"."""
        one_row = h_bld.shape[0] * h_bld.shape[1] == 1
        return self.fused_decode and self.decode_projections == "pallas" and one_row

    def __post_init__(self):
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(
                f"TextConfig.decode_attention {self.decode_attention!r}; known: {', '.join(DECODE_ATTENTION)}"
            )
        if self.decode_projections not in DECODE_PROJECTIONS:
            raise ValueError(
                f"TextConfig.decode_projections {self.decode_projections!r}; "
                f"known: {', '.join(DECODE_PROJECTIONS)}"
            )
        if self.decode_attention == "pallas" and self.scan_layers:
            # flax's nn.scan traces its body for loop-invariant outputs and fails on a Pallas GPU kernel
            # (not dead-code-eliminable there): measured on jax 0.11.2 / flax 0.12.10.
            raise ValueError(
                "TextConfig.decode_attention 'pallas' needs the per-layer layout (scan_layers=False); "
                "the scanned layout decodes with 'xla'"
            )


VARIANTS: dict[str, dict[str, Any]] = {
    # Tests on the CPU.
    "tiny": dict(
        vocab_size=512,
        width=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=128,
        mrope_sections=(4, 2, 2),
    ),
    # Qwen3-VL-2B-Instruct config.json (text_config); ties the LM head to the embedding.
    "qwen3vl_2b": dict(
        vocab_size=151936,
        width=2048,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=6144,
        tie_embeddings=True,
    ),
    # Qwen3-VL-8B-Instruct config.json (text_config); the Alpamayo-R1 release backbone.
    "qwen3vl_8b": dict(
        vocab_size=151936,
        width=4096,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=12288,
    ),
}


def text_config(variant: str, **overrides: Any) -> TextConfig:
    """A preset from VARIANTS with overrides (e.g. dtype='bfloat16', vocab_size=...)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown text variant {variant!r}; known: {sorted(VARIANTS)}")
    return TextConfig(**{**VARIANTS[variant], **overrides})


_attention_out_saveable = jax.checkpoint_policies.save_only_these_names(layers.ATTENTION_OUT)


def attention_saveable(prim: Any, *args: Any, **params: Any) -> bool:
    """Remat policy: save only the attention outputs (the cuDNN flash kernel's output and softmax
    statistics, or the output named `layers.ATTENTION_OUT` on the XLA path) and recompute the rest, so
    the backward pass runs the projections, norms and MLP again but not the attention forward."""
    return prim.name.startswith("dot_product_attention_fwd") or _attention_out_saveable(prim, *args, **params)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "attention": attention_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class KVCache:
    """Fixed-size per-layer key/value buffers.

    k, v: `[layers, B, K, S, D]` (kv-head major, so attention reads them without a transpose) for the
    scanned layout, or a tuple of per-layer `[B, K, S, D]` buffers for the per-layer inference layout
    (`scan_layers=False`: a layer reads its buffer in place; slicing one layer out of a stack is a
    copy of that layer's cache on every decode step). `valid_bs` marks filled slots that may be
    attended (padding and unused slots are False); `index` is the next slot to write (shared by the
    batch; per-sample lengths live in `valid_bs`).
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    valid_bs: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, size: int, dtype: Any = None) -> KVCache:
        dtype = layers.dtype_of(dtype or cfg.dtype)
        shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
        if cfg.scan_layers:
            k = v = jnp.zeros((cfg.num_layers, *shape), dtype)
        else:
            k = v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(k=k, v=v, valid_bs=jnp.zeros((batch, size), bool), index=jnp.zeros((), jnp.int32))

    def write(self, k_nbkld: jax.Array, v_nbkld: jax.Array, valid_bl: jax.Array) -> KVCache:
        """Writes every layer's new keys/values `[layers, B, K, L, D]` at slot `index`; advances it."""

        def put(buf, new):
            if isinstance(buf, tuple):
                return tuple(put(b, new[i]) for i, b in enumerate(buf))
            return jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), self.index, axis=-2)

        return self.advance(put(self.k, k_nbkld), put(self.v, v_nbkld), valid_bl)

    def advance(self, k: Any, v: Any, valid_bl: jax.Array) -> KVCache:
        """The cache with buffers k, v that already hold the new slots (written in place by the fused
        decode kernel), their validity `[B, L]` recorded at `index`, and `index` moved past them."""
        return KVCache(
            k=k,
            v=v,
            valid_bs=jax.lax.dynamic_update_slice_in_dim(self.valid_bs, valid_bl, self.index, axis=1),
            index=self.index + valid_bl.shape[1],
        )

    def repeat(self, n: int) -> KVCache:
        """Each sample's cache repeated n times along the batch (k samples per scene)."""

        def rep(x):  # along B of [..., B, K, S, D]
            return jnp.repeat(x, n, axis=-4)

        return KVCache(
            k=jax.tree_util.tree_map(rep, self.k),
            v=jax.tree_util.tree_map(rep, self.v),
            valid_bs=jnp.repeat(self.valid_bs, n, axis=0),
            index=self.index,
        )


class Attention(nn.Module):
    """GQA self-attention with q/k norms and M-RoPE; returns (output, this call's k/v `[B, K, L, D]`).

    Without a cache (training, prefill) the tokens attend causally to each other (right-padded rows:
    the cuDNN fast path). A one-token decode attends to the cache slots allowed by `cache_mask_bs`
    plus itself (through `cfg.decode_attention`); the cache is only read here (the caller writes the
    returned k/v into it), except with `cfg.fused_decode`, where one kernel also writes the new key and
    value at slot `cache_index` and the updated cache buffers are returned in place of the k/v. With
    `cfg.fused_decode` a prefill (L > 1 with cache buffers) also writes its keys and values from the
    kernel that prepares the attention's inputs (`decode_attention.fused_prefill_qkv`). Given
    `residual_bld` (a `cfg.fused_decode_row` step) the output is that row plus the projected attention,
    in one kernel (`decode_mlp.residual_matvec`).
    """

    cfg: TextConfig

    @nn.compact
    def __call__(
        self,
        x_bld,
        cos_bld,
        sin_bld,
        valid_bl,
        cache_k=None,
        cache_v=None,
        cache_mask_bs=None,
        inv_rms_bl1=None,
        cache_index=None,
        residual_bld=None,
    ):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype)
        if cache_k is not None and x_bld.shape[1] > 1 and cfg.fused_decode:  # a prefill into the cache
            q, k, v, cache_k, cache_v = decode_attention.fused_prefill_qkv(
                layers.fused_qkv(x_bld, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, **dense),
                inv_rms_bl1,
                layers.RMSNormScale(pdtype, name="q_norm")(cfg.head_dim),
                layers.RMSNormScale(pdtype, name="k_norm")(cfg.head_dim),
                cos_bld,
                sin_bld,
                cache_k,
                cache_v,
                cache_index,
                eps=cfg.rms_eps,
            )
            out = layers.causal_attention(q, k, v, valid_bl, cfg.attention_impl)
            return layers.out_projection(out, cfg.width, True, **dense), (cache_k, cache_v)
        if cache_k is not None and x_bld.shape[1] == 1 and cfg.fused_decode:
            qkv = layers.fused_qkv(x_bld, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, **dense)
            out, cache_k, cache_v = decode_attention.fused_decode_attention(
                qkv[:, 0],
                x_bld[:, 0],  # the raw row of the folded input norm: the kernel takes its 1/RMS
                layers.RMSNormScale(pdtype, name="q_norm")(cfg.head_dim),
                layers.RMSNormScale(pdtype, name="k_norm")(cfg.head_dim),
                cos_bld[:, 0],
                sin_bld[:, 0],
                cache_k,
                cache_v,
                cache_mask_bs,
                cache_index,
                eps=cfg.rms_eps,
                norm_eps=cfg.rms_eps,
            )
            apply = None
            if residual_bld is not None:  # `cfg.fused_decode_row`: h + o(out) in one kernel

                def apply(x, kernel):
                    row = decode_mlp.residual_matvec(x[0], kernel, residual_bld[0])
                    return row.reshape(residual_bld.shape)

            return layers.out_projection(out, cfg.width, True, apply, **dense), (cache_k, cache_v)
        q, k, v = layers.qkv_projection(
            x_bld, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.fused_projections, **dense
        )
        q, k, v = (layers.scale_rows(t, inv_rms_bl1) for t in (q, k, v))  # a folded input norm
        q = layers.RMSNorm(cfg.rms_eps, dtype, pdtype, name="q_norm")(q)
        k = layers.RMSNorm(cfg.rms_eps, dtype, pdtype, name="k_norm")(k)
        q = layers.apply_rotary(q, cos_bld, sin_bld)
        k = layers.apply_rotary(k, cos_bld, sin_bld)
        q = layers.constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
        kv = (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
        if cache_k is not None and x_bld.shape[1] == 1:
            two_part = (
                decode_attention.decode_two_part_attention
                if cfg.decode_attention == "pallas"
                else layers.two_part_attention
            )
            out = two_part(q, cache_k, cache_v, cache_mask_bs, *kv)
        else:
            out = layers.causal_attention(q, k, v, valid_bl, cfg.attention_impl)
        return layers.out_projection(out, cfg.width, cfg.fused_projections, **dense), kv


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); `fused` (the inference layout): gate and up in one
    output-major `[2, M, E]` kernel and down output-major `[E, M]` (`layers.DenseOutMajor`: a one-token
    call runs both as reductions)."""

    width: int
    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    fused: bool = False

    @nn.compact
    def __call__(self, x, inv_rms_bl1=None, residual_eps=None):
        """`inv_rms_bl1`: the factor of a folded pre-norm (`layers.pre_norm`; fused layout only).

        `residual_eps` (a `TextConfig.fused_decode_row` step; fused layout): x is the raw residual row
        `[1, 1, E]` before the folded pre-norm, whose 1/RMS the kernels take with this eps, and the
        result is x + MLP(norm(x)) from `decode_mlp`'s two kernels."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if residual_eps is not None:
            gate_up = layers.DenseOutMajor(
                (2, self.mlp_dim), ("gate_up", "mlp", "embed"), name="gate_up", **kw
            )
            h_1e = x.reshape(1, x.shape[-1])
            act = gate_up(h_1e, lambda row, kernel: decode_mlp.gate_up_swiglu(row, kernel, residual_eps))
            down = layers.DenseOutMajor((self.width,), ("embed", "mlp"), name="down", **kw)
            out = down(act, lambda row, kernel: decode_mlp.residual_matvec(row, kernel, h_1e))
            return out.reshape(x.shape)
        if self.fused:
            gate_up = layers.DenseOutMajor(
                (2, self.mlp_dim), ("gate_up", "mlp", "embed"), name="gate_up", row_reduce=True, **kw
            )(x)
            gate_up = layers.scale_rows(gate_up, inv_rms_bl1)
            gate, up = gate_up[..., 0, :], gate_up[..., 1, :]
        else:
            gate = layers.Dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x)
            up = layers.Dense(self.mlp_dim, ("embed", "mlp"), name="up", **kw)(x)
        h = layers.constrain(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        if self.fused:
            down = layers.DenseOutMajor((self.width,), ("embed", "mlp"), name="down", row_reduce=True, **kw)
            return down(h)
        return layers.Dense(self.width, ("mlp", "embed"), name="down", **kw)(h)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer in scan form: `(carry, per-layer cache k/v) -> (carry, this k/v)`.

    carry = (hidden `[B, L, D]`, layer index). Per-layer inputs: the cache k/v `[B, K, S, D]` (decode)
    or None. Broadcast: cos/sin, valid tokens `[B, L]`, cache slot mask `[B, S]`, DeepStack additions
    `[n, B, L, D]` (added after the first n layers at image positions), the cache slot of a decoded
    token. The output is this layer's k/v, or its updated cache buffers (`cfg.fused_decode`).
    """

    cfg: TextConfig

    @nn.compact
    def __call__(
        self, carry, cos_bld, sin_bld, valid_bl, cache_k, cache_v, cache_mask_bs, deepstack_nbld, cache_index
    ):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        h, i = carry
        # The fused (inference) layout folds the norms' scales into the qkv / gate_up kernels.
        folded = cfg.fused_projections
        x, inv_rms = layers.pre_norm(h, folded, cfg.rms_eps, dtype, pdtype, "input_norm")
        row = cfg.fused_decode_row(h)  # the residual adds and the post-norm inside `decode_mlp`'s kernels
        attn, kv = Attention(cfg, name="attn")(
            x,
            cos_bld,
            sin_bld,
            valid_bl,
            cache_k,
            cache_v,
            cache_mask_bs,
            inv_rms,
            cache_index,
            h if row else None,
        )
        mlp = MLP(cfg.width, cfg.mlp_dim, dtype, pdtype, cfg.fused_projections, name="mlp")
        if row:  # attn is already h + o(attention); the MLP's kernels add their own residual
            h = layers.residual_row(mlp(attn, residual_eps=cfg.rms_eps), True)
        else:
            if cfg.fused_decode and h.shape[1] == 1:  # a decode step: the add and the factor in one kernel
                h, inv_rms = residual_norm.residual_rms(h, attn, cfg.rms_eps)
                x = h
            else:
                h = h + attn
                x, inv_rms = layers.pre_norm(h, folded, cfg.rms_eps, dtype, pdtype, "post_norm")
                if folded:  # x is h itself: the row and its norm factor pass the barrier once
                    h, inv_rms = layers.residual_row((h, inv_rms), True)
                    x = h
            h = layers.residual_row(h + mlp(x, inv_rms), folded)
        if deepstack_nbld is not None:
            n = deepstack_nbld.shape[0]
            add = jax.lax.dynamic_index_in_dim(deepstack_nbld, jnp.minimum(i, n - 1), keepdims=False)
            h = h + jnp.where(i < n, add, jnp.zeros_like(add)).astype(h.dtype)
        h = layers.constrain(h, ("activation_batch", "activation_length", "activation_embed"))
        return (h, i + 1), kv


def scanned_layers(
    layer_cls: type[nn.Module],
    cfg: Any,
    num_layers: int,
    remat: str,
    name: str,
    in_axes: Any = nn.broadcast,
    unroll: int = 1,
    scan: bool = True,
) -> nn.Module:
    """`num_layers` copies of a scan-form layer `(carry, *args) -> (carry, y)`.

    With `scan`, parameters are stacked on a leading 'layers' axis under nn.scan (+ remat policy);
    `in_axes` (one per non-carry argument, or one for all) says which arguments are sliced per layer
    (0) and which are broadcast. Without `scan`, each layer has its own parameters (`{name}/{i}`) and
    a Python loop calls them: the inference layout, where a decode step reads each weight in place
    instead of slicing it out of a stack (see `unstack_layers`).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; known: {sorted(REMAT_POLICIES)}")
    if remat != "none":
        # Under nn.scan XLA cannot merge the backward's recomputation with the forward; in a Python
        # loop it would (keeping every intermediate alive: 223 GB for ar1_2b at batch 12), so the loop
        # keeps jax.checkpoint's CSE barrier.
        layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if not scan:
        return LayerLoop(layer_cls, cfg, num_layers, in_axes, name=name)
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=num_layers,
        unroll=unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name=name)


class LayerLoop(nn.Module):
    """Unstacked layers called in a Python loop; the nn.scan stack's call convention, but each output
    leaf is a tuple of the layers' values (per-layer buffers stay separate: no stacking copy)."""

    layer_cls: Any
    cfg: Any
    num_layers: int
    in_axes: Any

    @nn.compact
    def __call__(self, carry, *args):
        axes = self.in_axes if isinstance(self.in_axes, tuple) else (self.in_axes,) * len(args)
        ys = []
        for i in range(self.num_layers):
            layer_args = [_layer_slice(a, i) if ax == 0 else a for a, ax in zip(args, axes, strict=True)]
            carry, y = self.layer_cls(self.cfg, name=str(i))(carry, *layer_args)
            ys.append(y)
        if all(y is None for y in ys):
            return carry, None
        return carry, jax.tree_util.tree_map(lambda *y: y, *ys)


def _layer_slice(x: Any, i: int) -> Any:
    """Layer i of a per-layer argument: the i-th of a tuple of buffers, or row i of stacked arrays."""
    if isinstance(x, tuple):
        return x[i]
    return jax.tree_util.tree_map(lambda a: a[i], x)


def stack_layers(params: Any, num_layers: int) -> Any:
    """`{"0": {leaf: ...}, ...}` (`scan=False`) -> stacked `{leaf: [L, ...]}` (nn.scan's layout)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(params[str(i)] for i in range(num_layers)))


def unstack_layers(params: Any, num_layers: int) -> Any:
    """Stacked (nn.scan) layer parameters `{leaf: [L, ...]}` -> `{"0": {leaf: ...}, ...}` for `scan=False`."""
    return {str(i): jax.tree_util.tree_map(lambda x, i=i: x[i], params) for i in range(num_layers)}


class TextDecoder(nn.Module):
    """Qwen3-VL language model: embed -> scanned decoder layers -> final norm -> LM head."""

    cfg: TextConfig

    def setup(self):
        cfg = self.cfg
        self._dtype = layers.dtype_of(cfg.dtype)
        pdtype = layers.dtype_of(cfg.param_dtype)
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=self._dtype,
            param_dtype=pdtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        bcast = nn.broadcast
        self.layers = scanned_layers(
            DecoderLayer,
            cfg,
            cfg.num_layers,
            cfg.remat,
            "layers",
            in_axes=(bcast, bcast, bcast, 0, 0, bcast, bcast, bcast),
            unroll=cfg.scan_unroll,
            scan=cfg.scan_layers,
        )
        self.norm = layers.RMSNorm(cfg.rms_eps, self._dtype, pdtype)
        if not cfg.tie_embeddings:
            self.lm_head = layers.Dense(
                cfg.vocab_size, ("embed", "vocab"), dtype=self._dtype, param_dtype=pdtype
            )

    def embed_tokens(self, tokens_bl: jax.Array) -> jax.Array:
        return self.embed(tokens_bl)

    def logits(self, hidden_bld: jax.Array, rows: tuple[tuple[int, int], ...] | None = None) -> jax.Array:
        """Float32 logits `[B, L, V]` from final hidden states.

        `rows`: only the vocabulary ranges `[start, stop)` given, concatenated in order (`[B, L, sum of
        the ranges' sizes]`); a decode step that may not emit the other ids need not compute them.

        In the fused (inference) layout one row (a batch-1 decode step or prefill) goes through the tied
        `[V, E]` table as `layers.matvec`: one XLA reduction fusion, 202 us per ar1_2b token on an H100
        (3.08 TB/s) against 211 us for the dot that cuBLAS runs (docs/PERFORMANCE.md, session 12). With
        `rows` it reads only those rows of the table (one reduction per range); otherwise the full
        logits are computed and the ranges sliced out."""
        if self.cfg.tie_embeddings:
            if self.cfg.fused_projections and hidden_bld.shape[0] * hidden_bld.shape[1] == 1:
                table = self.embed.embedding
                if rows is None:
                    return layers.matvec(table, hidden_bld).astype(jnp.float32)
                parts = [layers.matvec(table[start:stop], hidden_bld) for start, stop in rows]
                return jnp.concatenate(parts, axis=-1).astype(jnp.float32)
            full = self.embed.attend(hidden_bld).astype(jnp.float32)
        else:
            full = self.lm_head(hidden_bld).astype(jnp.float32)
        if rows is None:
            return full
        return jnp.concatenate([full[..., start:stop] for start, stop in rows], axis=-1)

    def __call__(
        self,
        embeds_bld: jax.Array,
        positions_3bl: jax.Array,
        valid_bl: jax.Array,
        cache: KVCache | None = None,
        deepstack_nbld: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | tuple[jax.Array, jax.Array]]:
        """Runs the decoder layers on input embeddings.

        Rows are right-padded (`valid_bl` True on a prefix of each row). Without a cache, the per-layer
        (k, v) `[layers, B, K, L, D]` are returned (the action expert reads them). With a cache, L > 1
        is a prefill written at slot `cache.index` (0 for a fresh cache: the tokens attend to each
        other only) and L == 1 is a decode step attending to every valid earlier slot; the updated
        cache is returned. Returns (final-normed hidden `[B, L, D]`, kv or cache).
        """
        cfg = self.cfg
        length = embeds_bld.shape[1]
        cos, sin = layers.mrope_cos_sin(positions_3bl, cfg.head_dim, cfg.rope_theta, cfg.mrope_sections)
        h = layers.constrain(
            embeds_bld.astype(self._dtype), ("activation_batch", "activation_length", "activation_embed")
        )
        decoding = cache is not None and length == 1
        # The fused layout's layers write the cache themselves (decode steps and prefills); otherwise
        # only a decode step reads it and the returned k/v are written here.
        in_place = cache is not None and cfg.fused_decode
        cache_k = cache.k if decoding or in_place else None
        cache_v = cache.v if decoding or in_place else None
        cache_mask = None
        if decoding:
            cache_mask = cache.valid_bs & (jnp.arange(cache.valid_bs.shape[1]) < cache.index)[None]
        (h, _), kv = self.layers(
            (h, jnp.zeros((), jnp.int32)),
            cos,
            sin,
            valid_bl,
            cache_k,
            cache_v,
            cache_mask,
            deepstack_nbld,
            cache.index if decoding or in_place else None,
        )
        h = self.norm(h)
        if cache is None:
            return h, tuple(jnp.stack(x) if isinstance(x, tuple) else x for x in kv)
        if in_place:
            return h, cache.advance(kv[0], kv[1], valid_bl)
        return h, cache.write(kv[0], kv[1], valid_bl)
