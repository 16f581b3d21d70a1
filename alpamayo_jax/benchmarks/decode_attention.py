"""Per-layer time of the decode step's attention over the KV cache: the XLA two-part softmax against the
Pallas cache kernel (`models/decode_attention.py`) at several chunk / block_s / num_warps / num_stages,
and the fused decode layer kernel that the inference layout runs (`fused_decode_attention`: norms,
rotary, the cache write, the split read and the split-combine kernel) at the same settings.

Shapes are the preset's text decoder at a release cache (3,072 slots, the last 40 not yet filled,
bf16), one query token. One compiled program runs every layer's attention (each layer its own cache
buffer, as in the inference layout, so nothing stays in L2) `repeat` times, each output the next
query; the median time over layers x repeat is the per-layer time including launches. The fused
kernel updates the caches in place: they are the loop's carry (copied once per call on entry, as the
decode program does when the caches are not donated).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax.benchmarks.timing import time_compiled
from alpamayo_jax.models import alpamayo, layers
from alpamayo_jax.models import decode_attention as kernel_lib

# (chunk, block_s, num_warps, num_stages); chunk None: the default heuristic.
SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (None, 128, 4, 2),
    (256, 128, 4, 2),
    (256, 64, 4, 3),
    (128, 64, 4, 2),
    (128, 128, 8, 2),
    (512, 128, 4, 3),
)
COPY_TB_S = 2.96  # measured device-copy bandwidth of the H100 (docs/PERFORMANCE.md)


def _inputs(text_cfg, batch: int, length: int, unfilled: int, dtype: Any) -> tuple[Any, ...]:
    """Query `[B, 1, H, D]`, per-layer caches (tuples of `[B, K, S, D]`), slot mask, new-token k/v."""
    k, d = text_cfg.num_kv_heads, text_cfg.head_dim
    keys = jax.random.split(jax.random.key(0), 2 * text_cfg.num_layers + 3)

    def normal(key, shape):
        return jax.random.normal(key, shape, dtype)

    q = normal(keys[0], (batch, 1, text_cfg.num_heads, d))
    caches = tuple(
        (normal(keys[3 + 2 * i], (batch, k, length, d)), normal(keys[4 + 2 * i], (batch, k, length, d)))
        for i in range(text_cfg.num_layers)
    )
    mask = jnp.broadcast_to(jnp.arange(length) < length - unfilled, (batch, length))
    new = (normal(keys[1], (batch, k, 1, d)), normal(keys[2], (batch, k, 1, d)))
    return q, caches, mask, new


def _all_layers(attend, repeat: int):
    """jit(q, caches, mask, new) -> q after `repeat` passes over every layer's attention."""

    def run(q, caches, mask, new):
        def one_pass(_, q):
            for k1, v1 in caches:
                q = attend(q, k1, v1, mask, *new)
            return q

        return jax.lax.fori_loop(0, repeat, one_pass, q)

    return jax.jit(run)


