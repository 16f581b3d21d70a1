"""Unicycle action space: (acceleration, curvature) controls <-> future trajectories.

The action expert predicts 64 controls (a_i, k_i) at dt = 0.1 s. `integrate_controls` turns them into
waypoints with the unicycle model of the release (SPEC 1.3); `fit_controls` is its regularised inverse
used to make ground-truth controls from recorded futures. Everything is float32, batched over leading
dimensions and jit-able. All poses are in the t0 ego frame (x forward, y left), where the ego starts at
the origin with yaw 0 and speed v0.

Controls are normalised with SPEC statistics in stored datasets; a model may use its own `ControlStats`
(e.g. those of a synthetic dataset, whose curvatures are far smaller than real driving's), converted
from the stored ones with `renormalize_controls`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

DT = 0.1
NUM_WAYPOINTS = 64
NUM_HISTORY = 16
ACCEL_MEAN = 0.02903
ACCEL_STD = 0.68104
CURV_MEAN = 2.69e-4
CURV_STD = 0.026148
ACCEL_CLIP = 9.8
CURV_CLIP = 0.2

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ControlStats:
    """Mean and std of acceleration (m/s^2) and curvature (1/m) that normalise controls (SPEC defaults)."""

    accel_mean: float = ACCEL_MEAN
    accel_std: float = ACCEL_STD
    curv_mean: float = CURV_MEAN
    curv_std: float = CURV_STD

    def __post_init__(self):
        if not (self.accel_std > 0 and self.curv_std > 0):
            raise ValueError(f"ControlStats stds must be positive, got {self}")

    @classmethod
    def of(cls, physical: np.ndarray) -> "ControlStats":
        """The mean and std of physical controls `[..., 2]` (e.g. every waypoint of a training split)."""
        flat = np.asarray(physical, np.float64).reshape(-1, 2)
        if not len(flat) or not np.isfinite(flat).all():
            raise ValueError(f"ControlStats.of needs finite controls, got shape {np.shape(physical)}")
        mean, std = flat.mean(0), flat.std(0)
        return cls(float(mean[0]), float(std[0]), float(mean[1]), float(std[1]))

    def normalize(self, physical: jax.typing.ArrayLike) -> jax.Array:
        """Physical `[..., 2]` (m/s^2, 1/m) to controls normalised with these statistics."""
        return normalize_controls(physical, **dataclasses.asdict(self))

    def denormalize(self, controls: jax.typing.ArrayLike) -> jax.Array:
        """Controls `[..., 2]` normalised with these statistics to physical (m/s^2, 1/m)."""
        return denormalize_controls(controls, **dataclasses.asdict(self))


SPEC_STATS = ControlStats()  # real driving (SPEC 1.3): what stored datasets are normalised with


def _f32(x: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _check_shapes(fn: str, arrays: dict[str, tuple[jax.Array, int]], batch_t: tuple[int, ...]) -> None:
    """Checks that each array is `[*batch, T, extra]` (extra 2), `[*batch, T]` (1) or `[*batch]` (0)."""
    expected = {2: batch_t + (2,), 1: batch_t, 0: batch_t[:-1]}
    for name, (array, kind) in arrays.items():
        if array.shape != expected[kind]:
            shapes = {k: v[0].shape for k, v in arrays.items()}
            raise ValueError(f"{fn}: {name} has shape {array.shape}, expected {expected[kind]}; got {shapes}")


def integrate_controls(
    accel: jax.typing.ArrayLike, curvature: jax.typing.ArrayLike, v0: jax.typing.ArrayLike, *, dt: float = DT
) -> tuple[jax.Array, jax.Array]:
    """Rolls the unicycle model forward from the origin (yaw 0, speed v0).

    v_{i+1} = v_i + dt a_i; yaw_{i+1} = yaw_i + dt k_i v_i + dt^2/2 k_i a_i; positions by trapezoidal
    integration of v (cos yaw, sin yaw).

    Args:
      accel: `[..., T]` accelerations in m/s^2.
      curvature: `[..., T]` curvatures in 1/m.
      v0: `[...]` speed at t0 in m/s.
      dt: step in seconds.

    Returns:
      xy `[..., T, 2]` and yaw `[..., T]`; entry i is the state after step i (t0 + (i+1) dt).
    """
    accel, curvature, v0 = _f32(accel), _f32(curvature), _f32(v0)
    _check_shapes(
        "integrate_controls", {"accel": (accel, 1), "curvature": (curvature, 1), "v0": (v0, 0)}, accel.shape
    )
    speed = jnp.concatenate([v0[..., None], v0[..., None] + jnp.cumsum(dt * accel, axis=-1)], axis=-1)
    dyaw = dt * curvature * speed[..., :-1] + 0.5 * dt**2 * curvature * accel
    yaw = jnp.concatenate([jnp.zeros_like(v0)[..., None], jnp.cumsum(dyaw, axis=-1)], axis=-1)
    vel_t2 = speed[..., None] * jnp.stack([jnp.cos(yaw), jnp.sin(yaw)], axis=-1)
    xy = jnp.cumsum(0.5 * dt * (vel_t2[..., :-1, :] + vel_t2[..., 1:, :]), axis=-2)
    return xy, yaw[..., 1:]


def _gram_of_differences(n: int, order: int) -> np.ndarray:
    """D^T D for the `order`-th finite-difference operator D on n samples, `[n, n]`."""
    d = np.diff(np.eye(n), n=order, axis=0)
    return d.T @ d


def _unwrap(yaw: jax.Array) -> jax.Array:
    """Unwraps `[..., T]` yaw so that it starts near 0 (the t0 heading) and has no 2 pi jumps."""
    steps = jnp.diff(yaw, axis=-1, prepend=jnp.zeros_like(yaw[..., :1]))
    return jnp.cumsum(jnp.arctan2(jnp.sin(steps), jnp.cos(steps)), axis=-1)


def _smooth_yaw(yaw: jax.Array, lam: float, ridge: float, dt: float) -> jax.Array:
    """Smoothed `[..., T]` yaw: min |y - yaw|^2 + lam/dt^6 |D3 [0, y]|^2 + ridge |y|^2 (yaw_0 = 0)."""
    n = yaw.shape[-1]
    lhs = np.eye(n) * (1.0 + ridge) + lam / dt**6 * _gram_of_differences(n + 1, 3)[1:, 1:]
    return jnp.linalg.solve(jnp.asarray(lhs, jnp.float32), yaw[..., None])[..., 0]


def _fit_speed(
    dxy_t2: jax.Array, yaw: jax.Array, v0: jax.Array, lam: float, ridge: float, dt: float
) -> jax.Array:
    """Speeds `[..., T+1]` (v_0 = v0 fixed) whose trapezoidal integration along `yaw` gives `dxy_t2`.

    Solves min sum_i |(v_i h_i + v_{i+1} h_{i+1}) dt/2 - dxy_i|^2 + lam/dt^6 |D3 v|^2 + ridge |v_1..|^2
    with h_i the heading unit vector (h_0 = (1, 0)).
    """
    n = yaw.shape[-1]
    heading = jnp.concatenate([jnp.zeros_like(v0)[..., None], yaw], axis=-1)
    cos_sin = jnp.stack([jnp.cos(heading), jnp.sin(heading)], axis=-1)  # [..., n+1, 2]
    # a_tc2 maps the n+1 speeds to the n scaled displacements 2/dt * dxy: row t uses speeds t and t+1.
    band = np.eye(n, n + 1) + np.eye(n, n + 1, k=1)
    a_tc2 = band[..., None] * cos_sin[..., None, :, :]
    target_t2 = 2.0 / dt * dxy_t2
    gram = jnp.einsum("...tcx,...tdx->...cd", a_tc2, a_tc2, precision=_HIGHEST)
    rhs = jnp.einsum("...tcx,...tx->...c", a_tc2, target_t2, precision=_HIGHEST)
    gram = gram + lam / dt**6 * _gram_of_differences(n + 1, 3)
    rhs_free = rhs[..., 1:] - gram[..., 1:, 0] * v0[..., None]
    lhs_free = gram[..., 1:, 1:] + ridge * np.eye(n)
    v_free = jnp.linalg.solve(lhs_free, rhs_free[..., None])[..., 0]
    return jnp.concatenate([v0[..., None], v_free], axis=-1)


def _fit_scaled(
    scale: jax.Array, target: jax.Array, lam: float, ridge: float, dt: float, order: int
) -> jax.Array:
    """Solves min |scale * x - target|^2 + lam/dt^(2 order) |D_order x|^2 + ridge |x|^2 over `[..., T]`."""
    n = target.shape[-1]
    smoothness = lam / dt ** (2 * order) * _gram_of_differences(n, order)
    lhs = jnp.eye(n) * (scale**2 + ridge)[..., None, :] + smoothness
    return jnp.linalg.solve(lhs, (scale * target)[..., None])[..., 0]


def _refine_on_positions(
    accel: jax.Array,
    curvature: jax.Array,
    xy: jax.Array,
    v0: jax.Array,
    steps: int,
    smoothness: float,
    damping: float,
    dt: float,
) -> tuple[jax.Array, jax.Array]:
    """Gauss-Newton steps on the rollout position error, each step a smooth, damped correction.

    Works in normalised control units; a step minimises |r + J d|^2 + d^T (smoothness D2^T D2 + damping) d
    per control channel, so directions the positions do not observe (curvature at standstill) stay put.
    """
    scale = np.array([ACCEL_STD, CURV_STD], np.float32)
    n = accel.shape[-1]
    prior = np.kron(smoothness * _gram_of_differences(n, 2) + damping * np.eye(n), np.eye(2))

    def rollout_error(u_t2: jax.Array, v0_: jax.Array, xy_t2: jax.Array) -> jax.Array:
        xy_int, _ = integrate_controls(u_t2[:, 0] * scale[0], u_t2[:, 1] * scale[1], v0_, dt=dt)
        return (xy_int - xy_t2).reshape(-1)

    def step(u_t2: jax.Array, v0_: jax.Array, xy_t2: jax.Array) -> jax.Array:
        r = rollout_error(u_t2, v0_, xy_t2)
        jac = jax.jacfwd(rollout_error)(u_t2, v0_, xy_t2).reshape(r.shape[0], 2 * n)
        lhs = jnp.matmul(jac.T, jac, precision=_HIGHEST) + prior
        delta = jnp.linalg.solve(lhs, -jnp.matmul(jac.T, r, precision=_HIGHEST))
        return u_t2 + delta.reshape(n, 2)

    batch = v0.shape
    u = (jnp.stack([accel, curvature], axis=-1) / scale).reshape(-1, n, 2)
    v0_flat, xy_flat = v0.reshape(-1), xy.reshape(-1, n, 2)
    for _ in range(steps):
        u = jax.vmap(step)(u, v0_flat, xy_flat)
    u = (u * scale).reshape(*batch, n, 2)
    return u[..., 0], u[..., 1]


def fit_controls(
    xy: jax.typing.ArrayLike,
    yaw: jax.typing.ArrayLike,
    v0: jax.typing.ArrayLike,
    *,
    dt: float = DT,
    yaw_lambda: float = 1e-6,
    yaw_ridge: float = 1e-8,
    v_lambda: float = 1e-6,
    v_ridge: float = 1e-4,
    accel_lambda: float = 1e-4,
    accel_ridge: float = 1e-4,
    curv_lambda: float = 1e-4,
    curv_ridge: float = 1e-4,
    refine_steps: int = 2,
    refine_smoothness: float = 1e-2,
    refine_damping: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Inverse of `integrate_controls`: controls that reproduce a recorded future (SPEC 1.3).

    A chain of Tikhonov-regularised least-squares solves: (1) smoothed, unwrapped heading (third-difference
    penalty); (2) speeds from the trapezoidal position model along that heading, v_0 = v0 fixed
    (third-difference penalty); (3) acceleration from speed differences, penalising the change of jerk
    (second difference of a); (4) curvature = d(yaw) / d(arc length) with the arc lengths of the integrated
    speed, second-difference penalty. At standstill the arc length is ~0, so the smoothness and ridge terms
    keep the curvature near its neighbours and 0 instead of dividing by ~0. Assumes forward driving.

    Then `refine_steps` Gauss-Newton steps (smooth, damped corrections) on the rollout position error. This
    is an addition to the release's chain (`refine_steps=0` gives the chain alone): it makes the rollout
    follow the recorded positions (errors of millimetres to centimetres) even where the recorded yaw is not
    the direction of motion (a pose reference off the rear axle, heading noise), where the chain alone can
    drift by metres over 6.4 s. Under `jax.jit`, pass `refine_steps` as a static argument.

    Args:
      xy: `[..., T, 2]` future positions (t0 + dt ... t0 + T dt) in the t0 frame, in m.
      yaw: `[..., T]` future headings in the t0 frame, in rad (wrapped or not).
      v0: `[...]` speed at t0 in m/s.
      dt: step in seconds; `*_lambda` / `*_ridge` are the regularisation weights of SPEC 1.3;
        `refine_smoothness` / `refine_damping` weigh the second differences / size of each Gauss-Newton
        correction in normalised control units.

    Returns:
      accel `[..., T]` in m/s^2 and curvature `[..., T]` in 1/m.
    """
    xy, yaw, v0 = _f32(xy), _f32(yaw), _f32(v0)
    _check_shapes("fit_controls", {"xy": (xy, 2), "yaw": (yaw, 1), "v0": (v0, 0)}, xy.shape[:-1])
    yaw = _smooth_yaw(_unwrap(yaw), yaw_lambda, yaw_ridge, dt)
    dxy_t2 = jnp.diff(xy, axis=-2, prepend=jnp.zeros_like(xy[..., :1, :]))
    speed = _fit_speed(dxy_t2, yaw, v0, v_lambda, v_ridge, dt)
    accel = _fit_scaled(jnp.ones_like(yaw), jnp.diff(speed, axis=-1) / dt, accel_lambda, accel_ridge, dt, 2)
    speed_int = jnp.concatenate([v0[..., None], v0[..., None] + jnp.cumsum(dt * accel, axis=-1)], axis=-1)
    arc = dt * speed_int[..., :-1] + 0.5 * dt**2 * accel
    dyaw = jnp.diff(yaw, axis=-1, prepend=jnp.zeros_like(yaw[..., :1]))
    curvature = _fit_scaled(arc, dyaw, curv_lambda, curv_ridge, dt, 2)
    return _refine_on_positions(accel, curvature, xy, v0, refine_steps, refine_smoothness, refine_damping, dt)


