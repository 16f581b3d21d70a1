"""uint8 images -> Qwen-VL patch rows in the reference's packed merge-block order (NumPy).

The loader ships `image_pixels`: uint8 rows of one frame per patch, (channel, patch row, patch col),
ordered so that every `merge**2` consecutive rows form one merged LM token; the vision tower
normalises them and repeats them over the temporal patch on the device (`vision.patch_rows`).
`image_patches` does that expansion on the host and matches the transformers Qwen2-VL / Qwen3-VL
image processor without resizing: pixels rescaled to [0, 1], normalised with the Qwen3-VL mean/std
(0.5 each), each image repeated over the temporal patch, rows flattened as (channel, time, patch
row, patch col).
"""

from __future__ import annotations

import numpy as np
import numpy.typing

from alpamayo_jax.models.vision import PIXEL_MEAN, PIXEL_STD, pixel_scale_shift


def image_pixels(
    images_nhw3: np.ndarray, patch_size: int = 16, merge: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `[n, H, W, 3]` -> (uint8 rows `[n * gh * gw, 3 * p * p]`, grid_thw `[n, 3]`).

    H and W must be multiples of `patch_size * merge` (resize to the model resolution first).
    """
    images_nhw3 = np.asarray(images_nhw3)
    if images_nhw3.ndim != 4 or images_nhw3.shape[-1] != 3 or images_nhw3.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [n, H, W, 3], got {images_nhw3.dtype} {images_nhw3.shape}")
    n, h, w, _ = images_nhw3.shape
    unit = patch_size * merge
    if h % unit or w % unit:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size * merge = {unit}")
    gh, gw = h // patch_size, w // patch_size
    x = images_nhw3.reshape(n, gh // merge, merge, patch_size, gw // merge, merge, patch_size, 3)
    # -> [n, block row, block col, in-row, in-col, channel, patch row, patch col]
    rows = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 5, 7, 3, 6)).reshape(n * gh * gw, -1)
    grid_thw = np.tile(np.array([[1, gh, gw]], np.int64), (n, 1))
    return rows, grid_thw


def normalise_rows(
    pixel_rows: np.ndarray,
    temporal_patch_size: int = 2,
    mean: tuple[float, float, float] = PIXEL_MEAN,
    std: tuple[float, float, float] = PIXEL_STD,
    dtype: np.typing.DTypeLike = np.float32,
) -> np.ndarray:
    """uint8 pixel rows `[P, 3 * p * p]` -> normalised rows `[P, 3 * T * p * p]` of `dtype` (the NumPy
    twin of `vision.patch_rows`). A 16-bit `dtype` (e.g. `ml_dtypes.bfloat16`) halves the bytes."""
    num, width = pixel_rows.shape
    scale, shift = pixel_scale_shift(mean, std)
    x = pixel_rows.reshape(num, 3, 1, width // 3).astype(np.float32)
    x = x * scale[:, None, None] + shift[:, None, None]
    out = np.empty((num, 3, temporal_patch_size, width // 3), dtype)
    np.copyto(out, x, casting="same_kind")
    return out.reshape(num, -1)


def image_patches(
    images_nhw3: np.ndarray,
    patch_size: int = 16,
    temporal_patch_size: int = 2,
    merge: int = 2,
    mean: tuple[float, float, float] = PIXEL_MEAN,
    std: tuple[float, float, float] = PIXEL_STD,
    dtype: np.typing.DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `[n, H, W, 3]` -> (pixel_values `[n * gh * gw, 3 * T * p * p]` of `dtype`, grid_thw `[n, 3]`):
    the reference processor's output (`image_pixels` then `normalise_rows`)."""
    rows, grid_thw = image_pixels(images_nhw3, patch_size, merge)
    return normalise_rows(rows, temporal_patch_size, mean, std, dtype), grid_thw
