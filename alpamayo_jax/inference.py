"""The compiled inference path of Alpamayo-R1: one jitted program per static shape.

vision (the configured tokenizer: per-image ViT, triplane or Flex) -> prefill into a fixed-size KV
cache -> reasoning decode in `lax.while_loop` (trajectory ids masked, stop at <|traj_future_start|>
or the token budget, per-sample lengths) -> the flow sampler, which computes nothing of the prefix
again (each Euler step runs only the action tokens against the cached K/V) -> controls -> waypoints.
k samples per scene share one prefill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax import action_space, generation
from alpamayo_jax.models import flow_matching
from alpamayo_jax.models.alpamayo import Alpamayo, AlpamayoConfig
from alpamayo_jax.models.qwen3vl import Qwen3VL
from alpamayo_jax.models.qwen3vl_inputs import PromptInputs
from alpamayo_jax.models.vlm import KVCache


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sampling settings (release demo defaults: temperature 0.6, top-p 0.98)."""

    max_reasoning_tokens: int = 64
    min_reasoning_tokens: int = 0  # the stop token is ignored before this many (forced lengths for timing)
    temperature: float = 0.6
    top_p: float = 0.98
    flow_steps: int = 10
    num_samples: int = 1


def banned_reasoning_ids(cfg: AlpamayoConfig) -> np.ndarray:
    """`[V]` True on ids the reasoning may not emit: trajectory bins, unused padding ids, and the
    special tokens other than <|cot_end|> and <|traj_future_start|>."""
    layout = cfg.tokens
    ids = np.arange(cfg.vlm.text.vocab_size)
    banned = np.asarray(layout.is_trajectory_id(ids)) | (ids >= layout.special_end)
    allowed = {layout.special_id("cot_end"), layout.special_id("traj_future_start")}
    for name in layout.special_tokens:
        if layout.special_id(name) not in allowed:
            banned[layout.special_id(name)] = True
    return banned


def repeat_samples(tree: Any, k: int, axis_of: Callable[[jax.Array], int]) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=axis_of(x)), tree)


def vision_features(cfg: AlpamayoConfig, params: Any, prompt: PromptInputs) -> jax.Array | None:
    """The triplane / flex tokens of the prompt's image slots `[B, F, D]`; None for per_image (the
    prefill runs the ViT itself, with DeepStack)."""
    if cfg.vision_tokenizer == "per_image":
        return None
    return Alpamayo(cfg).apply({"params": params}, prompt, method=Alpamayo.vision_features)


def reason(
    cfg: AlpamayoConfig, icfg: InferenceConfig, params: Any, prompt: PromptInputs, rng: jax.Array
) -> tuple[jax.Array, jax.Array, KVCache, jax.Array]:
    """Prefill + reasoning decode for B scenes x k samples.

    Returns (reasoning tokens `[B*k, T]`, lengths `[B*k]` without the stop token, the cache holding
    prompt + reasoning + <|traj_future_start|> for every sample, and the position after it `[B*k]`).
    """
    vlm = Qwen3VL(cfg.vlm)
    vlm_params = params["vlm"]
    stop = cfg.tokens.special_id("traj_future_start")
    budget = icfg.max_reasoning_tokens
    cache_size = prompt.tokens_bl.shape[1] + budget + 1
    logits, cache = generation.prefill(
        vlm, vlm_params, prompt, cache_size, vision_features(cfg, params, prompt)
    )
    prompt_end = cache.index  # the slot after the (padded) prompt
    k = icfg.num_samples
    logits = jnp.repeat(logits, k, axis=0)
    cache = cache.repeat(k)
    start = jnp.repeat(prompt.next_position_b, k, axis=0)
    sampling = generation.SamplingConfig(icfg.temperature, icfg.top_p, stop)
    banned = banned_reasoning_ids(cfg)
    tokens, lengths, cache = generation.decode(
        vlm,
        vlm_params,
        logits,
        cache,
        start,
        rng,
        budget,
        sampling,
        jnp.asarray(banned),
        icfg.min_reasoning_tokens,
        # The LM head skips the trajectory bins and unused ids (4,000+ of the 155k table rows).
        generation.allowed_rows(banned),
    )
    stopped = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], 1)[:, 0] == stop
    stopped &= lengths > 0
    # Samples that ran out of budget get the stop token appended; the others write an invalid slot.
    cache = cache.replace(index=prompt_end + budget)
    _, cache = vlm.apply(
        {"params": vlm_params},
        jnp.full((tokens.shape[0], 1), stop, jnp.int32),
        start + lengths,
        cache,
        ~stopped,
        method=Qwen3VL.decode_step,
    )
    reasoning_len = jnp.where(stopped, lengths - 1, lengths)
    return tokens, reasoning_len, cache, start + reasoning_len + 1


def flow_from_prefix(
    cfg: AlpamayoConfig,
    params: Any,
    prefix_k: jax.Array,
    prefix_v: jax.Array,
    prefix_valid_bp: jax.Array,
    first_position_b: jax.Array,
    rng: jax.Array,
    steps: int,
) -> jax.Array:
    """Euler flow from noise to normalised controls `[B, A, 2]`, reading per-layer prefix K/V
    `[layers, B, K, P, D]` (a KV cache, or a training forward's K/V in evaluation)."""
    model = Alpamayo(cfg)
    batch = first_position_b.shape[0]
    noise = jax.random.normal(rng, (batch, cfg.expert.num_waypoints, 2), jnp.float32)

    def velocity(x, t):
        return model.apply(
            {"params": params},
            x,
            jnp.full((batch,), t),
            prefix_k,
            prefix_v,
            prefix_valid_bp,
            first_position_b,
            method=Alpamayo.velocity,
        )

    return flow_matching.euler_sample(velocity, noise, steps)


