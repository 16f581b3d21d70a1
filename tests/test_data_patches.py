"""Image -> patch rows against the transformers Qwen2-VL image processor (Qwen3-VL uses the same), and
the loader's uint8 pixel rows against the float rows, on the host and through the vision tower."""

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest

from alpamayo_jax.data import patches
from alpamayo_jax.models import qwen3vl_inputs, vision


def _hf_patches(images):
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(vision.PIXEL_MEAN),
        image_std=list(vision.PIXEL_STD),
        do_resize=False,
    )
    out = proc(images=list(images), return_tensors="np")
    return np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])


def test_matches_transformers_processor():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    rows, grid = patches.image_patches(images)
    ref_rows, ref_grid = _hf_patches(images)
    np.testing.assert_array_equal(grid, ref_grid)
    assert rows.shape == (2 * 4 * 6, 3 * 2 * 16 * 16)
    np.testing.assert_allclose(rows, ref_rows, atol=1e-5)


def test_known_values_and_errors():
    images = np.zeros((1, 32, 32, 3), np.uint8)
    images[0, :16, 16:, 0] = 255  # top-right patch, red channel
    rows, grid = patches.image_patches(images)
    assert grid.tolist() == [[1, 2, 2]]
    assert np.all(rows[1, : 2 * 256] == 1.0) and np.all(rows[1, 2 * 256 :] == -1.0)
    assert np.all(rows[[0, 2, 3]] == -1.0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patches.image_patches(np.zeros((1, 48, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        patches.image_patches(np.zeros((1, 32, 32, 3), np.float32))
    pixels, grid = patches.image_pixels(images)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 3 * 16 * 16) and grid.tolist() == [[1, 2, 2]]
    assert np.all(pixels[1, :256] == 255) and np.all(pixels[1, 256:] == 0) and not pixels[[0, 2, 3]].any()


def test_pixel_rows_expand_to_the_float_rows():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 64, 3), dtype=np.uint8)
    pixels, grid = patches.image_pixels(images)
    rows, grid_f = patches.image_patches(images)
    np.testing.assert_array_equal(grid, grid_f)
    np.testing.assert_array_equal(patches.normalise_rows(pixels), rows)
    half = patches.image_patches(images, dtype=ml_dtypes.bfloat16)[0]
    np.testing.assert_array_equal(half, rows.astype(ml_dtypes.bfloat16))


def test_vision_tower_same_on_uint8_and_float_rows():
    """The loader's uint8 rows, normalised and repeated in the tower, give the old float32 inputs and
    outputs; padding rows (the second image is smaller) are zero in both."""
    cfg = vision.vision_config("tiny")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8) for h, w in ((64, 96), (32, 64))]
    per_dtype = []
    for make in (patches.image_pixels, patches.image_patches):
        rows, grids = zip(*(make(im) for im in images), strict=True)
        per_dtype.append(qwen3vl_inputs.vision_inputs(np.concatenate(rows), np.concatenate(grids), cfg))
    u8, f32 = per_dtype
    assert u8.patches_inp.dtype == np.uint8 and f32.patches_inp.dtype == np.float32
    rows_u8 = vision.patch_rows(u8.patches_inp, u8.lengths_i, cfg)
    assert rows_u8.shape == f32.patches_inp.shape and not np.asarray(rows_u8[1, 8:]).any()
    np.testing.assert_allclose(rows_u8, f32.patches_inp, atol=1e-6, rtol=0)
    tower = vision.VisionTower(cfg)
    params = nn.unbox(tower.init(jax.random.key(0), f32))
    for want, got in zip(tower.apply(params, f32), tower.apply(params, u8), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"uint8 rows, got \(24, 1536\)"):
        qwen3vl_inputs.vision_inputs(np.zeros((24, cfg.patch_dim), np.uint8), [[1, 4, 6]], cfg)
    with pytest.raises(ValueError, match="uint8 pixel rows must be"):
        vision.patch_rows(np.zeros((1, 4, cfg.patch_dim), np.uint8), np.array([4]), cfg)
