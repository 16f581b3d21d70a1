"""The residual add + folded-norm factor kernel (Pallas interpret mode on the CPU) against XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax.models import layers, residual_norm


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 16, 128)])
def test_residual_rms_equals_add_then_pre_norm(dtype, shape):
    k1, k2 = jax.random.split(jax.random.key(0))
    h = (3.0 * jax.random.normal(k1, shape)).astype(dtype)
    delta = jax.random.normal(k2, shape).astype(dtype)
    out, inv_rms = residual_norm.residual_rms(h, delta, 1e-6)
    want = h + delta
    _, want_inv = layers.pre_norm(want, True, 1e-6, dtype, dtype, "unused")
    assert out.dtype == dtype and out.shape == shape
    assert inv_rms.dtype == jnp.float32 and inv_rms.shape == (*shape[:2], 1)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))
    np.testing.assert_allclose(np.asarray(inv_rms), np.asarray(want_inv), rtol=1e-6)
    # The factor is the one of the rounded sum: rows of very different sizes get their own.
    assert float(jnp.std(inv_rms)) > 0.0 or shape[1] == 1


def test_residual_rms_eps_bounds_zero_rows():
    h = jnp.zeros((1, 2, 32), jnp.float32)
    _, inv_rms = residual_norm.residual_rms(h, h, 0.25)
    np.testing.assert_allclose(np.asarray(inv_rms), 2.0)


def test_residual_rms_rejects_bad_shapes():
    h = jnp.zeros((1, 1, 48), jnp.bfloat16)
    with pytest.raises(ValueError, match="width E = 48 must be a power of two"):
        residual_norm.residual_rms(h, h, 1e-6)
    with pytest.raises(ValueError, match=r"delta_bld \(1, 2, 64\) must match h_bld \(1, 1, 64\)"):
        residual_norm.residual_rms(jnp.zeros((1, 1, 64)), jnp.zeros((1, 2, 64)), 1e-6)
    assert residual_norm.supported(2048) and not residual_norm.supported(1152)
