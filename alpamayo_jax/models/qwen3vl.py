"""The Qwen3-VL vision-language model: vision tower + text decoder + multimodal assembly.

Image features replace the embeddings of the image tokens; DeepStack features are added to
the hidden states of the first text layers at the same positions. The positions and image slots come
from `qwen3vl_inputs` (host side).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alpamayo_jax.models import vision as vision_lib
from alpamayo_jax.models import vlm as vlm_lib


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    text: vlm_lib.TextConfig
    vision: vision_lib.VisionConfig
    image_token_id: int = 151655
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen3VLConfig:
        text = dict(d["text"])
        text["mrope_sections"] = tuple(text["mrope_sections"])
        vision = dict(d["vision"])
        vision["deepstack_layers"] = tuple(vision["deepstack_layers"])
        rest = {k: v for k, v in d.items() if k not in ("text", "vision")}
        return cls(text=vlm_lib.TextConfig(**text), vision=vision_lib.VisionConfig(**vision), **rest)

    def with_numerics(self, **overrides: Any) -> Qwen3VLConfig:
        """Same shapes, other numerics (dtype, param_dtype, remat, attention_impl, scan_unroll,
        scan_layers) for each tower that has the field."""

        def apply(c):
            names = {f.name for f in dataclasses.fields(c)}
            return dataclasses.replace(c, **{k: v for k, v in overrides.items() if k in names})

        unknown = (
            set(overrides)
            - {f.name for f in dataclasses.fields(self.text)}
            - {f.name for f in dataclasses.fields(self.vision)}
        )
        if unknown:
            raise ValueError(f"unknown numerics {sorted(unknown)}")
        return dataclasses.replace(self, text=apply(self.text), vision=apply(self.vision))


VARIANTS = {
    "tiny": dict(
        text="tiny", vision="tiny", image_token_id=500, vision_start_token_id=501, vision_end_token_id=502
    ),
    "qwen3vl_2b": dict(text="qwen3vl_2b", vision="qwen3vl_2b"),
    "qwen3vl_8b": dict(text="qwen3vl_8b", vision="qwen3vl_8b"),
}


def qwen3vl_config(variant: str, **numerics: Any) -> Qwen3VLConfig:
    """A preset; `numerics` (dtype, param_dtype, remat, attention_impl) apply to both towers."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Qwen3-VL variant {variant!r}; known: {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    ids = {k: val for k, val in v.items() if k.endswith("_id")}
    cfg = Qwen3VLConfig(vlm_lib.text_config(v["text"]), vision_lib.vision_config(v["vision"]), **ids)
    return cfg.with_numerics(**numerics) if numerics else cfg


def scatter_rows(embeds_bld: jax.Array, feats_bfd: jax.Array, slots_bl: jax.Array) -> jax.Array:
    """`embeds` with row `slots[b, l]` of `feats[b]` wherever the slot is >= 0."""
    rows = jnp.maximum(slots_bl, 0)[..., None]
    picked = jnp.take_along_axis(feats_bfd, rows, axis=1)
    return jnp.where((slots_bl >= 0)[..., None], picked.astype(embeds_bld.dtype), embeds_bld)


