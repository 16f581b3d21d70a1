"""Host-side (NumPy) preparation of Qwen3-VL inputs: vision layout, M-RoPE positions, image slots.

These are the data-dependent index computations of the reference (`get_rope_index`, the
position-embedding interpolation, the packed patch order) done once on the host, so the jitted
model sees only static shapes.
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np

from alpamayo_jax.models.qwen3vl import Qwen3VLConfig
from alpamayo_jax.models.triplane import Cameras
from alpamayo_jax.models.vision import VisionConfig, VisionInputs


@flax.struct.dataclass
class PromptInputs:
    """A batch of token sequences with their images, ready for `Qwen3VL` (static shapes).

    tokens/valid `[B, L]` right-padded (valid True on a prefix of each row), positions `[3, B, L]`,
    the position after each prompt `[B]`, and the images with the flat feature row of each
    image token (`-1` elsewhere). The other vision tokenizers' inputs (see `data.batch.Batch`):
    frames_btvhw3 and cameras (triplane), image_frame_bn / image_camera_bn (flex).
    """

    tokens_bl: jax.Array
    positions_3bl: jax.Array
    valid_bl: jax.Array
    next_position_b: jax.Array
    images: VisionInputs | None = None
    image_slots_bl: jax.Array | None = None
    frames_btvhw3: jax.Array | None = None
    cameras: Cameras | None = None
    image_frame_bn: jax.Array | None = None
    image_camera_bn: jax.Array | None = None


def split_temporal(grid_thw: np.ndarray) -> np.ndarray:
    """Each (t, h, w) entry becomes t entries (1, h, w): the reference attends within one frame."""
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return np.repeat(
        np.concatenate([np.ones_like(grid_thw[:, :1]), grid_thw[:, 1:]], 1), grid_thw[:, 0], axis=0
    )


def _merge_block_rows_cols(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch of an h x w grid in merge-block order (block row/col, in-row/col)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    return rows.reshape(shape).transpose(0, 2, 1, 3).ravel(), cols.reshape(shape).transpose(
        0, 2, 1, 3
    ).ravel()


def _bilinear_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """align_corners=True bilinear taps on one axis: `side` table entries resampled to `size`."""
    src = index.astype(np.float64) * (side - 1) / max(size - 1, 1)
    floor = np.floor(src)
    taps = floor.astype(np.int64)[:, None] + np.arange(2)
    weights = np.clip(1.0 - np.abs(src[:, None] - taps), 0.0, None)
    return np.clip(taps, 0, side - 1), weights


def vision_inputs(
    pixel_values: np.ndarray, grid_thw: np.ndarray, cfg: VisionConfig, pad_patches: int | None = None
) -> VisionInputs:
    """Packed rows + `grid_thw [I, 3]` -> padded per-image VisionInputs.

    Rows are the reference's float patches `[P, patch_dim]` or the loader's uint8 pixel rows
    `[P, pixel_dim]` (`data.patches.image_pixels`, normalised in the tower). `pad_patches` fixes the
    padded patch count (a multiple of merge^2) for static shapes; by default
    the largest image's count.
    """
    pixel_values = np.asarray(pixel_values)
    grid = split_temporal(grid_thw)
    counts = grid[:, 1] * grid[:, 2]
    width = cfg.pixel_dim if pixel_values.dtype == np.uint8 else cfg.patch_dim
    if pixel_values.ndim != 2 or pixel_values.shape[1] != width:
        raise ValueError(
            f"pixel_values must be [patches, {width}] for {pixel_values.dtype} rows, got {pixel_values.shape}"
        )
    if counts.sum() != pixel_values.shape[0]:
        raise ValueError(
            f"image_grid_thw describes {counts.sum()} patches but pixel_values has {pixel_values.shape[0]}"
        )
    unit = cfg.spatial_merge**2
    if np.any(grid[:, 1] % cfg.spatial_merge) or np.any(grid[:, 2] % cfg.spatial_merge):
        raise ValueError(f"image grid {grid.tolist()} not divisible by the spatial merge {cfg.spatial_merge}")
    n_max = int(counts.max()) if pad_patches is None else int(pad_patches)
    if n_max < counts.max() or n_max % unit:
        raise ValueError(f"pad_patches={pad_patches} must be >= {counts.max()} and a multiple of {unit}")
    num = len(grid)
    side = int(round(cfg.num_position_embeddings**0.5))
    patches = np.zeros((num, n_max, width), pixel_values.dtype)
    pos_index = np.zeros((num, n_max, 4), np.int32)
    pos_weight = np.zeros((num, n_max, 4), np.float32)
    rope_pos = np.zeros((num, n_max, 2), np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for e, (_, h, w) in enumerate(grid):
        n = h * w
        patches[e, :n] = pixel_values[starts[e] : starts[e] + n]
        rows, cols = _merge_block_rows_cols(h, w, cfg.spatial_merge)
        h_taps, h_w = _bilinear_taps(rows, h, side)
        w_taps, w_w = _bilinear_taps(cols, w, side)
        pos_index[e, :n] = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(n, 4)
        pos_weight[e, :n] = (h_w[:, :, None] * w_w[:, None, :]).reshape(n, 4)
        rope_pos[e, :n] = np.stack([rows, cols], -1)
    return VisionInputs(
        patches_inp=patches,
        lengths_i=counts.astype(np.int32),
        pos_index_in4=pos_index,
        pos_weight_in4=pos_weight,
        rope_pos_in2=rope_pos,
    )


def image_slots(
    input_ids: np.ndarray, grid_thw: np.ndarray | None, image_token_id: int, merge: int, tokens_per_entry: int
) -> np.ndarray:
    """`[B, L]` int32: for each image token, its row in the flattened merged features
    `[entries * tokens_per_entry, D]`; -1 for other tokens. Placeholders are filled in order."""
    input_ids = np.asarray(input_ids)
    is_image = input_ids == image_token_id
    slots = np.full(input_ids.shape, -1, np.int32)
    if grid_thw is None:
        if is_image.any():
            raise ValueError(f"{int(is_image.sum())} image tokens in input_ids but no image_grid_thw")
        return slots
    grid = split_temporal(grid_thw)
    per_entry = grid[:, 1] * grid[:, 2] // merge**2
    if is_image.sum() != per_entry.sum():
        raise ValueError(
            f"input_ids hold {int(is_image.sum())} image tokens but the images give {per_entry.sum()}"
        )
    rows = np.concatenate([e * tokens_per_entry + np.arange(n) for e, n in enumerate(per_entry)])
    slots[is_image] = rows
    return slots


def mrope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    grid_thw: np.ndarray | None,
    image_token_id: int,
    merge: int,
) -> tuple[np.ndarray, np.ndarray]:
    """3D (t, h, w) positions `[3, B, L]` as the reference computes them, and the next position `[B]`.

    Text tokens advance all three streams together; an image of merged grid (h', w') takes t = start,
    h = start + row, w = start + col, and text continues at start + max(h', w'). Padding (mask 0) gets
    position 0 and is skipped.
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    mask = (
        np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    )
    grids = iter(split_temporal(grid_thw)) if grid_thw is not None else iter(())
    positions = np.zeros((3, batch, length), np.int64)
    next_pos = np.zeros(batch, np.int64)
    for b in range(batch):
        idx = np.nonzero(mask[b])[0]
        is_image = input_ids[b, idx] == image_token_id
        out = np.zeros((3, len(idx)), np.int64)
        pos, i = 0, 0
        while i < len(idx):
            if not is_image[i]:
                j = i
                while j < len(idx) and not is_image[j]:
                    j += 1
                out[:, i:j] = pos + np.arange(j - i)
                pos += j - i
                i = j
                continue
            j = i
            while j < len(idx) and is_image[j]:
                j += 1
            run = j - i
            while run > 0:
                try:
                    _, h, w = next(grids)
                except StopIteration:
                    raise ValueError(f"sample {b}: more image tokens than images in image_grid_thw") from None
                gh, gw = h // merge, w // merge
                rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
                n = gh * gw
                if n > run:
                    raise ValueError(
                        f"sample {b}: an image needs {n} tokens but its run of image tokens has {run}"
                    )
                out[0, i : i + n] = pos
                out[1, i : i + n] = pos + rows.ravel()
                out[2, i : i + n] = pos + cols.ravel()
                pos += max(gh, gw)
                i += n
                run -= n
        positions[:, b, idx] = out
        next_pos[b] = out.max() + 1 if len(idx) else 0
    return positions.astype(np.int32), next_pos.astype(np.int32)


