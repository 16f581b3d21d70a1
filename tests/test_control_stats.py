"""A model's own control statistics: fitting, renormalisation, config round trip, and that the batch,
the trajectory tokens and the waypoints all use them."""

import dataclasses

import numpy as np
import pytest

from alpamayo_jax import action_space, inference, trajectory_tokens
from alpamayo_jax.action_space import ControlStats
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import drive_dataset, transforms
from alpamayo_jax.data import tokenizer as tokenizer_lib
from alpamayo_jax.demo import SP_MODEL
from alpamayo_jax.models.alpamayo import AlpamayoConfig, alpamayo_config

SYNTHETIC = ControlStats(accel_mean=-0.3, accel_std=0.9, curv_mean=-7e-4, curv_std=0.004)


def test_stats_of_physical_controls_and_normalisation_round_trip():
    rng = np.random.default_rng(0)
    physical = np.stack([rng.normal(0.5, 2.0, (400, 64)), rng.normal(-0.01, 0.003, (400, 64))], -1)
    stats = ControlStats.of(physical)
    np.testing.assert_allclose(
        [stats.accel_mean, stats.accel_std, stats.curv_mean, stats.curv_std],
        [physical[..., 0].mean(), physical[..., 0].std(), physical[..., 1].mean(), physical[..., 1].std()],
        rtol=1e-9,
    )
    normalised = np.asarray(stats.normalize(physical))
    np.testing.assert_allclose(normalised.reshape(-1, 2).mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalised.reshape(-1, 2).std(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(stats.denormalize(normalised), physical, rtol=1e-4, atol=1e-7)
    assert ControlStats() == ControlStats(0.02903, 0.68104, 2.69e-4, 0.026148)
    with pytest.raises(ValueError, match="stds must be positive"):
        ControlStats(curv_std=0.0)
    with pytest.raises(ValueError, match="finite controls"):
        ControlStats.of(np.full((3, 2), np.nan))


def test_renormalize_between_statistics():
    spec = np.asarray(np.random.default_rng(1).normal(size=(5, 64, 2)), np.float32)
    # Same statistics: the values pass through unchanged, bit for bit.
    assert np.asarray(action_space.renormalize_controls(spec, ControlStats(), ControlStats())).tobytes() == (
        spec.tobytes()
    )
    mine = action_space.renormalize_controls(spec, ControlStats(), SYNTHETIC)
    np.testing.assert_allclose(
        SYNTHETIC.denormalize(mine), ControlStats().denormalize(spec), rtol=1e-5, atol=1e-7
    )
    # A SPEC curvature of 0.1 std is 0.65 std of the synthetic statistics.
    np.testing.assert_allclose(
        np.asarray(mine)[..., 1] - np.asarray(mine)[..., 1].mean(),
        (spec[..., 1] - spec[..., 1].mean()) * 0.026148 / 0.004,
        rtol=1e-4,
        atol=1e-4,
    )
    back = action_space.renormalize_controls(mine, SYNTHETIC, ControlStats())
    np.testing.assert_allclose(back, spec, atol=1e-4)


def test_config_round_trip_keeps_statistics_and_fourier_range():
    cfg = alpamayo_config("tiny", control_stats=SYNTHETIC)
    assert cfg.control_stats == SYNTHETIC and cfg.expert.fourier_freqs == (0.05, 5.0)
    assert AlpamayoConfig.from_dict(cfg.to_dict()) == cfg
    # Configs saved before the field existed read as SPEC statistics.
    old = {k: v for k, v in cfg.to_dict().items() if k != "control_stats"}
    assert AlpamayoConfig.from_dict(old).control_stats == ControlStats()
    assert alpamayo_config("ar1_2b").expert.fourier_freqs == (1.0, 100.0)


def test_waypoints_denormalise_with_the_model_statistics():
    rng = np.random.default_rng(2)
    physical = np.stack([rng.normal(0, 0.5, (3, 64)), rng.normal(0, 0.003, (3, 64))], -1)
    history = np.zeros((3, 16, 3), np.float32)
    history[..., 0] = 10.0 * action_space.DT * np.arange(-15, 1)
    out = inference.controls_to_trajectory(SYNTHETIC.normalize(physical), history, SYNTHETIC)
    xy, _ = action_space.integrate_controls(physical[..., 0], physical[..., 1], np.full(3, 10.0))
    np.testing.assert_allclose(out["controls"], physical, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["xy"], xy, rtol=1e-4, atol=1e-3)


def _tokens_match_controls(tokens, start, controls, layout):
    ids = tokens[start : start + layout.num_future_tokens]
    return np.array_equal(ids, trajectory_tokens.encode_future(np.asarray(controls), layout))


def test_fake_batch_carries_controls_and_tokens_in_the_model_statistics():
    cfg = alpamayo_config("tiny", control_stats=SYNTHETIC)
    mine, spec = batch_lib.fake(cfg, 2, seed=3), batch_lib.fake(alpamayo_config("tiny"), 2, seed=3)
    np.testing.assert_allclose(
        mine.controls_ba2,
        action_space.renormalize_controls(spec.controls_ba2, ControlStats(), SYNTHETIC),
        rtol=1e-5,
    )
    for i in range(2):
        start = int(mine.expert_prefix_len_b[i])
        assert _tokens_match_controls(mine.tokens_bl[i], start, mine.controls_ba2[i], cfg.tokens)


def test_example_sample_uses_the_model_statistics():
    rng = np.random.default_rng(4)
    physical = np.stack([rng.normal(0, 0.5, 64), rng.normal(0, 0.003, 64)], -1)
    example = dict(
        clip_id="clip-a",
        t0_us=3_000_000,
        images=[drive_dataset.encode_jpeg(np.full((64, 96, 3), 60 * k, np.uint8)) for k in range(4)],
        num_frames=2,
        history_xyz=np.zeros((16, 3), np.float32),
        controls=np.asarray(ControlStats().normalize(physical), np.float32),
        reasoning=b"",
        future_xyz=np.zeros((64, 3), np.float32),
        future_yaw=np.zeros(64, np.float32),
    )
    for stats in (ControlStats(), SYNTHETIC):
        cfg = dataclasses.replace(alpamayo_config("tiny"), control_stats=stats)
        tok = tokenizer_lib.load("sentencepiece", SP_MODEL, cfg)
        sample = transforms.example_sample(example, 1, tok, cfg, np.random.default_rng(0))
        np.testing.assert_allclose(stats.denormalize(sample["controls"]), physical, rtol=1e-4, atol=1e-7)
        assert _tokens_match_controls(
            sample["tokens"], sample["expert_prefix_len"], sample["controls"], cfg.tokens
        )
