"""Qwen3-VL vision tower: patch embedding, ViT blocks with 2D rotary, 2x2 merger, DeepStack taps.

Images arrive padded to a common patch count, `[I, N, ...]`, with each image's valid patch count:
either as the loader ships them, uint8 pixel rows `[I, N, 3 * p * p]` that the tower normalises and
repeats over the temporal patch on the device (an eighth of the bytes of float32 rows), or as float
rows `[I, N, patch_dim]` already in the reference's form (the HF processor's `pixel_values`), used as
they are. Attention never crosses images (per-image batch + key lengths: the block-diagonal
attention of the reference without materialising it). Patches are in the reference's merge-block
order, so every 4 consecutive patches form one merged LM token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax.models import layers
from alpamayo_jax.models.vlm import scanned_layers

# The Qwen3-VL image processor's normalisation of [0, 1] pixels (preprocessor_config.json).
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Shape and numerics of the vision tower (plain data)."""

    depth: int
    width: int
    mlp_dim: int
    num_heads: int
    out_width: int
    deepstack_layers: tuple[int, ...]
    patch_size: int = 16
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge: int = 2
    num_position_embeddings: int = 2304
    rope_theta: float = 10000.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None
    scan_unroll: int = 1
    # False: one parameter set per block (`blocks/{i}`, see `vlm.unstack_layers`) in a Python loop, and
    # the DeepStack taps are the tap blocks' outputs (no per-block write into a tap buffer). Each saved
    # activation is its own buffer: no scan output stacks to zero-fill, write into and slice again.
    scan_layers: bool = True
    # The blocks' LayerNorm affines applied to the next kernels (`LayerNorm(affine_to_next=True)`): the
    # same function; in training the backward pass loses the affine's column reductions over all
    # patches (measured: ar1_2b train step at batch 12, about +0.7 MFU points on an H100). The inference
    # layout turns it off (forward only: the affine fuses into the norm's kernel there, and the
    # per-call kernel product would be extra work).
    fold_norms: bool = True

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def pixel_dim(self) -> int:
        """Width of a uint8 pixel row: one frame of a patch, before the temporal repeat."""
        return self.in_channels * self.patch_size**2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, width=32, mlp_dim=64, num_heads=2, out_width=64, deepstack_layers=(0, 1)),
    # Qwen3-VL-2B-Instruct config.json (vision_config).
    "qwen3vl_2b": dict(
        depth=24, width=1024, mlp_dim=4096, num_heads=16, out_width=2048, deepstack_layers=(5, 11, 17)
    ),
    # Qwen3-VL-8B-Instruct config.json (vision_config).
    "qwen3vl_8b": dict(
        depth=27, width=1152, mlp_dim=4304, num_heads=16, out_width=4096, deepstack_layers=(8, 16, 24)
    ),
}


def vision_config(variant: str, **overrides: Any) -> VisionConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown vision variant {variant!r}; known: {sorted(VARIANTS)}")
    return VisionConfig(**{**VARIANTS[variant], **overrides})


@flax.struct.dataclass
class VisionInputs:
    """Images for the tower, padded to N patches each (see `qwen3vl_inputs.vision_inputs`).

    patches_inp uint8 `[I, N, pixel_dim]` pixel rows or float `[I, N, patch_dim]` normalised rows
    (`patch_rows`; rows beyond an image's length are padding); lengths_i `[I]` valid patches per
    image; pos_index_in4 / pos_weight_in4 `[I, N, 4]` bilinear taps into the learned position table;
    rope_pos_in2 `[I, N, 2]` the (row, col) of each patch for the 2D rotary.
    """

    patches_inp: jax.Array
    lengths_i: jax.Array
    pos_index_in4: jax.Array
    pos_weight_in4: jax.Array
    rope_pos_in2: jax.Array


