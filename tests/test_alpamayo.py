"""The composed Alpamayo-R1 model: the knowledge-insulation cut, sizes, and the inference path."""

import dataclasses
import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3Model, Qwen3VLForConditionalGeneration
from transformers import Qwen3VLConfig as HFConfig

from alpamayo_jax import inference
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import tokenizer
from alpamayo_jax.interop.hf_qwen3vl import hf_config_dict
from alpamayo_jax.models import alpamayo


def tiny(insulation=True):
    cfg = alpamayo.alpamayo_config("tiny")
    return dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, knowledge_insulation=insulation))


# The model runs jitted here: eagerly (op by op) its init, forwards and decodes took 10 to 40 s each on CPU.
@functools.partial(jax.jit, static_argnums=0)
def forward(cfg, params, batch):
    """The training forward's outputs (losses, accuracies, dropped loss tokens)."""
    return alpamayo.Alpamayo(cfg).apply({"params": params}, batch, jax.random.key(3))


@functools.partial(jax.jit, static_argnums=0)
def velocity(cfg, params, x, t, k, v, valid, first):
    return alpamayo.Alpamayo(cfg).apply(
        {"params": params}, x, t, k, v, valid, first, method=alpamayo.Alpamayo.velocity
    )


reason = jax.jit(inference.reason, static_argnums=(0, 1))


@pytest.fixture(scope="module")
def setup():
    cfg = tiny()
    batch = batch_lib.fake(cfg, 2, seed=0)
    init = jax.jit(lambda b: alpamayo.Alpamayo(cfg).init(jax.random.key(0), b, jax.random.key(1)))
    params = nn.unbox(init(batch))["params"]
    return cfg, batch, params


def grads(cfg, params, batch, loss_names):
    def loss(p):
        out = alpamayo.Alpamayo(cfg).apply({"params": p}, batch, jax.random.key(3))
        return sum(out[n] for n in loss_names)

    g = jax.jit(jax.grad(loss))(params)
    return {part: max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g[part])) for part in g}


def test_flow_loss_never_trains_the_vlm_with_insulation(setup):
    cfg, batch, params = setup
    g = grads(cfg, params, batch, ["flow"])
    assert g["vlm"] == 0.0
    assert g["expert"] > 1e-4
    g_off = grads(tiny(insulation=False), params, batch, ["flow"])
    assert g_off["vlm"] > 1e-6


@pytest.mark.parametrize("insulation", [True, False])
def test_cross_entropy_trains_the_vlm_and_not_the_expert(setup, insulation):
    _, batch, params = setup
    g = grads(tiny(insulation), params, batch, ["text_ce", "traj_ce"])
    assert g["vlm"] > 1e-4
    assert g["expert"] == 0.0


def test_losses_are_finite_and_masks_select_the_right_tokens(setup):
    cfg, batch, params = setup
    out = forward(cfg, params, batch)
    for name in ("text_ce", "traj_ce", "flow"):
        assert np.isfinite(out[name]) and out[name] > 0
    # Untrained: CE near log(vocab).
    assert abs(float(out["traj_ce"]) - np.log(cfg.tokens.vocab_size)) < 1.5
    traj = np.asarray(batch.traj_loss_bl) > 0
    tokens = np.asarray(batch.tokens_bl)
    assert np.all(
        cfg.tokens.is_future_id(tokens[traj]) | (tokens[traj] == cfg.tokens.special_id("traj_future_end"))
    )
    assert traj.sum(axis=1).tolist() == [2 * cfg.tokens.num_waypoints + 1] * 2
    # The expert prefix ends right after <|traj_future_start|>.
    last = np.asarray(batch.expert_prefix_len_b) - 1
    assert np.all(tokens[np.arange(2), last] == cfg.tokens.special_id("traj_future_start"))


def test_loss_position_budget_matches_full_computation(setup):
    cfg, batch, params = setup
    full = forward(cfg, params, batch)
    needed = int((np.asarray(batch.text_loss_bl) + np.asarray(batch.traj_loss_bl)).sum(1).max())
    budget = dataclasses.replace(cfg, max_loss_tokens=needed)
    out = forward(budget, params, batch)
    for name in ("text_ce", "traj_ce", "flow"):
        np.testing.assert_allclose(out[name], full[name], rtol=1e-5)
    assert int(out["loss_tokens_dropped"]) == 0
    short = dataclasses.replace(cfg, max_loss_tokens=needed - 5)
    assert int(forward(short, params, batch)["loss_tokens_dropped"]) == 10
    # A budget above a row's loss count fills the row up with its last position; when that position
    # carries a loss (a row without padding) it must still count once.
    last_w = np.asarray(batch.traj_loss_bl)[:, -1] + np.asarray(batch.text_loss_bl)[:, -1]
    assert last_w.max() > 0 and needed + 3 < batch.tokens_bl.shape[1] - 1
    out = forward(dataclasses.replace(cfg, max_loss_tokens=needed + 3), params, batch)
    for name in ("text_ce", "traj_ce", "text_accuracy", "traj_accuracy"):
        np.testing.assert_allclose(out[name], full[name], rtol=1e-5)


