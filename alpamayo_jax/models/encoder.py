"""Plain pre-norm transformer encoder and a small ViT, shared by the multi-camera tokenizers.

The triplane tokenizer's per-camera image backbone (DINOv2-S-like at full size) and the Flex scene
transformer are both stacks of the same block: LayerNorm, full (bidirectional) multi-head
self-attention, LayerNorm, GELU MLP, under `nn.scan` with a remat policy.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from alpamayo_jax.models import layers
from alpamayo_jax.models.vlm import scanned_layers


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and numerics of a transformer encoder (plain data)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


class EncoderBlock(nn.Module):
    """Pre-norm block with full self-attention, in scan form: `(x [B, L, D], None) -> (x, None)`."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_bld: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        h = layers.LayerNorm(1e-6, dtype, pdtype, name="norm1")(x_bld)
        qkv = layers.Dense(
            (3, cfg.num_heads, cfg.head_dim), ("embed", "qkv", "q_heads", "head_dim"), name="qkv", **dense
        )(h)
        attn = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=cfg.attention_impl)
        attn = attn.reshape(*attn.shape[:2], cfg.width)
        x = x_bld + layers.Dense(cfg.width, ("q_heads_head_dim", "embed"), name="proj", **dense)(attn)
        h = layers.LayerNorm(1e-6, dtype, pdtype, name="norm2")(x)
        h = nn.gelu(layers.Dense(cfg.mlp_dim, ("embed", "mlp"), name="fc1", **dense)(h), approximate=True)
        x = x + layers.Dense(cfg.width, ("mlp", "embed"), name="fc2", **dense)(h)
        return layers.constrain(x, ("activation_batch", "activation_length", "activation_embed")), None


class Encoder(nn.Module):
    """`depth` scanned encoder blocks and a final LayerNorm: `[B, L, D] -> [B, L, D]`."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_bld: jax.Array) -> jax.Array:
        cfg = self.cfg
        blocks = scanned_layers(EncoderBlock, cfg, cfg.depth, cfg.remat, "blocks")
        x, _ = blocks(x_bld, None)
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        return layers.LayerNorm(1e-6, dtype, pdtype, name="norm")(x)


class ViT(nn.Module):
    """Images `[I, H, W, 3]` -> feature maps `[I, H/p, W/p, D]` (patch embed, learned positions, encoder).

    The position table is sized for `grid_hw` patches; images of another size raise a clear error.
    """

    cfg: EncoderConfig
    patch_size: int
    grid_hw: tuple[int, int]

    @nn.compact
    def __call__(self, images_ihw3: jax.Array) -> jax.Array:
        cfg, p = self.cfg, self.patch_size
        n, h, w, c = images_ihw3.shape
        if (h // p, w // p) != tuple(self.grid_hw) or h % p or w % p:
            raise ValueError(
                f"ViT expects images of {self.grid_hw[0] * p}x{self.grid_hw[1] * p} pixels "
                f"(patch {p}), got {h}x{w}"
            )
        gh, gw = self.grid_hw
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        patches = images_ihw3.reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, -1)
        x = layers.Dense(
            cfg.width, ("patch", "embed"), use_bias=True, dtype=dtype, param_dtype=pdtype, name="patch_embed"
        )(patches)
        pos = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vit_positions", "embed")),
            (gh * gw, cfg.width),
            pdtype,
        )
        x = (x + pos.astype(dtype)[None]).astype(dtype)
        x = Encoder(cfg, name="encoder")(x)
        return x.reshape(n, gh, gw, cfg.width)
