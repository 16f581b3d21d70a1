"""The batch container: the only contract between the data pipeline and the model.

One sample's token sequence is [images][history][prompt][<|cot_start|> reasoning <|cot_end|>]
[<|traj_future_start|>][future][<|traj_future_end|>] (any part may be empty, e.g. VQA has no
trajectory). `assemble_sample` builds it in NumPy; `collate` right-pads samples into a `Batch`;
`fake` makes a random but well-formed batch for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import numpy as np

from alpamayo_jax import action_space, trajectory_tokens
from alpamayo_jax.data import rig_views
from alpamayo_jax.models import qwen3vl_inputs, vision_tokens
from alpamayo_jax.models.triplane import Cameras
from alpamayo_jax.models.vision import VisionInputs


@flax.struct.dataclass
class Batch:
    """A right-padded batch. Shapes: B batch, L tokens, n images per sample, N patches, A waypoints.

    tokens_bl / valid_bl / positions_3bl: the sequence; images: per-sample `[B, n, N, ...]` vision
    inputs (the loader's patches are uint8 pixel rows `[B, n, N, pixel_dim]`, normalised in the vision
    tower; float rows `[B, n, N, patch_dim]` are used as they are) and image_slots_bl their rows (`-1`
    on text); text_loss_bl / traj_loss_bl: weight of predicting token l (reasoning or answers /
    discrete future tokens); expert_prefix_len_b: slots the
    action expert sees (through <|traj_future_start|>); expert_position_b: position of the first action
    token; controls_ba2: ground-truth (accel, curvature) normalised with the model's `control_stats`;
    has_trajectory_b: the sample has
    a trajectory target; history_xyz_bh3, future_xy_ba2, future_yaw_ba: ego history and future in
    the t0 frame (evaluation).

    Inputs of the other vision tokenizers (`models.vision_tokens`; None when unused): frames_btvhw3
    uint8 camera frames at the triplane's resolution `[B, T, V, H, W, 3]` (T timesteps, oldest first)
    and their `cameras` (calibration `[B, V, ...]`) for the triplane; image_frame_bn / image_camera_bn
    the frame and camera index of each image of `images` for Flex.
    """

    tokens_bl: jax.Array
    valid_bl: jax.Array
    positions_3bl: jax.Array
    images: VisionInputs | None
    image_slots_bl: jax.Array | None
    text_loss_bl: jax.Array
    traj_loss_bl: jax.Array
    expert_prefix_len_b: jax.Array
    expert_position_b: jax.Array
    controls_ba2: jax.Array
    has_trajectory_b: jax.Array
    history_xyz_bh3: jax.Array
    future_xy_ba2: jax.Array
    future_yaw_ba: jax.Array
    frames_btvhw3: jax.Array | None = None
    cameras: Cameras | None = None
    image_frame_bn: jax.Array | None = None
    image_camera_bn: jax.Array | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens_bl.shape[0]


@dataclasses.dataclass(frozen=True)
class SequenceIds:
    """Token ids of the model's special markers, from the backbone config and the token layout."""

    image: int
    vision_start: int
    vision_end: int
    cot_start: int
    cot_end: int
    history_start: int
    history_end: int
    future_start: int
    future_end: int

    @classmethod
    def of(
        cls, image_token_id: int, vision_start: int, vision_end: int, layout: trajectory_tokens.TokenLayout
    ) -> SequenceIds:
        sid = layout.special_id
        return cls(
            image_token_id,
            vision_start,
            vision_end,
            sid("cot_start"),
            sid("cot_end"),
            sid("traj_history_start"),
            sid("traj_history_end"),
            sid("traj_future_start"),
            sid("traj_future_end"),
        )


