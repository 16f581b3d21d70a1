"""Tests for the unicycle action space: rollout, its regularised inverse, v0, normalisation, clipping."""

import functools

import jax
import numpy as np
import pytest

from alpamayo_jax import action_space as asp

_T_FINE = np.arange(6401) * 1e-3  # 1 ms steps over 6.4 s


def _ramp(t: np.ndarray, start: float, duration: float) -> np.ndarray:
    """Smooth 0 -> 1 step (cubic smoothstep)."""
    s = np.clip((t - start) / duration, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _integral(rate: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(0.5e-3 * (rate[1:] + rate[:-1]))])


def _simulate(speed: np.ndarray, curvature: np.ndarray, reference_offset: float = 0.0):
    """Fine-step path integration sampled at 10 Hz: xy `[64, 2]`, yaw `[64]`, v0.

    `reference_offset` > 0 reports the pose of a point that far ahead of the rear axle (bicycle model
    about its centre of gravity), whose velocity is not along the reported yaw.
    """
    yaw = _integral(speed * curvature)
    x = _integral(speed * np.cos(yaw)) + reference_offset * (np.cos(yaw) - 1.0)
    y = _integral(speed * np.sin(yaw)) + reference_offset * np.sin(yaw)
    idx = np.arange(1, 65) * 100
    return np.stack([x[idx], y[idx]], -1), yaw[idx], speed[0]


def _family(name: str, rng: np.random.Generator):
    """Speed and curvature profiles on `_T_FINE` for one trajectory family, plus the pose offset."""
    t = _T_FINE
    zero = np.zeros_like(t)
    v = rng.uniform(0.0, 35.0)
    if name == "cruise":
        return np.full_like(t, v), zero + rng.uniform(-1e-3, 1e-3), 0.0
    if name == "brake_to_stop":
        decel = rng.uniform(1.0, 8.0) * _ramp(t, 0.0, rng.uniform(0.3, 1.0))
        return np.maximum(rng.uniform(2.0, 30.0) - _integral(decel), 0.0), zero, 0.0
    if name == "lane_change":
        v, length, offset = rng.uniform(5.0, 35.0), rng.uniform(3.0, 6.0), rng.choice([-1, 1]) * 3.5
        s = np.clip((t - rng.uniform(0.0, 2.0)) / length, 0.0, 1.0)  # fraction of the manoeuvre
        y1, y2 = offset * 6 * s * (1 - s) / (v * length), offset * (6 - 12 * s) / (v * length) ** 2
        return np.full_like(t, v), y2 * (s > 0) * (s < 1) / (1 + y1**2) ** 1.5, 0.0
    if name in ("turn_left", "turn_right"):
        v = rng.uniform(3.0, 15.0)
        peak = min(0.2, rng.uniform(1.0, 4.0) / v**2) * (1 if name == "turn_left" else -1)
        start, length = rng.uniform(0.0, 2.0), rng.uniform(1.0, 3.0)
        bend = _ramp(t, start, length) - _ramp(t, start + length + 1.0, length)
        return np.maximum(v + rng.uniform(-1.0, 1.0) * t, 0.5), peak * bend, 0.0
    if name == "accelerate_from_stop":
        accel = rng.uniform(0.5, 4.0) * _ramp(t, rng.uniform(0.0, 2.0), 0.8)
        return _integral(accel), rng.uniform(-0.02, 0.02) * _ramp(t, 1.0, 2.0), 0.0
    if name == "stopped":
        return zero, zero, 0.0
    if name == "parking_u_turn":
        return np.full_like(t, rng.uniform(1.0, 4.0)), rng.choice([-0.2, 0.2]) * _ramp(t, 0.5, 0.5), 0.0
    if name in ("bicycle_rear_axle", "bicycle_centre_of_gravity"):
        wheelbase, freq, phase = rng.uniform(2.5, 3.2), rng.uniform(0.05, 0.4), rng.uniform(0.0, 6.0)
        steer = np.arctan(rng.uniform(0.0, 0.3) / max(v, 3.0) * wheelbase) * np.sin(
            2 * np.pi * freq * t + phase
        )
        offset = 0.0 if name == "bicycle_rear_axle" else 0.5 * wheelbase
        return np.maximum(v + rng.uniform(-2.0, 2.0) * t, 0.0), np.tan(steer) / wheelbase, offset
    raise ValueError(name)


