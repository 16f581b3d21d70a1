"""The Pallas flash-decoding kernel (interpret mode on the CPU) against the XLA two-part attention, its
split partials against a NumPy softmax, its errors, the config switch, and tiny Qwen3-VL decoding."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import generation
from alpamayo_jax.benchmarks import decode_attention as decode_attention_bench
from alpamayo_jax.models import alpamayo, decode_attention, layers, qwen3vl, qwen3vl_inputs, vlm

K, D = 2, 16  # the tiny text decoder's kv heads and head_dim


def cache_mask(batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Cache slot masks `[B, S]` with gaps: row 0 a right-padded prompt then decode slots after a gap,
    row 1 nothing valid in its first 128 slots, row 2 no valid slot at all (only the new token)."""
    mask = np.zeros((batch, length), bool)
    mask[0, :37] = True
    mask[0, 100:140] = True
    mask[0, length - 20 : length - 3] = True
    if batch > 1:
        mask[1, 128:] = rng.random(length - 128) < 0.7
    return mask


def inputs(batch, groups, length, dtype, seed=0, new_tokens=1):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(2.0 * rng.standard_normal(shape), dtype)

    q = normal(batch, 1, K * groups, D)
    k1, v1 = normal(batch, K, length, D), normal(batch, K, length, D)
    k2, v2 = normal(batch, K, new_tokens, D), normal(batch, K, new_tokens, D)
    return q, k1, v1, jnp.asarray(cache_mask(batch, length, rng)), k2, v2


@pytest.mark.parametrize(
    "dtype, groups, batch, length, chunk, block_s",
    [
        ("float32", 1, 1, 256, None, 128),
        ("float32", 2, 3, 512, 256, 64),
        ("float32", 4, 3, 256, 128, 32),
        ("bfloat16", 2, 1, 512, None, 128),
        ("bfloat16", 4, 3, 512, 128, 64),
        ("bfloat16", 1, 3, 256, 256, 128),
    ],
)
def test_matches_xla_two_part_attention(dtype, groups, batch, length, chunk, block_s):
    args = inputs(batch, groups, length, dtype)
    out = decode_attention.decode_two_part_attention(*args, chunk=chunk, block_s=block_s)
    ref = layers.two_part_attention(*args)
    assert out.shape == ref.shape and out.dtype == jnp.dtype(dtype)
    tol = dict(atol=1e-5) if dtype == "float32" else dict(atol=2e-2, rtol=1e-2)  # bf16: ~2 ulp
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
    if batch == 3:  # the row without a valid cache slot: softmax over the new token alone returns its value
        expected = np.repeat(np.asarray(args[5][2, :, 0], np.float32), groups, axis=0)
        np.testing.assert_allclose(np.asarray(out[2, 0], np.float32), expected, **tol)


