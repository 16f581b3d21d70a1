"""Constructed ego trajectories for the CoC tests: piecewise-constant acceleration and curvature."""

import numpy as np


def rollout(
    accel_t: np.ndarray, curvature_t: np.ndarray, v0: float, dt: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrates a unicycle: returns xy `[T, 2]`, yaw `[T]`, speed `[T]`, accel `[T]`."""
    n = accel_t.shape[0]
    xy = np.zeros((n, 2))
    yaw = np.zeros(n)
    v = np.zeros(n)
    v[0] = v0
    for t in range(n - 1):
        v[t + 1] = v[t] + accel_t[t] * dt
        yaw[t + 1] = yaw[t] + curvature_t[t] * v[t] * dt
        xy[t + 1] = xy[t] + v[t] * dt * np.array([np.cos(yaw[t]), np.sin(yaw[t])])
    return xy, yaw, v, accel_t.astype(np.float64)


def phases(spec: list[tuple[int, float, float]], v0: float, dt: float = 0.1):
    """`spec` = [(ticks, accel, curvature)]; returns the rollout and the phase start ticks."""
    accel = np.concatenate([np.full(n, a) for n, a, _ in spec])
    curv = np.concatenate([np.full(n, k) for n, _, k in spec])
    starts = np.cumsum([0] + [n for n, _, _ in spec])[:-1]
    return rollout(accel, curv, v0, dt), starts


def away_from(starts: np.ndarray, n: int, margin: int = 5) -> np.ndarray:
    """Mask `[n]` of ticks further than `margin` from every phase boundary but the first."""
    mask = np.ones(n, dtype=bool)
    for s in starts[1:]:
        mask[max(0, s - margin) : s + margin] = False
    return mask
