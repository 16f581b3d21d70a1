"""Discrete trajectory tokens of the VLM (SPEC 1.3) and the vocabulary extension that makes room for them.

Id layout after the base vocabulary: 3000 future-control bins, 1000 history-delta bins, then the special
tokens, then padding up to a multiple of `pad_to` (embedding tables are padded for efficient sharding).

Encoders and decoders take an array module `xp` (`numpy` in the data pipeline, `jax.numpy` under jit) so
the same code serves both. Values outside a quantiser's range are clipped to its first / last bin.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = np.ndarray | jax.Array  # every encoder / decoder works on either, as chosen by `xp`

SPECIAL_TOKENS = (
    "<|cot_start|>",
    "<|cot_end|>",
    "<|traj_history_start|>",
    "<|traj_history|>",
    "<|traj_history_end|>",
    "<|traj_future_start|>",
    "<|traj_future|>",
    "<|traj_future_end|>",
    "<|meta_action_start|>",
    "<|meta_action_end|>",
    "<|route_start|>",
    "<|route_end|>",
    "<|question_start|>",
    "<|question_end|>",
    "<|answer_start|>",
    "<|answer_end|>",
)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where trajectory and special tokens live in the extended vocabulary.

    Attributes:
      base_vocab_size: size of the backbone's embedding table (151936 for Qwen3-VL).
      num_future_bins: bins per normalised control, shared by acceleration and curvature.
      future_range_std: future bins cover [-range, +range] in normalised (std) units.
      num_history_bins: bins per history axis, shared by x, y and z.
      history_xy_range: history x / y deltas cover [-range, +range] metres per 0.1 s step.
      history_z_range: history z deltas cover [-range, +range] metres per step.
      num_waypoints: future waypoints (2 tokens each).
      num_history: history poses (3 tokens each).
      special_tokens: names of the added special tokens, in id order.
      pad_to: `vocab_size` is rounded up to a multiple of this; ids in [special_end, vocab_size) are unused.
    """

    base_vocab_size: int = 151936
    num_future_bins: int = 3000
    future_range_std: float = 10.0
    num_history_bins: int = 1000
    history_xy_range: float = 4.0
    history_z_range: float = 10.0
    num_waypoints: int = 64
    num_history: int = 16
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    pad_to: int = 128

    def __post_init__(self):
        for name in ("base_vocab_size", "num_future_bins", "num_history_bins", "num_waypoints", "pad_to"):
            if getattr(self, name) < 1:
                raise ValueError(f"TokenLayout.{name} must be positive, got {getattr(self, name)}")
        if self.num_history < 2:
            raise ValueError(f"TokenLayout.num_history must be at least 2, got {self.num_history}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"TokenLayout.special_tokens has duplicates: {self.special_tokens}")

    @property
    def future_start(self) -> int:
        return self.base_vocab_size

    @property
    def future_end(self) -> int:
        return self.future_start + self.num_future_bins

    @property
    def history_start(self) -> int:
        return self.future_end

    @property
    def history_end(self) -> int:
        return self.history_start + self.num_history_bins

    @property
    def special_start(self) -> int:
        return self.history_end

    @property
    def special_end(self) -> int:
        return self.special_start + len(self.special_tokens)

    @property
    def vocab_size(self) -> int:
        """Extended embedding size: all added ids, rounded up to a multiple of `pad_to`."""
        return math.ceil(self.special_end / self.pad_to) * self.pad_to

    @property
    def num_future_tokens(self) -> int:
        return 2 * self.num_waypoints

    @property
    def num_history_tokens(self) -> int:
        return 3 * self.num_history

    def special_id(self, name: str) -> int:
        """Id of a special token, given as `<|cot_start|>` or `cot_start`."""
        token = name if name.startswith("<|") else f"<|{name}|>"
        if token not in self.special_tokens:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(self.special_tokens)}")
        return self.special_start + self.special_tokens.index(token)

    def is_future_id(self, ids: Array) -> Array:
        """Boolean mask of future-control ids (NumPy or JAX arrays)."""
        return (ids >= self.future_start) & (ids < self.future_end)

    def is_history_id(self, ids: Array) -> Array:
        """Boolean mask of history-delta ids (NumPy or JAX arrays)."""
        return (ids >= self.history_start) & (ids < self.history_end)

    def is_trajectory_id(self, ids: Array) -> Array:
        """Boolean mask of all 4000 trajectory ids, future and history (NumPy or JAX arrays)."""
        return (ids >= self.future_start) & (ids < self.history_end)