def test_partials_combine_to_a_numpy_softmax():
    q, k1, v1, mask, _, _ = inputs(3, 2, 512, "float32", seed=1)
    partials = decode_attention.cache_attention(q.reshape(3, K, 2, D), k1, v1, mask, chunk=128, block_s=32)
    acc, m, lsum = (np.asarray(x, np.float64) for x in partials)
    assert acc.shape == (3, K, 4, 2, D) and m.shape == lsum.shape == (3, K, 4, 2)
    qn, kn, vn, maskn = (np.asarray(x, np.float64) for x in (q, k1, v1, mask))
    scores = np.einsum("bkgd,bksd->bkgs", qn.reshape(3, K, 2, D) * D**-0.5, kn)
    scores = np.where(maskn[:, None, None].astype(bool), scores, -np.inf)
    # Each split's max over its own valid slots; splits with none: the sentinel, lsum = 0, acc = 0.
    split_max = scores.reshape(3, K, 2, 4, 128).max(axis=-1).transpose(0, 1, 3, 2)
    empty = ~maskn.reshape(3, 4, 128).any(axis=-1)
    assert empty[0, 2] and empty[1, 0] and empty[2].all() and not empty[0, 3]
    np.testing.assert_allclose(
        np.where(np.isinf(split_max), decode_attention.MASKED_SCORE, split_max), m, rtol=1e-6
    )
    empty = np.broadcast_to(empty[:, None, :, None], lsum.shape)
    assert np.all(lsum[empty] == 0) and np.all(acc[empty] == 0) and np.all(lsum[~empty] > 0)
    # Rows with a valid slot (0 and 1): rescaled partials = softmax(scores) @ v.
    acc, m, lsum, scores = acc[:2], m[:2], lsum[:2], scores[:2]
    w = np.exp(m - m.max(axis=2, keepdims=True))
    out = (w[..., None] * acc).sum(axis=2) / (w * lsum).sum(axis=2)[..., None]
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    ref = np.einsum("bkgs,bksd->bkgd", p / p.sum(axis=-1, keepdims=True), vn[:2])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_jit_and_default_chunks():
    args = inputs(1, 2, 512, "bfloat16", seed=2)
    run = jax.jit(functools.partial(decode_attention.decode_two_part_attention, block_s=64))
    np.testing.assert_array_equal(run(*args), decode_attention.decode_two_part_attention(*args, block_s=64))
    # Enough programs to fill an H100's 132 SMs, with power-of-two chunks of whole blocks.
    assert decode_attention.default_chunk(1, 8, 3072, 128) == 128  # 192 programs
    assert decode_attention.default_chunk(4, 8, 3072, 128) == 512  # 192 programs
    assert decode_attention.default_chunk(1, 2, 256, 128) == 128
    assert decode_attention.default_chunk(64, 8, 4096, 128) == 4096  # the batch alone fills the GPU
    assert decode_attention.one_wave_chunk(8, 3072, 64) == 192  # ar1_2b flow: 128 programs
    assert decode_attention.one_wave_chunk(16, 3072, 64) == 384  # ar1_10b flow: 128 programs
    assert decode_attention.one_wave_chunk(200, 256, 64) == 256  # no split fits one wave


def test_bad_shapes_raise_errors_naming_the_argument():
    q, k1, v1, mask, k2, v2 = inputs(1, 2, 256, "float32")
    two_part = decode_attention.decode_two_part_attention
    with pytest.raises(ValueError, match="one query token"):
        two_part(jnp.concatenate([q, q], axis=1), k1, v1, mask, k2, v2)
    with pytest.raises(ValueError, match="multiple of block_s"):
        two_part(q, k1[:, :, :200], v1[:, :, :200], mask[:, :200], k2, v2)
    with pytest.raises(ValueError, match="chunk = 96"):
        two_part(q, k1, v1, mask, k2, v2, chunk=96, block_s=32)
    with pytest.raises(ValueError, match="G = 32"):
        two_part(jnp.zeros((1, 1, 64, D)), k1, v1, mask, k2, v2)
    with pytest.raises(ValueError, match="dtypes must match"):
        two_part(q, k1.astype(jnp.bfloat16), v1, mask, k2, v2)
    with pytest.raises(ValueError, match="mask_bs"):
        two_part(q, k1, v1, mask[:, :128], k2, v2)
    with pytest.raises(ValueError, match="v_bksd"):
        two_part(q, k1, v1[:, :1], mask, k2, v2)
    with pytest.raises(ValueError, match="k2_bktd"):
        two_part(q, k1, v1, mask, k2[:, :1], v2)
    with pytest.raises(ValueError, match="not a multiple"):
        two_part(q[:, :, :3], k1, v1, mask, k2, v2)
    with pytest.raises(ValueError, match="block_s = 48"):
        two_part(q, k1, v1, mask, k2, v2, block_s=48)


