"""Flow-matching action expert: a transformer that reads the VLM's per-layer KV cache.

Same layer count, KV heads and head_dim as the backbone, so expert layer i attends to
[VLM layer-i keys/values of the prefix ; its own keys/values]. The 64 action tokens see each other
bidirectionally and see the whole valid prefix; VLM tokens never see expert tokens (the expert runs
after the VLM). With `knowledge_insulation` the prefix K/V pass through `jax.lax.stop_gradient`, so
the flow loss trains only expert weights (SPEC 1.4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alpamayo_jax.models import decode_attention, layers, residual_norm
from alpamayo_jax.models.flow_matching import ActionInputProjection, VelocityHead
from alpamayo_jax.models.vlm import MLP, TextConfig, scanned_layers

# Cache slots per step of the fused prefix kernel; KV caches are allocated in multiples of it
# (`generation.CACHE_ALIGN`).
PREFIX_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """Expert shape; `num_layers`, `num_kv_heads`, `head_dim` and the RoPE must match the backbone."""

    width: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    num_waypoints: int = 64
    input_hidden: int = 512
    fourier_freqs: tuple[float, float] = (1.0, 100.0)  # min, max frequency of the input features
    rms_eps: float = 1e-6
    rope_theta: float = 5e6
    mrope_sections: tuple[int, int, int] = (24, 20, 20)
    knowledge_insulation: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None
    scan_unroll: int = 1
    scan_layers: bool = True
    fused_projections: bool = False  # the inference layout, as `vlm.TextConfig.fused_projections`
    # "pallas": one `decode_attention.fused_prefix_attention` kernel per layer when the prefix is a KV
    # cache (inference: its length is a multiple of PREFIX_BLOCK; the training forward's per-layer kv
    # take the XLA path), per-layer fused layout only, no gradient; "xla": `layers.two_part_attention`.
    prefix_attention: str = "xla"

    def __post_init__(self):
        if self.prefix_attention not in ("xla", "pallas"):
            raise ValueError(f"ExpertConfig.prefix_attention {self.prefix_attention!r}; known: xla, pallas")
        if self.prefix_attention == "pallas" and (self.scan_layers or not self.fused_projections):
            raise ValueError(
                "ExpertConfig.prefix_attention 'pallas' needs the per-layer fused layout "
                "(scan_layers=False, fused_projections=True)"
            )


def expert_config(text: TextConfig, width: int, mlp_dim: int, num_heads: int, **kw: Any) -> ExpertConfig:
    """An expert matched to a backbone: layers, KV heads, head_dim and RoPE are the backbone's."""
    return ExpertConfig(
        width=width,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        num_kv_heads=text.num_kv_heads,
        head_dim=text.head_dim,
        num_layers=text.num_layers,
        rms_eps=text.rms_eps,
        rope_theta=text.rope_theta,
        mrope_sections=text.mrope_sections,
        dtype=text.dtype,
        param_dtype=text.param_dtype,
        remat=text.remat,
        scan_unroll=text.scan_unroll,
        scan_layers=text.scan_layers,
        fused_projections=text.fused_projections,
        **kw,
    )


