"""Parity of the Flax Qwen3-VL with transformers (torch CPU, float32) on tiny random models."""

import dataclasses
import tempfile

import jax
import numpy as np
import pytest
import torch
from hf_util import hf_logits, image_prompt, random_hf_model

from alpamayo_jax import generation
from alpamayo_jax.interop import hf_qwen3vl
from alpamayo_jax.models import qwen3vl, qwen3vl_inputs

TOL = 2e-4


def tiny_config(**text_overrides) -> qwen3vl.Qwen3VLConfig:
    cfg = qwen3vl.qwen3vl_config("tiny")
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, **text_overrides))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def models(request):
    cfg = tiny_config(tie_embeddings=request.param)
    hf = random_hf_model(cfg, seed=int(request.param))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        params = hf_qwen3vl.load_params(d, cfg)
    return cfg, hf, params


def run_ours(cfg, params, arrays):
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    model = qwen3vl.Qwen3VL(cfg)
    logits, _ = jax.jit(model.apply)(
        {"params": params},
        prompt.tokens_bl,
        prompt.positions_3bl,
        prompt.valid_bl,
        prompt.images,
        prompt.image_slots_bl,
    )
    return np.asarray(logits), np.asarray(prompt.valid_bl)


def assert_close_on_valid(ours_and_valid, ref, mask):
    """Valid tokens in row-major order agree (our rows are right-aligned, the reference's may not be)."""
    ours, ours_valid = ours_and_valid
    ref_valid = ref[mask.astype(bool)]
    err = np.abs(ours[ours_valid] - ref_valid).max()
    assert np.abs(ref_valid).max() > 1.0, "logits too small for a meaningful comparison"
    assert err <= TOL, f"max |logits diff| = {err}"


def test_text_only_batch_with_padding(models):
    cfg, hf, params = models
    rng = np.random.default_rng(0)
    arrays = image_prompt(cfg, [[], []], [rng.integers(0, 400, 11), rng.integers(0, 400, 6)], rng)
    ref = hf_logits(hf, arrays, cfg.image_token_id)
    assert_close_on_valid(run_ours(cfg, params, arrays), ref, arrays["attention_mask"])


def test_images_of_several_grids_batch_with_padding(models):
    cfg, hf, params = models
    rng = np.random.default_rng(1)
    grids = [[(1, 4, 6), (1, 2, 2)], [(1, 6, 4)]]
    arrays = image_prompt(cfg, grids, [rng.integers(0, 400, 5), rng.integers(0, 400, 9)], rng)
    ref = hf_logits(hf, arrays, cfg.image_token_id)
    assert_close_on_valid(run_ours(cfg, params, arrays), ref, arrays["attention_mask"])


def test_image_inputs_right_padding_matches_unpadded(models):
    """Right padding (our data pipeline's choice) gives the same logits as each sample alone."""
    cfg, hf, params = models
    rng = np.random.default_rng(2)
    grids = [[(1, 4, 4)], [(1, 2, 6)]]
    texts = [rng.integers(0, 400, 3), rng.integers(0, 400, 8)]
    arrays = image_prompt(cfg, grids, texts, np.random.default_rng(3), pad_left=False)
    ours, _ = run_ours(cfg, params, arrays)
    single_rng = np.random.default_rng(3)
    for b in range(2):
        single = image_prompt(cfg, [grids[b]], [texts[b]], single_rng)
        ref = hf_logits(hf, single, cfg.image_token_id)[0]
        n = single["input_ids"].shape[1]
        assert np.abs(ours[b, :n] - ref).max() <= TOL


@pytest.mark.parametrize("with_images", [False, True])
def test_greedy_generation_matches_hf_generate(models, with_images):
    cfg, hf, params = models
    rng = np.random.default_rng(4)
    grids = [[(1, 4, 4)], [(1, 2, 4), (1, 2, 2)]] if with_images else [[], []]
    arrays = image_prompt(cfg, grids, [rng.integers(0, 400, 4), rng.integers(0, 400, 7)], rng)
    kwargs = {k: torch.from_numpy(v) for k, v in arrays.items()}
    kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == cfg.image_token_id).long()
    with torch.no_grad():
        ref = hf.generate(
            **kwargs, max_new_tokens=20, min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
        )[:, arrays["input_ids"].shape[1] :].numpy()
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    model = qwen3vl.Qwen3VL(cfg)
    run = jax.jit(generation.generate, static_argnums=(0, 3))
    tokens, lengths = run(model, params, prompt, 20)
    np.testing.assert_array_equal(np.asarray(tokens), ref)
    np.testing.assert_array_equal(np.asarray(lengths), [20, 20])


