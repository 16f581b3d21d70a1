"""What the trainer measures, as `clu.metrics` collections: built inside the jitted step, merged between
log points (or over evaluation batches) and computed on the host.

A step's `text_ce`, `traj_ce` and `flow` are means over that step's loss tokens / trajectories, so the
mean over several steps weights each step by its loss weight (the denominator the model divided by),
not by 1: `WeightedAverage`. Step-level scalars (`loss`, norms) are plain per-step `Average`s.

(This module does not use `from __future__ import annotations`: clu reads metric classes from the
collection's annotations.)
"""

import functools
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from alpamayo_jax.data.batch import Batch
from alpamayo_jax.models.alpamayo import select_loss_positions
from alpamayo_jax.train.evaluate import HORIZONS_S

Average = clu_metrics.Average
Collection = clu_metrics.Collection


@flax.struct.dataclass
class WeightedAverage(clu_metrics.Metric):
    """sum(value * weight) / sum(weight); 0 when no weight was seen (as the model's masked means).

    `values` and `weight` broadcast together: a per-step mean with its scalar weight, or per-sample
    values `[B]` with a per-sample weight `[B]` (0 leaves a sample out, even a non-finite one).
    """

    total: jax.Array
    weight: jax.Array

    @classmethod
    def empty(cls) -> "WeightedAverage":
        return cls(total=jnp.zeros((), jnp.float32), weight=jnp.zeros((), jnp.float32))

    @classmethod
    def from_model_output(cls, values: jax.Array, weight: jax.Array, **_) -> "WeightedAverage":
        values = jnp.asarray(values, jnp.float32)
        weight = jnp.broadcast_to(jnp.asarray(weight, jnp.float32), values.shape)
        total = jnp.where(weight > 0, values * weight, 0.0).sum()
        return cls(total=total, weight=weight.sum())

    @classmethod
    def of(cls, name: str, weight: str) -> type["WeightedAverage"]:
        """The metric of model output `name` weighted by model output `weight`."""

        @flax.struct.dataclass
        class Of(cls):
            @classmethod
            def from_model_output(cls, **outputs) -> "WeightedAverage":
                return super().from_model_output(outputs[name], outputs[weight])

        return Of

    def merge(self, other: "WeightedAverage") -> "WeightedAverage":
        return type(self)(total=self.total + other.total, weight=self.weight + other.weight)

    def compute(self) -> jax.Array:
        return jnp.where(self.weight > 0, self.total / jnp.maximum(self.weight, 1e-30), 0.0)


def loss_weights(batch: Batch, max_loss_tokens: int | None) -> dict[str, jax.Array]:
    """The denominators of the model's per-kind means: `text_weight` and `traj_weight` (sum of the loss
    weights of the CE positions the model selects, `Alpamayo.__call__`), `trajectories` (samples with a
    trajectory, the flow loss's samples)."""
    text_bl = batch.text_loss_bl[:, 1:].astype(jnp.float32)
    traj_bl = batch.traj_loss_bl[:, 1:].astype(jnp.float32)
    idx, real, _ = select_loss_positions(text_bl + traj_bl, max_loss_tokens)
    return {
        "text_weight": (jnp.take_along_axis(text_bl, idx, axis=1) * real).sum(),
        "traj_weight": (jnp.take_along_axis(traj_bl, idx, axis=1) * real).sum(),
        "trajectories": batch.has_trajectory_b.astype(jnp.float32).sum(),
    }


def _loss_metrics() -> dict[str, type[clu_metrics.Metric]]:
    return dict(
        loss=Average.from_output("loss"),
        text_ce=WeightedAverage.of("text_ce", "text_weight"),
        traj_ce=WeightedAverage.of("traj_ce", "traj_weight"),
        flow=WeightedAverage.of("flow", "trajectories"),
        text_accuracy=WeightedAverage.of("text_accuracy", "text_weight"),
        traj_accuracy=WeightedAverage.of("traj_accuracy", "traj_weight"),
        loss_tokens_dropped=Average.from_output("loss_tokens_dropped"),
    )


TrainMetrics = Collection.create(
    **_loss_metrics(),
    grad_norm=Average.from_output("grad_norm"),
    param_norm=Average.from_output("param_norm"),
)


@functools.cache
def eval_metrics_class(num_samples: int, horizons_s: tuple[float, ...] = HORIZONS_S) -> type[Collection]:
    """EvalMetrics for k = `num_samples`: the losses on held-out data, and minADE_k and ADE / FDE at each
    horizon averaged over the samples with a trajectory (one class per k, so jit sees one pytree type).

    Field names must be identifiers (`ADE_6p4s`); `compute()` returns the logged keys (`ADE_6.4s`).
    """
    keys = [f"minADE_{num_samples}", *(f"{kind}_{h:g}s" for h in horizons_s for kind in ("ADE", "FDE"))]
    key_of = {key.replace(".", "p"): key for key in keys}
    fields = {field: WeightedAverage.of(key, "has_trajectory") for field, key in key_of.items()}

    def compute(self) -> dict[str, jax.Array]:
        return {key_of.get(name, name): value for name, value in Collection.compute(self).items()}

    namespace = {"__annotations__": {**_loss_metrics(), **fields}, "compute": compute}
    return flax.struct.dataclass(type("EvalMetrics", (Collection,), namespace))


def train_metrics(outputs: Mapping[str, jax.Array], batch: Batch, max_loss_tokens: int | None) -> Collection:
    """TrainMetrics of one step from the model's losses plus `loss`, `grad_norm`, `param_norm`."""
    return TrainMetrics.single_from_model_output(**outputs, **loss_weights(batch, max_loss_tokens))


def eval_metrics(
    outputs: Mapping[str, jax.Array], batch: Batch, max_loss_tokens: int | None, num_samples: int
) -> Collection:
    """EvalMetrics of one batch from the model's losses plus `loss` and the per-sample `[B]` trajectory
    errors of `evaluate.trajectory_errors`."""
    return eval_metrics_class(num_samples).single_from_model_output(
        **outputs,
        **loss_weights(batch, max_loss_tokens),
        has_trajectory=batch.has_trajectory_b,
    )


@functools.cache
def averages_class(names: tuple[str, ...]) -> type[Collection]:
    """A collection of plain per-step averages of the named outputs (models other than `Alpamayo`, e.g.
    the triplane rendering pre-training, whose losses are already means over a fixed-size batch)."""
    fields = {name: Average.from_output(name) for name in names}
    return flax.struct.dataclass(type("ScalarMetrics", (Collection,), {"__annotations__": fields}))


def averages(outputs: Mapping[str, jax.Array], batch: Batch | None = None) -> Collection:
    """`averages_class` of every output (the batch is not needed: the signature of `train_metrics`)."""
    del batch
    return averages_class(tuple(sorted(outputs))).single_from_model_output(**outputs)


def merge_all(collections: list[Collection]) -> Collection:
    """The merge of a non-empty list of collections (host or device arrays)."""
    if not collections:
        raise ValueError("merge_all needs at least one collection")
    return functools.reduce(lambda a, b: a.merge(b), collections)


def to_floats(collection: Collection) -> dict[str, float]:
    """`compute()` as Python floats, for the writers."""
    return {k: float(v) for k, v in collection.compute().items()}
