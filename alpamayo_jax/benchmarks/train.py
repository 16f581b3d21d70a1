"""Training throughput of the stage-1/2 step at the release input shapes (random weights, fake data).

The step is the trainer's own (`trainer.build`): the experiment file's config with the fake input at
the release layout (4 cameras x 4 frames at 320x576, 48 history tokens, a 30-token prompt, 40
reasoning tokens, 128 future tokens), AdamW on float32 master weights, bf16 compute, the config's remat
policy. Model FLOPs count what the model computes, as the PyTorch reference counts them (6 x matmul
parameters x tokens, 12 x layers x L^2 x heads x head_dim per sample for causal attention, not halved):
text tower on the valid tokens, LM head on the loss positions, vision tower on the patches, and the
action expert on its 64 tokens attending to the prefix. MFU is against 989 TFLOP/s (H100 dense bf16).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import jax
import numpy as np

from alpamayo_jax.benchmarks.timing import time_compiled
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.models.alpamayo import AlpamayoConfig
from alpamayo_jax.train import metric_collections, trainer
from experiments import common

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


def experiment_preset(preset: str) -> str:
    """`ar1_2b` -> the experiment files' `2b`."""
    by_variant = {v: k for k, v in common.MODEL_VARIANT.items()}
    if preset not in by_variant:
        raise ValueError(f"no experiment preset for model preset {preset!r}; known: {sorted(by_variant)}")
    return by_variant[preset]


def step_config(
    preset: str,
    stage: str,
    batch: int,
    remat: str,
    seq_len: int | None,
    mesh: tuple[int, int, int] = (1, -1, 1),
    rules: str = "fsdp",
    devices: int = 1,
    scan_layers: bool | None = None,
) -> Any:
    """The experiment config of `stage` at `preset` with fake release-shape input: `batch` samples per
    device on `devices` devices, mesh (data, fsdp, tensor) and the named rules table."""
    config = importlib.import_module(f"experiments.{stage}").get_config(experiment_preset(preset))
    with config.unlocked():
        config.data.kind = "fake"
        config.data.global_batch = batch * devices
        if seq_len:
            config.data.seq_len = seq_len
        config.model.remat = remat
        if scan_layers is not None:
            config.model.scan_layers = scan_layers
        config.mesh.shape = tuple(mesh)
        config.mesh.rules = rules
    return config


def _matmul_params(tree: Any, skip: tuple[str, ...] = ()) -> int:
    """Parameters of the matmul kernels under `tree` (leaves named `kernel`), skipping paths that contain
    any of `skip`."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == "kernel" and not any(s in "/".join(names) for s in skip):
            total += int(np.prod(leaf.shape))
    return total


def model_flops(cfg: AlpamayoConfig, params: Any, batch: batch_lib.Batch) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward) on `batch`, by part."""
    text, vis, exp = cfg.vlm.text, cfg.vlm.vision, cfg.expert
    valid = np.asarray(batch.valid_bl)
    tokens = float(valid.sum())
    lengths = valid.sum(axis=1).astype(np.float64)
    loss_positions = np.minimum(
        (np.asarray(batch.text_loss_bl + batch.traj_loss_bl)[:, 1:] > 0).sum(axis=1),
        cfg.max_loss_tokens or valid.shape[1],
    ).sum()
    patches_i = np.asarray(batch.images.lengths_i).astype(np.float64).reshape(-1)  # per image
    n_text = _matmul_params(params["vlm"]["text"], skip=("lm_head",))  # the head is counted apart
    n_head = text.vocab_size * text.width
    n_vis = _matmul_params(params["vlm"]["vision"])
    n_exp = _matmul_params(params["expert"])
    waypoints = cfg.tokens.num_waypoints
    prefix = np.asarray(batch.expert_prefix_len_b).astype(np.float64)
    return {
        "text": 6 * n_text * tokens,
        "lm_head": 6 * n_head * float(loss_positions),
        "text_attention": float((12 * text.num_layers * lengths**2 * text.num_heads * text.head_dim).sum()),
        "vision": 6 * n_vis * float(patches_i.sum()),
        "vision_attention": float(12 * vis.depth * (patches_i**2).sum() * vis.width),  # per-image attention
        "expert": 6 * n_exp * waypoints * batch.batch_size,
        "expert_attention": float(
            (12 * exp.num_layers * waypoints * (prefix + waypoints) * exp.num_heads * exp.head_dim).sum()
        ),
    }


def run(
    preset: str,
    batch: int = 1,
    reps: int = 5,
    stage: str = "stage2_coc_sft",
    remat: str = "attention",
    seq_len: int | None = None,
    mesh: tuple[int, int, int] = (1, -1, 1),
    rules: str = "fsdp",
    scan_layers: bool | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Step time, tokens/s and MFU of `stage`'s train step at `preset` on this host's devices, with
    `batch` samples per device (weak scaling: the global batch grows with the device count)."""
    config = step_config(preset, stage, batch, remat, seq_len, mesh, rules, jax.device_count(), scan_layers)
    setup = trainer.build(config)
    state = setup.init()
    host_batch = next(setup.train_iter)
    start = time.perf_counter()
    step = setup.compile_step()
    compile_s = time.perf_counter() - start
    memory = step.memory_analysis()
    device_batch = trainer.host_to_global(host_batch, setup.batch_sh)
    key = jax.random.key(0)

    # The state is donated: thread it through the timed calls.
    holder = {"state": state}

    def timed():
        holder["state"], metrics = step(holder["state"], device_batch, key)
        return metrics

    t = time_compiled(timed, reps=reps)
    params = setup.abstract_state.params
    flops = model_flops(setup.model.cfg, params, host_batch)
    total = sum(flops.values())
    seconds = t["median_ms"] / 1e3
    tokens = float(np.asarray(host_batch.valid_bl).sum())
    devices = jax.device_count()
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
    stats = jax.devices()[0].memory_stats() or {}
    result: dict[str, Any] = dict(
        preset=preset,
        stage=stage,
        device=kind,
        devices=devices,
        mesh=dict(setup.mesh.shape),
        rules=rules,
        batch=batch,
        global_batch=batch * devices,
        seq_len=int(host_batch.tokens_bl.shape[1]),
        tokens=tokens,
        remat=remat,
        scan_layers=config.model.scan_layers,
        attention=config.model.attention,
        step_ms=t["median_ms"],
        min_step_ms=t["min_ms"],
        compile_s=compile_s,
        tokens_per_s=tokens / seconds,
        tokens_per_s_per_device=tokens / seconds / devices,
        model_tflop_per_step=total / 1e12,
        model_tflops_per_s_per_device=total / seconds / 1e12 / devices,
        flops_by_part_tflop={k: v / 1e12 for k, v in flops.items()},
        xla_tflop_per_step=trainer.flops_of(step) / 1e12,
        final_loss=metric_collections.to_floats(jax.device_get(timed()))["loss"],
    )
    if peak:
        result["mfu"] = total / seconds / 1e12 / devices / peak
    if memory is not None:
        result["compiled_memory_gb"] = dict(
            arguments=memory.argument_size_in_bytes / 2**30,
            outputs=memory.output_size_in_bytes / 2**30,
            temp=memory.temp_size_in_bytes / 2**30,
        )
    if "peak_bytes_in_use" in stats:
        result["peak_memory_gb"] = stats["peak_bytes_in_use"] / 2**30
        result["device_memory_gb"] = stats.get("bytes_limit", 0) / 2**30
    return result