def test_config_switch_validates_round_trips_and_follows_the_backend(monkeypatch):
    with pytest.raises(ValueError, match="decode_attention 'triton'"):
        vlm.text_config("tiny", decode_attention="triton")
    with pytest.raises(ValueError, match="per-layer layout"):
        vlm.text_config("tiny", decode_attention="pallas")  # scanned layers
    cfg = qwen3vl.qwen3vl_config("tiny", decode_attention="pallas", scan_layers=False)
    assert cfg.text.decode_attention == "pallas"
    assert qwen3vl.Qwen3VLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    full = alpamayo.alpamayo_config("tiny")
    assert alpamayo.inference_layout(full).vlm.text.decode_attention == "xla"  # the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    gpu = alpamayo.inference_layout(full)
    assert gpu.vlm.text.decode_attention == "pallas" and not gpu.vlm.text.scan_layers
    # Every tower per layer (the ViT too: measured -0.95 ms on ar1_2b), the ViT's norms unfolded.
    assert not gpu.vlm.vision.scan_layers and not gpu.vlm.vision.fold_norms and not gpu.expert.scan_layers
    assert full.vlm.vision.scan_layers
    assert gpu.expert.prefix_attention == "pallas" and full.expert.prefix_attention == "xla"
    with pytest.raises(ValueError, match="per-layer fused layout"):
        dataclasses.replace(full.expert, prefix_attention="pallas")  # scanned
    with pytest.raises(ValueError, match="prefix_attention 'cuda'"):
        dataclasses.replace(gpu.expert, prefix_attention="cuda")
    assert alpamayo.AlpamayoConfig.from_dict(json.loads(json.dumps(gpu.to_dict()))) == gpu


def greedy_decode(cfg, params, prompt, steps):
    """Prefill then `steps` greedy decode steps; returns (tokens `[B, steps]`, logits `[B, steps, V]`)."""
    model = qwen3vl.Qwen3VL(cfg)
    logits, cache = jax.jit(
        lambda p: generation.prefill(model, p, prompt, prompt.tokens_bl.shape[1] + steps)
    )(params)
    step = jax.jit(
        lambda p, token, pos, c: model.apply(
            {"params": p}, token[:, None], pos, c, method=qwen3vl.Qwen3VL.decode_step
        )
    )
    tokens, all_logits, pos = [], [], prompt.next_position_b
    for _ in range(steps):
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits, cache = step(params, token, pos, cache)
        tokens.append(token)
        all_logits.append(logits)
        pos = pos + 1
    return np.stack(tokens, axis=1), np.stack(all_logits, axis=1)


@pytest.mark.parametrize("fused", [False, True])
def test_tiny_qwen3vl_greedy_decoding_matches_xla(fused):
    """Per-layer layouts: unfused (the cache kernel + combine) and fused (the whole-layer kernel)."""
    cfg = qwen3vl.qwen3vl_config("tiny", scan_layers=False, fused_projections=fused)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 400, (2, 9))
    valid = np.arange(9)[None] < np.array([[9], [5]])  # a right-padded row: a gap before its decode slots
    prompt = qwen3vl_inputs.prompt_inputs(cfg, np.where(valid, ids, 0), valid.astype(np.int64))
    params = nn.unbox(
        qwen3vl.Qwen3VL(cfg).init(jax.random.key(0), prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl)
    )["params"]
    params = jax.tree_util.tree_map(lambda x: 4.0 * x, params)  # larger logits: well-separated argmax
    tokens, logits = greedy_decode(cfg, params, prompt, 4)
    pallas = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, decode_attention="pallas"))
    tokens_p, logits_p = greedy_decode(pallas, params, prompt, 4)
    np.testing.assert_array_equal(tokens_p, tokens)
    assert np.abs(logits).max() > 1.0
    np.testing.assert_allclose(logits_p, logits, atol=1e-4)
    # The compiled generation loop (decode steps inside lax.while_loop) picks the same tokens.
    generated, _ = jax.jit(generation.generate, static_argnums=(0, 3))(
        qwen3vl.Qwen3VL(pallas), params, prompt, 4
    )
    np.testing.assert_array_equal(generated, tokens)


def test_decode_attention_benchmark_runs_at_tiny_shapes():
    result = decode_attention_bench.run(
        "tiny", length=256, unfilled=10, repeat=2, reps=1, settings=((None, 128, 4, 2), (256, 32, 4, 2))
    )
    assert result["shape"] == dict(
        batch=1, kv_heads=K, groups=2, length=256, head_dim=D, layers=2, dtype="bfloat16"
    )
    assert result["xla_us_per_layer"] > 0 and result["floor_us_per_layer"] > 0
    assert [(s["chunk"], s["block_s"], s["programs"]) for s in result["pallas"]] == [
        (128, 128, 4),
        (256, 32, 2),
    ]
    for setting in result["pallas"]:
        assert setting["us_per_layer"] > 0 and setting["max_abs_diff_vs_xla"] < 2e-2
    fused = [(s["chunk"], s["block_s"], s["programs"], s["us_per_layer"] > 0) for s in result["fused"]]
    assert fused == [(128, 128, 4, True), (256, 32, 2, True)]


