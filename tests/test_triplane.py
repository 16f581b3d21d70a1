"""Triplane tokenizer: lifting through the real camera models, token counts, shapes, rendering loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alpamayo_jax import geometry
from alpamayo_jax.data import synthetic_render
from alpamayo_jax.models import triplane, triplane_render

FRONT = ("camera_front_wide_120fov", "camera_cross_left_120fov")


def _rig(names, width, height, model, batch=1):
    """Cameras of the synthetic rig (real f-theta / pinhole calibrations) and their specs."""
    specs = [synthetic_render.make_camera(n, width, height, model) for n in names]

    def stack(f):
        return jnp.asarray(
            np.broadcast_to(np.stack([f(s) for s in specs]), (batch, len(specs), *f(specs[0]).shape))
        )

    cams = triplane.Cameras(
        fw_poly_bvk=stack(lambda s: s.fw_poly.astype(np.float32)),
        bw_poly_bvk=stack(lambda s: s.bw_poly.astype(np.float32)),
        principal_point_bv2=stack(lambda s: s.principal_point.astype(np.float32)),
        size_bv2=stack(lambda s: np.array([s.width, s.height], np.float32)),
        t_rig_cam_bv44=stack(
            lambda s: geometry.pose_matrix(s.rotation_33, s.translation_3).astype(np.float32)
        ),
    )
    return cams, specs


def test_token_counts_follow_spec():
    full = triplane.triplane_config("default")
    half = triplane.triplane_config("default", half_planes=True)
    assert triplane.tokens_per_timestep(full, (8, 8, 8)) == 288
    assert triplane.tokens_per_timestep(half, (8, 8, 8)) == 180  # 45 per image with 4 cameras
    assert triplane.tokens_per_timestep(half, (4, 6, 6)) == 416  # 104 per image
    with pytest.raises(ValueError, match="p_z=5 does not divide"):
        triplane.tokens_per_timestep(full, (8, 8, 5))


def test_grid_is_piecewise_linear_and_contracted():
    axis = triplane.DEFAULT_XY_AXIS
    centres = axis.centres()
    widths = np.diff(centres)
    assert axis.cells == 96 and triplane.DEFAULT_Z_AXIS.cells == 48
    np.testing.assert_allclose(widths[40], 80 / 36)  # inner cells: 36 per side over 80 m
    np.testing.assert_allclose(widths[2], 100 / 12)  # outer cells: 12 per side over the next 100 m
    np.testing.assert_allclose(
        np.asarray(axis.to_cell(jnp.asarray(centres, jnp.float32))), np.arange(96) + 0.5, atol=1e-4
    )


@pytest.mark.parametrize("model", geometry.CAMERA_MODELS)
def test_feature_at_known_point_lands_in_its_plane_cells(model):
    """A Gaussian feature blob at the projection of a 3D point in two cameras lights that point's cells."""
    cfg = triplane.triplane_config("default", camera_model=model)
    cams, specs = _rig(FRONT, 448, 280, model)
    ix, iy, iz = 51, 50, 12  # about (7.8, 5.6, 1.2) m: seen by both cameras, close enough to triangulate
    xyz = np.array([cfg.x_axis.centres()[ix], cfg.y_axis.centres()[iy], cfg.z_axis.centres()[iz]])
    fh, fw = cfg.feature_hw
    maps = []
    for spec in specs:
        cam_pt = geometry.rig_to_camera(xyz[None], geometry.pose_matrix(spec.rotation_33, spec.translation_3))
        u, v = geometry.project_np(cam_pt, spec.fw_poly, spec.principal_point, model)[0]
        assert 0 < u < spec.width and 0 < v < spec.height
        gy, gx = np.mgrid[0:fh, 0:fw] + 0.5
        d2 = (gx - u / spec.width * fw) ** 2 + (gy - v / spec.height * fh) ** 2
        maps.append(np.exp(-d2 / 0.25))
    value = jnp.asarray(np.stack(maps)[:, :, :, None, None], jnp.float32)  # [V, Hf, Wf, G=1, c=1]
    grid = np.stack(
        np.meshgrid(*(a.centres() for a in (cfg.x_axis, cfg.y_axis, cfg.z_axis)), indexing="ij"), -1
    )
    pts = jnp.asarray(grid.reshape(-1, 3), jnp.float32)
    uv, visible = triplane.project_to_cameras(
        pts, cams.fw_poly_bvk[0], cams.principal_point_bv2[0], cams.size_bv2[0], cams.t_rig_cam_bv44[0], model
    )
    n = pts.shape[0]
    vol = triplane.deformable_sample(value, uv, visible, jnp.zeros((n, 1, 1, 2)), jnp.ones((n, 1, 1)))
    vol = np.asarray(vol).reshape(96, 96, 48)
    assert np.unravel_index(vol.argmax(), vol.shape) == (ix, iy, iz)
    assert vol[ix, iy, iz] > 0.3  # bilinear taps of a sharp blob
    # Planes: unoccluded lifting also lights the far ends of both rays (poor triangulation over a 1 m
    # baseline), so the point's plane cells are lit (near their neighbourhood's maximum, +-3 cells) while
    # cells off both rays stay dark.
    xy, xz, yz = (np.asarray(a[0, ..., 0]) for a in triplane.reduce_volume(jnp.asarray(vol)[None, ..., None]))
    for name, plane, (i, j) in (("xy", xy, (ix, iy)), ("xz", xz, (ix, iz)), ("yz", yz, (iy, iz))):
        window = plane[i - 3 : i + 4, j - 3 : j + 4]
        assert plane[i, j] >= 0.5 * window.max(), (name, window)
        assert plane[i, j] > 20 * np.median(plane), name
    vis = np.asarray(visible).reshape(2, 96, 96, 48)
    assert not vis[0, :40].any()  # the front camera (+-60 deg) sees nothing 15 m behind the rear axle ...
    assert vis[1, :40].any()  # ... the cross-left one (0..120 deg) does
    assert (vol[:40][~vis[1, :40]] == 0).all()  # cells no camera sees stay empty