def _quantize(x: Array, low: Array | float, high: Array | float, num_bins: int, xp: ModuleType) -> Array:
    """Uniform bin index in [0, num_bins) of x in [low, high]; out-of-range values are clipped."""
    bins = xp.floor((x - low) / (high - low) * num_bins)
    return xp.clip(bins, 0, num_bins - 1).astype(xp.int32)


def _bin_centres(bins: Array, low: Array | float, high: Array | float, num_bins: int) -> Array:
    return low + (bins + 0.5) * ((high - low) / num_bins)


def _check_last_dims(name: str, array: Array, expected: tuple[int, ...]) -> None:
    if tuple(array.shape[-len(expected) :]) != expected:
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, expected))}], got {array.shape}")


def encode_future(controls: Array, layout: TokenLayout, xp: ModuleType = np) -> Array:
    """Normalised controls `[..., A, 2]` (a, k) to ids `[..., 2A]` interleaved a0, k0, a1, k1, ...

    Uniform bins over +-`future_range_std`; values outside are clipped to the end bins.
    """
    controls = xp.asarray(controls, dtype=xp.float32)
    _check_last_dims("encode_future controls", controls, (layout.num_waypoints, 2))
    r = layout.future_range_std
    bins = _quantize(controls, -r, r, layout.num_future_bins, xp)
    return bins.reshape(*controls.shape[:-2], layout.num_future_tokens) + layout.future_start


def decode_future(ids: Array, layout: TokenLayout, xp: ModuleType = np) -> Array:
    """Ids `[..., 2A]` from `encode_future` to normalised controls `[..., A, 2]` at the bin centres.

    Ids outside the future range are clipped to the nearest future bin.
    """
    ids = xp.asarray(ids)
    _check_last_dims("decode_future ids", ids, (layout.num_future_tokens,))
    bins = xp.clip(ids - layout.future_start, 0, layout.num_future_bins - 1).astype(xp.float32)
    r = layout.future_range_std
    controls = _bin_centres(bins, -r, r, layout.num_future_bins)
    return controls.reshape(*ids.shape[:-1], layout.num_waypoints, 2)


def _history_half_range(layout: TokenLayout, xp: ModuleType) -> Array:
    return xp.asarray([layout.history_xy_range, layout.history_xy_range, layout.history_z_range], xp.float32)


def history_deltas(history_xyz: Array, xp: ModuleType = np) -> Array:
    """Per-step deltas `[..., H, 3]`: d_i = p_i - p_{i-1}, with p_{-1} = 2 p_0 - p_1 (so d_0 = d_1)."""
    history_xyz = xp.asarray(history_xyz, dtype=xp.float32)
    deltas = history_xyz[..., 1:, :] - history_xyz[..., :-1, :]
    return xp.concatenate([deltas[..., :1, :], deltas], axis=-2)


def encode_history(history_xyz: Array, layout: TokenLayout, xp: ModuleType = np) -> Array:
    """History poses `[..., H, 3]` (t0 frame) to ids `[..., 3H]` interleaved dx0, dy0, dz0, dx1, ...

    Quantises `history_deltas` with `num_history_bins` bins per axis over +-`history_xy_range` (x, y)
    and +-`history_z_range` (z); deltas outside are clipped to the end bins.
    """
    history_xyz = xp.asarray(history_xyz, dtype=xp.float32)
    _check_last_dims("encode_history history_xyz", history_xyz, (layout.num_history, 3))
    half = _history_half_range(layout, xp)
    bins = _quantize(history_deltas(history_xyz, xp), -half, half, layout.num_history_bins, xp)
    return bins.reshape(*history_xyz.shape[:-2], layout.num_history_tokens) + layout.history_start