FAMILIES = (
    "cruise",
    "brake_to_stop",
    "lane_change",
    "turn_left",
    "turn_right",
    "accelerate_from_stop",
    "stopped",
    "parking_u_turn",
    "bicycle_rear_axle",
    "bicycle_centre_of_gravity",
)


def _batch(name: str, seed: int, size: int = 24):
    rng = np.random.default_rng(seed)
    xy, yaw, v0 = zip(*(_simulate(*_family(name, rng)) for _ in range(size)), strict=True)
    return np.stack(xy), np.stack(yaw), np.array(v0)


_fit = jax.jit(asp.fit_controls)


def test_integrate_two_steps_by_hand():
    xy, yaw = asp.integrate_controls(np.array([1.0, 1.0]), np.array([0.1, 0.1]), 1.0)
    yaw1 = 0.1 * 0.1 * 1.0 + 0.5 * 0.01 * 0.1 * 1.0  # v0 = 1
    yaw2 = yaw1 + 0.1 * 0.1 * 1.1 + 0.5 * 0.01 * 0.1 * 1.0  # v1 = 1.1
    x1 = 0.05 * (1.0 + 1.1 * np.cos(yaw1))
    y1 = 0.05 * 1.1 * np.sin(yaw1)
    x2 = x1 + 0.05 * (1.1 * np.cos(yaw1) + 1.2 * np.cos(yaw2))
    y2 = y1 + 0.05 * (1.1 * np.sin(yaw1) + 1.2 * np.sin(yaw2))
    np.testing.assert_allclose(yaw, [yaw1, yaw2], rtol=1e-6)
    np.testing.assert_allclose(xy, [[x1, y1], [x2, y2]], rtol=1e-6)


def test_integrate_batched_and_jitted_shapes():
    rng = np.random.default_rng(0)
    accel, curv = rng.normal(size=(2, 3, 64)), 0.01 * rng.normal(size=(2, 3, 64))
    v0 = rng.uniform(0, 20, size=(2, 3))
    xy, yaw = jax.jit(asp.integrate_controls)(accel, curv, v0)
    assert xy.shape == (2, 3, 64, 2) and yaw.shape == (2, 3, 64) and xy.dtype == np.float32
    xy_one, yaw_one = asp.integrate_controls(accel[1, 2], curv[1, 2], v0[1, 2])
    np.testing.assert_allclose(xy[1, 2], xy_one, atol=1e-5)
    np.testing.assert_allclose(yaw[1, 2], yaw_one, atol=1e-6)


def test_constant_speed_straight_line():
    xy, yaw = asp.integrate_controls(np.zeros(64), np.zeros(64), 10.0)
    np.testing.assert_allclose(xy[:, 0], np.arange(1, 65), rtol=1e-6)
    assert np.abs(xy[:, 1]).max() == 0.0 and np.abs(yaw).max() == 0.0


@pytest.mark.parametrize("name", FAMILIES)
def test_fit_then_integrate_within_20_cm(name):
    for seed in (0, 1):
        xy, yaw, v0 = _batch(name, seed)
        accel, curv = _fit(xy, yaw, v0)
        xy_fit, _ = asp.integrate_controls(accel, curv, v0)
        err = np.linalg.norm(np.asarray(xy_fit) - xy, axis=-1)
        assert err.max() < 0.2, (name, seed, err.max())
        assert np.isfinite(accel).all() and np.isfinite(curv).all()


@pytest.mark.parametrize("name", ["cruise", "brake_to_stop", "turn_left", "bicycle_rear_axle"])
def test_release_chain_alone_follows_rear_axle_paths(name):
    xy, yaw, v0 = _batch(name, 3)
    accel, curv = jax.jit(functools.partial(asp.fit_controls, refine_steps=0))(xy, yaw, v0)
    xy_fit, _ = asp.integrate_controls(accel, curv, v0)
    assert np.linalg.norm(np.asarray(xy_fit) - xy, axis=-1).max() < 0.2


