"""Decoding over the allowed vocabulary rows only (`generation.allowed_rows`, `decode(vocab_rows=...)`)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import generation
from alpamayo_jax.models import qwen3vl, qwen3vl_inputs


def test_allowed_rows_cover_every_allowed_id_and_skip_long_banned_runs():
    banned = np.zeros(40, bool)
    banned[10:30] = True  # a long run: left out
    banned[33:35] = True  # a short run: kept inside a range, masked as usual
    banned[38:] = True  # a banned tail
    assert generation.allowed_rows(banned, gap=5) == ((0, 10), (30, 38))
    assert generation.allowed_rows(banned, gap=30) == ((0, 38),)
    np.testing.assert_array_equal(generation.compact_ids(((0, 3), (7, 9))), [0, 1, 2, 7, 8])
    expand = generation._expand_id(jnp.arange(5), ((0, 3), (7, 9)))
    np.testing.assert_array_equal(expand, [0, 1, 2, 7, 8])
    with pytest.raises(ValueError, match="every vocabulary id is banned"):
        generation.allowed_rows(np.ones(4, bool))


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: the LM head reads only the rows (a matvec per range)
def test_decoding_over_the_allowed_rows_chooses_the_same_tokens(batch):
    text = qwen3vl.qwen3vl_config("tiny").text
    cfg = qwen3vl.qwen3vl_config("tiny", scan_layers=False, fused_projections=True)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tie_embeddings=True))
    assert not text.tie_embeddings  # the preset's untied head is the batch-2 case's full-logits path
    rng = np.random.default_rng(3)
    valid = np.arange(6)[None] < np.array([[6], [3]])[:batch]
    prompt = qwen3vl_inputs.prompt_inputs(
        cfg, np.where(valid, rng.integers(0, 400, (batch, 6)), 0), valid.astype(np.int64)
    )
    model = qwen3vl.Qwen3VL(cfg)
    params = nn.unbox(model.init(jax.random.key(1), prompt.tokens_bl, prompt.positions_3bl, prompt.valid_bl))
    params = jax.tree_util.tree_map(lambda x: 4.0 * x, params["params"])
    vocab, steps = cfg.text.vocab_size, 6
    banned = np.zeros(vocab, bool)
    banned[100:300] = True
    banned[303] = True
    banned[450:] = True
    rows = generation.allowed_rows(banned, gap=64)
    assert rows == ((0, 100), (300, 450))
    logits, cache = generation.prefill(model, params, prompt, prompt.tokens_bl.shape[1] + steps)

    @jax.jit
    def run(lg, c, use_rows, sampling):
        return generation.decode(
            model,
            params,
            lg,
            c,
            prompt.next_position_b,
            jax.random.key(2),
            steps,
            sampling,
            jnp.asarray(banned),
            0,
            rows if use_rows else None,
        )[0]

    run = jax.jit(run.__wrapped__, static_argnums=(2, 3))
    greedy = generation.SamplingConfig()
    want, got = run(logits, cache, False, greedy), run(logits, cache, True, greedy)
    np.testing.assert_array_equal(got, want)
    want = np.asarray(want)
    assert not banned[want].any() and (want < 100).any() and (want >= 300).any()  # ids from both ranges
    sampled = np.asarray(run(logits, cache, True, generation.SamplingConfig(1.0, 0.9)))
    assert sampled.shape == (batch, steps) and not banned[sampled].any()


def test_rows_that_leave_out_an_allowed_id_raise():
    cfg = qwen3vl.qwen3vl_config("tiny")
    banned = np.zeros(cfg.text.vocab_size, bool)
    banned[5:] = True
    logits, start = jnp.zeros((1, cfg.text.vocab_size)), jnp.zeros(1, jnp.int32)
    cases = [
        (((1, 5),), banned, "leave out ids that banned_v allows, e.g. \\[0\\]"),
        (((3, 2),), banned, "ordered"),
        (((0, 5),), None, "need banned_v"),
    ]
    for rows, banned_v, match in cases:
        with pytest.raises(ValueError, match=match):
            generation.decode(None, None, logits, None, start, None, 2, banned_v=banned_v, vocab_rows=rows)