def right_align_order(valid_bl: np.ndarray) -> np.ndarray:
    """Per-row permutation `[B, L]` moving valid tokens to the front (the model's padding convention)
    in their order; `np.argsort(order, 1)` undoes it."""
    return np.argsort(~np.asarray(valid_bl, bool), axis=1, kind="stable")


def prompt_inputs(
    cfg: Qwen3VLConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    pad_patches: int | None = None,
) -> PromptInputs:
    """PromptInputs from the arrays a transformers Qwen3-VL processor returns.

    Rows come back right-padded whatever the input's padding side (positions depend only on the
    valid tokens, so the logits of valid tokens are unchanged; they move to the front of the row).
    """
    input_ids = np.asarray(input_ids, np.int64)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if np.any(input_ids < 0) or np.any(input_ids >= cfg.text.vocab_size):
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {cfg.text.vocab_size})")
    valid = (
        np.ones(input_ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    )
    if valid.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {valid.shape} != input_ids shape {input_ids.shape}")
    order = right_align_order(valid)
    input_ids, valid = np.take_along_axis(input_ids, order, 1), np.take_along_axis(valid, order, 1)
    merge = cfg.vision.spatial_merge
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw must be given together")
    positions, next_pos = mrope_positions(input_ids, valid, image_grid_thw, cfg.image_token_id, merge)
    images, slots = None, None
    if pixel_values is not None:
        images = vision_inputs(pixel_values, image_grid_thw, cfg.vision, pad_patches)
        slots = image_slots(
            np.where(valid, input_ids, -1),
            image_grid_thw,
            cfg.image_token_id,
            merge,
            images.patches_inp.shape[1] // merge**2,
        )
    elif np.any((input_ids == cfg.image_token_id) & valid):
        raise ValueError("input_ids hold image tokens but no pixel_values were given")
    return PromptInputs(
        tokens_bl=input_ids.astype(np.int32),
        positions_3bl=positions,
        valid_bl=valid,
        next_position_b=next_pos,
        images=images,
        image_slots_bl=slots,
    )