def test_reduce_volume_puts_a_cell_in_its_three_plane_cells():
    vol = jnp.zeros((2, 6, 5, 4, 3)).at[1, 2, 3, 1, 2].set(12.0)
    xy, xz, sum_yz = triplane.reduce_volume(vol)
    assert xy.shape == (2, 6, 5, 3) and xz.shape == (2, 6, 4, 3) and sum_yz.shape == (2, 5, 4, 3)
    for plane, cell, value in (
        (xy, (1, 2, 3, 2), 3.0),
        (xz, (1, 2, 1, 2), 12.0 / 5),
        (sum_yz, (1, 3, 1, 2), 12.0),
    ):
        assert float(plane[cell]) == pytest.approx(value)
        assert float(jnp.abs(plane).sum()) == pytest.approx(value)


@pytest.mark.parametrize("half", [False, True])
def test_tiny_forward_shapes_and_logical_axes(half):
    cfg = triplane.triplane_config("tiny", half_planes=half)
    cams, _ = _rig(FRONT, 56, 28, geometry.FTHETA, batch=2)
    images = jax.random.uniform(jax.random.key(0), (2, 2, 28, 56, 3))
    model = triplane.TriplaneTokenizer(cfg)
    params = jax.jit(model.init, static_argnums=3)(jax.random.key(1), images, cams, (4, 4, 4))
    sx = 8 if half else 16
    apply = jax.jit(model.apply, static_argnums=3)
    for patch in [(4, 4, 4), (2, 4, 2)]:
        tokens, out = apply(params, images, cams, patch)
        assert tokens.shape == (2, triplane.tokens_per_timestep(cfg, patch), cfg.out_width)
        assert bool(jnp.all(jnp.isfinite(tokens)))
    assert triplane.tokens_per_timestep(cfg, (4, 4, 4)) == (20 if half else 32)
    planes = out["planes"]
    assert (
        planes.xy.shape == (2, sx, 16, 16)
        and planes.xz.shape == (2, sx, 8, 16)
        and planes.yz.shape == (2, 16, 8, 16)
    )
    # The two rigs see different images: their planes differ.
    assert float(jnp.abs(planes.xy[0] - planes.xy[1]).max()) > 1e-4
    for path, leaf in jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    ):
        assert isinstance(leaf, nn.Partitioned), path
    assert params["params"]["lift"]["offsets"]["kernel"].names == ("embed", "heads", "points", "xy")


def test_full_size_eval_shape_and_parameter_count():
    cfg = triplane.triplane_config("default")
    cams, _ = _rig(FRONT * 2, 448, 280, geometry.FTHETA)
    images = jax.ShapeDtypeStruct((1, 4, 280, 448, 3), jnp.float32)
    model = triplane.TriplaneTokenizer(cfg)
    params = jax.eval_shape(lambda i, c: model.init(jax.random.key(0), i, c, (8, 8, 8)), images, cams)
    tokens, out = jax.eval_shape(lambda p, i, c: model.apply(p, i, c, (8, 8, 8)), params, images, cams)
    assert tokens.shape == (1, 288, 4096)
    assert out["planes"].xy.shape == (1, 96, 96, 192)
    sizes = {
        k: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v))
        for k, v in nn.unbox(params)["params"].items()
    }
    backbone = sizes["backbone"]
    rest = sum(sizes.values()) - backbone
    assert 21e6 < backbone < 23e6  # DINOv2-S-like: about 22M
    assert sizes["proj"] == 192 * 4096 + 4096
    lift = nn.unbox(params)["params"]["lift"]
    assert lift["xy_query"].shape == (96, 96, 192) and lift["yz_query"].shape == (96, 48, 192)
    assert 4.5e6 < rest < 5e6  # SPEC: 6.3M in AR1 (see the triplane module docstring)
    print(f"triplane params: backbone {backbone}, rest {rest} ({sizes})")


