"""uint8 images -> Qwen-VL patch rows in the reference's packed merge-block order (NumPy).

Matches the transformers Qwen2-VL / Qwen3-VL image processor without resizing: pixels rescaled to
[0, 1] and normalised with the Qwen3-VL mean/std (0.5 each), each image repeated over the temporal
patch, rows flattened as (channel, time, patch row, patch col), and patches ordered so that every
`merge**2` consecutive rows form one merged LM token.
"""

from __future__ import annotations

import numpy as np
import numpy.typing

QWEN3VL_MEAN = (0.5, 0.5, 0.5)
QWEN3VL_STD = (0.5, 0.5, 0.5)


def image_patches(
    images_nhw3: np.ndarray,
    patch_size: int = 16,
    temporal_patch_size: int = 2,
    merge: int = 2,
    mean: tuple[float, float, float] = QWEN3VL_MEAN,
    std: tuple[float, float, float] = QWEN3VL_STD,
    dtype: np.typing.DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `[n, H, W, 3]` -> (pixel_values `[n * gh * gw, 3 * T * p * p]` of `dtype`, grid_thw `[n, 3]`).

    H and W must be multiples of `patch_size * merge` (resize to the model resolution first). A
    16-bit `dtype` (e.g. `ml_dtypes.bfloat16`) halves the bytes a loader moves.
    """
    images_nhw3 = np.asarray(images_nhw3)
    if images_nhw3.ndim != 4 or images_nhw3.shape[-1] != 3 or images_nhw3.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [n, H, W, 3], got {images_nhw3.dtype} {images_nhw3.shape}")
    n, h, w, _ = images_nhw3.shape
    unit = patch_size * merge
    if h % unit or w % unit:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size * merge = {unit}")
    gh, gw = h // patch_size, w // patch_size
    scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    shift = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    x = images_nhw3.astype(np.float32) * scale + shift  # [n, H, W, 3]
    x = x.reshape(n, gh // merge, merge, patch_size, gw // merge, merge, patch_size, 3)
    # -> [n, block row, block col, in-row, in-col, channel, patch row, patch col]
    x = x.transpose(0, 1, 4, 2, 5, 7, 3, 6)[:, :, :, :, :, :, None]
    rows = np.empty((n * gh * gw, 3 * temporal_patch_size * patch_size * patch_size), dtype)
    np.copyto(rows.reshape(*x.shape[:6], temporal_patch_size, *x.shape[7:]), x, casting="same_kind")
    grid_thw = np.tile(np.array([[1, gh, gw]], np.int64), (n, 1))
    return rows, grid_thw
