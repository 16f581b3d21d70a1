"""Metrics: the clu collections (weighted merges across steps, eval numbers against NumPy, a jitted
step sharded over 8 devices) and the TF-free writers (CRC-32C, TFRecord framing, Event protobuf bytes)."""

import dataclasses
import json
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from alpamayo_jax import sharding
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.models import alpamayo
from alpamayo_jax.train import evaluate, metric_collections, metrics, trainer
from tests.train_util import tiny_config, use_compilation_cache


def read_records(path):
    data = open(path, "rb").read()
    records, i = [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == metrics.masked_crc(data[i : i + 8])
        payload = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == metrics.masked_crc(payload)
        records.append(payload)
        i += 16 + length
    return records


def test_crc32c_known_vector():
    assert metrics.crc32c(b"123456789") == 0xE3069283
    assert metrics.crc32c(b"") == 0


def test_event_bytes_follow_the_protobuf_wire_format():
    ev = metrics.event_proto(1.5, 300, {"loss": 0.25})
    # wall_time (field 1, fixed64), step (field 2, varint 300: ac 02), summary (5) > value > tag, value
    value = b"\x0a\x04loss" + b"\x15" + struct.pack("<f", 0.25)
    assert ev == b"\x09" + struct.pack("<d", 1.5) + b"\x10\xac\x02" + b"\x2a\x0d" + b"\x0a\x0b" + value


def test_metric_writer_writes_jsonl_and_events(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), enabled=True)
    w.write(1, {"loss": 2.0, "grad_norm": 0.5})
    w.write(2, {"loss": 1.0})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.0, "grad_norm": 0.5}, {"step": 2, "loss": 1.0}]
    records = read_records(w.events.path)
    assert len(records) == 3 and b"brain.Event:2" in records[0]
    assert records[2].endswith(b"\x0a\x04loss\x15" + struct.pack("<f", 1.0))
    off = metrics.MetricWriter(str(tmp_path / "other"), enabled=False)
    off.write(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**40])
def test_varint_round_trip(n):
    raw, value, shift = metrics._varint(n), 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
    assert value == n and raw[-1] < 0x80


def step_collection(loss, text_ce, text_weight, flow, trajectories, grad_norm):
    outputs = dict(
        loss=loss,
        text_ce=text_ce,
        traj_ce=0.5,
        flow=flow,
        text_accuracy=0.25,
        traj_accuracy=0.75,
        loss_tokens_dropped=0,
        grad_norm=grad_norm,
        param_norm=10.0,
    )
    weights = dict(text_weight=text_weight, traj_weight=4.0, trajectories=trajectories)
    fn = jax.jit(lambda o, w: metric_collections.TrainMetrics.single_from_model_output(**o, **w))
    return fn(outputs, weights)


def test_merged_steps_average_per_step_values_weighted_by_loss_counts():
    steps = [
        step_collection(1.0, 2.0, 10.0, 0.3, 2.0, 0.5),
        step_collection(2.0, 4.0, 30.0, 0.6, 1.0, 1.5),
        step_collection(6.0, 9.0, 0.0, 0.0, 0.0, 4.0),  # no text tokens, no trajectory in this step
    ]
    got = metric_collections.to_floats(metric_collections.merge_all(steps))
    assert got["loss"] == pytest.approx(3.0) and got["grad_norm"] == pytest.approx(2.0)
    assert got["text_ce"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)
    assert got["flow"] == pytest.approx((0.3 * 2 + 0.6 * 1) / 3)
    assert got["traj_ce"] == pytest.approx(0.5) and got["param_norm"] == pytest.approx(10.0)
    assert got["text_accuracy"] == pytest.approx(0.25) and got["loss_tokens_dropped"] == 0
    empty = metric_collections.to_floats(steps[2])
    assert empty["text_ce"] == 0.0 and empty["flow"] == 0.0  # no weight: 0, as the model's masked means

    record = trainer.interval_record(list(zip([11, 12, 13], steps, strict=True)), 2.0, 500, 1e9, 1e10)
    assert record == pytest.approx(dict(got, steps_per_s=1.5, tokens_per_s=250.0, mfu=0.15))
    bad = [*steps[:1], step_collection(float("nan"), 1.0, 1.0, 1.0, 1.0, 1.0), *steps[1:]]
    with pytest.raises(FloatingPointError, match="step 12: loss is nan"):
        trainer.interval_record(list(zip([11, 12, 13, 14], bad, strict=True)), 1.0, 1, 0.0, 0.0)


def along_batch(fn, *batches):
    return jax.tree_util.tree_map_with_path(lambda p, *x: fn(x, sharding.batch_axis(p[0].name)), *batches)