def estimate_v0(history_xyz: jax.typing.ArrayLike, *, dt: float = DT, num_poses: int = 6) -> jax.Array:
    """Forward speed at t0 from the ego history `[..., H, 3]` in the t0 frame (last pose = t0), `[...]`.

    A least-squares quadratic fit of x(t) over the last `num_poses` poses, differentiated at t0. Using the
    forward (x) component makes the estimate unbiased at standstill; it is clipped at 0 (no reverse).
    """
    history_xyz = _f32(history_xyz)
    if history_xyz.shape[-2] < num_poses:
        raise ValueError(f"history_xyz needs at least {num_poses} poses, got shape {history_xyz.shape}")
    t = dt * np.arange(1 - num_poses, 1)
    design = np.stack([np.ones_like(t), t, t**2], axis=-1)
    derivative_weights = np.linalg.pinv(design)[1]  # coefficient of t in the fit, i.e. dx/dt at t = 0
    x_last = history_xyz[..., -num_poses:, 0]
    return jnp.maximum(jnp.einsum("...t,t->...", x_last, derivative_weights, precision=_HIGHEST), 0.0)


def normalize_controls(
    controls: jax.typing.ArrayLike,
    *,
    accel_mean: float = ACCEL_MEAN,
    accel_std: float = ACCEL_STD,
    curv_mean: float = CURV_MEAN,
    curv_std: float = CURV_STD,
) -> jax.Array:
    """Physical `[..., 2]` (accel, curvature) to zero-mean unit-std controls with the SPEC statistics."""
    controls = _f32(controls)
    return (controls - jnp.array([accel_mean, curv_mean])) / jnp.array([accel_std, curv_std])