def decode_history(ids: Array, layout: TokenLayout, xp: ModuleType = np) -> Array:
    """Ids `[..., 3H]` from `encode_history` to poses `[..., H, 3]` anchored at p_{H-1} = 0 (the t0 pose).

    p_i = -sum_{j > i} d_j, so the decoded d_0 is not used. Ids outside the history range are clipped to
    the nearest history bin.
    """
    ids = xp.asarray(ids)
    _check_last_dims("decode_history ids", ids, (layout.num_history_tokens,))
    bins = xp.clip(ids - layout.history_start, 0, layout.num_history_bins - 1).astype(xp.float32)
    half = _history_half_range(layout, xp)
    deltas = _bin_centres(
        bins.reshape(*ids.shape[:-1], layout.num_history, 3), -half, half, layout.num_history_bins
    )
    cumulative = xp.cumsum(deltas, axis=-2)
    return cumulative - cumulative[..., -1:, :]


def _get_path(tree: Mapping[str, Any], path: Sequence[str]) -> Any | None:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _set_path(tree: Mapping[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """Copy of the nested dicts along `path` with the leaf replaced; other subtrees are shared."""
    head, *rest = path
    new = dict(tree)
    new[head] = _set_path(tree[head], rest, value) if rest else value
    return new


def _grow(array: jax.Array, axis: int, new_size: int, rng: jax.Array) -> jax.Array:
    """Appends entries along `axis` up to `new_size`: mean of the existing ones + 0.02 std Gaussian noise."""
    old = jnp.asarray(array)
    rows = jnp.moveaxis(old, axis, 0).astype(jnp.float32)
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    noise = jax.random.normal(rng, (new_size - rows.shape[0], *rows.shape[1:]), jnp.float32)
    added = jnp.moveaxis(mean + 0.02 * std * noise, 0, axis).astype(old.dtype)
    return jnp.concatenate([old, added], axis=axis)


def extend_vocab(
    params: Mapping[str, Any],
    old_vocab: int,
    new_vocab: int,
    rng: jax.Array,
    *,
    embed_path: Sequence[str] = ("text", "embed", "embedding"),
    head_path: Sequence[str] = ("text", "lm_head", "kernel"),
) -> dict[str, Any]:
    """Grows the token embedding `[V, D]` and LM-head kernel `[D, V]` from `old_vocab` to `new_vocab` ids.

    Existing rows / columns are copied bit-exactly; new ones are the mean of the existing ones plus
    Gaussian noise of 0.02 times their per-dimension std, so new tokens start as "average" tokens. A missing
    head is skipped (tied embeddings). Returns a new pytree; untouched subtrees are shared with `params`.
    """
    if new_vocab < old_vocab:
        raise ValueError(f"extend_vocab: new_vocab {new_vocab} is smaller than old_vocab {old_vocab}")
    embed = _get_path(params, embed_path)
    if embed is None:
        raise KeyError(f"extend_vocab: no embedding at {'/'.join(embed_path)}")
    if embed.ndim != 2 or embed.shape[0] != old_vocab:
        raise ValueError(
            f"extend_vocab: {'/'.join(embed_path)} has shape {embed.shape}, expected [{old_vocab}, D]"
        )
    embed_rng, head_rng = jax.random.split(rng)
    params = _set_path(params, embed_path, _grow(embed, 0, new_vocab, embed_rng))
    head = _get_path(params, head_path)
    if head is None:
        return params
    if head.ndim != 2 or head.shape != (embed.shape[1], old_vocab):
        raise ValueError(
            f"extend_vocab: {'/'.join(head_path)} has shape {head.shape}, "
            f"expected [{embed.shape[1]}, {old_vocab}]"
        )
    return _set_path(params, head_path, _grow(head, 1, new_vocab, head_rng))
