"""Qwen3-VL at full size (shapes only) and tiny-size numerics options."""

import contextlib
import dataclasses
import functools
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_util import image_prompt
from jax import ad_checkpoint
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration

from alpamayo_jax.interop.hf_qwen3vl import hf_config_dict, param_map
from alpamayo_jax.models import layers, qwen3vl, qwen3vl_inputs, vlm


def abstract_params(cfg: qwen3vl.Qwen3VLConfig):
    """Shapes of every parameter via jax.eval_shape (nothing allocated)."""
    model = qwen3vl.Qwen3VL(cfg)
    arrays = image_prompt(cfg, [[(1, 4, 4)]], [[1, 2]], np.random.default_rng(0))
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            prompt.tokens_bl,
            prompt.positions_3bl,
            prompt.valid_bl,
            prompt.images,
            prompt.image_slots_bl,
        )
    )["params"]


@pytest.mark.parametrize("variant", ["qwen3vl_2b", "qwen3vl_8b"])
def test_full_size_parameter_count_equals_transformers(variant):
    cfg = qwen3vl.qwen3vl_config(variant)
    shapes = abstract_params(cfg)
    ours = sum(
        int(np.prod(x.value.shape if isinstance(x, nn.LogicallyPartitioned) else x.shape))
        for x in jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    )
    with torch.device("meta"):
        hf = Qwen3VLForConditionalGeneration(HFConfig(**hf_config_dict(cfg)))
    theirs = sum(p.numel() for p in hf.parameters())
    assert ours == theirs
    expected = {"qwen3vl_2b": (2.0e9, 2.3e9), "qwen3vl_8b": (8.5e9, 8.9e9)}[variant]
    assert expected[0] < ours < expected[1]


@pytest.mark.parametrize("variant", ["tiny", "qwen3vl_8b"])
def test_every_parameter_has_logical_axes_and_a_checkpoint_source(variant):
    cfg = qwen3vl.qwen3vl_config(variant)
    shapes = abstract_params(cfg)
    leaves = jax.tree_util.tree_leaves_with_path(
        shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    mapped = {e.path: e for e in param_map(cfg)}
    for path, leaf in leaves:
        keys = tuple(k.key for k in path)
        assert isinstance(leaf, nn.LogicallyPartitioned), keys
        assert len(leaf.names) == len(leaf.value.shape) and all(leaf.names), keys
        entry = mapped.pop(keys)
        assert ((entry.layers,) if entry.layers else ()) + entry.shape == leaf.value.shape, keys
    assert not mapped, f"map entries without a parameter: {sorted(mapped)}"


def test_bf16_and_remat_variants_agree_with_float32():
    cfg32 = qwen3vl.qwen3vl_config("tiny")
    arrays = image_prompt(cfg32, [[(1, 4, 4)], [(1, 2, 2)]], [[5, 6, 7], [8, 9]], np.random.default_rng(1))
    prompt = qwen3vl_inputs.prompt_inputs(cfg32, **arrays)
    args = (prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl, prompt.images, prompt.image_slots_bl)
    # Jitted: op by op, the init, forwards and gradients took about a minute on CPU.
    params = nn.unbox(jax.jit(lambda: qwen3vl.Qwen3VL(cfg32).init(jax.random.key(0), *args))())["params"]

    @functools.partial(jax.jit, static_argnums=1)
    def forward(p, cfg):
        logits, _ = qwen3vl.Qwen3VL(cfg).apply({"params": p}, *args)
        return logits

    ref = forward(params, cfg32)
    remat = cfg32.with_numerics(remat="full")
    out = forward(params, remat)
    np.testing.assert_allclose(out, ref, atol=1e-5)

    def loss(p, cfg):
        return jnp.mean(jax.nn.logsumexp(forward(p, cfg), -1))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_ref = grad(params, cfg32)
    for policy in ("full", "attention"):
        g_remat = grad(params, cfg32.with_numerics(remat=policy))
        for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_remat), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    bf16 = cfg32.with_numerics(dtype="bfloat16")
    out16 = forward(params, bf16)
    assert out16.dtype == jnp.float32
    valid = np.asarray(prompt.valid_bl)
    rel = np.linalg.norm((out16 - ref)[valid]) / np.linalg.norm(ref[valid])
    assert rel < 3e-2