def pixel_scale_shift(
    mean: tuple[float, ...] = PIXEL_MEAN, std: tuple[float, ...] = PIXEL_STD
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale `[C]`, shift `[C]`) with `uint8 * scale + shift == (uint8 / 255 - mean) / std`; the
    host (`data.patches`) and the tower use the same constants, so both give the same float32 rows."""
    std32 = np.asarray(std, np.float32)
    return 1.0 / (255.0 * std32), -np.asarray(mean, np.float32) / std32


def patch_rows(patches_inp: jax.Array, lengths_i: jax.Array, cfg: VisionConfig) -> jax.Array:
    """Vision input rows -> float rows `[I, N, patch_dim]` for the patch embedding.

    uint8 pixel rows `[I, N, C * p * p]` (channel, patch row, patch col) are normalised and repeated
    over the temporal patch to the reference's (channel, time, patch row, patch col) layout, padding
    rows set to zero; float rows `[I, N, patch_dim]` are returned unchanged.
    """
    width = patches_inp.shape[-1]
    if patches_inp.dtype != jnp.uint8:
        if width != cfg.patch_dim:
            raise ValueError(f"float patch rows must be [..., {cfg.patch_dim}], got {patches_inp.shape}")
        return patches_inp
    if width != cfg.pixel_dim:
        raise ValueError(f"uint8 pixel rows must be [..., {cfg.pixel_dim}], got {patches_inp.shape}")
    scale, shift = pixel_scale_shift()
    lead, pp = patches_inp.shape[:-1], cfg.patch_size**2
    x = patches_inp.reshape(*lead, cfg.in_channels, 1, pp).astype(jnp.float32)
    x = x * jnp.asarray(scale)[:, None, None] + jnp.asarray(shift)[:, None, None]
    x = jnp.broadcast_to(x, (*lead, cfg.in_channels, cfg.temporal_patch_size, pp)).reshape(*lead, -1)
    valid_in = jnp.arange(lead[-1]) < lengths_i[..., None]
    return jnp.where(valid_in[..., None], x, 0.0)


def vision_cos_sin(rope_pos_in2: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """2D rotary angles `[I, N, head_dim]`: a quarter of the frequencies per axis, row then column."""
    quarter = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, quarter, 2, dtype=np.float64) / quarter))
    freqs = rope_pos_in2.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # [I, N, 2, F]
    angles = jnp.concatenate([freqs[..., 0, :], freqs[..., 1, :]], axis=-1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


class VisionBlock(nn.Module):
    """Pre-norm ViT block in scan form; carry = (x, layer index, DeepStack buffer).

    Scanned, the block writes its output into the buffer's slot `deepstack_slot[i]` (the last slot
    collects the blocks that are not taps) and returns no output. In the per-block loop the buffer is
    None and the block returns its output (the tower keeps the taps' and drops the rest).
    """

    cfg: VisionConfig

    @nn.compact
    def __call__(self, carry, cos, sin, lengths_i, deepstack_slot):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        x, i, taps = carry
        h, affine = self._norm(x, "norm1")
        q, k, v = layers.Dense(
            (3, cfg.num_heads, cfg.head_dim),
            ("embed", "qkv", "q_heads", "head_dim"),
            name="qkv",
            split_first_output=True,
            **dense,
        )(h, affine)
        q = layers.apply_rotary(q, cos, sin)
        k = layers.apply_rotary(k, cos, sin)
        attn = layers.attention(q, k, v, None, implementation=cfg.attention_impl, kv_lengths_b=lengths_i)
        attn = attn.reshape(*attn.shape[:2], cfg.width)
        x = x + layers.Dense(cfg.width, ("q_heads_head_dim", "embed"), name="proj", **dense)(attn)
        h, affine = self._norm(x, "norm2")
        h = layers.Dense(cfg.mlp_dim, ("embed", "mlp"), name="fc1", **dense)(h, affine)
        h = layers.gelu_tanh(h)
        x = x + layers.Dense(cfg.width, ("mlp", "embed"), name="fc2", **dense)(h)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        if taps is None:
            return (x, i + 1, None), x
        taps = jax.lax.dynamic_update_index_in_dim(taps, x.astype(taps.dtype), deepstack_slot[i], 0)
        return (x, i + 1, taps), None

    def _norm(self, x, name):
        """With `cfg.fold_norms`: (x_hat, the affine for the next Dense); else (LayerNorm(x), None)."""
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        norm = layers.LayerNorm(1e-6, dtype, pdtype, name=name, affine_to_next=cfg.fold_norms)(x)
        return norm if cfg.fold_norms else (norm, None)


class PatchMerger(nn.Module):
    """2x2 spatial merge: 4 consecutive patches -> one token of the LM width.

    `postshuffle_norm` (the DeepStack mergers) normalises the concatenated 4*width vector instead
    of each patch.
    """

    cfg: VisionConfig
    postshuffle_norm: bool = False

    @nn.compact
    def __call__(self, x_ind):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        unit = cfg.spatial_merge**2
        merged_width = cfg.width * unit
        if not self.postshuffle_norm:
            x_ind = layers.LayerNorm(1e-6, dtype, pdtype, name="norm")(x_ind)
        x = x_ind.reshape(x_ind.shape[0], x_ind.shape[1] // unit, merged_width)
        if self.postshuffle_norm:
            x = layers.LayerNorm(1e-6, dtype, pdtype, name="norm")(x)
        x = layers.Dense(merged_width, ("merged", "merged_out"), name="fc1", **dense)(x)
        x = nn.gelu(x, approximate=False)
        return layers.Dense(cfg.out_width, ("merged_out", "embed"), name="fc2", **dense)(x)


class VisionTower(nn.Module):
    """Images -> merged LM-width tokens `[I, N/4, D]` and DeepStack features `[n, I, N/4, D]`."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, inputs: VisionInputs) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        x = layers.Dense(
            cfg.width, ("patch", "embed"), use_bias=True, dtype=dtype, param_dtype=pdtype, name="patch_embed"
        )(patch_rows(inputs.patches_inp, inputs.lengths_i, cfg))
        pos_table = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vit_positions", "embed")),
            (cfg.num_position_embeddings, cfg.width),
            pdtype,
        )
        pos = jnp.einsum(
            "inkd,ink->ind",
            pos_table.astype(jnp.float32)[inputs.pos_index_in4],
            inputs.pos_weight_in4.astype(jnp.float32),
        )
        x = (x + pos.astype(dtype)).astype(dtype)
        cos, sin = vision_cos_sin(inputs.rope_pos_in2, cfg.head_dim, cfg.rope_theta)
        num_taps = len(cfg.deepstack_layers)
        slot_of_layer = np.full(cfg.depth, num_taps, np.int32)
        for slot, layer in enumerate(cfg.deepstack_layers):
            slot_of_layer[layer] = slot
        blocks = scanned_layers(
            VisionBlock, cfg, cfg.depth, cfg.remat, "blocks", unroll=cfg.scan_unroll, scan=cfg.scan_layers
        )
        counter = jnp.zeros((), jnp.int32)
        if cfg.scan_layers:
            taps = jnp.zeros((num_taps + 1, *x.shape), dtype)
            slots = jnp.asarray(slot_of_layer)
            (x, _, taps), _ = blocks((x, counter, taps), cos, sin, inputs.lengths_i, slots)
        else:
            (x, _, _), outputs = blocks((x, counter, None), cos, sin, inputs.lengths_i, None)
            taps = [outputs[layer] for layer in cfg.deepstack_layers]
        merged = PatchMerger(cfg, name="merger")(x)
        deepstack = jnp.stack(
            [
                PatchMerger(cfg, postshuffle_norm=True, name=f"deepstack_merger_{j}")(taps[j])
                for j in range(num_taps)
            ]
        )
        return merged, deepstack
