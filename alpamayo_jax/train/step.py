"""The pure training step: loss = sum of weighted per-kind losses, one optimizer update, and the step's
`clu.metrics` collection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from alpamayo_jax.data.batch import Batch
from alpamayo_jax.train.state import TrainState

StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, clu_metrics.Collection]]
Collect = Callable[[dict[str, jax.Array], Any], clu_metrics.Collection]


def weighted_loss(losses: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """sum_k weights[k] * losses[k]; a weight naming no loss of the model is an error."""
    unknown = set(weights) - set(losses)
    if unknown:
        raise KeyError(
            f"loss weights {sorted(unknown)} name no model loss; the model returns {sorted(losses)}"
        )
    return sum(jnp.float32(w) * losses[k].astype(jnp.float32) for k, w in weights.items() if w)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_weights: Mapping[str, float],
    trainable: Any,
    collect: Collect,
    ema_decay: float = 0.0,
) -> StepFn:
    """`train_step(state, batch, rng) -> (state, metrics)`.

    trainable: bool tree like params; frozen parameters are cut with `stop_gradient`, so their
    gradients are never computed. collect: `(outputs, batch) -> Collection` of the step (e.g.
    `metric_collections.train_metrics`), where outputs are every model output, `loss`, `grad_norm`
    (trainable parameters, before clipping) and `param_norm`.
    """
    weights = dict(loss_weights)

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, clu_metrics.Collection]:
        def loss_fn(params):
            params = jax.tree_util.tree_map(
                lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable
            )
            out = model.apply({"params": params}, batch, rng)
            return weighted_loss(out, weights), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
        outputs = dict(
            out,
            loss=loss,
            grad_norm=optax.global_norm(grads),
            param_norm=optax.global_norm(params),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
        return new_state, collect(outputs, batch)

    return train_step


def make_eval_step(model: nn.Module, loss_weights: Mapping[str, float]) -> Callable:
    """`eval_step(params, batch, rng) -> metrics`: the model's losses on held-out data."""
    weights = dict(loss_weights)

    def eval_step(params: Any, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        out = model.apply({"params": params}, batch, rng)
        return dict(out, loss=weighted_loss(out, weights))

    return eval_step
