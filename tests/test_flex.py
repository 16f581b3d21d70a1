"""Flex tokenizer: scene-token counts, shapes, what the scene tokens see, full-size parameter count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax.models import flex


def _init(cfg, n=5, batch=2, seed=0):
    model = flex.FlexTokenizer(cfg)
    x = jax.random.normal(jax.random.key(seed), (batch, cfg.num_frames, cfg.num_cameras, n, cfg.in_width))
    params = model.init(jax.random.key(1), x)
    return model, params, x


@pytest.mark.parametrize("per_image", flex.TOKENS_PER_IMAGE_OPTIONS)
def test_scene_token_count_per_image_option(per_image):
    cfg = flex.flex_config("tiny", tokens_per_image=per_image)
    model, params, x = _init(cfg)
    out = model.apply(params, x)
    assert cfg.num_scene_tokens == per_image * 2 * 2
    assert out.shape == (2, per_image * 4, cfg.out_width)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_scene_tokens_depend_on_every_image_and_only_images():
    cfg = flex.flex_config("tiny", tokens_per_image=8)
    model, params, x = _init(cfg)
    out = model.apply(params, x)
    # Changing one image of one camera and frame changes every scene token (full attention) ...
    x2 = x.at[:, 1, 0].add(1.0)
    diff = jnp.abs(model.apply(params, x2) - out).max(axis=-1)
    assert bool(jnp.all(diff > 1e-6))
    # ... and samples of a batch do not mix.
    x3 = x.at[1].add(1.0)
    np.testing.assert_allclose(model.apply(params, x3)[0], out[0], atol=1e-6)
    # The number of image tokens per image is free; the output count is fixed by K.
    wide = jax.random.normal(jax.random.key(3), (2, cfg.num_frames, cfg.num_cameras, 11, cfg.in_width))
    assert model.apply(params, wide).shape == out.shape


def test_camera_and_frame_embeddings_break_symmetry():
    cfg = flex.flex_config("tiny", tokens_per_image=8)
    model, params, x = _init(cfg)
    # Swapping two cameras' images must change the result (cameras are told apart by their embedding).
    swapped = x[:, :, ::-1]
    assert float(jnp.abs(model.apply(params, swapped) - model.apply(params, x)).max()) > 1e-4
    names = params["params"]
    assert names["camera_embed"].value.shape == (cfg.num_cameras, cfg.width)
    assert names["frame_embed"].value.shape == (cfg.num_frames, cfg.width)


def test_wrong_input_layout_raises():
    cfg = flex.flex_config("tiny")
    model, params, x = _init(cfg)
    with pytest.raises(ValueError, match="flex expects image tokens"):
        model.apply(params, x[:, :, :1])
    with pytest.raises(ValueError, match="unknown flex variant"):
        flex.flex_config("huge")


def test_full_size_eval_shape_and_parameter_count():
    cfg = flex.flex_config("default", tokens_per_image=16)
    x = jax.ShapeDtypeStruct((1, 4, 4, 160, cfg.in_width), jnp.float32)
    model = flex.FlexTokenizer(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, params, x)
    assert out.shape == (1, 16 * 16, 4096)
    count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(nn.unbox(params)))
    d, f = cfg.width, cfg.mlp_dim
    block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    expected = (
        cfg.in_width * d
        + d  # in_proj
        + (4 + 4 + 256) * d  # frame, camera, scene tables
        + 8 * block
        + 2 * d  # blocks + final norm
        + d * 4096
        + 4096  # out_proj
    )
    assert count == expected
    assert 60e6 < count < 62e6  # AR1's Flex: 61.6M
    # Boxed parameters carry logical axis names.
    boxed = params["params"]["encoder"]["blocks"]["fc1"]["kernel"]
    assert boxed.names == ("layers", "embed", "mlp")
