"""KV-cached autoregressive decoding of the Qwen3-VL backbone, compiled as one program.

Prefill writes the prompt into a fixed-size cache; the decode loop runs inside `lax.while_loop`
(one compilation for any number of steps up to the budget), or inside a loop of static trip count
when no sample can stop before the budget (`has_fixed_length`). Token choice: greedy, or temperature
with nucleus (top-p) sampling; banned ids (e.g. trajectory tokens while reasoning) are masked; each
sample stops at its own stop token. A decode with banned ids can compute only the logits of the
vocabulary ranges that hold the allowed ids (`allowed_rows`): the LM head then skips the banned rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax.models.qwen3vl import Qwen3VL
from alpamayo_jax.models.qwen3vl_inputs import PromptInputs
from alpamayo_jax.models.vlm import KVCache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy. `stop_token` ends a sample (it is kept in the output)."""

    temperature: float = 0.0
    top_p: float = 1.0
    stop_token: int | None = None


def choose_token(
    logits_bv: jax.Array, rng: jax.Array, cfg: SamplingConfig, banned_v: jax.Array | None
) -> jax.Array:
    """Greedy or temperature + top-p sampling over float32 logits `[B, V]`."""
    logits = logits_bv.astype(jnp.float32)
    if banned_v is not None:
        logits = jnp.where(banned_v[None, :], -jnp.inf, logits)
    if cfg.temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / cfg.temperature
    if cfg.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
        keep = (cum - probs) < cfg.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def last_valid_index(valid_bl: jax.Array) -> jax.Array:
    """Position `[B]` of each (right-padded) sample's last valid prompt token."""
    return jnp.maximum(valid_bl.sum(axis=1) - 1, 0)


CACHE_ALIGN = 256


def cache_slots(needed: int) -> int:
    """Cache length for `needed` slots, rounded up to a multiple of CACHE_ALIGN: XLA's split-K attention
    GEMMs otherwise pad (copy) the whole cache every layer and step."""
    return -(-needed // CACHE_ALIGN) * CACHE_ALIGN


# Prompt rows are right-padded to a multiple of PREFILL_ALIGN tokens before the prefill. XLA gives a
# bf16 GEMM operand whose token count is not a multiple of 8 a padded copy (tensor-core alignment),
# which at the release prompt (2,993 tokens) was a pad fusion per GEMM input of every layer: 1.7 ms
# of device time per ar1_2b policy call on an H100 (docs/PERFORMANCE.md, session 12).
PREFILL_ALIGN = 8


def pad_prompt(prompt: PromptInputs, multiple: int = PREFILL_ALIGN) -> PromptInputs:
    """The prompt with each row right-padded by invalid tokens to a multiple of `multiple` (no image
    slot, position 0): the padding is masked everywhere, as a batch's right padding is."""
    pad = -prompt.tokens_bl.shape[1] % multiple
    if not pad:
        return prompt

    def right(x, value):
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=value)

    return prompt.replace(
        tokens_bl=right(prompt.tokens_bl, 0),
        positions_3bl=right(prompt.positions_3bl, 0),
        valid_bl=right(prompt.valid_bl, False),
        image_slots_bl=None if prompt.image_slots_bl is None else right(prompt.image_slots_bl, -1),
    )