def _procedural_views(specs, out_hw):
    """Views of a ground checkerboard (8 m squares) under a sky gradient, through the real cameras."""
    views = []
    for spec in specs:
        size = jnp.asarray([[spec.width, spec.height]], jnp.float32)
        uv = np.asarray(triplane_render.pixel_grid(size, out_hw))[0]
        rays = geometry.unproject_np(uv, spec.bw_poly, spec.principal_point, spec.model) @ spec.rotation_33.T
        t = np.where(rays[:, 2] < -1e-3, -spec.translation_3[2] / np.minimum(rays[:, 2], -1e-3), np.inf)
        hit = spec.translation_3 + np.where(np.isfinite(t), t, 0.0)[:, None] * rays
        checker = (np.floor(hit[:, 0] / 8) + np.floor(hit[:, 1] / 8)) % 2
        ground = np.stack([0.2 + 0.6 * checker, 0.3 + 0.4 * checker, 0.2 * np.ones_like(checker)], -1)
        sky = np.stack([0.4 + 0.3 * rays[:, 2], 0.6 + 0.2 * rays[:, 2], np.full_like(checker, 0.9)], -1)
        views.append(np.where((np.isfinite(t) & (t < 55))[:, None], ground, sky).reshape(*out_hw, 3))
    return jnp.asarray(np.stack(views)[None], jnp.float32)


def test_rendering_loss_decreases_on_a_synthetic_scene():
    cfg = triplane.triplane_config("tiny")
    rcfg = triplane_render.RenderConfig(hidden=32, num_samples=16, near=1.0, far=60.0)
    cams, specs = _rig(FRONT, 56, 28, geometry.FTHETA)
    images = _procedural_views(specs, (28, 56))
    target = _procedural_views(specs, (7, 14))
    model = triplane_render.TriplaneRenderModel(cfg, rcfg)
    params = model.init(jax.random.key(0), images, cams, (7, 14))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss_fn(p):
        return triplane_render.render_loss(rcfg, model.apply(p, images, cams, (7, 14)), target)[0]

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(40):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    print(f"render loss {losses[0]:.4f} -> {np.mean(losses[-5:]):.4f}")
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


def test_ssim_and_composite_values():
    img = jax.random.uniform(jax.random.key(0), (2, 6, 6, 3))
    assert float(triplane_render.ssim(img, img)) == pytest.approx(1.0, abs=1e-5)
    assert float(triplane_render.ssim(img, 1.0 - img)) < 0.5
    t = jnp.asarray([1.0, 2.0, 3.0])
    opaque = triplane_render.composite(
        jnp.ones((1, 3, 3)) * 0.25, jnp.asarray([[1e4, 0.0, 0.0]]), t, jnp.ones(3)
    )
    np.testing.assert_allclose(np.asarray(opaque), 0.25, atol=1e-6)
    empty = triplane_render.composite(jnp.ones((1, 3, 3)) * 0.25, jnp.zeros((1, 3)), t, jnp.full(3, 0.8))
    np.testing.assert_allclose(np.asarray(empty), 0.8, atol=1e-6)


def test_lifting_chunk_size_does_not_change_the_planes():
    cams, _ = _rig(FRONT, 56, 28, geometry.PINHOLE)
    images = jax.random.uniform(jax.random.key(0), (1, 2, 28, 56, 3))
    cfg = triplane.triplane_config("tiny", camera_model=geometry.PINHOLE)
    params = jax.jit(triplane.TriplaneTokenizer(cfg).init, static_argnums=3)(
        jax.random.key(1), images, cams, (4, 4, 4)
    )
    planes = []
    for chunk in (4, 16):
        model = triplane.TriplaneTokenizer(
            triplane.triplane_config("tiny", lift_chunk=chunk, camera_model="pinhole")
        )
        planes.append(jax.jit(model.apply, static_argnums=3)(params, images, cams, (4, 4, 4))[1]["planes"])
    for a, b in zip(jax.tree_util.tree_leaves(planes[0]), jax.tree_util.tree_leaves(planes[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