def test_train_metrics_on_8_devices_weight_like_the_model_on_the_joined_batch():
    """Two batches' TrainMetrics (built in a jitted step sharded over 8 devices) merge to the CE the
    model computes on both batches at once, with a loss-token budget that drops tokens."""
    cfg = alpamayo.alpamayo_config("tiny")
    parts = [batch_lib.fake(cfg, 8, seed=s, reasoning_len=r, length=224) for s, r in ((0, 3), (1, 12))]
    needed = max(int((np.asarray(b.text_loss_bl) + np.asarray(b.traj_loss_bl)).sum(1).max()) for b in parts)
    cfg = dataclasses.replace(cfg, max_loss_tokens=needed - 4)
    model = alpamayo.Alpamayo(cfg)
    params = jax.jit(lambda b: nn.unbox(model.init(jax.random.key(0), b, jax.random.key(1)))["params"])(
        parts[0]
    )
    mesh = sharding.make_mesh((2, 4, 1))
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(params, batch):
        out = model.apply({"params": params}, batch, jax.random.key(2))
        extra = dict(loss=out["text_ce"], grad_norm=jnp.ones(()), param_norm=jnp.ones(()))
        return metric_collections.train_metrics({**out, **extra}, batch, cfg.max_loss_tokens)

    fn = jax.jit(
        step, in_shardings=(replicated, sharding.batch_shardings(parts[0], mesh)), out_shardings=replicated
    )
    collections = [fn(params, b) for b in parts]
    assert collections[0].text_ce.total.sharding.is_fully_replicated
    merged = metric_collections.to_floats(metric_collections.merge_all(jax.device_get(collections)))
    joined = jax.jit(model.apply)({"params": params}, along_batch(np.concatenate, *parts), jax.random.key(2))
    assert int(joined["loss_tokens_dropped"]) > 0
    for name in ("text_ce", "traj_ce", "text_accuracy", "traj_accuracy"):
        assert merged[name] == pytest.approx(float(joined[name]), rel=1e-5), name
    # The weights are the sums of the loss weights of the first `max_loss_tokens` loss positions per row.
    for b, c in zip(parts, collections, strict=True):
        text, traj = (np.asarray(x)[:, 1:] for x in (b.text_loss_bl, b.traj_loss_bl))
        first = np.cumsum((text + traj) > 0, axis=1) <= cfg.max_loss_tokens
        assert float(c.text_ce.weight) == pytest.approx((text * first).sum())
        assert float(c.traj_ce.weight) == pytest.approx((traj * first).sum())
        assert float(c.flow.weight) == np.asarray(b.has_trajectory_b).sum()


def numpy_errors(xy_bka2, true_ba2):
    dist = np.linalg.norm(xy_bka2 - true_ba2[:, None], axis=-1)
    out = {"minADE_3": dist.mean(-1).min(1)}
    for h, n in ((1, 10), (3, 30), (6.4, 64)):
        out[f"ADE_{h:g}s"] = dist[:, 0, :n].mean(-1)
        out[f"FDE_{h:g}s"] = dist[:, 0, n - 1]
    return out


def test_eval_metrics_average_over_samples_with_a_trajectory():
    cfg = alpamayo.alpamayo_config("tiny")
    rng = np.random.default_rng(0)
    batches, collections, expected = [], [], {}
    for seed, has_traj, text_ce in (
        (0, [True, False, True, True], 2.0),
        (1, [False, True, True, False], 3.0),
    ):
        b = batch_lib.fake(cfg, 4, seed=seed).replace(has_trajectory_b=np.array(has_traj))
        true = np.asarray(b.future_xy_ba2)
        xy = (true[:, None] + rng.normal(0, 1, (4, 3, 64, 2)).cumsum(2)).astype(np.float32)
        losses = dict(loss=text_ce + 1, text_ce=text_ce, traj_ce=1.0, flow=0.1, loss_tokens_dropped=0)
        losses.update(text_accuracy=0.5, traj_accuracy=0.5)
        out = {**losses, **evaluate.trajectory_errors(jnp.asarray(xy), b.future_xy_ba2)}
        collections.append(jax.jit(metric_collections.eval_metrics, static_argnums=(2, 3))(out, b, None, 3))
        batches.append((b, text_ce))
        for k, v in numpy_errors(xy, true).items():
            expected.setdefault(k, []).extend(v[np.array(has_traj)])
    got = metric_collections.to_floats(metric_collections.merge_all(collections))
    assert set(got) == {*expected, "loss", "text_ce", "traj_ce", "flow", "text_accuracy", "traj_accuracy",
                        "loss_tokens_dropped"}  # fmt: skip
    for k, v in expected.items():
        assert len(v) == 5 and got[k] == pytest.approx(np.mean(v), rel=1e-5), k
    text_w = [np.asarray(b.text_loss_bl)[:, 1:].sum() for b, _ in batches]
    assert got["text_ce"] == pytest.approx((2.0 * text_w[0] + 3.0 * text_w[1]) / sum(text_w))
    assert got["loss"] == pytest.approx(3.5) and got["flow"] == pytest.approx(0.1)
    none = batches[0][0].replace(has_trajectory_b=np.zeros(4, bool))
    alone = metric_collections.eval_metrics(out, none, None, 3).compute()
    assert float(alone["minADE_3"]) == 0.0 and float(alone["FDE_6.4s"]) == 0.0


def test_trainer_logs_the_mean_of_the_steps_since_the_last_log_point(tmp_path, tmp_path_factory):
    use_compilation_cache(tmp_path_factory)
    _, every = trainer.train(tiny_config("stage0_vlm_vqa", 2), str(tmp_path / "every"))
    config = tiny_config("stage0_vlm_vqa", 2)
    config.log_every = 2
    _, merged = trainer.train(config, str(tmp_path / "merged"))
    lines = [json.loads(x) for x in (tmp_path / "merged" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in every] == [1, 2] and [r["step"] for r in lines] == [2] and lines == merged
    for name in ("loss", "grad_norm", "param_norm", "loss_tokens_dropped"):
        assert merged[0][name] == pytest.approx(np.mean([h[name] for h in every]), rel=1e-6), name
    assert merged[0]["tokens_per_s"] > 0 and merged[0]["steps_per_s"] > 0
