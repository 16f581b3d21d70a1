"""The batch-1 decode projections' Pallas kernels (interpret mode on the CPU) against the XLA layer,
their errors, and a tiny Qwen3-VL decoding with them."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import generation
from alpamayo_jax.models import decode_mlp, layers, qwen3vl, qwen3vl_inputs, residual_norm


def weights(dtype, width=64, mlp=192, attn=128, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)

    def normal(key, shape, scale):
        return (scale * jax.random.normal(key, shape)).astype(dtype)

    return dict(
        h=normal(k[0], (1, width), 3.0),
        attn=normal(k[1], (1, attn), 1.0),
        o=normal(k[2], (width, attn), attn**-0.5),
        gate_up=normal(k[3], (2, mlp, width), 2.0 * width**-0.5),
        down=normal(k[4], (width, mlp), mlp**-0.5),
    )


def xla_layer_tail(w, eps):
    """The fused layout's XLA path after the attention: o, residual + post-norm factor, gate_up scaled,
    SwiGLU, down, residual."""
    h1, inv_rms = residual_norm.residual_rms(w["h"][None], layers.matvec(w["o"], w["attn"])[None], eps)
    gate_up = layers.scale_rows(layers.matvec(w["gate_up"], h1[0])[None], inv_rms)[0]
    act = jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
    return h1[0], act, h1[0] + layers.matvec(w["down"], act)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tiles", [decode_mlp.RESIDUAL_TILES, (4, 32, 4, 1), (16, 64, 2, 2)])
def test_kernels_equal_the_xla_layer(dtype, tiles):
    w = weights(dtype)
    eps = 1e-6
    h1 = decode_mlp.residual_matvec(w["attn"], w["o"], w["h"], tiles=tiles)
    act = decode_mlp.gate_up_swiglu(h1, w["gate_up"], eps, tiles=tiles)
    h2 = decode_mlp.residual_matvec(act, w["down"], h1, tiles=tiles)
    want_h1, want_act, want_h2 = xla_layer_tail(w, eps)
    for got, want, shape in ((h1, want_h1, (1, 64)), (act, want_act, (1, 192)), (h2, want_h2, (1, 64))):
        assert got.shape == shape and got.dtype == jnp.dtype(dtype)
        # float32: the order of the sums; bfloat16: a product that lands on the other side of a rounding.
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=3e-2)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
    assert float(jnp.abs(act.astype(jnp.float32)).max()) > 0.5  # the SwiGLU is not near zero everywhere


def test_gate_up_takes_the_norm_factor_of_its_row():
    """Scaling the residual row leaves the normed gate and up, hence the SwiGLU, unchanged; eps bounds a
    zero row (silu(0) * 0 = 0)."""
    w = weights("float32")
    act = decode_mlp.gate_up_swiglu(w["h"], w["gate_up"], 1e-6)
    scaled = decode_mlp.gate_up_swiglu(10.0 * w["h"], w["gate_up"], 1e-6)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(act), rtol=1e-4, atol=1e-5)
    zero = decode_mlp.gate_up_swiglu(jnp.zeros_like(w["h"]), w["gate_up"], 0.25)
    np.testing.assert_array_equal(np.asarray(zero), 0.0)


def test_kernels_reject_bad_shapes():
    w = weights("float32")
    with pytest.raises(ValueError, match=r"x \(2, 128\) must be one row"):
        decode_mlp.residual_matvec(jnp.zeros((2, 128)), w["o"], w["h"])
    with pytest.raises(ValueError, match="must end in the row's length K = 96"):
        decode_mlp.residual_matvec(jnp.zeros((1, 96)), w["o"], w["h"])
    with pytest.raises(ValueError, match=r"h \(1, 32\) must be \[1, 64\]"):
        decode_mlp.residual_matvec(w["attn"], w["o"], jnp.zeros((1, 32)))
    with pytest.raises(ValueError, match=r"must be \[2, M, E\]"):
        decode_mlp.gate_up_swiglu(w["h"], jnp.zeros((3, 192, 64)), 1e-6)


def test_config_rejects_an_unknown_decode_projections():
    with pytest.raises(ValueError, match="decode_projections 'cuda'; known: xla, pallas"):
        qwen3vl.qwen3vl_config("tiny", decode_projections="cuda")


def tiny_fused(decode_projections):
    return qwen3vl.qwen3vl_config(
        "tiny",
        scan_layers=False,
        fused_projections=True,
        decode_attention="pallas",
        decode_projections=decode_projections,
    )


def test_batch_one_decode_runs_the_kernels_and_matches_xla():
    """A batch-1 decode step of the fused layout runs the attention kernels, then o + residual, gate_up
    + norm + SwiGLU and down + residual as `decode_mlp`'s kernels; it picks the same tokens as the XLA
    projections with logits equal up to float32 summation order; a batch-2 step keeps XLA's."""
    cfg = tiny_fused("pallas")
    assert cfg.text.fused_decode
    model = qwen3vl.Qwen3VL(cfg)
    rng = np.random.default_rng(5)
    prompt = qwen3vl_inputs.prompt_inputs(cfg, rng.integers(0, 400, (1, 7)), np.ones((1, 7), np.int64))
    params = nn.unbox(model.init(jax.random.key(0), prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl))[
        "params"
    ]
    params = jax.tree_util.tree_map(lambda x: 4.0 * x, params)  # larger logits: well-separated argmax
    _, cache = generation.prefill(model, params, prompt, 12)
    token = jnp.ones((1, 1), jnp.int32)

    def step_kernels(c, token):
        jaxpr = jax.make_jaxpr(
            lambda p, c: model.apply(
                {"params": p}, token, prompt.next_position_b, c, method=model.decode_step
            )
        )(params, c)
        return [str(e.params.get("name", "")) for e in jaxpr.eqns if e.primitive.name == "pallas_call"]

    tail = ["decode_residual_matvec", "decode_gate_up_swiglu", "decode_residual_matvec"]
    assert step_kernels(cache, token) == (
        ["decode_layer_attention", "attention_split_combine", *tail] * cfg.text.num_layers
    )
    prompt2 = qwen3vl_inputs.prompt_inputs(cfg, rng.integers(0, 400, (2, 7)), np.ones((2, 7), np.int64))
    _, cache2 = generation.prefill(model, params, prompt2, 12)
    jaxpr = jax.make_jaxpr(
        lambda p, c: model.apply(
            {"params": p}, token.repeat(2, 0), prompt2.next_position_b, c, method=model.decode_step
        )
    )(params, cache2)
    names = [str(e.params.get("name", "")) for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert (
        names == ["decode_layer_attention", "attention_split_combine", "residual_rms"] * cfg.text.num_layers
    )

    generated, _ = jax.jit(generation.generate, static_argnums=(0, 3))(model, params, prompt, 5)
    xla_model = qwen3vl.Qwen3VL(
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, decode_projections="xla"))
    )
    want, _ = jax.jit(generation.generate, static_argnums=(0, 3))(xla_model, params, prompt, 5)
    np.testing.assert_array_equal(generated, want)
    assert len(set(np.asarray(want).ravel().tolist())) > 1  # not one token repeated

    step = jax.jit(
        lambda m, c: m.apply({"params": params}, token, prompt.next_position_b, c, method=m.decode_step),
        static_argnums=0,
    )
    logits, _ = step(model, cache)
    want_logits, _ = step(xla_model, cache)
    assert float(jnp.abs(want_logits).max()) > 1.0
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), rtol=1e-5, atol=1e-4)


def test_the_gpu_inference_layout_uses_the_kernels_where_they_measured_faster(monkeypatch):
    """ar1_2b: 84 MB of o, gate_up and down weights per layer (bf16), where the kernels won; ar1_10b:
    335 MB, where XLA's reductions won (docs/PERFORMANCE.md, session 13)."""
    from alpamayo_jax.models import alpamayo

    assert decode_mlp.layer_bytes(2048, 6144, 2048, 2) == 83_886_080
    assert decode_mlp.layer_bytes(4096, 12288, 4096, 2) == 335_544_320
    assert alpamayo.inference_layout(alpamayo.alpamayo_config("ar1_2b")).vlm.text.decode_projections == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the layout's choice on a GPU
    chosen = {}
    for preset in ("tiny", "ar1_2b", "ar1_10b"):
        cfg = alpamayo.alpamayo_config(preset, dtype="bfloat16", param_dtype="bfloat16")
        text = alpamayo.inference_layout(cfg).vlm.text
        chosen[preset] = (text.decode_attention, text.decode_projections, text.fused_decode)
    assert chosen == {
        "tiny": ("pallas", "pallas", True),
        "ar1_2b": ("pallas", "pallas", True),
        "ar1_10b": ("pallas", "xla", True),
    }