def denormalize_controls(
    controls: jax.typing.ArrayLike,
    *,
    accel_mean: float = ACCEL_MEAN,
    accel_std: float = ACCEL_STD,
    curv_mean: float = CURV_MEAN,
    curv_std: float = CURV_STD,
) -> jax.Array:
    """Inverse of `normalize_controls`: normalised `[..., 2]` to physical (m/s^2, 1/m)."""
    controls = _f32(controls)
    return controls * jnp.array([accel_std, curv_std]) + jnp.array([accel_mean, curv_mean])


def renormalize_controls(controls: jax.typing.ArrayLike, src: ControlStats, dst: ControlStats) -> jax.Array:
    """Controls `[..., 2]` normalised with `src` to the same controls normalised with `dst`."""
    if src == dst:
        return _f32(controls)
    return dst.normalize(src.denormalize(controls))


def clip_controls(
    controls: jax.typing.ArrayLike, *, accel_clip: float = ACCEL_CLIP, curv_clip: float = CURV_CLIP
) -> jax.Array:
    """Clips physical `[..., 2]` (accel, curvature) to +-accel_clip m/s^2 and +-curv_clip 1/m."""
    limit = jnp.array([accel_clip, curv_clip], jnp.float32)
    return jnp.clip(_f32(controls), -limit, limit)