def unfused_decode_layer(qkv, h, q_scale, k_scale, cos, sin, cache_k, cache_v, mask, index, eps):
    """What the unfused inference layer does: the folded input norm's 1/RMS of the layer input h
    (`layers.pre_norm`), scale rows, q/k RMSNorm, rotary, two-part attention over the cache + the new
    token, then the cache write at `index`."""
    b, k, rows, d = qkv.shape
    g = rows - 2
    _, inv_rms = layers.pre_norm(h[:, None], True, eps, h.dtype, h.dtype, "unused")
    t = layers.scale_rows(qkv[:, None], inv_rms)[:, 0]  # [B, K, G + 2, D]

    def norm(x, scale):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale).astype(x.dtype)

    q = norm(t[:, :, :g], q_scale).reshape(b, 1, k * g, d)
    k_new = norm(t[:, :, g], k_scale)[:, None]  # [B, 1, K, D]
    q = layers.apply_rotary(q, cos[:, None], sin[:, None])
    k_new = layers.apply_rotary(k_new, cos[:, None], sin[:, None])[:, 0]  # [B, K, D]
    v_new = t[:, :, g + 1]
    out = layers.two_part_attention(q, cache_k, cache_v, mask, k_new[:, :, None], v_new[:, :, None])
    return out, cache_k.at[:, :, index].set(k_new), cache_v.at[:, :, index].set(v_new)


@pytest.mark.parametrize(
    "dtype, groups, batch, chunk, length",
    # 192 / 64: three splits, which the combine kernel pads to four with masked loads.
    [
        ("float32", 2, 3, 128, 256),
        ("bfloat16", 1, 1, None, 256),
        ("bfloat16", 4, 3, 64, 256),
        ("float32", 2, 2, 64, 192),
    ],
)
def test_fused_decode_layer_attention_equals_the_unfused_layer(dtype, groups, batch, chunk, length):
    index, eps = 163, 1e-6
    rng = np.random.default_rng(groups)

    def normal(*shape, s=2.0):
        return jnp.asarray(s * rng.standard_normal(shape), dtype)

    qkv = normal(batch, K, groups + 2, D)
    h = normal(batch, 64, s=rng.uniform(0.3, 3.0))  # the layer input: its 1/RMS scales the qkv rows
    q_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    k_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    positions = jnp.asarray(rng.integers(0, 500, (3, batch, 1)))
    cos, sin = (c[:, 0] for c in layers.mrope_cos_sin(positions, D, 5e6, (4, 2, 2)))
    cache_k, cache_v = normal(batch, K, length, D), normal(batch, K, length, D)
    mask = jnp.asarray(cache_mask(batch, length, rng)).at[:, index].set(False)  # the new slot: unmasked later
    args = (qkv, h, q_scale, k_scale, cos, sin, cache_k, cache_v, mask, jnp.int32(index))
    out, new_k, new_v = jax.jit(
        functools.partial(
            decode_attention.fused_decode_attention, eps=eps, norm_eps=eps, chunk=chunk, block_s=32
        )
    )(*args)
    ref, ref_k, ref_v = unfused_decode_layer(*args, eps)
    tol = dict(atol=1e-5) if dtype == "float32" else dict(atol=2e-2, rtol=1e-2)
    assert out.shape == (batch, 1, K * groups, D) and out.dtype == qkv.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
    # The new key/value land in slot `index` (as the unfused layer rounds them); no other slot moves.
    cache_tol = dict(atol=1e-6) if dtype == "float32" else dict(atol=1e-2, rtol=8e-3)
    for got, want, old in ((new_k, ref_k, cache_k), (new_v, ref_v, cache_v)):
        np.testing.assert_allclose(
            np.asarray(got[:, :, index], np.float32), np.asarray(want[:, :, index], np.float32), **cache_tol
        )
        keep = np.arange(length) != index
        np.testing.assert_array_equal(np.asarray(got)[:, :, keep], np.asarray(old)[:, :, keep])