def test_decode_step_matches_full_forward(models):
    """Logits of a token decoded through the cache equal those of a full forward over the sequence."""
    cfg, _, params = models
    rng = np.random.default_rng(5)
    arrays = image_prompt(cfg, [[(1, 2, 4)]], [rng.integers(0, 400, 5)], rng)
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    model = qwen3vl.Qwen3VL(cfg)
    logits, cache = generation.prefill(model, params, prompt, cache_size=prompt.tokens_bl.shape[1] + 4)
    token = np.array([[17]], np.int32)
    step_logits, _ = model.apply(
        {"params": params}, token, prompt.next_position_b, cache, method=qwen3vl.Qwen3VL.decode_step
    )
    longer = dict(
        arrays,
        input_ids=np.concatenate([arrays["input_ids"], token], 1),
        attention_mask=np.ones((1, arrays["input_ids"].shape[1] + 1), np.int64),
    )
    full, _ = run_ours(cfg, params, longer)
    np.testing.assert_allclose(np.asarray(step_logits)[0], full[0, -1], atol=TOL)


def test_prefill_logits_are_the_full_forward_at_each_last_valid_token(models):
    """The prefill runs the LM head on one row per sample; right padding of unequal prompts included,
    and the padding to a multiple of `generation.PREFILL_ALIGN` tokens that the prefill adds itself."""
    cfg, _, params = models
    rng = np.random.default_rng(7)
    texts = [rng.integers(0, 400, 9), rng.integers(0, 400, 3)]
    arrays = image_prompt(cfg, [[(1, 2, 4)], [(1, 2, 2)]], texts, rng, pad_left=False)
    prompt = qwen3vl_inputs.prompt_inputs(cfg, **arrays)
    length = prompt.tokens_bl.shape[1]
    logits_bv, cache = generation.prefill(qwen3vl.Qwen3VL(cfg), params, prompt, cache_size=length + 2)
    full, valid = run_ours(cfg, params, arrays)
    last = valid.sum(axis=1) - 1
    assert last[0] != last[1]
    assert logits_bv.shape == (2, full.shape[-1])
    np.testing.assert_allclose(np.asarray(logits_bv), full[np.arange(2), last], atol=TOL)
    # The prompt was padded by invalid slots to the next multiple of 8; decoding continues after them.
    padded = -(-length // generation.PREFILL_ALIGN) * generation.PREFILL_ALIGN
    assert length % generation.PREFILL_ALIGN and int(cache.index) == padded
    assert cache.valid_bs.shape[1] >= padded + 2
    np.testing.assert_array_equal(np.asarray(cache.valid_bs[:, :length]), np.asarray(prompt.valid_bl))
    assert not np.asarray(cache.valid_bs[:, length:]).any()
    aligned = generation.pad_prompt(prompt)
    assert aligned.tokens_bl.shape == (2, padded) and generation.pad_prompt(aligned) is aligned
    np.testing.assert_array_equal(np.asarray(aligned.image_slots_bl[:, length:]), -1)


def test_bad_inputs_raise_clear_errors():
    cfg = tiny_config()
    rng = np.random.default_rng(6)
    arrays = image_prompt(cfg, [[(1, 2, 2)]], [[1, 2]], rng)
    with pytest.raises(ValueError, match="image tokens"):
        qwen3vl_inputs.prompt_inputs(cfg, arrays["input_ids"], arrays["attention_mask"])
    with pytest.raises(ValueError, match="patches"):
        qwen3vl_inputs.prompt_inputs(
            cfg,
            arrays["input_ids"],
            arrays["attention_mask"],
            arrays["pixel_values"][:-1],
            arrays["image_grid_thw"],
        )
    with pytest.raises(ValueError, match="vocabulary"):
        qwen3vl_inputs.prompt_inputs(cfg, np.array([[cfg.text.vocab_size]]))
