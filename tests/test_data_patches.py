"""Image -> patch rows against the transformers Qwen2-VL image processor (Qwen3-VL uses the same)."""

import numpy as np
import pytest

from alpamayo_jax.data import patches


def _hf_patches(images):
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(patches.QWEN3VL_MEAN),
        image_std=list(patches.QWEN3VL_STD),
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