def test_fused_decode_layer_attention_rejects_a_bad_input_row():
    """The layer input row h (whose 1/RMS the kernel takes) must be [B, E] with E a power of two."""
    qkv = jnp.zeros((1, K, 4, D))
    scale, rotary = jnp.ones(D), jnp.ones((1, D))
    cache, mask = jnp.zeros((1, K, 128, D)), jnp.ones((1, 128), bool)
    fused = functools.partial(decode_attention.fused_decode_attention, eps=1e-6, norm_eps=1e-6, block_s=32)
    for bad in (jnp.ones((1, 48)), jnp.ones((2, 64)), jnp.ones((64,))):
        with pytest.raises(ValueError, match="h_be"):
            fused(qkv, bad, scale, scale, rotary, rotary, cache, cache, mask, jnp.int32(3))


def unfused_prologue(qkv, inv_rms, q_scale, k_scale, cos, sin, eps):
    """The unfused inference layer's attention inputs for L tokens: scale rows (the folded input norm),
    q/k RMSNorm, rotary. Returns q `[B, L, K * G, D]`, k and v `[B, L, K, D]`."""
    b, length, k, rows, d = qkv.shape
    g = rows - 2
    t = layers.scale_rows(qkv, inv_rms)

    def norm(x, scale):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale).astype(x.dtype)

    q = layers.apply_rotary(norm(t[:, :, :, :g], q_scale).reshape(b, length, k * g, d), cos, sin)
    return q, layers.apply_rotary(norm(t[:, :, :, g], k_scale), cos, sin), t[:, :, :, g + 1]


def unfused_prefill_prologue(qkv, inv_rms, q_scale, k_scale, cos, sin, cache_k, cache_v, index, eps):
    """What the unfused inference layer does before a prefill's attention: `unfused_prologue`, then the
    cache write of k and v at slot `index`."""
    q, k_new, v_new = unfused_prologue(qkv, inv_rms, q_scale, k_scale, cos, sin, eps)
    put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=index, axis=2)
    return q, k_new, v_new, put(cache_k, jnp.swapaxes(k_new, 1, 2)), put(cache_v, jnp.swapaxes(v_new, 1, 2))


@pytest.mark.parametrize(
    "dtype, groups, batch, length, index",
    # 37 tokens: a last block of 5 (masked); groups 4: six rows per kv head, padded to eight.
    [("float32", 2, 2, 37, 0), ("bfloat16", 1, 1, 48, 16), ("bfloat16", 4, 2, 37, 70)],
)
def test_fused_prefill_prologue_equals_the_unfused_layer(dtype, groups, batch, length, index):
    eps, slots = 1e-6, 128
    rng = np.random.default_rng(length + groups)

    def normal(*shape, s=2.0):
        return jnp.asarray(s * rng.standard_normal(shape), dtype)

    qkv = normal(batch, length, K, groups + 2, D)
    inv_rms = jnp.asarray(rng.uniform(0.3, 3.0, (batch, length, 1)), jnp.float32)
    q_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    k_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    positions = jnp.asarray(rng.integers(0, 500, (3, batch, length)))
    cos, sin = layers.mrope_cos_sin(positions, D, 5e6, (4, 2, 2))
    cache_k, cache_v = normal(batch, K, slots, D), normal(batch, K, slots, D)
    args = (qkv, inv_rms, q_scale, k_scale, cos, sin, cache_k, cache_v, jnp.int32(index))
    got = jax.jit(functools.partial(decode_attention.fused_prefill_qkv, eps=eps))(*args)
    want = unfused_prefill_prologue(*args, eps)
    assert [x.shape for x in got] == [x.shape for x in want]
    assert got[0].shape == (batch, length, K * groups, D) and all(x.dtype == qkv.dtype for x in got)
    tol = dict(atol=1e-5) if dtype == "float32" else dict(atol=1e-2, rtol=8e-3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)
    # Slots outside [index, index + L) keep their values exactly.
    keep = (np.arange(slots) < index) | (np.arange(slots) >= index + length)
    for new, old in ((got[3], cache_k), (got[4], cache_v)):
        np.testing.assert_array_equal(np.asarray(new)[:, :, keep], np.asarray(old)[:, :, keep])
    # Tokens past the cache's last slot are not written: the slots that exist get theirs, no others.
    late = jnp.int32(slots - 5)
    _, _, _, cut_k, _ = jax.jit(functools.partial(decode_attention.fused_prefill_qkv, eps=eps))(
        *args[:-1], late
    )
    np.testing.assert_array_equal(
        np.asarray(cut_k)[:, :, : slots - 5], np.asarray(cache_k)[:, :, : slots - 5]
    )
    np.testing.assert_allclose(
        np.asarray(cut_k[:, :, slots - 5 :], np.float32),
        np.asarray(jnp.swapaxes(want[1][:, :5], 1, 2), np.float32),
        **tol,
    )