def test_config_round_trips_through_json():
    for variant in qwen3vl.VARIANTS:
        cfg = qwen3vl.qwen3vl_config(variant, dtype="bfloat16")
        assert qwen3vl.Qwen3VLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown Qwen3-VL variant"):
        qwen3vl.qwen3vl_config("qwen3vl_80b")


def test_attention_remat_policy_saves_only_attention_outputs():
    q_blhd = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 4, 8)), jnp.float32)

    def saved(policy: str) -> str:
        policy_fn = vlm.REMAT_POLICIES[policy]
        f = jax.checkpoint(lambda q: (layers.attention(q, q, q) ** 2).sum(), policy=policy_fn)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            ad_checkpoint.print_saved_residuals(f, q_blhd)
        return out.getvalue()

    assert layers.ATTENTION_OUT not in saved("full")
    lines = [line for line in saved("attention").splitlines() if layers.ATTENTION_OUT in line]
    assert len(lines) == 1 and lines[0].startswith("f32[1,6,4,8]")
    assert vlm.attention_saveable(type("P", (), {"name": "dot_product_attention_fwd_wrapper"})())


def test_vision_norms_folded_into_kernels_are_the_same_function():
    """`VisionConfig.fold_norms` (the training default) moves the blocks' LayerNorm affine onto the next
    kernels; outputs and every gradient match the plain LayerNorm (the inference layout's) in float32."""
    cfg = qwen3vl.qwen3vl_config("tiny")
    plain = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, fold_norms=False))
    assert cfg.vision.fold_norms
    arrays = image_prompt(cfg, [[(1, 4, 4)], [(1, 2, 2)]], [[5, 6, 7], [8, 9]], np.random.default_rng(2))
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    args = (prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl, prompt.images, prompt.image_slots_bl)
    params = nn.unbox(jax.jit(lambda: qwen3vl.Qwen3VL(cfg).init(jax.random.key(0), *args))())["params"]
    rng = np.random.default_rng(3)
    # Non-trivial norm affines (init is scale 1, bias 0, where folding changes nothing).
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x + rng.normal(0, 0.3, x.shape).astype(x.dtype) if "norm" in jax.tree_util.keystr(path) else x
        ),
        params,
    )

    def loss(p, c):
        logits, _ = qwen3vl.Qwen3VL(c).apply({"params": p}, *args)
        return jnp.mean(jax.nn.logsumexp(logits, -1)), logits

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)  # as above
    (l_fold, out_fold), g_fold = value_and_grad(params, cfg)
    (l_plain, out_plain), g_plain = value_and_grad(params, plain)
    np.testing.assert_allclose(out_fold, out_plain, atol=2e-5)
    np.testing.assert_allclose(l_fold, l_plain, rtol=1e-6)
    leaves = jax.tree_util.tree_leaves_with_path(g_plain)
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(g_fold), strict=True):
        np.testing.assert_allclose(b, a, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    norm_grads = [
        a
        for path, a in leaves
        if "vision" in jax.tree_util.keystr(path) and "norm1" in jax.tree_util.keystr(path)
    ]
    assert norm_grads and all(float(jnp.abs(a).max()) > 0 for a in norm_grads)


def test_gelu_tanh_matches_jax_gelu_and_its_gradient():
    x = jnp.linspace(-9.0, 9.0, 20001, dtype=jnp.float32)
    np.testing.assert_array_equal(layers.gelu_tanh(x), jax.nn.gelu(x, approximate=True))
    grad = jax.vmap(jax.grad(layers.gelu_tanh))(x)
    ref = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=True)))(x)
    np.testing.assert_allclose(grad, ref, atol=1e-5)
    assert float(grad[0]) == pytest.approx(0.0, abs=1e-6) and float(grad[-1]) == pytest.approx(1.0, abs=1e-6)
    xb = x.astype(jnp.bfloat16)
    gb = jax.grad(lambda t: layers.gelu_tanh(t).astype(jnp.float32).sum())(xb)
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        gb.astype(jnp.float32), jax.vmap(jax.grad(layers.gelu_tanh))(xb.astype(jnp.float32)), atol=2e-2
    )


