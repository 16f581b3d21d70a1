"""Dataset example -> model sample (per stage) -> `Batch`: small pure NumPy steps used by the loader.

`example_sample` decodes the frames into the vision tokenizer's inputs (uint8 pixel rows for per_image
and Flex by default, see `image_rows`, plus Flex's frame / camera indices; frames and calibration for
the triplane), tokenises history / future / text and lays the sequence out for the stage
(`prompts.stage_sample`);
`batch_samples` pads a list of samples to the smallest length bucket that fits and builds the `Batch`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing

from alpamayo_jax import action_space, trajectory_tokens
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import drive_dataset, patches, prompts
from alpamayo_jax.data.tokenizer import Tokenizer
from alpamayo_jax.models import qwen3vl_inputs, vision_tokens
from alpamayo_jax.models.triplane import Cameras


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sequence_ids(model_cfg) -> batch_lib.SequenceIds:
    vlm = model_cfg.vlm
    return batch_lib.SequenceIds.of(
        vlm.image_token_id, vlm.vision_start_token_id, vlm.vision_end_token_id, model_cfg.tokens
    )


def image_rows(
    jpegs: list[bytes], model_cfg, dtype: np.typing.DTypeLike = np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded frames -> (rows, grid_thw [n, 3]): uint8 pixel rows [P, pixel_dim] that the vision tower
    normalises on the device (`dtype` uint8), else normalised rows [P, patch_dim] of `dtype`."""
    v = model_cfg.vlm.vision
    images = np.stack([drive_dataset.decode_jpeg(b) for b in jpegs])
    if np.dtype(dtype) == np.uint8:
        return patches.image_pixels(images, v.patch_size, v.spatial_merge)
    return patches.image_patches(images, v.patch_size, v.temporal_patch_size, v.spatial_merge, dtype=dtype)


def triplane_views(example: dict, model_cfg, where: str) -> dict:
    """Frames `[T, V, H, W, 3]` (uint8, oldest first) and cameras `[V, ...]` of a calibrated example.

    The stored intrinsics are at the cameras' native resolution; the frames are resized to the model
    resolution, which keeps normalised image coordinates (what the triplane projects to) unchanged.
    """
    if "image_size_wh" not in example:
        raise ValueError(
            f"{where}: no image_size_wh calibration; rebuild the dataset (tools/build_dataset.py)"
        )
    if np.any(np.asarray(example["camera_ids"]) < 0):
        raise ValueError(f"{where}: the triplane tokenizer needs calibrated cameras; this example has none")
    frames = np.stack([drive_dataset.decode_jpeg(b) for b in example["images"]])
    num_frames = int(example["num_frames"])
    hw = tuple(model_cfg.triplane.image_hw)
    if frames.shape[1:3] != hw:
        raise ValueError(f"{where}: frames are {frames.shape[1:3]}, the triplane tokenizer takes {hw}")
    if len(frames) % num_frames:
        raise ValueError(f"{where}: {len(frames)} images do not split into {num_frames} frames per camera")
    frames = frames.reshape(-1, num_frames, *hw, 3).transpose(1, 0, 2, 3, 4)
    f32 = np.float32
    cameras = Cameras(
        fw_poly_bvk=np.asarray(example["fw_poly"], f32),
        bw_poly_bvk=np.asarray(example["bw_poly"], f32),
        principal_point_bv2=np.asarray(example["principal_point"], f32),
        size_bv2=np.asarray(example["image_size_wh"], f32),
        t_rig_cam_bv44=np.asarray(example["t_rig_cam"], f32),
    )
    return dict(frames_btvhw3=np.ascontiguousarray(frames), cameras=cameras)


def vision_sample(example: dict, model_cfg, where: str, patch_dtype: np.typing.DTypeLike) -> dict:
    """The tokenizer's inputs of one example: `image_tokens` per run, and `pixel_values` / `grid_thw`
    (per_image, Flex), `image_runs` and `views` (triplane, Flex: see `batch.collate`)."""
    kind = model_cfg.vision_tokenizer
    num_images, num_frames = len(example["images"]), int(example["num_frames"])
    if kind == "triplane":
        runs = vision_tokens.image_runs(model_cfg, num_images, num_frames, (0, 0))
        return dict(
            image_tokens=list(runs.tokens), image_runs=runs, views=triplane_views(example, model_cfg, where)
        )
    pixel_values, grid = image_rows(list(example["images"]), model_cfg, patch_dtype)
    merge = model_cfg.vlm.vision.spatial_merge
    out = dict(
        image_tokens=[int(h * w) // merge**2 for _, h, w in grid], pixel_values=pixel_values, grid_thw=grid
    )
    if kind == "flex":
        runs = vision_tokens.image_runs(model_cfg, num_images, num_frames, tuple(grid[0, 1:]))
        frame, camera = vision_tokens.camera_major_ids(num_images, num_frames)
        out.update(
            image_tokens=list(runs.tokens),
            image_runs=runs,
            views=dict(image_frame_bn=frame, image_camera_bn=camera),
        )
    return out


def example_sample(
    example: dict,
    stage: int,
    tok: Tokenizer,
    model_cfg,
    rng: np.random.Generator,
    patch_dtype: np.typing.DTypeLike = np.uint8,
) -> dict:
    """One stored example -> a sample: tokens, losses, image rows and trajectory targets.

    Stage 0 picks one of the example's VQA pairs with `rng`; stage 2 uses the trajectory-only layout
    (stage 1) for keyframes without a reasoning trace.
    """
    layout = model_cfg.tokens
    where = f"clip {_text(example['clip_id'])} t0 {int(example['t0_us'])}"
    vision = vision_sample(example, model_cfg, where, patch_dtype)
    image_tokens = vision.pop("image_tokens")
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
    return (
        sample
        | vision
        | dict(
            controls=controls,
            history_xyz=history,
            future_xy=future[:, :2],
            future_yaw=np.asarray(example["future_yaw"], np.float32),
            has_trajectory=np.bool_(stage in (1, 2)),
        )
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
    shapes = {
        (s["grid_thw"].tobytes() if "grid_thw" in s else s["views"]["frames_btvhw3"].shape) for s in samples
    }
    if len(shapes) > 1:
        raise ValueError(f"samples of one batch must have the same images; got {len(shapes)} layouts")
    length = bucket_length(max(len(s["tokens"]) for s in samples), buckets)
    images = None
    if "pixel_values" in samples[0]:
        images = [
            (qwen3vl_inputs.vision_inputs(s["pixel_values"], s["grid_thw"], vcfg), s["grid_thw"])
            for s in samples
        ]
    trajs = [
        {k: s[k] for k in ("controls", "history_xyz", "future_xy", "future_yaw", "has_trajectory")}
        for s in samples
    ]
    per_image = model_cfg.vision_tokenizer == "per_image"
    return batch_lib.collate(
        samples,
        images,
        trajs,
        length,
        model_cfg.vlm.image_token_id,
        vcfg.spatial_merge,
        runs=None if per_image else [s["image_runs"] for s in samples],
        views=None if per_image else [s["views"] for s in samples],
    )