def flow_sample(
    cfg: AlpamayoConfig, params: Any, cache: KVCache, first_position_b: jax.Array, rng: jax.Array, steps: int
) -> jax.Array:
    """The flow sampler on a reasoning cache (prompt + reasoning + <|traj_future_start|>)."""
    return flow_from_prefix(cfg, params, cache.k, cache.v, cache.valid_bs, first_position_b, rng, steps)


def controls_to_trajectory(
    controls_ba2: jax.Array,
    history_xyz_bh3: jax.Array,
    stats: action_space.ControlStats = action_space.SPEC_STATS,
) -> dict[str, jax.Array]:
    """Controls normalised with `stats` (the model's `control_stats`) -> clipped physical controls and
    (xy, yaw) waypoints in the t0 frame."""
    physical = action_space.clip_controls(stats.denormalize(controls_ba2))
    v0 = action_space.estimate_v0(history_xyz_bh3)
    xy, yaw = action_space.integrate_controls(physical[..., 0], physical[..., 1], v0)
    return {"controls": physical, "xy": xy, "yaw": yaw}


def sample_policy(
    cfg: AlpamayoConfig,
    icfg: InferenceConfig,
    params: Any,
    prompt: PromptInputs,
    history_xyz_bh3: jax.Array,
    rng: jax.Array,
) -> dict[str, jax.Array]:
    """The whole policy for B scenes: outputs are `[B, k, ...]` (k = icfg.num_samples).

    Returns xy `[B, k, A, 2]`, yaw `[B, k, A]`, controls `[B, k, A, 2]` (m/s^2, 1/m), reasoning token
    ids `[B, k, T]` and their lengths `[B, k]`.
    """
    rng_reason, rng_flow = jax.random.split(rng)
    tokens, lengths, cache, first = reason(cfg, icfg, params, prompt, rng_reason)
    controls = flow_sample(cfg, params, cache, first, rng_flow, icfg.flow_steps)
    k = icfg.num_samples
    out = controls_to_trajectory(controls, jnp.repeat(history_xyz_bh3, k, axis=0), cfg.control_stats)
    out.update(reasoning_tokens=tokens, reasoning_lengths=lengths)
    batch = prompt.tokens_bl.shape[0]
    return jax.tree_util.tree_map(lambda x: x.reshape(batch, k, *x.shape[1:]), out)


def compiler_options() -> dict[str, Any]:
    """XLA options of the inference programs (`jax.jit(..., compiler_options=...)`).

    On a GPU every GEMM goes to cuBLAS(Lt) instead of XLA's Triton GEMM fusions: XLA's GEMM rewriter
    then moves the ViT's fc1 bias + tanh-GELU into the cuBLASLt epilogue (with Triton GEMMs enabled it
    stays a separate pass over the `[patches, 4096]` activation) and the other biases into their GEMMs.
    Measured on the ar1_2b policy program on an H100: 115.8 against 117.5 ms of device time per run
    (docs/PERFORMANCE.md, session 11). Other backends: none.
    """
    return {"xla_gpu_enable_triton_gemm": False} if jax.default_backend() == "gpu" else {}


def compile_policy(cfg: AlpamayoConfig, icfg: InferenceConfig) -> Callable[..., dict[str, jax.Array]]:
    """`fn(params, prompt, history_xyz_bh3, rng)`: one compiled program per input shape."""
    return jax.jit(
        lambda params, prompt, history, rng: sample_policy(cfg, icfg, params, prompt, history, rng),
        compiler_options=compiler_options(),
    )


def decode_reasoning(tokens_bkt: np.ndarray, lengths_bk: np.ndarray, detokenize: Callable[[list[int]], str]):
    """Reasoning text per scene and sample, with a tokenizer's `decode`."""
    tokens_bkt, lengths_bk = np.asarray(tokens_bkt), np.asarray(lengths_bk)
    return [
        [detokenize(tokens_bkt[b, s, : lengths_bk[b, s]].tolist()) for s in range(tokens_bkt.shape[1])]
        for b in range(tokens_bkt.shape[0])
    ]


class Policy:
    """The compiled policy with its parameters and tokenizer: host (NumPy) outputs plus the reasoning
    text. `policy(prompt, history_xyz_bh3, rng)` returns `sample_policy`'s arrays and `reasoning_text`
    (`[B][k]` strings)."""

    def __init__(self, cfg: AlpamayoConfig, icfg: InferenceConfig, params: Any, tokenizer: Any):
        self.cfg, self.icfg, self.params, self.tokenizer = cfg, icfg, params, tokenizer
        self._fn = compile_policy(cfg, icfg)

    def __call__(self, prompt: PromptInputs, history_xyz_bh3: Any, rng: jax.Array) -> dict[str, Any]:
        out = jax.device_get(self._fn(self.params, prompt, history_xyz_bh3, rng))
        tokens, lengths = out["reasoning_tokens"], out["reasoning_lengths"]
        out["reasoning_text"] = decode_reasoning(tokens, lengths, self.tokenizer.decode)
        return out