class ExpertLayer(nn.Module):
    """One expert layer in scan form; per-layer inputs: the VLM prefix keys/values of that layer."""

    cfg: ExpertConfig

    @nn.compact
    def __call__(self, carry, prefix_k_bkpd, prefix_v_bkpd, cos_bad, sin_bad, prefix_valid_bp):
        """carry = (h, layer index, h's folded input-norm factor or None: computed here)."""
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype)
        h, i, inv_rms = carry
        # The fused (inference) layout folds the norms' scales into the qkv / gate_up kernels.
        folded = cfg.fused_projections
        fused = cfg.prefix_attention == "pallas" and prefix_k_bkpd.shape[-2] % PREFIX_BLOCK == 0
        # With the fused kernels each residual add and the next norm's factor are one kernel
        # (`residual_norm`); the factor of the layer's output travels to the next layer in the carry.
        add_norm = fused and residual_norm.supported(cfg.width)

        def mlp_half(h, delta):  # the attention residual, then the MLP
            if add_norm:
                h, inv_rms = residual_norm.residual_rms(h, delta, cfg.rms_eps)
                x = h
            else:
                h = h + delta
                x, inv_rms = layers.pre_norm(h, folded, cfg.rms_eps, dtype, pdtype, "post_norm")
            mlp = MLP(cfg.width, cfg.mlp_dim, dtype, pdtype, cfg.fused_projections, name="mlp")(x, inv_rms)
            if add_norm:
                h, inv_rms = residual_norm.residual_rms(h, mlp, cfg.rms_eps)
                return (h, i + 1, inv_rms), None
            return (h + mlp, i + 1, None), None

        if inv_rms is None:
            x, inv_rms = layers.pre_norm(h, folded, cfg.rms_eps, dtype, pdtype, "input_norm")
        else:
            x = h
        if fused:
            out = decode_attention.fused_prefix_attention(
                layers.fused_qkv(x, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, **dense),
                inv_rms,
                layers.RMSNormScale(pdtype, name="q_norm")(cfg.head_dim),
                layers.RMSNormScale(pdtype, name="k_norm")(cfg.head_dim),
                cos_bad,
                sin_bad,
                prefix_k_bkpd,
                prefix_v_bkpd,
                prefix_valid_bp,
                eps=cfg.rms_eps,
                block_s=PREFIX_BLOCK,
            )
            return mlp_half(h, layers.out_projection(out, cfg.width, True, **dense))
        q, k, v = layers.qkv_projection(
            x, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.fused_projections, **dense
        )
        q, k, v = (layers.scale_rows(t, inv_rms) for t in (q, k, v))
        q = layers.apply_rotary(
            layers.RMSNorm(cfg.rms_eps, dtype, pdtype, name="q_norm")(q), cos_bad, sin_bad
        )
        k = layers.apply_rotary(
            layers.RMSNorm(cfg.rms_eps, dtype, pdtype, name="k_norm")(k), cos_bad, sin_bad
        )
        if cfg.knowledge_insulation:
            prefix_k_bkpd = jax.lax.stop_gradient(prefix_k_bkpd)
            prefix_v_bkpd = jax.lax.stop_gradient(prefix_v_bkpd)
        out = layers.two_part_attention(
            q, prefix_k_bkpd, prefix_v_bkpd, prefix_valid_bp, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        )
        return mlp_half(h, layers.out_projection(out, cfg.width, cfg.fused_projections, **dense))


class ActionExpert(nn.Module):
    """Noisy controls `[B, A, 2]` at flow time `[B]` + VLM prefix KV -> velocity `[B, A, 2]` (float32)."""

    cfg: ExpertConfig

    @nn.compact
    def __call__(
        self,
        x_ba2: jax.Array,
        t_b: jax.Array,
        prefix_k: jax.Array,
        prefix_v: jax.Array,
        prefix_valid_bp: jax.Array,
        first_position_b: jax.Array,
    ) -> jax.Array:
        """`prefix_k/v` `[layers, B, K, P, D]` (a KV cache or the training forward's per-layer kv);
        `prefix_valid_bp` marks the prefix slots the actions may see; action token j sits at position
        `first_position_b + j` on all three RoPE streams (positions continue after the prefix)."""
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        batch, num_actions, _ = x_ba2.shape
        h = ActionInputProjection(
            cfg.width,
            hidden=cfg.input_hidden,
            min_freq=cfg.fourier_freqs[0],
            max_freq=cfg.fourier_freqs[1],
            dtype=dtype,
            param_dtype=pdtype,
            name="action_in",
        )(x_ba2, t_b)
        pos = first_position_b[:, None] + jnp.arange(num_actions)[None, :]
        cos, sin = layers.mrope_cos_sin(
            jnp.broadcast_to(pos[None], (3, batch, num_actions)),
            cfg.head_dim,
            cfg.rope_theta,
            cfg.mrope_sections,
        )
        stack = scanned_layers(
            ExpertLayer,
            cfg,
            cfg.num_layers,
            cfg.remat,
            "layers",
            in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast),
            unroll=cfg.scan_unroll,
            scan=cfg.scan_layers,
        )
        (h, _, _), _ = stack(
            (h, jnp.zeros((), jnp.int32), None), prefix_k, prefix_v, cos, sin, prefix_valid_bp
        )
        h = layers.RMSNorm(cfg.rms_eps, dtype, pdtype, name="norm")(h)
        return VelocityHead(dtype=dtype, param_dtype=pdtype, name="velocity")(h)
