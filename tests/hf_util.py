"""Random transformers Qwen3-VL models and processor-like inputs for parity tests (no download)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration

from alpamayo_jax.interop.hf_qwen3vl import hf_config_dict
from alpamayo_jax.models.qwen3vl import Qwen3VLConfig


def random_hf_model(cfg: Qwen3VLConfig, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """A float32 HF model of `cfg` with weights large enough that logits are well separated."""
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(HFConfig(**hf_config_dict(cfg))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) * (1.5 / fan_in**0.5))
    return model


def image_prompt(
    cfg: Qwen3VLConfig,
    grids: list[list[tuple[int, int, int]]],
    texts: list[list[int]],
    rng: np.random.Generator,
    pad_left: bool = True,
) -> dict[str, np.ndarray]:
    """Processor-like arrays: per sample, images (each wrapped in vision start/end) then text ids.

    Returns input_ids, attention_mask (padding on the left by default), pixel_values, image_grid_thw.
    """
    merge = cfg.vision.spatial_merge
    rows, pixels, all_grids = [], [], []
    for sample_grids, text in zip(grids, texts, strict=True):
        ids = []
        for t, h, w in sample_grids:
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // merge**2)
            ids += [cfg.vision_end_token_id]
            pixels.append(rng.standard_normal((t * h * w, cfg.vision.patch_dim)).astype(np.float32))
            all_grids.append((t, h, w))
        rows.append(ids + list(text))
    length = max(len(r) for r in rows)
    input_ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for b, r in enumerate(rows):
        sl = slice(length - len(r), length) if pad_left else slice(0, len(r))
        input_ids[b, sl] = r
        mask[b, sl] = 1
    out = dict(input_ids=input_ids, attention_mask=mask)
    if pixels:
        out["pixel_values"] = np.concatenate(pixels)
        out["image_grid_thw"] = np.asarray(all_grids, np.int64)
    return out


def hf_logits(model, arrays: dict[str, np.ndarray], image_token_id: int) -> np.ndarray:
    kwargs = {k: torch.from_numpy(v) for k, v in arrays.items()}
    kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == image_token_id).long()
    with torch.no_grad():
        return model(**kwargs).logits.numpy()