def test_fused_prefill_prologue_rejects_bad_inputs():
    qkv = jnp.zeros((1, 20, K, 4, D))
    ones, rotary = jnp.ones(D), jnp.ones((1, 20, D))
    inv, cache = jnp.ones((1, 20, 1)), jnp.zeros((1, K, 64, D))
    fused = functools.partial(decode_attention.fused_prefill_qkv, eps=1e-6)
    with pytest.raises(ValueError, match="cache_k_bksd"):
        fused(qkv, inv, ones, ones, rotary, rotary, cache[:, :1], cache, 0)
    with pytest.raises(ValueError, match="fewer than the L = 20"):
        fused(qkv, inv, ones, ones, rotary, rotary, cache[:, :, :16], cache[:, :, :16], 0)
    with pytest.raises(ValueError, match="dtype"):
        fused(qkv, inv, ones, ones, rotary, rotary, cache.astype(jnp.bfloat16), cache, 0)
    with pytest.raises(ValueError, match="inv_rms_bl1"):
        fused(qkv, inv[:, :4], ones, ones, rotary, rotary, cache, cache, 0)
    with pytest.raises(ValueError, match="block_l = 12"):
        fused(qkv, inv, ones, ones, rotary, rotary, cache, cache, 0, block_l=12)


def test_per_layer_pallas_decode_runs_the_fused_kernel():
    """The per-layer fused layout's decode step is one `decode_layer_attention` kernel, one split
    combine kernel and one residual + norm-factor kernel per layer; its prefill one
    `prefill_attention_prologue` kernel per layer."""
    cfg = qwen3vl.qwen3vl_config("tiny", scan_layers=False, fused_projections=True, decode_attention="pallas")
    assert cfg.text.fused_decode
    model = qwen3vl.Qwen3VL(cfg)
    tokens = jnp.ones((1, 4), jnp.int32)
    prompt = qwen3vl_inputs.prompt_inputs(cfg, np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))
    params = nn.unbox(model.init(jax.random.key(0), tokens, prompt.positions_3bl, prompt.valid_bl))["params"]
    _, cache = generation.prefill(model, params, prompt, 8)
    jaxpr = jax.make_jaxpr(
        lambda p, c: model.apply(
            {"params": p}, tokens[:, :1], prompt.next_position_b, c, method=model.decode_step
        )
    )(params, cache)
    names = [str(e.params.get("name", "")) for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert (
        names == ["decode_layer_attention", "attention_split_combine", "residual_rms"] * cfg.text.num_layers
    )
    # The prefill prepares its attention inputs and writes the cache in one kernel per layer.
    jaxpr = jax.make_jaxpr(lambda p: generation.prefill(model, p, prompt, 8))(params)
    names = [str(e.params.get("name", "")) for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert names == ["prefill_attention_prologue"] * cfg.text.num_layers


def unfused_expert_attention(qkv, inv_rms, q_scale, k_scale, cos, sin, cache_k, cache_v, mask, eps):
    """The unfused expert layer's attention: `unfused_prologue`, then two-part attention over the prefix
    cache and the L action tokens."""
    q, k_own, v_own = unfused_prologue(qkv, inv_rms, q_scale, k_scale, cos, sin, eps)
    return layers.two_part_attention(
        q, cache_k, cache_v, mask, jnp.swapaxes(k_own, 1, 2), jnp.swapaxes(v_own, 1, 2)
    )


@pytest.mark.parametrize(
    "dtype, groups, batch, chunk, combine_block_l",
    [
        ("float32", 2, 2, 128, None),
        ("float32", 2, 2, 64, 8),
        ("bfloat16", 1, 1, None, None),
        ("bfloat16", 1, 1, 32, 4),
    ],
)
def test_fused_prefix_attention_equals_the_unfused_expert_attention(
    dtype, groups, batch, chunk, combine_block_l
):
    """With XLA's split combine and with the Pallas one (`combine_block_l`; 4 and 8 splits)."""
    length, tokens, eps = 256, 64, 1e-6
    rng = np.random.default_rng(10 + groups)

    def normal(*shape):
        return jnp.asarray(2.0 * rng.standard_normal(shape), dtype)

    qkv = normal(batch, tokens, K, groups + 2, D)
    inv_rms = jnp.asarray(rng.uniform(0.5, 2.0, (batch, tokens, 1)), jnp.float32)
    q_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    k_scale = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.float32)
    positions = jnp.broadcast_to(300 + jnp.arange(tokens), (3, batch, tokens))
    cos, sin = layers.mrope_cos_sin(positions, D, 5e6, (4, 2, 2))
    cache_k, cache_v = normal(batch, K, length, D), normal(batch, K, length, D)
    mask = jnp.asarray(cache_mask(batch, length, rng))
    args = (qkv, inv_rms, q_scale, k_scale, cos, sin, cache_k, cache_v, mask)
    out = jax.jit(
        functools.partial(
            decode_attention.fused_prefix_attention,
            eps=eps,
            chunk=chunk,
            block_s=32,
            combine_block_l=combine_block_l,
        )
    )(*args)
    ref = unfused_expert_attention(*args, eps)
    assert out.shape == (batch, tokens, K * groups, D) and out.dtype == qkv.dtype
    tol = dict(atol=1e-5) if dtype == "float32" else dict(atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
    if combine_block_l is not None:
        with pytest.raises(ValueError, match="combine_block_l = 3 must be a power of two dividing L = 64"):
            decode_attention.fused_prefix_attention(*args, eps=eps, block_s=32, combine_block_l=3)


def test_kv_caches_are_allocated_in_whole_prefix_kernel_blocks():
    from alpamayo_jax.models import action_expert

    assert generation.CACHE_ALIGN % action_expert.PREFIX_BLOCK == 0
    assert generation.cache_slots(3034) % action_expert.PREFIX_BLOCK == 0


def test_every_kernel_lowers_to_triton_for_a_gpu_without_one():
    """Each Pallas kernel at the ar1_2b shapes and its GPU tile defaults (interpret off) lowers through
    Pallas' Triton lowering for the CUDA platform, which runs here on the CPU (`jax.export`): a kernel
    that only works interpreted (e.g. a Python int where Triton needs an IR value) fails in CI, not on
    the GPU host."""
    from jax import export

    from alpamayo_jax.models import decode_mlp, residual_norm

    bf16, f32 = jnp.bfloat16, jnp.float32
    b, k, g, d, slots, tokens, width = 1, 8, 2, 128, 3072, 64, 2048

    def spec(*shape, dtype=bf16):
        return jax.ShapeDtypeStruct(shape, dtype)

    scales = (spec(d, dtype=f32), spec(d, dtype=f32))
    cache = (spec(b, k, slots, d), spec(b, k, slots, d))
    off = dict(eps=1e-6, interpret=False)
    calls = [  # (the kernels' names, the call, its arguments)
        (
            ("decode_layer_attention", "attention_split_combine"),
            functools.partial(decode_attention.fused_decode_attention, norm_eps=1e-6, **off),
            (spec(b, k, g + 2, d), spec(b, width), *scales, spec(b, d, dtype=f32), spec(b, d, dtype=f32))
            + (*cache, spec(b, slots, dtype=bool), spec(dtype=jnp.int32)),
        ),
        (
            ("expert_prefix_attention", "expert_split_combine"),
            functools.partial(decode_attention.fused_prefix_attention, **off),
            (spec(b, tokens, k, 3, d), spec(b, tokens, 1, dtype=f32), *scales)
            + (spec(b, tokens, d, dtype=f32), spec(b, tokens, d, dtype=f32))
            + (*cache, spec(b, slots, dtype=bool)),
        ),
        (
            ("prefill_attention_prologue",),
            functools.partial(decode_attention.fused_prefill_qkv, **off),
            (spec(b, 3000, k, g + 2, d), spec(b, 3000, 1, dtype=f32), *scales)
            + (spec(b, 3000, d, dtype=f32), spec(b, 3000, d, dtype=f32), *cache, spec(dtype=jnp.int32)),
        ),
        (
            ("decode_cache_attention",),
            functools.partial(decode_attention.cache_attention, interpret=False),
            (spec(b, k, g, d), *cache, spec(b, slots, dtype=bool)),
        ),
        (
            ("residual_rms",),
            functools.partial(residual_norm.residual_rms, **off),
            (spec(b, 1, width), spec(b, 1, width)),
        ),
        (
            ("decode_residual_matvec",),
            functools.partial(decode_mlp.residual_matvec, interpret=False),
            (spec(1, 6144), spec(width, 6144), spec(1, width)),
        ),
        (
            ("decode_gate_up_swiglu",),
            functools.partial(decode_mlp.gate_up_swiglu, **off),
            (spec(1, width), spec(2, 6144, width)),
        ),
    ]
    triton = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for names, fn, args in calls:
        module = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=triton)(*args).mlir_module()
        assert module.count("__gpu$xla.gpu.triton(") == len(names), names
        for name in names:
            assert name in module, name


def test_fixed_length_decoding_runs_a_static_loop_with_the_same_tokens_and_cache():
    """No stop possible (forced lengths, the benchmark's case): a loop of static trip count, which XLA's
    GPU runtime runs without a host round trip per token; it decodes what the data-dependent loop does."""
    cfg = qwen3vl.qwen3vl_config("tiny", scan_layers=False, fused_projections=True)
    rng = np.random.default_rng(5)
    valid = np.arange(7)[None] < np.array([[7], [4]])
    prompt = qwen3vl_inputs.prompt_inputs(
        cfg, np.where(valid, rng.integers(0, 400, (2, 7)), 0), valid.astype(np.int64)
    )
    model = qwen3vl.Qwen3VL(cfg)
    params = nn.unbox(model.init(jax.random.key(1), prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl))
    params = jax.tree_util.tree_map(lambda x: 4.0 * x, params["params"])
    steps, stop = 5, 3
    banned = jnp.zeros(cfg.text.vocab_size, bool).at[stop].set(True)  # the stop id is never chosen
    logits, cache = generation.prefill(model, params, prompt, prompt.tokens_bl.shape[1] + steps)

    def run(sampling, min_new):
        fn = lambda lg, c: generation.decode(  # noqa: E731
            model, params, lg, c, prompt.next_position_b, jax.random.key(2), steps, sampling, banned, min_new
        )
        compiled = jax.jit(fn).lower(logits, cache).compile()
        loops = [line for line in compiled.as_text().splitlines() if " while(" in line]
        assert len(loops) == 1
        return compiled(logits, cache), "known_trip_count" in loops[0]  # XLA's annotation of the loop

    cases = {
        "no stop token": (generation.SamplingConfig(0.0, 1.0, None), 0),
        "forced length": (generation.SamplingConfig(0.0, 1.0, stop), steps),
        "may stop": (generation.SamplingConfig(0.0, 1.0, stop), 0),
    }
    out = {name: run(*case) for name, case in cases.items()}
    assert [generation.has_fixed_length(steps, *case) for case in cases.values()] == [True, True, False]
    assert {name: known for name, (_, known) in out.items()} == {
        "no stop token": True,
        "forced length": True,
        "may stop": False,
    }
    (tokens, lengths, cache_out), _ = out["may stop"]
    assert np.asarray(lengths).tolist() == [steps, steps]
    assert len(np.unique(np.asarray(tokens))) > 1
    for name in ("no stop token", "forced length"):
        (tokens_s, lengths_s, cache_s), _ = out[name]
        np.testing.assert_array_equal(tokens_s, tokens)
        np.testing.assert_array_equal(lengths_s, lengths)
        np.testing.assert_array_equal(cache_s.valid_bs, cache_out.valid_bs)
        for a, b in zip(cache_s.k + cache_s.v, cache_out.k + cache_out.v, strict=True):
            np.testing.assert_array_equal(a, b)