def assemble_sample(
    ids: SequenceIds,
    image_tokens: list[int],
    history_ids: np.ndarray | None,
    prompt_ids: np.ndarray,
    reasoning_ids: np.ndarray | None,
    future_ids: np.ndarray | None,
    answer_ids: np.ndarray | None = None,
    preamble_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray | int]:
    """One sample's tokens and loss weights.

    image_tokens: merged tokens of each image; history_ids: 48 history tokens or None; reasoning_ids:
    CoC text (None: no reasoning block); future_ids: 128 future tokens (None: no trajectory);
    answer_ids: a VQA answer after the prompt (text loss); preamble_ids: tokens before the images (the
    system turn and the opening of the user turn). Returns tokens, text_loss, traj_loss and
    `expert_prefix_len` (0 without a trajectory).
    """
    tokens: list[int] = []
    text_loss: list[float] = []
    traj_loss: list[float] = []

    def put(seq, text=0.0, traj=0.0):
        seq = [int(x) for x in seq]
        tokens.extend(seq)
        text_loss.extend([text] * len(seq))
        traj_loss.extend([traj] * len(seq))

    if preamble_ids is not None:
        put(preamble_ids)
    for n in image_tokens:
        put([ids.vision_start] + [ids.image] * n + [ids.vision_end])
    if history_ids is not None:
        put([ids.history_start, *history_ids, ids.history_end])
    put(prompt_ids)
    if answer_ids is not None:
        put(answer_ids, text=1.0)
    prefix_len = 0
    if reasoning_ids is not None:
        put([ids.cot_start])
        put([*reasoning_ids, ids.cot_end], text=1.0)
    if future_ids is not None:
        put([ids.future_start], text=1.0 if reasoning_ids is not None else 0.0)
        prefix_len = len(tokens)
        put([*future_ids, ids.future_end], traj=1.0)
    return dict(
        tokens=np.asarray(tokens, np.int32),
        text_loss=np.asarray(text_loss, np.float32),
        traj_loss=np.asarray(traj_loss, np.float32),
        expert_prefix_len=prefix_len,
    )


def collate(
    samples: list[dict[str, np.ndarray | int]],
    images: list[tuple[VisionInputs, np.ndarray]] | None,
    trajectories: list[dict[str, np.ndarray]],
    length: int,
    image_token_id: int,
    spatial_merge: int,
    runs: list[vision_tokens.ImageRuns] | None = None,
    views: list[dict] | None = None,
) -> Batch:
    """Right-pads `assemble_sample` outputs to `length` and stacks them with their images.

    images: per sample, a VisionInputs over its own images and their `grid_thw` (same image count and
    padded patch count for all samples); trajectories: per sample `controls` [A, 2] (normalised),
    `history_xyz` [H, 3], `future_xy` [A, 2], `future_yaw` [A], `has_trajectory` (bool).
    runs: per sample, the image-token layout of a triplane / flex tokenizer (`vision_tokens.image_runs`):
    its M-RoPE grids replace the images' and image token k reads the tokenizer's feature row k.
    views: per sample, that tokenizer's inputs by Batch field (frames_btvhw3, cameras, image_frame_bn,
    image_camera_bn) without the batch axis.
    """
    b = len(samples)
    tokens = np.zeros((b, length), np.int32)
    valid = np.zeros((b, length), bool)
    text_loss = np.zeros((b, length), np.float32)
    traj_loss = np.zeros((b, length), np.float32)
    positions = np.zeros((3, b, length), np.int32)
    slots = np.full((b, length), -1, np.int32)
    prefix_len = np.zeros(b, np.int32)
    first_action = np.zeros(b, np.int32)
    for i, s in enumerate(samples):
        n = len(s["tokens"])
        if n > length:
            raise ValueError(f"sample {i} has {n} tokens, more than the batch length {length}")
        tokens[i, :n], valid[i, :n] = s["tokens"], True
        text_loss[i, :n], traj_loss[i, :n] = s["text_loss"], s["traj_loss"]
        if runs is not None:
            run = runs[i]
            if int((tokens[i, :n] == image_token_id).sum()) != sum(run.tokens):
                raise ValueError(f"sample {i}: image tokens do not match the tokenizer's {sum(run.tokens)}")
            # Without grids the image tokens are positioned as text (an id that never occurs).
            pos_id = image_token_id if run.grid_thw is not None else -1
            pos, _ = qwen3vl_inputs.mrope_positions(
                tokens[i : i + 1, :n], None, run.grid_thw, pos_id, spatial_merge
            )
            slots[i, :n] = vision_tokens.sequential_slots(tokens[i, :n], image_token_id)
        else:
            grid = None if images is None else images[i][1]
            pos, _ = qwen3vl_inputs.mrope_positions(
                tokens[i : i + 1, :n], None, grid, image_token_id, spatial_merge
            )
            if images is not None:
                per = images[i][0].patches_inp.shape[1] // spatial_merge**2
                slots[i, :n] = qwen3vl_inputs.image_slots(
                    tokens[i : i + 1, :n], grid, image_token_id, spatial_merge, per
                )[0]
        positions[:, i, :n] = pos[:, 0]
        prefix_len[i] = s["expert_prefix_len"]
        if prefix_len[i]:
            first_action[i] = positions[0, i, prefix_len[i] - 1] + 1
    stacked_images = None
    if images is not None:
        stacked_images = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[im for im, _ in images])
    extra = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *views) if views else {}
    traj = {k: np.stack([t[k] for t in trajectories]) for k in trajectories[0]}
    return Batch(
        tokens_bl=tokens,
        valid_bl=valid,
        positions_3bl=positions,
        images=stacked_images,
        image_slots_bl=slots,
        text_loss_bl=text_loss,
        traj_loss_bl=traj_loss,
        expert_prefix_len_b=prefix_len,
        expert_position_b=first_action,
        controls_ba2=traj["controls"].astype(np.float32),
        has_trajectory_b=traj["has_trajectory"].astype(bool),
        history_xyz_bh3=traj["history_xyz"].astype(np.float32),
        future_xy_ba2=traj["future_xy"].astype(np.float32),
        future_yaw_ba=traj["future_yaw"].astype(np.float32),
        **extra,
    )


