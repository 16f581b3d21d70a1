"""Open-loop trajectory metrics for periodic evaluation: minADE_k and ADE / FDE at 1, 3 and 6.4 s.

The expert samples k trajectories by flow matching from the backbone's K/V of each evaluation
sample's own prefix (images, history, prompt and its reference reasoning: teacher-forced context, no
reasoning generation), so the numbers track the action pathway during training at the cost of one
forward pass plus the flow steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from alpamayo_jax import action_space
from alpamayo_jax.data.batch import Batch
from alpamayo_jax.inference import controls_to_trajectory, flow_from_prefix
from alpamayo_jax.models.alpamayo import Alpamayo

HORIZONS_S = (1.0, 3.0, 6.4)


def _prefix_kv(module: Alpamayo, batch: Batch) -> tuple[jax.Array, jax.Array]:
    embeds, deepstack = module.embed(batch)
    _, (k, v) = module.vlm.text(embeds, batch.positions_3bl, batch.valid_bl, None, deepstack)
    return k, v


def sample_trajectories(
    model: Alpamayo, params: Any, batch: Batch, rng: jax.Array, num_samples: int, flow_steps: int
) -> jax.Array:
    """Sampled waypoints `[B, k, A, 2]` (t0 frame, metres)."""
    k, v = model.apply({"params": params}, batch, method=_prefix_kv)
    prefix_valid = model.apply({"params": params}, batch, method=Alpamayo.prefix_valid)

    def one(key):
        controls = flow_from_prefix(
            model.cfg, params, k, v, prefix_valid, batch.expert_position_b, key, flow_steps
        )
        return controls_to_trajectory(controls, batch.history_xyz_bh3, model.cfg.control_stats)["xy"]

    xy_kba2 = jax.lax.map(one, jax.random.split(rng, num_samples))
    return jnp.moveaxis(xy_kba2, 0, 1)


def trajectory_errors(
    xy_bka2: jax.Array, true_ba2: jax.Array, horizons_s: Sequence[float] = HORIZONS_S
) -> dict[str, jax.Array]:
    """Per-sample errors `[B]` (metres): minADE_k over the full horizon, and ADE / FDE of the first
    sample at each horizon."""
    dist_bka = jnp.linalg.norm(xy_bka2 - true_ba2[:, None], axis=-1)
    k = xy_bka2.shape[1]
    out = {f"minADE_{k}": dist_bka.mean(-1).min(1)}
    for h in horizons_s:
        n = round(h / action_space.DT)
        out[f"ADE_{h:g}s"] = dist_bka[:, 0, :n].mean(-1)
        out[f"FDE_{h:g}s"] = dist_bka[:, 0, n - 1]
    return out


def trajectory_metrics(
    xy_bka2: jax.Array, true_ba2: jax.Array, has_traj_b: jax.Array, horizons_s: Sequence[float] = HORIZONS_S
) -> dict[str, jax.Array]:
    """`trajectory_errors` averaged over the samples with a trajectory (0 when there is none)."""
    w = has_traj_b.astype(jnp.float32)
    denom = jnp.maximum(w.sum(), 1.0)
    errors = trajectory_errors(xy_bka2, true_ba2, horizons_s)
    return {name: jnp.where(w > 0, e * w, 0.0).sum() / denom for name, e in errors.items()}


def make_trajectory_eval(model: Alpamayo, num_samples: int, flow_steps: int):
    """`fn(params, batch, rng) -> per-sample errors [B]` (`trajectory_errors`) for `jax.jit`."""

    def fn(params: Any, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        xy = sample_trajectories(model, params, batch, rng, num_samples, flow_steps)
        return trajectory_errors(xy, batch.future_xy_ba2)

    return fn
