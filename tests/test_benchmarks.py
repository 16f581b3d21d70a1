"""The training benchmark: its model-FLOP count against the architecture's own arithmetic, and a run of
the trainer's step at the tiny preset."""

import flax.linen as nn
import jax
import numpy as np

from alpamayo_jax.benchmarks import train
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.models import alpamayo


def test_model_flops_follow_the_architecture():
    cfg = alpamayo.alpamayo_config("tiny")
    batch = batch_lib.fake(cfg, 2, seed=0, num_images=2, grid_hw=(4, 4))
    params = jax.eval_shape(
        lambda: nn.unbox(alpamayo.Alpamayo(cfg).init(jax.random.key(0), batch, jax.random.key(1)))["params"]
    )
    flops = train.model_flops(cfg, params, batch)
    t = cfg.vlm.text
    per_layer = t.width * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim  # q, k, v
    per_layer += t.num_heads * t.head_dim * t.width + 3 * t.width * t.mlp_dim  # o, gate, up, down
    tokens = float(np.asarray(batch.valid_bl).sum())
    assert flops["text"] == 6 * t.num_layers * per_layer * tokens
    lengths = np.asarray(batch.valid_bl).sum(axis=1)
    expected_attention = sum(12 * t.num_layers * n**2 * t.num_heads * t.head_dim for n in lengths)
    assert flops["text_attention"] == expected_attention
    patches = 2 * 2 * 16  # samples x images x patches
    assert flops["vision"] > 0 and flops["vision"] % (6 * patches) == 0


def test_train_benchmark_times_the_trainer_step():
    result = train.run("tiny", batch=1, reps=1, stage="stage1_action_injection")
    assert result["step_ms"] > 0 and result["tokens_per_s"] > 0
    assert result["model_tflop_per_step"] == sum(result["flops_by_part_tflop"].values())
    assert np.isfinite(result["final_loss"])
    assert result["devices"] == jax.device_count()
    # `batch` is per device: the global batch grows with the devices (weak scaling).
    assert result["global_batch"] == jax.device_count()
    assert result["mesh"] == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    # The same global batch under FSDP + tensor parallelism gives the same loss after the same steps.
    tp = train.run("tiny", batch=1, reps=1, stage="stage1_action_injection", mesh=(2, 2, 2), rules="fsdp_tp")
    assert tp["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and tp["rules"] == "fsdp_tp"
    np.testing.assert_allclose(tp["final_loss"], result["final_loss"], rtol=1e-4)
