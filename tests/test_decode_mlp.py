"""The decode step's one-kernel MLP (`models/decode_mlp.py`, Pallas interpret mode on the CPU)."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import generation
from alpamayo_jax.models import alpamayo, decode_mlp, layers, qwen3vl, qwen3vl_inputs, vlm
from alpamayo_jax.models.vlm import MLP
from tests.test_decode_attention import greedy_decode


def unfused_mlp(h_be, norm_scale_e, gate_em, up_em, down_me, eps):
    """The checkpoint layout's MLP half: RMSNorm(h) with its scale, then down(silu(gate) * up), in float32."""
    h = h_be.astype(jnp.float32)
    n = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps) * norm_scale_e
    gate, up = n @ gate_em.astype(jnp.float32), n @ up_em.astype(jnp.float32)
    return (jax.nn.silu(gate) * up) @ down_me.astype(jnp.float32)


def folded_weights(rng, width, units, dtype):
    """Random checkpoint-layout weights and the inference layout's kernels made from them
    (`layers.fuse_gate_up_params` + the post-norm's scale folded in, as `alpamayo.to_layout`)."""
    scale = 1.0 + 0.2 * rng.standard_normal(width).astype(np.float32)
    gate, up = (rng.standard_normal((width, units)).astype(np.float32) / np.sqrt(width) for _ in range(2))
    down = rng.standard_normal((units, width)).astype(np.float32) / np.sqrt(units)
    fused = layers.fuse_gate_up_params({"gate": {"kernel": gate}, "up": {"kernel": up}})["gate_up"]["kernel"]
    assert fused.shape == (2, units, width)
    gate_up = layers.fold_norm_scale(fused, jnp.asarray(scale), axis=-1)
    return (scale, gate, up, down), (gate_up.astype(dtype), jnp.asarray(down, dtype))


@pytest.mark.parametrize(
    "dtype, rows, chunk, block_k, block_n",
    [("float32", 1, 16, 64, 64), ("float32", 3, 32, 128, 32), ("bfloat16", 4, 16, 256, 128)],
)
def test_kernel_equals_the_unfused_mlp(dtype, rows, chunk, block_k, block_n):
    width, units, eps = 256, 128, 1e-6
    rng = np.random.default_rng(rows)
    (scale, gate, up, down), (gate_up_2me, down_me) = folded_weights(rng, width, units, dtype)
    h = jnp.asarray(3.0 * rng.standard_normal((rows, width)), dtype)
    tiles = dict(chunk=chunk, block_k=block_k, block_n=block_n)
    partials = decode_mlp.mlp_partials(h, gate_up_2me, down_me, eps=eps, **tiles)
    assert partials.shape == (units // chunk, rows, width) and partials.dtype == jnp.float32
    got = decode_mlp.decode_mlp(h, gate_up_2me, down_me, eps=eps, **tiles)
    assert got.shape == (rows, width) and got.dtype == h.dtype
    want = unfused_mlp(h, scale, gate, up, down, eps)
    tol = 1e-5 if dtype == "float32" else 0.05
    assert float(jnp.abs(want).max()) > 0.5
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=tol, rtol=tol)
    # Every program's partial is its own units' share: zeroing one chunk of units removes exactly it.
    cut = down_me.at[:chunk].set(0)
    partials_cut = decode_mlp.mlp_partials(h, gate_up_2me, cut, eps=eps, **tiles)
    np.testing.assert_array_equal(np.asarray(partials_cut[1:]), np.asarray(partials[1:]))
    np.testing.assert_array_equal(np.asarray(partials_cut[0]), 0.0)


def test_kernel_matches_the_xla_mlp_of_the_inference_layout_in_bfloat16():
    """The same rounding points as `vlm.MLP` with a folded pre-norm (`layers.pre_norm`, `scale_rows`)."""
    width, units, eps = 128, 64, 1e-6
    rng = np.random.default_rng(7)
    _, (gate_up_2me, down_me) = folded_weights(rng, width, units, jnp.bfloat16)
    h = jnp.asarray(rng.standard_normal((2, 1, width)), jnp.bfloat16)
    params = {"gate_up": {"kernel": gate_up_2me}, "down": {"kernel": down_me}}
    x, inv_rms = layers.pre_norm(h, True, eps, jnp.bfloat16, jnp.bfloat16, "unused")
    xla = MLP(width, units, jnp.bfloat16, jnp.bfloat16, fused=True).apply({"params": params}, x, inv_rms)
    kernel = MLP(width, units, jnp.bfloat16, jnp.bfloat16, fused=True, decode_kernel=True, norm_eps=eps)
    got = kernel.apply({"params": params}, x, inv_rms)
    assert got.shape == xla.shape == (2, 1, width)
    diff = np.abs(np.asarray(got, np.float32) - np.asarray(xla, np.float32))
    assert float(diff.max()) <= 0.02 * float(np.abs(np.asarray(xla, np.float32)).max())
    # More rows than the kernel takes: the XLA path, exactly.
    rows = jnp.concatenate([h] * 3)  # 6 rows
    x6, inv6 = layers.pre_norm(rows, True, eps, jnp.bfloat16, jnp.bfloat16, "unused")
    xla6 = MLP(width, units, jnp.bfloat16, jnp.bfloat16, fused=True).apply({"params": params}, x6, inv6)
    np.testing.assert_array_equal(np.asarray(kernel.apply({"params": params}, x6, inv6)), np.asarray(xla6))


