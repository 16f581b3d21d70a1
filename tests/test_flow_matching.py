"""Tests for flow matching: time sampling, path, loss, Euler sampler, Fourier features, projection modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alpamayo_jax.models import flow_matching as fm


def test_flow_time_distribution():
    t = np.asarray(fm.sample_flow_time(jax.random.key(0), (200_000,)))
    assert t.dtype == np.float32 and t.min() >= 0.0 and t.max() <= 0.999
    assert abs(t.mean() - 0.999 * (1 - 0.6)) < 3e-3  # E[Beta(1.5, 1)] = 0.6
    # P(t < 0.999 x) = 1 - (1 - x)^1.5: denser near noise than uniform
    assert abs((t < 0.999 * 0.5).mean() - (1 - 0.5**1.5)) < 5e-3


def test_interpolate_endpoints_and_target():
    rng = np.random.default_rng(0)
    x1, noise = rng.normal(size=(3, 64, 2)), rng.normal(size=(3, 64, 2))
    np.testing.assert_allclose(fm.flow_interpolate(x1, noise, jnp.zeros(3)), noise, rtol=1e-6)
    np.testing.assert_allclose(fm.flow_interpolate(x1, noise, 1.0), x1, rtol=1e-6)
    t = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(
        fm.flow_interpolate(x1, noise, t), t[:, None, None] * x1 + (1 - t[:, None, None]) * noise, rtol=1e-5
    )
    np.testing.assert_allclose(fm.flow_target(x1, noise), x1 - noise)


def test_loss_zero_at_target_and_masked_mean():
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.normal(size=(2, 4, 2)), jnp.float32)
    assert float(fm.flow_matching_loss(target, target)) == 0.0
    pred = target.at[1].add(10.0).at[0, 0].add(1.0)
    np.testing.assert_allclose(fm.flow_matching_loss(pred, target), (100 * 8 + 2) / 16, rtol=1e-6)
    np.testing.assert_allclose(fm.flow_matching_loss(pred, target, mask=jnp.array([1, 0])), 2 / 8, rtol=1e-6)
    mask_ba = jnp.ones((2, 4)).at[1].set(0).at[0, 0].set(0)
    assert float(fm.flow_matching_loss(pred, target, mask=mask_ba)) == 0.0
    assert float(fm.flow_matching_loss(pred, target, mask=jnp.zeros(2))) == 0.0


@pytest.mark.parametrize("num_steps", [1, 5, 10])
def test_euler_constant_field_reaches_straight_path_target(num_steps):
    rng = np.random.default_rng(2)
    x1 = jnp.asarray(rng.normal(size=(3, 64, 2)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=(3, 64, 2)), jnp.float32)
    out = jax.jit(lambda n: fm.euler_sample(lambda x, t: x1 - noise, n, num_steps))(noise)
    np.testing.assert_allclose(out, x1, atol=1e-5)


@pytest.mark.parametrize("num_steps", [5, 10])
def test_euler_optimal_field_of_point_mass_reaches_it(num_steps):
    """For data = one point x1, the optimal velocity is (x1 - x) / (1 - t); Euler lands on x1 exactly."""
    x1 = jnp.array([[0.3, -1.2]], jnp.float32)
    noise = jnp.asarray(np.random.default_rng(3).normal(size=(5, 1, 2)), jnp.float32)
    seen_t = []

    def velocity(x, t):
        seen_t.append(t)
        return (x1 - x) / (1.0 - t)

    out = fm.euler_sample(velocity, noise, num_steps)
    np.testing.assert_allclose(out, jnp.broadcast_to(x1, noise.shape), atol=1e-5)
    assert seen_t[0].shape == () and seen_t[0].dtype == jnp.float32


def test_fourier_features_values():
    feats = fm.fourier_features(jnp.array([[0.0, 0.25]]))
    assert feats.shape == (1, 2, 20)
    np.testing.assert_allclose(feats[0, 0], [0.0] * 10 + [np.sqrt(2)] * 10, atol=1e-6)
    np.testing.assert_allclose(feats[0, 1, 0], np.sqrt(2) * np.sin(2 * np.pi * 0.25), atol=1e-6)
    np.testing.assert_allclose(feats[0, 1, 19], np.sqrt(2) * np.cos(2 * np.pi * 100 * 0.25), atol=1e-4)


def _flat_names(tree):
    return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_action_input_projection_shapes_and_partition_names():
    module = fm.ActionInputProjection(width=64, hidden=32)
    x, t = jnp.ones((2, 64, 2)), jnp.array([0.1, 0.9])
    variables = module.init(jax.random.key(0), x, t)
    out = module.apply(variables, x, t)
    assert out.shape == (2, 64, 64) and out.dtype == jnp.float32
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)  # LayerNorm output with zero-init bias
    assert not np.allclose(out[0], out[1])  # depends on t
    specs = _flat_names(nn.get_partition_spec(variables))
    assert specs["params/in_proj/kernel"] == jax.sharding.PartitionSpec("action_in", "mlp")
    assert specs["params/in_proj/bias"] == jax.sharding.PartitionSpec("mlp")
    assert specs["params/hidden_0/kernel"] == jax.sharding.PartitionSpec(None, "mlp")
    assert specs["params/out_proj/kernel"] == jax.sharding.PartitionSpec("mlp", "embed")
    assert specs["params/norm_0/scale"] == jax.sharding.PartitionSpec("norm")
    assert specs["params/out_norm/bias"] == jax.sharding.PartitionSpec("norm")
    boxed = jax.tree_util.tree_leaves(variables, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
    in_kernel = nn.meta.unbox(variables)["params"]["in_proj"]["kernel"]
    assert in_kernel.shape == (60, 32)


def test_action_input_projection_full_size_parameter_count_and_bf16():
    module = fm.ActionInputProjection(width=2048, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 64, 2)), jnp.ones((1,)))
    count = sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
    expected = (60 * 512 + 512) + 512 + (512 * 512 + 512) + 512 + (512 * 2048 + 2048) + 2 * 2048
    assert count == expected
    out = jax.eval_shape(module.apply, shapes, jnp.ones((3, 64, 2)), jnp.ones((3,)))
    assert out.shape == (3, 64, 2048) and out.dtype == jnp.bfloat16


def test_velocity_head():
    module = fm.VelocityHead(dtype=jnp.bfloat16)
    h = jnp.ones((2, 64, 16), jnp.bfloat16)
    variables = module.init(jax.random.key(1), h)
    out = module.apply(variables, h)
    assert out.shape == (2, 64, 2) and out.dtype == jnp.float32
    specs = _flat_names(nn.get_partition_spec(variables))
    assert specs["params/proj/kernel"] == jax.sharding.PartitionSpec("embed", "action_out")
    assert specs["params/proj/bias"] == jax.sharding.PartitionSpec("action_out")


def test_flow_learns_a_conditional_toy_distribution():
    """Time sampling, path, loss and Euler sampler together learn x1 | c ~ N((2c, -c), 0.1^2) for c = +-1
    with a small projection + MLP in a few hundred steps (a time or sign convention mismatch fails)."""

    class Velocity(nn.Module):
        @nn.compact
        def __call__(self, x, t, c):
            h = fm.ActionInputProjection(width=32, hidden=32, min_freq=0.05, max_freq=5.0)(x, t)
            h = jnp.concatenate([h, jnp.broadcast_to(c[:, None, None], h.shape[:2] + (1,))], -1)
            return nn.Dense(2)(nn.silu(nn.Dense(64)(nn.silu(nn.Dense(64)(h)))))

    def data(key, n):
        kc, kx = jax.random.split(key)
        c = jnp.where(jax.random.bernoulli(kc, 0.5, (n,)), 1.0, -1.0)
        mean = jnp.stack([2 * c, -c], -1)[:, None, :]
        return c, mean + 0.1 * jax.random.normal(kx, (n, 4, 2))

    model = Velocity()
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 2)), jnp.zeros(1), jnp.zeros(1))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        kd, kt, kn = jax.random.split(key, 3)
        c, x1 = data(kd, 64)
        t = fm.sample_flow_time(kt, (64,))
        noise = jax.random.normal(kn, x1.shape)

        def loss(p):
            pred = model.apply(p, fm.flow_interpolate(x1, noise, t), t, c)
            return fm.flow_matching_loss(pred, fm.flow_target(x1, noise))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, value

    for i in range(400):
        params, opt, value = step(params, opt, jax.random.key(i))
    c = jnp.repeat(jnp.array([1.0, -1.0]), 128)
    noise = jax.random.normal(jax.random.key(10_000), (256, 4, 2))
    x = fm.euler_sample(lambda x, t: model.apply(params, x, jnp.full((256,), t), c), noise, 10)
    for sign, part in ((1.0, x[:128]), (-1.0, x[128:])):
        np.testing.assert_allclose(part.mean((0, 1)), [2 * sign, -sign], atol=0.15)
        assert float(part.std((0, 1)).max()) < 0.35
    assert float(value) < 0.6