def prefill(
    model: Qwen3VL,
    params: Any,
    prompt: PromptInputs,
    cache_size: int,
    features_bfd: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Runs the prompt into a fresh cache of at least `cache_size` slots; returns (next-token logits
    `[B, V]`, cache). `features_bfd`: the image-slot features of a triplane / flex tokenizer (by
    default the prompt's images go through the ViT). The prompt is padded to a multiple of
    PREFILL_ALIGN tokens first (`pad_prompt`; the cache grows by the padding): the returned cache's
    `index`, the slot after the padded prompt, is where decoding continues."""
    length = prompt.tokens_bl.shape[1]
    prompt = pad_prompt(prompt)
    cache_size += prompt.tokens_bl.shape[1] - length
    batch = prompt.tokens_bl.shape[0]
    cache = KVCache.zeros(model.cfg.text, batch, cache_slots(cache_size))
    logits, cache = model.apply(
        {"params": params},
        prompt.tokens_bl,
        prompt.positions_3bl,
        prompt.valid_bl,
        prompt.images,
        prompt.image_slots_bl,
        cache,
        features_bfd,
        logits_at_b=last_valid_index(prompt.valid_bl),
    )
    return logits, cache


# Allowed ids closer than this many banned rows share a range (one more reduction costs about as much
# as reading 1,000 table rows on an H100; the banned ids inside a range are masked as usual).
ROW_GAP = 1024


def allowed_rows(banned_v: np.ndarray, gap: int = ROW_GAP) -> tuple[tuple[int, int], ...]:
    """The vocabulary ranges `[start, stop)` that cover every allowed (not banned) id, with banned runs
    shorter than `gap` kept inside a range: the rows a decode step's LM head has to read."""
    allowed = np.flatnonzero(~np.asarray(banned_v, bool))
    if allowed.size == 0:
        raise ValueError("allowed_rows: every vocabulary id is banned")
    breaks = np.flatnonzero(np.diff(allowed) > gap)
    starts = np.concatenate([allowed[:1], allowed[breaks + 1]])
    stops = np.concatenate([allowed[breaks], allowed[-1:]]) + 1
    return tuple((int(a), int(b)) for a, b in zip(starts, stops, strict=True))


def compact_ids(rows: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The vocabulary id of each position of a `rows`-compacted logits vector."""
    return np.concatenate([np.arange(start, stop) for start, stop in rows])


def _expand_id(choice_b: jax.Array, rows: tuple[tuple[int, int], ...]) -> jax.Array:
    """Vocabulary ids of positions in a `rows`-compacted logits vector (elementwise: no table lookup)."""
    ids = choice_b + rows[0][0]
    offset = rows[0][1] - rows[0][0]
    for (_, prev_stop), (start, stop) in zip(rows[:-1], rows[1:], strict=True):
        ids = ids + jnp.where(choice_b >= offset, start - prev_stop, 0)
        offset += stop - start
    return ids.astype(jnp.int32)


def _check_rows(rows: tuple[tuple[int, int], ...], banned_v: Any, vocab: int) -> None:
    pairs = zip(rows[:-1], rows[1:], strict=True)
    if any(not 0 <= a < b <= vocab for a, b in rows) or any(b > c for (_, b), (c, _) in pairs):
        raise ValueError(f"decode: vocab_rows {rows} are not ordered, disjoint ranges of [0, {vocab})")
    if banned_v is None:
        raise ValueError("decode: vocab_rows need banned_v (every id outside the ranges must be banned)")
    if isinstance(banned_v, jax.core.Tracer):
        return  # a traced mask cannot be checked here
    outside = np.ones(vocab, bool)
    outside[compact_ids(rows)] = False
    allowed_outside = np.flatnonzero(outside & ~np.asarray(banned_v, bool))
    if allowed_outside.size:
        example = allowed_outside[:5].tolist()
        raise ValueError(f"decode: vocab_rows {rows} leave out ids that banned_v allows, e.g. {example}")


def decode(
    model: Qwen3VL,
    params: Any,
    logits_bv: jax.Array,
    cache: KVCache,
    next_position_b: jax.Array,
    rng: jax.Array,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    banned_v: jax.Array | None = None,
    min_new_tokens: int = 0,
    vocab_rows: tuple[tuple[int, int], ...] | None = None,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """Decodes up to `max_new_tokens` per sample after a prefill.

    Returns (tokens `[B, max_new_tokens]` padded with 0 after a sample stops, lengths `[B]`, cache).
    Stop tokens are ignored before `min_new_tokens` (forced lengths for timing). `vocab_rows`
    (static, e.g. `allowed_rows(banned)`): the steps compute the logits of these vocabulary ranges
    only; every id outside them must be banned (the tokens are the same as with the full logits).
    """
    batch = logits_bv.shape[0]
    if vocab_rows is not None:
        _check_rows(vocab_rows, banned_v, logits_bv.shape[-1])
        logits_bv = jnp.concatenate([logits_bv[:, a:b] for a, b in vocab_rows], axis=-1)
        banned_v = jnp.concatenate([jnp.asarray(banned_v)[a:b] for a, b in vocab_rows])

    def cond(state):
        step, _, _, _, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, logits, cache, pos, done, out, rng = state
        if sampling.temperature > 0.0:
            rng, sub = jax.random.split(rng)
        else:  # greedy: the key is never read, so no split kernel per token
            sub = rng
        token = choose_token(logits, sub, sampling, banned_v)
        if vocab_rows is not None:
            token = _expand_id(token, vocab_rows)
        token = jnp.where(done, 0, token)
        out = out.at[:, step].set(token)
        stopped = jnp.zeros_like(done)
        if sampling.stop_token is not None:
            stopped = (token == sampling.stop_token) & (step + 1 >= min_new_tokens)
        logits, cache = model.apply(
            {"params": params},
            token[:, None],
            pos,
            cache,
            ~done,
            vocab_rows,
            method=Qwen3VL.decode_step,
        )
        return step + 1, logits, cache, pos + 1, done | stopped, out, rng

    out = jnp.zeros((batch, max_new_tokens), jnp.int32)
    done = jnp.zeros((batch,), bool)
    init = (jnp.zeros((), jnp.int32), logits_bv, cache, next_position_b.astype(jnp.int32), done, out, rng)
    if has_fixed_length(max_new_tokens, sampling, min_new_tokens):
        # No sample can stop early, so the loop has a static trip count: XLA's GPU runtime then runs it
        # without the per-step copy of the loop predicate to the host and the wait for it (the data-
        # dependent loop below drains the GPU once per token), and the host can queue steps ahead.
        state = jax.lax.fori_loop(0, max_new_tokens, lambda _, s: body(s), init)
    else:
        state = jax.lax.while_loop(cond, body, init)
    steps, _, cache, _, _, out, _ = state
    return out, _lengths(out, steps, sampling.stop_token, min_new_tokens), cache


def has_fixed_length(max_new_tokens: int, sampling: SamplingConfig, min_new_tokens: int = 0) -> bool:
    """True when every sample decodes exactly `max_new_tokens`: no stop token, or one that is ignored
    for the whole budget (`min_new_tokens >= max_new_tokens`, forced lengths)."""
    return sampling.stop_token is None or min_new_tokens >= max_new_tokens


def _lengths(
    tokens_bn: jax.Array, steps: jax.Array, stop_token: int | None, min_new_tokens: int
) -> jax.Array:
    """Per-sample generated length: up to and including the first counted stop token, else all steps."""
    if stop_token is None:
        return jnp.full(tokens_bn.shape[:1], steps, jnp.int32)
    counted = jnp.arange(tokens_bn.shape[1])[None, :] + 1 >= min_new_tokens
    is_stop = (tokens_bn == stop_token) & counted
    first = jnp.argmax(is_stop, axis=1)
    return jnp.where(is_stop.any(axis=1), first + 1, steps).astype(jnp.int32)


def generate(
    model: Qwen3VL,
    params: Any,
    prompt: PromptInputs,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Prefill + decode (jit this whole function with `model`, `max_new_tokens`, `sampling` static)."""
    rng = jax.random.key(0) if rng is None else rng
    cache_size = prompt.tokens_bl.shape[1] + max_new_tokens
    logits, cache = prefill(model, params, prompt, cache_size)
    tokens, lengths, _ = decode(
        model, params, logits, cache, prompt.next_position_b, rng, max_new_tokens, sampling
    )
    return tokens, lengths