@pytest.mark.parametrize("variant, backbone_b, expert_b", [("ar1_2b", 2.1, 0.38), ("ar1_10b", 8.8, 2.3)])
def test_full_size_presets_match_reference_parameter_counts(variant, backbone_b, expert_b):
    cfg = alpamayo.alpamayo_config(variant)
    small = batch_lib.fake(cfg, 1, num_images=1, grid_hw=(2, 2), prompt_len=2, reasoning_len=1)
    shapes = jax.eval_shape(lambda: alpamayo.Alpamayo(cfg).init(jax.random.key(0), small, jax.random.key(1)))
    shapes = nn.unbox(shapes)["params"]
    count = {
        part: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes[part])) for part in shapes
    }
    with torch.device("meta"):
        hf_vlm = Qwen3VLForConditionalGeneration(HFConfig(**hf_config_dict(cfg.vlm)))
        e = cfg.expert
        hf_expert = Qwen3Model(
            Qwen3Config(
                hidden_size=e.width,
                intermediate_size=e.mlp_dim,
                num_hidden_layers=e.num_layers,
                num_attention_heads=e.num_heads,
                num_key_value_heads=e.num_kv_heads,
                head_dim=e.head_dim,
                vocab_size=1,
            )
        )
    assert count["vlm"] == sum(p.numel() for p in hf_vlm.parameters())
    transformer = count["expert"] - sum(
        int(np.prod(x.shape))
        for x in jax.tree_util.tree_leaves({k: shapes["expert"][k] for k in ("action_in", "velocity")})
    )
    assert transformer == sum(p.numel() for p in hf_expert.parameters()) - e.width  # no token embedding
    assert abs(count["vlm"] / 1e9 - backbone_b) < 0.25
    assert abs(count["expert"] / 1e9 - expert_b) < 0.1
    # The per-layer training layout of the 2b/10b experiments: the scanned parameters, unstacked.
    loop_cfg = alpamayo.alpamayo_config(variant, scan_layers=False)
    loop_model = alpamayo.Alpamayo(loop_cfg)
    loop = jax.eval_shape(lambda: loop_model.init(jax.random.key(0), small, jax.random.key(1)))
    unstacked = jax.eval_shape(lambda p: alpamayo.to_layout(p, loop_cfg), shapes)
    assert nn.unbox(loop)["params"] == unstacked
    assert len(unstacked["vlm"]["vision"]["blocks"]) == cfg.vlm.vision.depth


def test_policy_outputs_and_reasoning_constraints(setup):
    cfg, batch, params = setup
    prompt = batch_lib.prompt_before_reasoning(batch, 6)
    icfg = inference.InferenceConfig(max_reasoning_tokens=7, num_samples=3, flow_steps=4)
    out = inference.compile_policy(cfg, icfg)(params, prompt, batch.history_xyz_bh3, jax.random.key(2))
    assert out["xy"].shape == (2, 3, 64, 2) and out["reasoning_tokens"].shape == (2, 3, 7)
    lengths = np.asarray(out["reasoning_lengths"])
    assert np.all((0 <= lengths) & (lengths <= 7))
    tokens = np.asarray(out["reasoning_tokens"])
    banned = inference.banned_reasoning_ids(cfg)
    for b in range(2):
        for s in range(3):
            assert not banned[tokens[b, s, : lengths[b, s]]].any()
    assert np.all(np.abs(np.asarray(out["controls"])[..., 0]) <= 9.8 + 1e-6)
    # The waypoints are the integrated controls.
    xy = inference.controls_to_trajectory(
        jnp.asarray(out["controls"][0] - jnp.array([0.02903, 2.69e-4])) / jnp.array([0.68104, 0.026148]),
        jnp.repeat(batch.history_xyz_bh3[:1], 3, 0),
    )["xy"]
    np.testing.assert_allclose(xy, out["xy"][0], atol=1e-3)


def test_policy_decodes_the_reasoning_text_with_the_tokenizer(setup):
    cfg, batch, params = setup
    sp_model = pathlib.Path(__file__).parents[1] / "data" / "tokenizers" / "tiny_sp.model"
    tok = tokenizer.load("sentencepiece", sp_model, cfg)
    icfg = inference.InferenceConfig(max_reasoning_tokens=5, num_samples=2, flow_steps=2)
    policy = inference.Policy(cfg, icfg, params, tok)
    out = policy(batch_lib.prompt_before_reasoning(batch, 6), batch.history_xyz_bh3, jax.random.key(4))
    assert len(out["reasoning_text"]) == 2 and all(len(row) == 2 for row in out["reasoning_text"])
    for b in range(2):
        for s in range(2):
            n = out["reasoning_lengths"][b, s]
            assert out["reasoning_text"][b][s] == tok.decode(out["reasoning_tokens"][b, s, :n])
    assert isinstance(out["xy"], np.ndarray) and out["xy"].shape == (2, 2, 64, 2)


