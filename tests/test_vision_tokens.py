"""The vision-tokenizer switch: configs, image-token layouts and positions, the model and the compiled
policy with the triplane and Flex tokenizers, full-size shapes."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import generation, geometry, inference
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import rig_views
from alpamayo_jax.models import alpamayo, triplane, vision_tokens
from alpamayo_jax.models.qwen3vl import Qwen3VL

TOKENIZERS = ("triplane", "flex")


def tiny(tokenizer):
    return alpamayo.alpamayo_config("tiny", vision_tokenizer=tokenizer, triplane=dict(patch=(4, 4, 4)))


@pytest.fixture(scope="module")
def setups():
    """Per tokenizer: config, a fake batch of 2 samples and jitted-initialised parameters."""
    out = {}
    for tok in TOKENIZERS:
        cfg = tiny(tok)
        batch = batch_lib.fake(cfg, 2, seed=3)
        init = jax.jit(
            lambda b, cfg=cfg: alpamayo.Alpamayo(cfg).init(jax.random.key(0), b, jax.random.key(1))
        )
        out[tok] = cfg, batch, nn.unbox(init(batch))["params"]
    return out


def test_config_checks_and_json_round_trip():
    with pytest.raises(ValueError, match="vision_tokenizer 'patches'"):
        alpamayo.alpamayo_config("tiny", vision_tokenizer="patches")
    with pytest.raises(ValueError, match="p_x=3 does not divide"):
        alpamayo.alpamayo_config("tiny", vision_tokenizer="triplane", triplane=dict(patch=(3, 4, 4)))
    with pytest.raises(ValueError, match="flex is configured for 2 cameras x 1 frames"):
        batch_lib.fake(tiny("flex"), 1, num_images=4, num_frames=2)
    for tok in ("per_image", *TOKENIZERS):
        cfg = tiny(tok)
        assert alpamayo.AlpamayoConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_tokens_per_sample_at_the_release_shapes():
    """4 cameras x 4 frames (20 x 36 ViT patches each): 2,880 per-image tokens, 4 x 288 triplane
    tokens at patch (8, 8, 8), 16 x 16 Flex scene tokens."""
    counts = {}
    for tok in ("per_image", *TOKENIZERS):
        cfg = alpamayo.alpamayo_config("ar1_2b", vision_tokenizer=tok)
        counts[tok] = vision_tokens.image_runs(cfg, 16, 4, (20, 36)).tokens
    assert counts == {"per_image": (180,) * 16, "triplane": (288,) * 4, "flex": (256,)}
    half = alpamayo.alpamayo_config(
        "ar1_2b", vision_tokenizer="triplane", triplane=dict(patch=(4, 6, 6), half_planes=True)
    )
    assert vision_tokens.image_runs(half, 16, 4, (20, 36)).tokens == (416,) * 4  # 104 per image


def test_triplane_layout_slots_and_positions(setups):
    cfg, b, _ = setups["triplane"]
    assert b.frames_btvhw3.shape == (2, 1, 2, 28, 56, 3) and b.frames_btvhw3.dtype == np.uint8
    assert b.cameras.fw_poly_bvk.shape == (2, 2, 5) and b.images is None
    is_image = b.tokens_bl[0] == cfg.vlm.image_token_id
    np.testing.assert_array_equal(b.image_slots_bl[0][is_image], np.arange(32))
    # xy plane 4 x 4 patch cells, then xz and yz 4 x 2, each positioned as an image of its grid.
    start = int(b.positions_3bl[0, 0, np.argmax(is_image)])
    expected = []
    for rows, cols in ((4, 4), (4, 2), (4, 2)):
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        expected.append(np.stack([np.full(r.size, start), start + r.ravel(), start + c.ravel()]))
        start += max(rows, cols)
    np.testing.assert_array_equal(b.positions_3bl[:, 0, is_image], np.concatenate(expected, 1))
    after = np.argmax(is_image) + 32  # <|vision_end|> continues as text
    assert b.positions_3bl[:, 0, after].tolist() == [start] * 3


def test_flex_layout_slots_and_positions(setups):
    cfg, b, _ = setups["flex"]
    k = cfg.flex.num_scene_tokens
    assert k == 16 * 2 and b.frames_btvhw3 is None
    is_image = b.tokens_bl[1] == cfg.vlm.image_token_id
    np.testing.assert_array_equal(b.image_slots_bl[1][is_image], np.arange(k))
    pos = b.positions_3bl[:, 1, is_image]
    assert (pos == pos[0]).all() and np.array_equal(np.diff(pos[0]), np.ones(k - 1))
    assert b.image_frame_bn.tolist() == [[0, 0]] * 2 and b.image_camera_bn.tolist() == [[0, 1]] * 2
    grid = vision_tokens.frame_camera_grid(
        jnp.arange(4.0).reshape(1, 4, 1, 1), jnp.array([[1, 0, 1, 0]]), jnp.array([[0, 0, 1, 1]]), 2, 2
    )
    assert grid[0, :, :, 0, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]  # [frame, camera]


def test_procedural_views_follow_the_calibration():
    """Through the front camera: sky (blue 230) where the rays point up, ground where they hit it,
    and the ground slides back between frames when the ego drives."""
    specs = rig_views.rig_specs(2, (28, 56))
    frames = rig_views.procedural_views(np.random.default_rng(1), specs, 3)
    front = specs[1]
    up = geometry.project_np(np.array([[0.0, -2.0, 10.0]]), front.fw_poly, front.principal_point, front.model)
    ground_cam = (np.array([[8.0, 0.0, 0.0]]) - front.translation_3) @ front.rotation_33
    ground = geometry.project_np(ground_cam, front.fw_poly, front.principal_point, front.model)
    (u_up, v_up), (u_g, v_g) = np.floor(up[0]).astype(int), np.floor(ground[0]).astype(int)
    assert frames[0, 1, v_up, u_up, 2] == 230
    assert frames[0, 1, v_g, u_g, 2] != 230
    assert not np.array_equal(frames[0], frames[2])


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_the_tokenizer_output_reaches_the_language_model(setups, tok):
    cfg, batch, params = setups[tok]
    model = alpamayo.Alpamayo(cfg)
    assert ("vision" in params["vlm"]) == (tok == "flex")  # the triplane has its own ViT

    def text_ce(p):
        return model.apply({"params": p}, batch, jax.random.key(2))["text_ce"]

    loss, grads = jax.jit(jax.value_and_grad(text_ce))(params)
    assert np.isfinite(loss) and abs(float(loss) - np.log(cfg.tokens.vocab_size)) < 1.5
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[tok])) > 1e-6


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_compiled_policy_and_prefill_use_the_tokenizer(setups, tok):
    cfg, batch, params = setups[tok]
    prompt = batch_lib.prompt_before_reasoning(batch, 6)
    model = alpamayo.Alpamayo(cfg)

    def forward(m, pr):
        embeds, deepstack = m.embed(pr)
        hidden, _ = m.vlm.text(embeds, pr.positions_3bl, pr.valid_bl, None, deepstack)
        return m.vlm.text.logits(hidden)[:, -1]

    @jax.jit
    def prefill(p, pr):
        features = inference.vision_features(cfg, p, pr)
        return generation.prefill(Qwen3VL(cfg.vlm), p["vlm"], pr, 64, features)[0]

    full = jax.jit(nn.apply(forward, model))({"params": params}, prompt)
    np.testing.assert_allclose(prefill(params, prompt), full, atol=1e-4)
    # Other camera inputs give other logits.
    if tok == "triplane":
        other = prompt.replace(frames_btvhw3=255 - prompt.frames_btvhw3)
    else:
        other = prompt.replace(images=prompt.images.replace(patches_inp=-prompt.images.patches_inp))
    assert float(jnp.abs(prefill(params, other) - full).max()) > 1e-4
    icfg = inference.InferenceConfig(max_reasoning_tokens=3, num_samples=2, flow_steps=2)
    out = inference.compile_policy(cfg, icfg)(params, prompt, batch.history_xyz_bh3, jax.random.key(4))
    assert out["xy"].shape == (2, 2, 64, 2) and out["reasoning_tokens"].shape == (2, 2, 3)
    assert np.all(np.isfinite(np.asarray(out["xy"])))


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_full_size_tokenizer_configs_eval_shape(tok):
    """ar1_2b with each tokenizer at the release frame size: shapes only, no allocation."""
    cfg = alpamayo.alpamayo_config("ar1_2b", vision_tokenizer=tok)
    frames = 4 if tok == "flex" else 1
    small = batch_lib.fake(
        cfg, 1, num_images=4 * frames, num_frames=frames, grid_hw=(2, 2), prompt_len=2, reasoning_len=1
    )
    shapes = jax.eval_shape(
        lambda: nn.unbox(alpamayo.Alpamayo(cfg).init(jax.random.key(0), small, jax.random.key(1)))["params"]
    )
    count = {
        k: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v)) for k, v in shapes[tok].items()
    }
    total = sum(count.values())
    if tok == "triplane":
        assert shapes[tok]["proj"]["kernel"].shape == (192, cfg.vlm.text.width)
        assert 21e6 < count["backbone"] < 23e6  # DINOv2-S-like
        assert triplane.tokens_per_timestep(cfg.triplane, cfg.triplane_patch) == 288
    else:
        assert shapes[tok]["in_proj"]["kernel"].shape == (cfg.vlm.vision.out_width, 768)
        assert 60e6 < total < 64e6  # AR1's Flex: 61.6M
    print(f"{tok} parameters: {total} ({count})")
