"""Dataset example -> model sample (per stage) -> `Batch`: small pure NumPy steps used by the loader.

`example_sample` decodes the frames into patch rows, tokenises history / future / text and lays the
sequence out for the stage (`prompts.stage_sample`); `batch_samples` pads a list of samples to the
smallest length bucket that fits and builds the `Batch`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing

from alpamayo_jax import action_space, trajectory_tokens
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import drive_dataset, patches, prompts
from alpamayo_jax.data.tokenizer import Tokenizer
from alpamayo_jax.models import qwen3vl_inputs


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sequence_ids(model_cfg) -> batch_lib.SequenceIds:
    vlm = model_cfg.vlm
    return batch_lib.SequenceIds.of(
        vlm.image_token_id, vlm.vision_start_token_id, vlm.vision_end_token_id, model_cfg.tokens
    )


def image_rows(
    jpegs: list[bytes], model_cfg, dtype: np.typing.DTypeLike = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded frames -> (pixel_values [P, patch_dim] of `dtype`, grid_thw [n, 3])."""
    v = model_cfg.vlm.vision
    images = np.stack([drive_dataset.decode_jpeg(b) for b in jpegs])
    return patches.image_patches(images, v.patch_size, v.temporal_patch_size, v.spatial_merge, dtype=dtype)


def example_sample(
    example: dict,
    stage: int,
    tok: Tokenizer,
    model_cfg,
    rng: np.random.Generator,
    patch_dtype: np.typing.DTypeLike = np.float32,
) -> dict:
    """One stored example -> a sample: tokens, losses, image rows and trajectory targets.

    Stage 0 picks one of the example's VQA pairs with `rng`; stage 2 uses the trajectory-only layout
    (stage 1) for keyframes without a reasoning trace.
    """
    layout = model_cfg.tokens
    where = f"clip {_text(example['clip_id'])} t0 {int(example['t0_us'])}"
    pixel_values, grid = image_rows(list(example["images"]), model_cfg, patch_dtype)
    merge = model_cfg.vlm.vision.spatial_merge
    image_tokens = [int(h * w) // merge**2 for _, h, w in grid]
    history = np.asarray(example["history_xyz"], np.float32)
    # Stored with SPEC statistics; the model bins and generates them with its own `control_stats`.
    controls = np.asarray(
        action_space.renormalize_controls(
            example["controls"], action_space.SPEC_STATS, model_cfg.control_stats
        )
    )
    reasoning = _text(example["reasoning"])
    kw = {}
    if stage == 0:
        questions = list(example["vqa_questions"])
        if not questions:
            raise ValueError(f"{where}: stage 0 needs VQA pairs, the example has none")
        k = int(rng.integers(len(questions)))
        kw = dict(question=_text(questions[k]), answer=_text(example["vqa_answers"][k]))
    else:
        kw = dict(
            history_ids=trajectory_tokens.encode_history(history, layout),
            future_ids=trajectory_tokens.encode_future(controls, layout),
        )
        if stage == 2 and not reasoning:
            stage = 1
        kw["reasoning"] = reasoning if stage == 2 else None
    sample = prompts.stage_sample(stage, tok, sequence_ids(model_cfg), image_tokens, **kw)
    future = np.asarray(example["future_xyz"], np.float32)
    return sample | dict(
        pixel_values=pixel_values,
        grid_thw=grid,
        controls=controls,
        history_xyz=history,
        future_xy=future[:, :2],
        future_yaw=np.asarray(example["future_yaw"], np.float32),
        has_trajectory=np.bool_(stage in (1, 2)),
    )


def bucket_length(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n."""
    fits = [b for b in sorted(buckets) if b >= n]
    if not fits:
        raise ValueError(f"a sample of {n} tokens is longer than the largest length bucket {max(buckets)}")
    return fits[0]


def batch_samples(samples: list[dict], model_cfg, buckets: tuple[int, ...]) -> batch_lib.Batch:
    """Samples (same image count and sizes) -> a right-padded `Batch` at the bucket length."""
    vcfg = model_cfg.vlm.vision
    grids = {s["grid_thw"].tobytes() for s in samples}
    if len(grids) > 1:
        shapes = [s["grid_thw"].tolist() for s in samples]
        raise ValueError(f"samples of one batch must have the same images; got grids {shapes}")
    length = bucket_length(max(len(s["tokens"]) for s in samples), buckets)
    images = [
        (qwen3vl_inputs.vision_inputs(s["pixel_values"], s["grid_thw"], vcfg), s["grid_thw"]) for s in samples
    ]
    trajs = [
        {k: s[k] for k in ("controls", "history_xyz", "future_xy", "future_yaw", "has_trajectory")}
        for s in samples
    ]
    return batch_lib.collate(samples, images, trajs, length, model_cfg.vlm.image_token_id, vcfg.spatial_merge)
