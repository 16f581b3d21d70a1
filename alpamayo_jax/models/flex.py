"""Flex multi-camera tokenizer (2512.10947): K learnable scene tokens summarise all images.

The image tokens of every camera and timestep (from any per-image vision encoder, `[B, T, V, N, Din]`)
get a camera and a timestep embedding; K learned scene tokens are prepended and a small transformer
with full self-attention mixes everything; only the K scene tokens, projected to the LLM width, go on
to the backbone. K = tokens_per_image x cameras x timesteps (50, 32, 16 or 8 per image in AR1), so
the LLM sees a fixed token budget whatever the image resolution. No camera poses are needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alpamayo_jax.models import layers
from alpamayo_jax.models.encoder import Encoder, EncoderConfig

TOKENS_PER_IMAGE_OPTIONS = (50, 32, 16, 8)


@dataclasses.dataclass(frozen=True)
class FlexConfig:
    """Shape and numerics of the Flex tokenizer (plain data)."""

    in_width: int  # width of the incoming image tokens
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    out_width: int  # LLM width
    num_cameras: int
    num_frames: int
    tokens_per_image: int = 16
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None

    @property
    def num_scene_tokens(self) -> int:
        return self.tokens_per_image * self.num_cameras * self.num_frames

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(
            self.width,
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.dtype,
            self.param_dtype,
            self.remat,
            self.attention_impl,
        )


VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        in_width=24, width=32, depth=2, num_heads=2, mlp_dim=64, out_width=48, num_cameras=2, num_frames=2
    ),
    # 8 layers at ViT-B width (about 61M parameters, as the 61.6M of AR1's Flex) over Qwen3-VL-8B
    # vision features (width 1152) for 4 cameras x 4 frames, into the 8B LLM width.
    "default": dict(
        in_width=1152,
        width=768,
        depth=8,
        num_heads=12,
        mlp_dim=3072,
        out_width=4096,
        num_cameras=4,
        num_frames=4,
    ),
}


def flex_config(variant: str, **overrides: Any) -> FlexConfig:
    """A preset from VARIANTS with overrides (e.g. tokens_per_image=8)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown flex variant {variant!r}; known: {sorted(VARIANTS)}")
    cfg = FlexConfig(**{**VARIANTS[variant], **overrides})
    if cfg.tokens_per_image <= 0:
        raise ValueError(f"flex tokens_per_image must be positive, got {cfg.tokens_per_image}")
    return cfg


class FlexTokenizer(nn.Module):
    """Image tokens `[B, T, V, N, Din]` -> scene tokens `[B, K, out_width]`, K = tokens/image x T x V."""

    cfg: FlexConfig

    @nn.compact
    def __call__(self, tokens_btvnd: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, t, v, n, d_in = tokens_btvnd.shape
        if (t, v, d_in) != (cfg.num_frames, cfg.num_cameras, cfg.in_width):
            raise ValueError(
                f"flex expects image tokens [B, T={cfg.num_frames}, V={cfg.num_cameras}, N, "
                f"{cfg.in_width}], got {tokens_btvnd.shape}"
            )
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        init = nn.initializers.normal(0.02)

        def table(name: str, rows: int, axis: str) -> jax.Array:
            param = self.param(
                name, nn.with_logical_partitioning(init, (axis, "embed")), (rows, cfg.width), pdtype
            )
            return param.astype(dtype)

        x = layers.Dense(cfg.width, ("embed_in", "embed"), name="in_proj", **dense)(tokens_btvnd)
        x = x + table("frame_embed", t, "frames")[None, :, None, None]
        x = x + table("camera_embed", v, "cameras")[None, None, :, None]
        scene = table("scene_tokens", cfg.num_scene_tokens, "scene_tokens")
        k = cfg.num_scene_tokens
        x = jnp.concatenate(
            [jnp.broadcast_to(scene[None], (b, k, cfg.width)), x.reshape(b, t * v * n, cfg.width)], 1
        )
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        x = Encoder(cfg.encoder(), name="encoder")(x)[:, :k]
        return layers.Dense(cfg.out_width, ("embed", "embed_out"), name="out_proj", **dense)(x)
