"""optax optimizer of a stage: AdamW, warmup + cosine schedule, clipping, per-module learning-rate
multipliers, frozen parameter sets, gradient accumulation.

Parameters are addressed by '/'-joined paths ('vlm/vision/blocks/qkv/kernel'); a prefix matches a path
at a '/' boundary, '' matches everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax


def path_str(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def matches(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def trainable_mask(params: Any, include: Sequence[str], frozen: Sequence[str]) -> Any:
    """True for parameters under one of `include` and under none of `frozen`."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: (
            any(matches(path_str(p), i) for i in include) and not any(matches(path_str(p), f) for f in frozen)
        ),
        params,
    )


def lr_multipliers(params: Any, table: Sequence[tuple[str, float]]) -> Any:
    """Per-parameter learning-rate factor: the longest matching prefix of `table` wins (default 1)."""

    def one(path, _):
        s = path_str(path)
        hits = [(len(prefix), float(m)) for prefix, m in table if matches(s, prefix)]
        return max(hits)[1] if hits else 1.0

    return jax.tree_util.tree_map_with_path(one, params)


def schedule(optim: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.lr`, then cosine decay to `optim.lr * optim.end_lr_fraction`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay_steps=max(total_steps, optim.warmup_steps + 1),
        end_value=optim.lr * optim.end_lr_fraction,
    )


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-leaf factor (same tree structure as the params; leaves
    masked out by `multi_transform` pass through)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map(
            lambda u, f: u if isinstance(u, optax.MaskedNode) else u * f,
            updates,
            factors,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode),
        )
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim: Any, trainable: Any, params: Any, total_steps: int) -> optax.GradientTransformation:
    """The stage's optimizer; frozen parameters get zero updates and no optimizer moments.

    optim: lr, warmup_steps, end_lr_fraction, b1, b2, eps, weight_decay, clip_norm, lr_multipliers
    ((prefix, factor), ...), grad_accum_steps; trainable: include / frozen prefixes. Weight decay
    applies to matrices only (ndim >= 2), not to norms and biases. With grad_accum_steps = k each call
    is a micro-step and parameters change every k-th call.
    """
    mask = trainable_mask(params, trainable.include, trainable.frozen)
    adamw = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(
            schedule(optim, total_steps),
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p),
        ),
        scale_by_tree(lr_multipliers(params, optim.lr_multipliers)),
    )
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen", mask)
    tx = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
    if optim.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum_steps)
    return tx
