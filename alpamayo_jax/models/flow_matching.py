"""Conditional flow matching for the action expert (SPEC 1.4): time sampling, straight-path interpolation,
loss, Euler sampler, and the small input / output projections between controls and the expert width.

Convention: t = 0 is noise, t = 1 is data; x_t = t x1 + (1 - t) eps and the velocity target is x1 - eps.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_init = nn.initializers


def sample_flow_time(
    rng: jax.Array, shape: tuple[int, ...], *, alpha: float = 1.5, beta: float = 1.0, t_max: float = 0.999
) -> jax.Array:
    """Flow times t = t_max (1 - s), s ~ Beta(alpha, beta): with the defaults more samples near noise."""
    return t_max * (1.0 - jax.random.beta(rng, alpha, beta, shape, jnp.float32))


def _expand_time(t: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
    """Broadcasts `t` (scalar or the leading dims of `x`, e.g. `[B]`) against `x` (e.g. `[B, A, 2]`)."""
    t = jnp.asarray(t, jnp.float32)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def flow_interpolate(x1: jax.Array, noise: jax.Array, t: jax.typing.ArrayLike) -> jax.Array:
    """Point on the straight path, x_t = t x1 + (1 - t) noise; `t` is a scalar or `x1`'s leading dims."""
    t = _expand_time(t, x1)
    return t * x1 + (1.0 - t) * noise


def flow_target(x1: jax.Array, noise: jax.Array) -> jax.Array:
    """Velocity of the straight path, x1 - noise (constant in t)."""
    return x1 - noise


def flow_matching_loss(
    pred_velocity: jax.Array, target: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Mean squared error over the valid elements, in float32.

    Args:
      pred_velocity: `[B, A, 2]` (any shape) predicted velocity.
      target: same shape, `flow_target`.
      mask: optional, broadcastable to the leading dims of `pred_velocity` (e.g. `[B]` or `[B, A]`) or to its
        full shape; nonzero = valid. With no valid element the loss is 0.
    """
    se = jnp.square(pred_velocity.astype(jnp.float32) - target.astype(jnp.float32))
    if mask is None:
        return se.mean()
    weight = jnp.broadcast_to(_expand_time(mask, se), se.shape)
    return (se * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def euler_sample(
    velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, num_steps: int
) -> jax.Array:
    """Integrates dx/dt = velocity_fn(x_t, t) from t = 0 (`noise`) to t = 1 with `num_steps` Euler steps.

    `t` is passed to `velocity_fn` as a float32 scalar (i / num_steps); broadcast it as the model needs.
    """
    dt = 1.0 / num_steps

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        t = i.astype(jnp.float32) * dt
        return x + dt * velocity_fn(x, t).astype(x.dtype)

    return jax.lax.fori_loop(0, num_steps, step, noise)


def fourier_features(
    x: jax.typing.ArrayLike, num_freqs: int = 10, min_freq: float = 1.0, max_freq: float = 100.0
) -> jax.Array:
    """Fourier features `[..., 2 num_freqs]` of scalars `[...]`: sqrt(2) [sin(2 pi f x), cos(2 pi f x)].

    Frequencies are log-spaced from `min_freq` to `max_freq` (as the release's encoder); the sqrt(2) gives
    each feature unit mean square.
    """
    freqs = np.logspace(np.log10(min_freq), np.log10(max_freq), num_freqs, dtype=np.float32)
    arg = 2.0 * np.pi * jnp.asarray(x, jnp.float32)[..., None] * freqs
    return np.sqrt(2.0) * jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def _dense(features: int, names: tuple[str | None, str], dtype: Any, param_dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(_init.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(_init.zeros_init(), (names[1],)),
        name=name,
    )


class ActionInputProjection(nn.Module):
    """Noisy controls and flow time to expert input embeddings (SPEC 1.4).

    Per waypoint: Fourier features of (a, k) (2 x 2 num_freqs) and of t (2 num_freqs), 60 dims by default,
    -> Dense(hidden) SiLU -> [RMSNorm Dense(hidden) SiLU] x (num_layers - 1) -> RMSNorm Dense(width)
    -> LayerNorm. Input `x_ba2` `[B, A, 2]`, `t_b` `[B]`; output `[B, A, width]`.
    """

    width: int
    hidden: int = 512
    num_layers: int = 2
    num_freqs: int = 10
    min_freq: float = 1.0
    max_freq: float = 100.0
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_ba2: jax.Array, t_b: jax.Array) -> jax.Array:
        b, a, c = x_ba2.shape
        freqs = dict(num_freqs=self.num_freqs, min_freq=self.min_freq, max_freq=self.max_freq)
        feats_bax = fourier_features(x_ba2, **freqs).reshape(b, a, c * 2 * self.num_freqs)
        feats_bt = jnp.broadcast_to(fourier_features(t_b, **freqs)[:, None], (b, a, 2 * self.num_freqs))
        h = jnp.concatenate([feats_bax, feats_bt], axis=-1).astype(self.dtype)
        h = nn.silu(_dense(self.hidden, ("action_in", "mlp"), self.dtype, self.param_dtype, "in_proj")(h))
        for i in range(self.num_layers):
            h = nn.RMSNorm(
                epsilon=self.norm_eps,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                scale_init=nn.with_logical_partitioning(_init.ones_init(), ("norm",)),
                name=f"norm_{i}",
            )(h)
            if i < self.num_layers - 1:
                # The square hidden kernel replicates its input dim: one logical name may not repeat.
                h = nn.silu(
                    _dense(self.hidden, (None, "mlp"), self.dtype, self.param_dtype, f"hidden_{i}")(h)
                )
            else:
                h = _dense(self.width, ("mlp", "embed"), self.dtype, self.param_dtype, "out_proj")(h)
        return nn.LayerNorm(
            epsilon=self.norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(_init.ones_init(), ("norm",)),
            bias_init=nn.with_logical_partitioning(_init.zeros_init(), ("norm",)),
            name="out_norm",
        )(h)


class VelocityHead(nn.Module):
    """Expert hidden states `[B, A, width]` to the float32 velocity of the (a, k) controls `[B, A, 2]`."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_bad: jax.Array) -> jax.Array:
        out = _dense(2, ("embed", "action_out"), self.dtype, self.param_dtype, "proj")(h_bad)
        return out.astype(jnp.float32)