def test_fused_mlp_is_the_checkpoint_mlp_and_one_row_runs_as_reductions():
    """The inference layout's MLP (output-major gate_up `[2, M, E]` and down `[E, M]`, from
    `layers.fuse_gate_up_params`) equals the checkpoint layout's at several rows and at one row, where
    its projections are multiply + reduce (`layers.matvec`) rather than dots."""
    width, mlp_dim = 16, 24
    x_b3e = jax.random.normal(jax.random.key(0), (1, 3, width))
    unfused = vlm.MLP(width, mlp_dim)
    params = nn.unbox(unfused.init(jax.random.key(1), x_b3e))["params"]
    fused = vlm.MLP(width, mlp_dim, fused=True)
    fused_params = layers.fuse_gate_up_params(params)
    shapes = jax.eval_shape(lambda: nn.unbox(fused.init(jax.random.key(1), x_b3e))["params"])
    assert jax.tree_util.tree_map(jnp.shape, fused_params) == jax.tree_util.tree_map(jnp.shape, shapes)
    assert fused_params["gate_up"]["kernel"].shape == (2, mlp_dim, width)
    assert fused_params["down"]["kernel"].shape == (width, mlp_dim)
    ref = unfused.apply({"params": params}, x_b3e)
    assert float(jnp.abs(ref).min()) > 0
    np.testing.assert_allclose(fused.apply({"params": fused_params}, x_b3e), ref, rtol=1e-5, atol=1e-6)
    one_row = fused.apply({"params": fused_params}, x_b3e[:, 1:2])
    np.testing.assert_allclose(one_row, ref[:, 1:2], rtol=1e-5, atol=1e-6)

    def primitives(x):
        jaxpr = jax.make_jaxpr(lambda x: fused.apply({"params": fused_params}, x))(x)
        return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}

    assert "dot_general" not in primitives(x_b3e[:, :1]) and "reduce_sum" in primitives(x_b3e[:, :1])
    assert "dot_general" in primitives(x_b3e)


def test_one_row_logits_of_the_fused_layout_are_a_reduction_over_the_tied_table():
    """A batch-1 decode step's LM head in the inference layout is `layers.matvec` over the tied `[V, E]`
    embedding (one reduction fusion); other shapes and the checkpoint layout keep the dot. Same logits."""
    cfg = vlm.text_config("tiny", tie_embeddings=True)
    hidden = jax.random.normal(jax.random.key(0), (2, 3, cfg.width))
    layouts = {
        fused: vlm.TextDecoder(dataclasses.replace(cfg, fused_projections=fused)) for fused in (False, True)
    }
    table = jax.random.normal(jax.random.key(1), (cfg.vocab_size, cfg.width))
    params = {"embed": {"embedding": table}}

    def logits(fused, h):
        return layouts[fused].apply({"params": params}, h, method=vlm.TextDecoder.logits)

    def primitives(fused, h):
        jaxpr = jax.make_jaxpr(lambda h: logits(fused, h))(h)
        return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}

    ref = np.einsum("ble,ve->blv", np.asarray(hidden), np.asarray(table))
    for fused in (False, True):
        for h in (hidden, hidden[:1, 1:2]):
            got = logits(fused, h)
            assert got.shape == (h.shape[0], h.shape[1], cfg.vocab_size) and got.dtype == jnp.float32
            want = ref if h.shape[0] == 2 else ref[:1, 1:2]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            one_row = fused and h.shape[0] * h.shape[1] == 1
            assert ("dot_general" in primitives(fused, h)) == (not one_row)
            assert ("reduce_sum" in primitives(fused, h)) == one_row


def test_one_token_residual_stream_sits_behind_a_barrier_only_in_the_fused_layout():
    h = jnp.ones((1, 1, 8))

    def primitives(x, enabled):
        jaxpr = jax.make_jaxpr(lambda x: layers.residual_row(x + 1, enabled))(x)
        return [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]

    assert primitives(h, True) == ["add", "optimization_barrier"]
    assert primitives(h, False) == ["add"]
    assert primitives(jnp.ones((1, 2, 8)), True) == ["add"]
    np.testing.assert_array_equal(layers.residual_row(h + 1, True), h + 1)
    h2, inv = layers.residual_row((h + 1, jnp.full((1, 1, 1), 0.5)), True)  # the stream and its norm factor
    np.testing.assert_array_equal(h2, h + 1)
    np.testing.assert_array_equal(inv, 0.5)
