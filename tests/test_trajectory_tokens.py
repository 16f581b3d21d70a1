"""Tests for trajectory tokens: id layout, future / history round trips (NumPy and JAX), vocab extension."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpamayo_jax import trajectory_tokens as tt

LAYOUT = tt.TokenLayout()
FUTURE_HALF_BIN = 10.0 / 3000
HISTORY_HALF_BIN = np.array([4.0, 4.0, 10.0]) / 1000


def _history(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Constant-acceleration gently curving histories `[batch, 16, 3]` ending at the origin."""
    t = np.arange(-15, 1) * 0.1
    v, a = rng.uniform(0, 30, (batch, 1)), rng.uniform(-3, 3, (batch, 1))
    x = v * t + 0.5 * a * t**2
    y = rng.uniform(-0.05, 0.05, (batch, 1)) * x**2 / 10
    z = rng.uniform(-0.05, 0.05, (batch, 1)) * x
    return np.stack([x, y, z], -1)


def test_id_layout_numbers():
    assert LAYOUT.future_start == 151936 and LAYOUT.future_end == 151936 + 3000
    assert LAYOUT.history_start == LAYOUT.future_end and LAYOUT.history_end == 151936 + 4000
    assert LAYOUT.special_start == LAYOUT.history_end and LAYOUT.special_end == 151936 + 4016
    assert LAYOUT.vocab_size == 156032 and LAYOUT.vocab_size % 128 == 0
    assert LAYOUT.vocab_size >= LAYOUT.special_end > LAYOUT.vocab_size - 128
    assert tt.TokenLayout(base_vocab_size=1000, pad_to=1).vocab_size == 5016


def test_id_ranges_do_not_overlap_and_specials_follow_bins():
    ids = np.arange(LAYOUT.base_vocab_size - 5, LAYOUT.vocab_size)
    future, history = LAYOUT.is_future_id(ids), LAYOUT.is_history_id(ids)
    special_ids = np.array([LAYOUT.special_id(name) for name in tt.SPECIAL_TOKENS])
    special = np.isin(ids, special_ids)
    assert future.sum() == 3000 and history.sum() == 1000 and special.sum() == 16
    assert not (future & history).any() and not ((future | history) & special).any()
    np.testing.assert_array_equal(LAYOUT.is_trajectory_id(ids), future | history)
    assert special_ids.min() >= LAYOUT.history_end
    np.testing.assert_array_equal(special_ids, LAYOUT.special_start + np.arange(16))
    assert LAYOUT.is_trajectory_id(jnp.asarray(ids)).sum() == 4000


def test_special_ids_in_spec_order():
    assert LAYOUT.special_id("<|cot_start|>") == LAYOUT.special_start
    assert LAYOUT.special_id("traj_future_start") == LAYOUT.special_start + 5
    assert LAYOUT.special_id("<|answer_end|>") == LAYOUT.special_end - 1
    with pytest.raises(KeyError, match="unknown special token"):
        LAYOUT.special_id("<|nope|>")
    with pytest.raises(ValueError, match="duplicates"):
        tt.TokenLayout(special_tokens=("<|a|>", "<|a|>"))


def test_future_round_trip_within_half_bin_numpy_and_jax():
    rng = np.random.default_rng(0)
    controls = rng.uniform(-9.99, 9.99, (4, 3, 64, 2)).astype(np.float32)
    ids = tt.encode_future(controls, LAYOUT)
    assert ids.shape == (4, 3, 128) and ids.dtype == np.int32 and LAYOUT.is_future_id(ids).all()
    decoded = tt.decode_future(ids, LAYOUT)
    assert np.abs(decoded - controls).max() <= FUTURE_HALF_BIN * (1 + 1e-4)
    ids_jax = jax.jit(lambda c: tt.encode_future(c, LAYOUT, jnp))(controls)
    np.testing.assert_array_equal(ids_jax, ids)
    np.testing.assert_allclose(jax.jit(lambda i: tt.decode_future(i, LAYOUT, jnp))(ids), decoded, atol=1e-6)


def test_future_tokens_interleave_accel_and_curvature_and_clip():
    controls = np.zeros((64, 2), np.float32)
    controls[0] = [-10.0, 10.0]
    controls[1] = [-50.0, 50.0]  # out of range: clipped to the end bins
    ids = tt.encode_future(controls, LAYOUT) - LAYOUT.future_start
    np.testing.assert_array_equal(ids[:4], [0, 2999, 0, 2999])
    assert ids[4] == ids[5] == 1500  # 0 lies on the edge between bins 1499 and 1500
    np.testing.assert_allclose(
        tt.decode_future(ids + LAYOUT.future_start, LAYOUT)[2], [FUTURE_HALF_BIN] * 2, rtol=1e-3
    )