def test_fit_recovers_smooth_controls():
    rng = np.random.default_rng(4)
    t = np.arange(64) * 0.1
    accel = rng.uniform(-2, 2, (16, 1)) * np.sin(2 * np.pi * rng.uniform(0.05, 0.2, (16, 1)) * t)
    curv = rng.uniform(-0.02, 0.02, (16, 1)) * np.cos(2 * np.pi * rng.uniform(0.05, 0.2, (16, 1)) * t)
    v0 = rng.uniform(8, 30, 16)
    xy, yaw = asp.integrate_controls(accel, curv, v0)
    accel_fit, curv_fit = _fit(xy, yaw, v0)
    np.testing.assert_allclose(accel_fit[:, 2:-2], accel[:, 2:-2], atol=0.05)
    np.testing.assert_allclose(curv_fit[:, 2:-2], curv[:, 2:-2], atol=1e-3)


def test_fit_at_standstill_gives_zero_controls():
    accel, curv = _fit(np.zeros((3, 64, 2)), np.zeros((3, 64)), np.zeros(3))
    assert np.abs(accel).max() < 1e-6 and np.abs(curv).max() < 1e-6


def test_fit_keeps_curvature_bounded_when_starting_from_standstill():
    xy, yaw, v0 = _batch("accelerate_from_stop", 5)
    _, curv = _fit(xy, yaw, v0)
    assert np.abs(curv).max() < 0.1


def test_fit_accepts_wrapped_yaw():
    xy, yaw, v0 = _batch("parking_u_turn", 6, size=4)
    assert np.abs(yaw).max() > np.pi  # the U-turns go past +-180 degrees
    wrapped = np.arctan2(np.sin(yaw), np.cos(yaw))
    np.testing.assert_allclose(_fit(xy, wrapped, v0)[1], _fit(xy, yaw, v0)[1], atol=1e-5)


def test_fit_batch_shapes_and_errors():
    xy, yaw, v0 = _batch("cruise", 7, size=6)
    accel, curv = _fit(xy.reshape(2, 3, 64, 2), yaw.reshape(2, 3, 64), v0.reshape(2, 3))
    assert accel.shape == curv.shape == (2, 3, 64)
    np.testing.assert_allclose(accel.reshape(6, 64), _fit(xy, yaw, v0)[0], atol=1e-4)
    with pytest.raises(ValueError, match="yaw has shape"):
        asp.fit_controls(xy, yaw[:, :63], v0)


def test_estimate_v0():
    t = np.arange(-15, 1) * 0.1
    v_t0, accel = 12.0, -1.5
    x = v_t0 * t + 0.5 * accel * t**2
    history = np.stack([x, 0.01 * x, np.zeros_like(x)], -1)
    np.testing.assert_allclose(asp.estimate_v0(history), v_t0, rtol=1e-4)
    assert float(asp.estimate_v0(np.zeros((16, 3)))) == 0.0
    noisy = history + np.random.default_rng(0).normal(0, 0.01, (50, 16, 3))
    assert np.abs(np.asarray(asp.estimate_v0(noisy)) - v_t0).max() < 0.3
    with pytest.raises(ValueError, match="history_xyz"):
        asp.estimate_v0(np.zeros((3, 3)))


def test_normalize_denormalize_and_clip():
    controls = np.array([[asp.ACCEL_MEAN + asp.ACCEL_STD, asp.CURV_MEAN - 2 * asp.CURV_STD], [20.0, -1.0]])
    normalized = asp.normalize_controls(controls)
    np.testing.assert_allclose(normalized[0], [1.0, -2.0], rtol=1e-5)
    np.testing.assert_allclose(asp.denormalize_controls(normalized), controls, rtol=1e-5)
    np.testing.assert_allclose(asp.clip_controls(controls[1]), [9.8, -0.2])
    np.testing.assert_allclose(asp.clip_controls(controls[1], curv_clip=0.33), [9.8, -0.33])