class Qwen3VL(nn.Module):
    """Qwen3-VL for conditional generation (`logits` over the vocabulary)."""

    cfg: Qwen3VLConfig

    def setup(self):
        self.vision = vision_lib.VisionTower(self.cfg.vision)
        self.text = vlm_lib.TextDecoder(self.cfg.text)

    def embed(
        self, tokens_bl: jax.Array, images: vision_lib.VisionInputs | None, image_slots_bl: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """Token embeddings with image features scattered in, and DeepStack additions `[n, B, L, D]`.

        Images are either packed for the whole batch (`[I, N, ...]`, slots index the flattened
        features of all images: the processor layout) or per sample (`[B, n, N, ...]`, slots index
        that sample's own features, which keeps data-parallel shards independent).
        """
        embeds = self.text.embed_tokens(tokens_bl)
        if images is None:
            return embeds, None
        per_sample = images.patches_inp.ndim == 4
        if per_sample:
            batch, n = images.patches_inp.shape[:2]
            images = jax.tree_util.tree_map(lambda x: x.reshape(batch * n, *x.shape[2:]), images)
        merged_imd, deepstack_nimd = self.vision(images)
        width = merged_imd.shape[-1]
        num_taps = deepstack_nimd.shape[0]
        if per_sample:
            feats = merged_imd.reshape(batch, -1, width)
            taps = deepstack_nimd.reshape(num_taps, batch, -1, width)
        else:
            feats = jnp.broadcast_to(
                merged_imd.reshape(1, -1, width),
                (tokens_bl.shape[0], merged_imd.shape[0] * merged_imd.shape[1], width),
            )
            taps = jnp.broadcast_to(deepstack_nimd.reshape(num_taps, 1, -1, width), (num_taps, *feats.shape))
        is_image = (image_slots_bl >= 0)[..., None]
        rows = jnp.maximum(image_slots_bl, 0)[..., None]
        embeds = scatter_rows(embeds, feats, image_slots_bl)
        picked_taps = jax.vmap(lambda t: jnp.take_along_axis(t, rows, axis=1))(taps)
        deepstack = jnp.where(is_image[None], picked_taps, 0).astype(embeds.dtype)
        return embeds, deepstack

    def embed_features(
        self, tokens_bl: jax.Array, feats_bfd: jax.Array, image_slots_bl: jax.Array
    ) -> jax.Array:
        """Token embeddings with per-sample image features `[B, F, D]` (another tokenizer's output)
        in the image slots (slots index each sample's own rows)."""
        return scatter_rows(self.text.embed_tokens(tokens_bl), feats_bfd, image_slots_bl)

    def __call__(
        self,
        tokens_bl: jax.Array,
        positions_3bl: jax.Array,
        valid_bl: jax.Array,
        images: vision_lib.VisionInputs | None = None,
        image_slots_bl: jax.Array | None = None,
        cache: vlm_lib.KVCache | None = None,
        features_bfd: jax.Array | None = None,
        logits_at_b: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Logits `[B, L, V]` (float32) and the per-layer kv (no cache) or the updated cache.

        `features_bfd`: image-slot features of another tokenizer (the ViT and DeepStack are skipped).
        `logits_at_b`: logits only at position `logits_at_b[b]` of each row, `[B, V]` (a prefill needs
        one row: the LM head over every prompt position would be a 2,993 x 2,048 x 151,936 GEMM).
        """
        if features_bfd is None:
            embeds, deepstack = self.embed(tokens_bl, images, image_slots_bl)
        else:
            embeds, deepstack = self.embed_features(tokens_bl, features_bfd, image_slots_bl), None
        hidden, kv = self.text(embeds, positions_3bl, valid_bl, cache, deepstack)
        if logits_at_b is not None:
            hidden = jnp.take_along_axis(hidden, logits_at_b[:, None, None], axis=1)
            return self.text.logits(hidden)[:, 0], kv
        return self.text.logits(hidden), kv

    def decode_step(
        self,
        tokens_b1: jax.Array,
        positions_b: jax.Array,
        cache: vlm_lib.KVCache,
        valid_b: jax.Array | None = None,
        vocab_rows: tuple[tuple[int, int], ...] | None = None,
    ):
        """One token per sample at its next position; returns (logits `[B, V]`, cache).

        `valid_b` False writes the slot as invalid (a finished sample's filler never becomes context).
        `vocab_rows`: logits of these vocabulary ranges only, concatenated (`TextModel.logits`).
        """
        embeds = self.text.embed_tokens(tokens_b1)
        positions = jnp.broadcast_to(positions_b[None, :, None], (3, *tokens_b1.shape))
        valid = jnp.ones(tokens_b1.shape, bool) if valid_b is None else valid_b[:, None]
        hidden, cache = self.text(embeds, positions, valid, cache, None)
        return self.text.logits(hidden, vocab_rows)[:, -1], cache