def test_stop_token_ends_reasoning_and_the_expert_still_runs(setup, monkeypatch):
    cfg, batch, params = setup
    stop = cfg.tokens.special_id("traj_future_start")
    only_stop = np.ones(cfg.vlm.text.vocab_size, bool)
    only_stop[stop] = False
    monkeypatch.setattr(inference, "banned_reasoning_ids", lambda _: only_stop)
    prompt = batch_lib.prompt_before_reasoning(batch, 6)
    icfg = inference.InferenceConfig(max_reasoning_tokens=5, temperature=0.0, flow_steps=2)
    out = inference.compile_policy(cfg, icfg)(params, prompt, batch.history_xyz_bh3, jax.random.key(0))
    assert np.asarray(out["reasoning_lengths"]).tolist() == [[0], [0]]
    assert np.all(np.isfinite(np.asarray(out["xy"])))


def test_cached_prefix_gives_the_same_velocity_as_the_training_forward(setup):
    """The expert reads identical K/V from the decode cache and from a full forward of the sequence."""
    cfg, batch, params = setup
    prompt = batch_lib.prompt_before_reasoning(batch, 6)
    icfg = inference.InferenceConfig(max_reasoning_tokens=4, temperature=0.0)
    tokens, lengths, cache, first = reason(cfg, icfg, params, prompt, jax.random.key(0))
    model = alpamayo.Alpamayo(cfg)
    x = jax.random.normal(jax.random.key(5), (2, 64, 2))
    t = jnp.array([0.3, 0.7])
    v_cache = velocity(cfg, params, x, t, cache.k, cache.v, cache.valid_bs, first)
    stop = cfg.tokens.special_id("traj_future_start")
    for b in range(2):
        n = int(prompt.valid_bl[b].sum())
        seq = np.concatenate(
            [np.asarray(prompt.tokens_bl[b, :n]), np.asarray(tokens[b, : lengths[b]]), [stop]]
        )
        pos = np.asarray(prompt.positions_3bl[:, b, :n])
        extra = int(prompt.next_position_b[b]) + np.arange(len(seq) - n)
        pos = np.concatenate([pos, np.broadcast_to(extra, (3, len(extra)))], 1)
        images = jax.tree_util.tree_map(lambda a, b=b: a[b : b + 1], batch.images)
        slots = np.concatenate([np.asarray(prompt.image_slots_bl[b, :n]), np.full(len(seq) - n, -1)])

        def prefix_kv(m, seq=seq, pos=pos, images=images, slots=slots):
            embeds, ds = m.vlm.embed(jnp.asarray(seq)[None], images, jnp.asarray(slots)[None])
            _, kv = m.vlm.text(embeds, jnp.asarray(pos)[:, None], jnp.ones((1, len(seq)), bool), None, ds)
            return kv

        k, v = jax.jit(nn.apply(prefix_kv, model))({"params": params})
        v_full = velocity(
            cfg, params, x[b : b + 1], t[b : b + 1], k, v, jnp.ones((1, len(seq)), bool), first[b : b + 1]
        )
        np.testing.assert_allclose(v_cache[b], v_full[0], atol=2e-4)


