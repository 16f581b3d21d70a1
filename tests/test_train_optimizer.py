"""Optimizer pieces on small trees: masks, lr multipliers, frozen updates, accumulation, EMA, NaN stop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from clu import metrics as clu_metrics

from alpamayo_jax.train import evaluate, optimizer, step, trainer
from alpamayo_jax.train.state import TrainState

PARAMS = {
    "vlm": {"vision": {"w": jnp.ones((2, 3))}, "text": {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}},
    "expert": {"w": jnp.ones((3, 2))},
}


def optim_cfg(**kw):
    c = dict(
        lr=0.1,
        warmup_steps=0,
        end_lr_fraction=1.0,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.0,
        clip_norm=1e9,
        lr_multipliers=(("vlm/vision", 0.1),),
        grad_accum_steps=1,
        ema_decay=0.0,
    )
    c.update(kw)
    return ml_collections.ConfigDict(c)


def trainable_cfg(include=("",), frozen=()):
    return ml_collections.ConfigDict(dict(include=include, frozen=frozen))


def flat(tree):
    return {optimizer.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_masks_and_multipliers_by_path_prefix():
    mask = flat(optimizer.trainable_mask(PARAMS, ("vlm",), ("vlm/vision",)))
    assert mask == {"vlm/vision/w": False, "vlm/text/w": True, "vlm/text/b": True, "expert/w": False}
    mult = flat(optimizer.lr_multipliers(PARAMS, (("vlm", 0.5), ("vlm/vision", 0.1), ("vlm/vis", 7.0))))
    assert mult == {"vlm/vision/w": 0.1, "vlm/text/w": 0.5, "vlm/text/b": 0.5, "expert/w": 1.0}


def test_updates_frozen_zero_and_vision_scaled():
    tx = optimizer.make_optimizer(optim_cfg(), trainable_cfg(frozen=("expert",)), PARAMS, 10)
    grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    u = flat(updates)
    np.testing.assert_array_equal(u["expert/w"], 0.0)
    # Adam's first step is lr * sign(g): -0.1 for text, -0.01 for the x0.1 vision tower.
    np.testing.assert_allclose(u["vlm/text/w"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(u["vlm/vision/w"], -0.01, rtol=1e-5)


def test_gradient_accumulation_updates_every_k_calls():
    tx = optimizer.make_optimizer(optim_cfg(grad_accum_steps=2), trainable_cfg(), PARAMS, 10)
    state = tx.init(PARAMS)
    g1 = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    g2 = jax.tree_util.tree_map(lambda x: -3 * jnp.ones_like(x), PARAMS)
    u1, state = tx.update(g1, state, PARAMS)
    assert all(np.all(x == 0) for x in flat(u1).values())
    u2, _ = tx.update(g2, state, PARAMS)
    np.testing.assert_allclose(flat(u2)["vlm/text/w"], 0.1, rtol=1e-5)  # mean grad -1 -> +lr


def test_schedule_warms_up_then_decays():
    s = optimizer.schedule(optim_cfg(warmup_steps=4, end_lr_fraction=0.1), 20)
    np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4, 20)], [0.0, 0.05, 0.1, 0.01], rtol=1e-6)


class Toy(nn.Module):
    @nn.compact
    def __call__(self, batch, rng):
        del rng
        w = self.param("w", nn.initializers.ones, (2,))
        return {"mse": jnp.mean((batch * w - 1.0) ** 2)}


def test_train_step_weights_losses_and_tracks_ema():
    params = {"w": jnp.ones(2)}
    tx = optimizer.make_optimizer(optim_cfg(lr_multipliers=()), trainable_cfg(), params, 10)
    toy_metrics = clu_metrics.Collection.create(
        loss=clu_metrics.Average.from_output("loss"), grad_norm=clu_metrics.Average.from_output("grad_norm")
    )

    def collect(outputs, batch):
        assert batch.shape == (2,)
        return toy_metrics.single_from_model_output(**outputs)

    fn = step.make_train_step(Toy(), tx, {"mse": 2.0}, {"w": True}, collect, ema_decay=0.5)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jnp.zeros(2, jnp.uint32), params)
    new, collection = jax.jit(fn)(state, jnp.array([3.0, 3.0]), jax.random.key(0))
    metrics = collection.compute()
    assert float(metrics["loss"]) == pytest.approx(2 * 4.0)
    assert float(metrics["grad_norm"]) == pytest.approx(np.hypot(12.0, 12.0))
    np.testing.assert_allclose(new.params["w"], 0.9, rtol=1e-5)
    np.testing.assert_allclose(new.ema["w"], 0.95, rtol=1e-5)
    assert int(new.step) == 1
    with pytest.raises(KeyError, match=r"loss weights \['flow'\] name no model loss"):
        step.weighted_loss({"mse": jnp.ones(())}, {"flow": 1.0})


def test_non_finite_loss_names_the_step():
    with pytest.raises(FloatingPointError, match="step 7: loss is nan"):
        trainer.check_finite(7, {"loss": float("nan"), "grad_norm": 1.0})
    with pytest.raises(FloatingPointError, match="step 3: grad_norm is inf"):
        trainer.check_finite(3, {"loss": 1.0, "grad_norm": float("inf")})


def test_trajectory_metrics_on_known_offsets():
    true = jnp.zeros((2, 64, 2))
    offsets = jnp.array([1.0, 3.0])  # sample 0 off by 1 m everywhere, sample 1 by 3 m
    xy = jnp.zeros((2, 2, 64, 2)).at[:, :, :, 0].set(offsets[None, :, None])
    xy = xy.at[1, 0, :, 0].set(jnp.arange(64) * 0.1)  # scene 1, sample 0: error grows 0.1 m per step
    m = evaluate.trajectory_metrics(xy, true, jnp.array([True, False]))
    assert float(m["minADE_2"]) == pytest.approx(1.0)
    assert float(m["ADE_1s"]) == pytest.approx(1.0) and float(m["FDE_6.4s"]) == pytest.approx(1.0)
    m = evaluate.trajectory_metrics(xy, true, jnp.array([False, True]))
    assert float(m["FDE_1s"]) == pytest.approx(0.9) and float(m["FDE_3s"]) == pytest.approx(2.9)
    assert float(m["ADE_6.4s"]) == pytest.approx(3.15) and float(m["minADE_2"]) == pytest.approx(3.0)