def _fused_inputs(text_cfg, batch: int, dtype: Any) -> tuple[Any, ...]:
    """Raw fused-qkv rows `[B, K, G + 2, D]`, the layer input row `[B, E]`, q/k norm scales, rotary."""
    k, d = text_cfg.num_kv_heads, text_cfg.head_dim
    keys = jax.random.split(jax.random.key(1), 4)
    qkv = jax.random.normal(keys[0], (batch, k, text_cfg.num_heads // k + 2, d), dtype)
    h = jax.random.normal(keys[1], (batch, text_cfg.width), dtype)
    scale = 1.0 + 0.1 * jax.random.normal(keys[2], (d,), jnp.float32)
    angles = jax.random.uniform(keys[3], (batch, d), jnp.float32, 0.0, 6.0)
    return qkv, h, scale.astype(dtype), scale.astype(dtype), jnp.cos(angles), jnp.sin(angles)


def _all_layers_fused(attend, repeat: int, index: int):
    """jit(qkv, h, scales, rotary, caches, mask) -> qkv after `repeat` passes over every layer's fused
    kernel (the caches carried through the loop and written in place at slot `index`)."""

    def run(qkv, h, q_scale, k_scale, cos, sin, caches, mask):
        b, k, _, d = qkv.shape
        layer_args = (h, q_scale, k_scale, cos, sin)

        def one_pass(_, carry):
            qkv, caches = carry
            new = []
            for cache_k, cache_v in caches:
                out, cache_k, cache_v = attend(qkv, *layer_args, cache_k, cache_v, mask, index)
                qkv = qkv + out.reshape(b, k, -1, d)[:, :, :1].astype(qkv.dtype)  # the next layer's input
                new.append((cache_k, cache_v))
            return qkv, tuple(new)

        return jax.lax.fori_loop(0, repeat, one_pass, (qkv, caches))[0]

    return jax.jit(run)


def run(
    preset: str = "ar1_2b",
    batch: int = 1,
    length: int = 3072,
    unfilled: int = 40,
    repeat: int = 10,
    reps: int = 10,
    dtype: str = "bfloat16",
    settings: tuple[tuple[int | None, int, int, int], ...] = SETTINGS,
) -> dict[str, Any]:
    """Microseconds per layer for XLA and each Pallas setting, the bandwidth floor, and each setting's
    largest deviation from the XLA output on one call."""
    text_cfg = alpamayo.alpamayo_config(preset).vlm.text
    dt = jnp.dtype(dtype)
    q, caches, mask, new = _inputs(text_cfg, batch, length, unfilled, dt)
    calls = text_cfg.num_layers * repeat
    cache_bytes = 2 * batch * text_cfg.num_kv_heads * length * text_cfg.head_dim * dt.itemsize
    ref = np.asarray(layers.two_part_attention(q, *caches[0], mask, *new), np.float32)
    xla = time_compiled(_all_layers(layers.two_part_attention, repeat), q, caches, mask, new, reps=reps)
    result: dict[str, Any] = dict(
        preset=preset,
        device=jax.devices()[0].device_kind,
        backend=jax.default_backend(),
        shape=dict(
            batch=batch,
            kv_heads=text_cfg.num_kv_heads,
            groups=text_cfg.num_heads // text_cfg.num_kv_heads,
            length=length,
            head_dim=text_cfg.head_dim,
            layers=text_cfg.num_layers,
            dtype=dtype,
        ),
        cache_mb_per_layer=cache_bytes / 1e6,
        floor_us_per_layer=cache_bytes / (COPY_TB_S * 1e12) * 1e6,
        xla_us_per_layer=xla["median_ms"] * 1e3 / calls,
        pallas=[],
        fused=[],
    )
    b, k = batch, text_cfg.num_kv_heads

    def tiles(setting):
        return dict(zip(("chunk", "block_s", "num_warps", "num_stages"), setting, strict=True))

    def row(setting, timing, **extra):
        chosen = tiles(setting)
        if chosen["chunk"] is None:
            chosen["chunk"] = kernel_lib.default_chunk(b, k, length, chosen["block_s"])
        programs = b * k * (length // chosen["chunk"])
        return dict(**chosen, programs=programs, us_per_layer=timing["median_ms"] * 1e3 / calls, **extra)

    for setting in settings:
        attend = functools.partial(kernel_lib.decode_two_part_attention, **tiles(setting))
        out = np.asarray(jax.jit(attend)(q, *caches[0], mask, *new), np.float32)
        t = time_compiled(_all_layers(attend, repeat), q, caches, mask, new, reps=reps)
        result["pallas"].append(row(setting, t, max_abs_diff_vs_xla=float(np.abs(out - ref).max())))
    # The fused layer kernel writes the new token at the first unfilled slot (masked in the cache read).
    index = length - unfilled
    fused_args = (*_fused_inputs(text_cfg, batch, dt), caches, mask.at[:, index].set(False))
    eps = text_cfg.rms_eps
    for setting in settings:
        attend = functools.partial(kernel_lib.fused_decode_attention, eps=eps, norm_eps=eps, **tiles(setting))
        t = time_compiled(_all_layers_fused(attend, repeat, index), *fused_args, reps=reps)
        result["fused"].append(row(setting, t))
    return result