def random_trajectory(rng: np.random.Generator, num_waypoints: int = 64, num_history: int = 16) -> dict:
    """A smooth plausible ego motion: random speed, gentle accel and curvature profiles."""
    v0 = rng.uniform(0.0, 20.0)
    t = np.linspace(0.0, 1.0, num_waypoints)
    accel = rng.uniform(-1.5, 1.5) * np.sin(np.pi * t * rng.uniform(0.5, 1.5))
    accel = np.maximum(accel, -v0 / (num_waypoints * action_space.DT))
    curv = rng.uniform(-0.02, 0.02) * np.cos(np.pi * t * rng.uniform(0.2, 1.0))
    xy, yaw = action_space.integrate_controls(accel[None], curv[None], np.array([v0]))
    hist_t = np.arange(-(num_history - 1), 1) * action_space.DT
    history = np.stack([v0 * hist_t, np.zeros_like(hist_t), np.zeros_like(hist_t)], -1)
    controls = action_space.normalize_controls(np.stack([accel, curv], -1))
    return dict(
        controls=np.asarray(controls),
        history_xyz=history.astype(np.float32),
        future_xy=np.asarray(xy[0]),
        future_yaw=np.asarray(yaw[0]),
        has_trajectory=np.bool_(True),
    )


def tokenizer_views(
    cfg, rng: np.random.Generator, num_images: int, num_frames: int
) -> tuple[vision_tokens.ImageRuns | None, dict]:
    """A fake sample's image-token runs and tokenizer inputs for `cfg.vision_tokenizer` (per_image:
    (None, {})): triplane frames of the synthetic rig at the tokenizer's resolution with their cameras,
    or Flex frame / camera indices of camera-major images."""
    if cfg.vision_tokenizer == "per_image":
        return None, {}
    runs = vision_tokens.image_runs(cfg, num_images, num_frames, (0, 0))
    if cfg.vision_tokenizer == "flex":
        frame, camera = vision_tokens.camera_major_ids(num_images, num_frames)
        return runs, dict(image_frame_bn=frame, image_camera_bn=camera)
    specs = rig_views.rig_specs(num_images // num_frames, cfg.triplane.image_hw, cfg.triplane.camera_model)
    frames = rig_views.procedural_views(rng, specs, num_frames)
    return runs, dict(frames_btvhw3=frames, cameras=rig_views.cameras_of(specs))


def prompt_before_reasoning(batch: Batch, reasoning_len: int) -> qwen3vl_inputs.PromptInputs:
    """The inference prompt of a training batch whose rows share one layout: every token before the
    `reasoning_len` reasoning tokens and their two markers (tests and evaluation of the policy)."""
    length = int(batch.expert_prefix_len_b[0]) - reasoning_len - 2
    return qwen3vl_inputs.PromptInputs(
        tokens_bl=batch.tokens_bl[:, :length],
        positions_3bl=batch.positions_3bl[:, :, :length],
        valid_bl=batch.valid_bl[:, :length],
        next_position_b=batch.positions_3bl[0, :, length - 1] + 1,
        images=batch.images,
        image_slots_bl=batch.image_slots_bl[:, :length],
        frames_btvhw3=batch.frames_btvhw3,
        cameras=batch.cameras,
        image_frame_bn=batch.image_frame_bn,
        image_camera_bn=batch.image_camera_bn,
    )


def fake(
    cfg,
    batch_size: int,
    seed: int = 0,
    num_images: int = 2,
    grid_hw: tuple[int, int] = (4, 4),
    prompt_len: int = 8,
    reasoning_len: int = 6,
    length: int | None = None,
    num_frames: int = 1,
) -> Batch:
    """A random, well-formed training batch for an `AlpamayoConfig` (tests and benchmarks).

    `num_images` camera-major images of `num_frames` frames per camera: ViT patch rows of `grid_hw`
    (per_image, flex) or procedural frames of the synthetic rig (triplane).
    """
    rng = np.random.default_rng(seed)
    layout, vcfg = cfg.tokens, cfg.vlm.vision
    ids = SequenceIds.of(
        cfg.vlm.image_token_id, cfg.vlm.vision_start_token_id, cfg.vlm.vision_end_token_id, layout
    )
    text_hi = min(layout.base_vocab_size, cfg.vlm.image_token_id)
    samples, images, trajs, runs, views = [], [], [], [], []
    h, w = grid_hw
    merge = vcfg.spatial_merge
    for _ in range(batch_size):
        traj = random_trajectory(rng, layout.num_waypoints, layout.num_history)
        traj["controls"] = np.asarray(
            action_space.renormalize_controls(traj["controls"], action_space.SPEC_STATS, cfg.control_stats)
        )
        history_ids = trajectory_tokens.encode_history(traj["history_xyz"], layout)
        future_ids = trajectory_tokens.encode_future(traj["controls"], layout)
        run, view = tokenizer_views(cfg, rng, num_images, num_frames)
        samples.append(
            assemble_sample(
                ids,
                list(run.tokens) if run else [h * w // merge**2] * num_images,
                history_ids,
                rng.integers(0, text_hi, prompt_len),
                rng.integers(0, text_hi, reasoning_len),
                future_ids,
            )
        )
        if cfg.vision_tokenizer != "triplane":
            pixels = rng.integers(0, 256, (num_images * h * w, vcfg.pixel_dim), dtype=np.uint8)
            grid = np.array([[1, h, w]] * num_images)
            images.append((qwen3vl_inputs.vision_inputs(pixels, grid, vcfg), grid))
        trajs.append(traj)
        runs.append(run)
        views.append(view)
    length = length or max(len(s["tokens"]) for s in samples)
    return collate(
        samples,
        images or None,
        trajs,
        length,
        cfg.vlm.image_token_id,
        merge,
        runs=None if cfg.vision_tokenizer == "per_image" else runs,
        views=views if cfg.vision_tokenizer != "per_image" else None,
    )