def test_bad_shapes_raise_errors_naming_the_argument():
    rng = np.random.default_rng(0)
    _, (gate_up_2me, down_me) = folded_weights(rng, 64, 32, jnp.float32)
    h = jnp.ones((1, 64))
    run = lambda *a, **kw: decode_mlp.mlp_partials(*a, eps=1e-6, **{"block_k": 64, "block_n": 64, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="h_be"):
        run(jnp.ones((5, 64)), gate_up_2me, down_me)
    with pytest.raises(ValueError, match="gate_up_2me"):
        run(h, gate_up_2me[:1], down_me)
    with pytest.raises(ValueError, match="down_me"):
        run(h, gate_up_2me, down_me[:16])
    with pytest.raises(ValueError, match="dtypes"):
        run(h, gate_up_2me, down_me.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="chunk = 24"):
        run(h, gate_up_2me, down_me, chunk=24)
    with pytest.raises(ValueError, match="block_k = 128"):
        run(h, gate_up_2me, down_me, block_k=128)


def test_config_switch_validates_round_trips_and_follows_the_backend(monkeypatch):
    with pytest.raises(ValueError, match="decode_mlp 'cuda'"):
        vlm.text_config("tiny", decode_mlp="cuda")
    with pytest.raises(ValueError, match="per-layer layout"):
        vlm.text_config("tiny", decode_mlp="pallas")  # scanned layers
    full = alpamayo.alpamayo_config("tiny")
    assert alpamayo.inference_layout(full).vlm.text.decode_mlp == "xla"  # the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    gpu = alpamayo.inference_layout(full)
    assert gpu.vlm.text.decode_mlp == "pallas" and gpu.vlm.text.mlp_kernel
    assert alpamayo.scanned_layout(gpu).vlm.text.decode_mlp == "xla"
    assert alpamayo.AlpamayoConfig.from_dict(json.loads(json.dumps(gpu.to_dict()))) == gpu


def test_tiny_qwen3vl_greedy_decoding_with_the_mlp_kernel_matches_xla():
    """The per-layer fused layout with every decode kernel on: the same tokens as XLA, logits to 1e-4
    (float32), and one `decode_mlp` kernel per layer in a decode step."""
    cfg = qwen3vl.qwen3vl_config("tiny", scan_layers=False, fused_projections=True)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 400, (2, 9))
    valid = np.arange(9)[None] < np.array([[9], [6]])
    prompt = qwen3vl_inputs.prompt_inputs(cfg, np.where(valid, ids, 0), valid.astype(np.int64))
    model = qwen3vl.Qwen3VL(cfg)
    params = nn.unbox(model.init(jax.random.key(1), prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl))
    params = jax.tree_util.tree_map(lambda x: 4.0 * x, params["params"])
    tokens, logits = greedy_decode(cfg, params, prompt, 4)
    kernels = dataclasses.replace(
        cfg, text=dataclasses.replace(cfg.text, decode_attention="pallas", decode_mlp="pallas")
    )
    tokens_k, logits_k = greedy_decode(kernels, params, prompt, 4)
    np.testing.assert_array_equal(tokens_k, tokens)
    assert np.abs(logits).max() > 1.0
    np.testing.assert_allclose(logits_k, logits, atol=1e-4)

    _, cache = generation.prefill(qwen3vl.Qwen3VL(kernels), params, prompt, 16)
    jaxpr = jax.make_jaxpr(
        lambda p, c: qwen3vl.Qwen3VL(kernels).apply(
            {"params": p},
            prompt.tokens_bl[:, :1],
            prompt.next_position_b,
            c,
            method=qwen3vl.Qwen3VL.decode_step,
        )
    )(params, cache)
    names = [str(e.params.get("name", "")) for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert names == ["decode_layer_attention", "attention_split_combine", "decode_mlp"] * cfg.text.num_layers