def test_layer_loop_training_layout_matches_the_scanned_model(setup):
    """`scan_layers=False` in every tower (ViT, text decoder, expert; the DeepStack taps taken from the
    tap blocks' outputs) under the training remat policy: the same losses and the same gradients,
    layer by layer, as the scanned model."""
    _, batch, params = setup
    scanned_cfg = alpamayo.alpamayo_config("tiny", remat="attention")
    loop_cfg = alpamayo.alpamayo_config("tiny", remat="attention", scan_layers=False)
    towers = (loop_cfg.vlm.vision, loop_cfg.vlm.text, loop_cfg.expert)
    assert not any(tower.scan_layers for tower in towers)
    flat = alpamayo.to_layout(params, loop_cfg)
    shapes = jax.eval_shape(
        lambda: nn.unbox(alpamayo.Alpamayo(loop_cfg).init(jax.random.key(0), batch, jax.random.key(1)))[
            "params"
        ]
    )
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(flat)
    assert len(flat["vlm"]["vision"]["blocks"]) == loop_cfg.vlm.vision.depth
    back = alpamayo.to_layout(flat, scanned_cfg)  # and back: stacked again, exactly
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)

    def loss_and_grad(cfg, p):
        def loss(p):
            out = alpamayo.Alpamayo(cfg).apply({"params": p}, batch, jax.random.key(3))
            return out["text_ce"] + out["traj_ce"] + out["flow"]

        return jax.jit(jax.value_and_grad(loss))(p)

    ref_loss, ref_grad = loss_and_grad(scanned_cfg, params)
    loss, grad = loss_and_grad(loop_cfg, flat)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    ref_grad = alpamayo.to_layout(ref_grad, loop_cfg)
    leaves = jax.tree_util.tree_leaves_with_path(grad)
    assert len(leaves) == len(jax.tree_util.tree_leaves(ref_grad))
    for (path, g), r in zip(leaves, jax.tree_util.tree_leaves(ref_grad), strict=True):
        np.testing.assert_allclose(g, r, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("layout", ["unfused", "fused", "fused_pallas"])
def test_unstacked_inference_layout_matches_the_scanned_model(setup, layout):
    """Per-layer layouts: unfused, fused (+ folded norms), and fused with the Pallas kernels of the
    decode steps and the flow steps (interpret mode here)."""
    cfg, batch, params = setup
    fused = layout != "unfused"
    # Norm scales away from their initial ones, so folding them into the kernels is exercised.
    rng = np.random.default_rng(7)

    def perturb(path, x):
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == "scale" and ("input_norm" in names or "post_norm" in names):
            return x * jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
        return x

    params = jax.tree_util.tree_map_with_path(perturb, params)
    flat_cfg = alpamayo.alpamayo_config("tiny", scan_layers=False, fused_projections=fused)
    if layout == "fused_pallas":
        flat_cfg = dataclasses.replace(
            flat_cfg,
            vlm=dataclasses.replace(
                flat_cfg.vlm,
                text=dataclasses.replace(
                    flat_cfg.vlm.text, decode_attention="pallas", decode_projections="pallas"
                ),
            ),
            expert=dataclasses.replace(flat_cfg.expert, prefix_attention="pallas"),
        )
    flat = alpamayo.to_layout(params, flat_cfg)
    shapes = jax.eval_shape(
        lambda: nn.unbox(alpamayo.Alpamayo(flat_cfg).init(jax.random.key(0), batch, jax.random.key(1)))[
            "params"
        ]
    )
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(flat)
    if layout != "fused_pallas":  # the Pallas kernels are inference-only (no gradient, no training loss)
        ref = forward(cfg, params, batch)
        out = forward(flat_cfg, flat, batch)
        for name in ("text_ce", "traj_ce", "flow"):
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5)
    # Inference: same reasoning, same cache, same velocity (the flow itself amplifies rounding through
    # its 100 Hz Fourier features, so it is compared one step at a time).
    prompt = batch_lib.prompt_before_reasoning(batch, 6)
    icfg = inference.InferenceConfig(max_reasoning_tokens=4, temperature=0.0)
    tokens_a, _, cache_a, first_a = reason(cfg, icfg, params, prompt, jax.random.key(0))
    tokens_b, _, cache_b, first_b = reason(flat_cfg, icfg, flat, prompt, jax.random.key(0))
    np.testing.assert_array_equal(tokens_a, tokens_b)
    np.testing.assert_array_equal(first_a, first_b)
    assert isinstance(cache_b.k, tuple) and len(cache_b.k) == cfg.vlm.text.num_layers  # per-layer buffers
    np.testing.assert_allclose(cache_a.k, np.stack(cache_b.k), atol=1e-5)
    np.testing.assert_allclose(cache_a.v, np.stack(cache_b.v), atol=1e-5)
    # One sample: the fused layout's one-token steps run the MLP as reductions (`layers.matvec`), and
    # with the Pallas kernels as `decode_mlp`'s (o, gate_up and down with the adds and norm inside).
    prompt1 = batch_lib.prompt_before_reasoning(batch_lib.fake(cfg, 1, seed=1), 6)
    tokens1_a, _, cache1_a, _ = reason(cfg, icfg, params, prompt1, jax.random.key(0))
    tokens1_b, _, cache1_b, _ = reason(flat_cfg, icfg, flat, prompt1, jax.random.key(0))
    np.testing.assert_array_equal(tokens1_a, tokens1_b)
    np.testing.assert_allclose(cache1_a.k, np.stack(cache1_b.k), atol=1e-5)
    np.testing.assert_allclose(cache1_a.v, np.stack(cache1_b.v), atol=1e-5)
    x = jax.random.normal(jax.random.key(5), (2, 64, 2))
    t = jnp.array([0.3, 0.7])
    va = velocity(cfg, params, x, t, cache_a.k, cache_a.v, cache_a.valid_bs, first_a)
    vb = velocity(flat_cfg, flat, x, t, cache_b.k, cache_b.v, cache_b.valid_bs, first_b)
    np.testing.assert_allclose(va, vb, atol=1e-5)