def test_history_deltas_back_extrapolate_first_step():
    history = _history(np.random.default_rng(1), 2)
    deltas = tt.history_deltas(history)
    np.testing.assert_allclose(deltas[:, 0], deltas[:, 1])
    np.testing.assert_allclose(deltas[:, 1:], np.diff(history, axis=1), atol=1e-5)


def test_history_round_trip_numpy_and_jax():
    history = _history(np.random.default_rng(2), 32)
    ids = tt.encode_history(history, LAYOUT)
    assert ids.shape == (32, 48) and LAYOUT.is_history_id(ids).all()
    deltas = tt.history_deltas(history)
    decoded_deltas = tt.history_deltas(tt.decode_history(ids, LAYOUT))[:, 1:]
    assert (np.abs(decoded_deltas - deltas[:, 1:]) <= HISTORY_HALF_BIN * (1 + 1e-3) + 1e-6).all()
    decoded = tt.decode_history(ids, LAYOUT)
    steps_to_t0 = np.arange(15, -1, -1)[:, None]  # each pose accumulates this many delta errors
    assert (np.abs(decoded - history) <= steps_to_t0 * HISTORY_HALF_BIN * (1 + 1e-3) + 1e-5).all()
    np.testing.assert_array_equal(decoded[:, -1], 0.0)
    ids_jax = jax.jit(lambda h: tt.encode_history(h, LAYOUT, jnp))(history)
    np.testing.assert_array_equal(ids_jax, ids)
    np.testing.assert_allclose(jax.jit(lambda i: tt.decode_history(i, LAYOUT, jnp))(ids), decoded, atol=1e-4)


def test_history_interleaves_axes_and_clips():
    history = np.zeros((16, 3), np.float32)
    history[:-1, 0] = -100.0  # a 100 m jump into the t0 pose: x delta clipped to +4 m
    ids = tt.encode_history(history, LAYOUT) - LAYOUT.history_start
    assert ids[45] == 999 and ids[46] == ids[47] == 500
    np.testing.assert_allclose(
        tt.decode_history(ids + LAYOUT.history_start, LAYOUT)[-2], [-3.996, -0.004, -0.01], rtol=1e-4
    )


def test_shape_errors_name_the_input():
    with pytest.raises(ValueError, match="encode_future controls"):
        tt.encode_future(np.zeros((63, 2)), LAYOUT)
    with pytest.raises(ValueError, match="decode_history ids"):
        tt.decode_history(np.zeros((47,), np.int32), LAYOUT)


def _params(vocab: int, width: int, with_head: bool):
    rng = np.random.default_rng(3)
    text = {"embed": {"embedding": rng.normal(1.0, 2.0, (vocab, width)).astype(np.float32)}}
    if with_head:
        text["lm_head"] = {"kernel": rng.normal(size=(width, vocab)).astype(np.float32)}
    return {"text": text, "vision": {"w": np.ones(3, np.float32)}}


def test_extend_vocab_copies_old_rows_exactly_and_initialises_new_ones():
    params = _params(500, 8, with_head=True)
    new = tt.extend_vocab(params, 500, 628, jax.random.key(0))
    embed, head = new["text"]["embed"]["embedding"], new["text"]["lm_head"]["kernel"]
    assert embed.shape == (628, 8) and head.shape == (8, 628)
    old_embed, old_head = params["text"]["embed"]["embedding"], params["text"]["lm_head"]["kernel"]
    np.testing.assert_array_equal(embed[:500], old_embed)
    np.testing.assert_array_equal(head[:, :500], old_head)
    new_rows = np.asarray(embed[500:])
    np.testing.assert_allclose(new_rows.mean(0), old_embed.mean(0), atol=0.02)
    assert 0 < np.abs(new_rows - old_embed.mean(0)).max() < 0.02 * 5 * old_embed.std(0).max()
    assert new["vision"] is params["vision"]  # untouched subtrees are shared
    assert params["text"]["embed"]["embedding"].shape == (500, 8)  # input not modified


def test_extend_vocab_tied_head_and_errors():
    params = _params(500, 8, with_head=False)
    new = tt.extend_vocab(params, 500, 512, jax.random.key(1))
    assert new["text"]["embed"]["embedding"].shape == (512, 8) and "lm_head" not in new["text"]
    with pytest.raises(ValueError, match="smaller than old_vocab"):
        tt.extend_vocab(params, 500, 400, jax.random.key(1))
    with pytest.raises(ValueError, match="text/embed/embedding has shape"):
        tt.extend_vocab(params, 499, 512, jax.random.key(1))
    with pytest.raises(KeyError, match="no embedding at text/tok"):
        tt.extend_vocab(params, 500, 512, jax.random.key(1), embed_path=("text", "tok"))
    bad_head = _params(500, 8, with_head=True)
    bad_head["text"]["lm_head"]["kernel"] = bad_head["text"]["lm_head"]["kernel"][:, :10]
    with pytest.raises(ValueError, match="text/lm_head/kernel has shape"):
        tt.extend_vocab(bad_head, 500, 512, jax.random.key(1))
