"""The end-to-end demo on the embedded synthetic default (`make demo`): data -> stages 0, 1, 2 -> report.

Synthetic clips are written in the PhysicalAI-AV layout, built into a TFDS ArrayRecord dataset, and the
`tiny` policy is trained through stage 0 (VQA), stage 1 (trajectory tokens + flow, from stage 0's VLM)
and stage 2 (CoC reasoning + trajectory, from stage 1); every stage's config carries the control
statistics of the training split (`model.control_stats`). Held-out clips are then scored open loop
(minADE_6 over 6.4 s, the expert sampling from the teacher-forced prefix) for the untrained policy,
the trained one and a constant-velocity baseline, and `report.md` with PNG plots is written.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from alpamayo_jax import action_space, generation, inference, trajectory_tokens
from alpamayo_jax.data import drive_dataset, pipeline, synthetic
from alpamayo_jax.data import tokenizer as tokenizer_lib
from alpamayo_jax.models.alpamayo import Alpamayo
from alpamayo_jax.models.qwen3vl import Qwen3VL
from alpamayo_jax.models.qwen3vl_inputs import PromptInputs
from alpamayo_jax.train import evaluate, trainer
from alpamayo_jax.train.input import pipeline_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SP_MODEL = str(REPO / "data" / "tokenizers" / "tiny_sp.model")
CAMERAS = ("camera_cross_left_120fov", "camera_front_wide_120fov")
STAGES = (("stage0_vlm_vqa", 0), ("stage1_action_injection", 1), ("stage2_coc_sft", 2))


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    clips: int = 120  # 96 train / 24 held-out: 40 clips (8 held out) did not generalise
    seed: int = 0
    image_hw: tuple[int, int] = (64, 96)
    steps: tuple[int, int, int] = (60, 800, 800)  # stage 0, 1, 2
    batch: int = 8
    seq_len: int = 384
    lr: float = 3e-3


def build_data(out: pathlib.Path, cfg: DemoConfig) -> dict[str, Any]:
    """Synthetic clips (every 5th clip held out) -> TFDS ArrayRecord `synthetic_drive`."""
    clips, data_dir = out / "clips", out / "tfds"
    if not (clips / "clip_index.parquet").exists():
        h, w = cfg.image_hw
        synthetic.write_synthetic_dataset(
            clips, cfg.clips, cfg.seed, synthetic.SyntheticConfig(w, h, CAMERAS)
        )
    splits = drive_dataset.synthetic_splits(clips, validation_every=5)
    summary = drive_dataset.build(
        "synthetic_drive", clips, data_dir, splits, cameras=CAMERAS, num_frames=2, image_hw=cfg.image_hw
    )
    if summary["failed"]:
        raise RuntimeError(f"dataset build failed for clips {summary['failed']}")
    return summary


def training_control_stats(data_dir: pathlib.Path) -> action_space.ControlStats:
    """Mean and std of the physical controls of the training split (stored with SPEC statistics).

    Synthetic driving is gentler than real driving (the demo's curvatures have about a seventh of
    SPEC's std), so with SPEC statistics the expert's normalised curvatures would be near 0 and a
    small error in them metres of lateral error; the trajectory tokens would use a few bins."""
    source = pipeline.data_source(data_dir, "synthetic_drive", "train")
    stored = np.stack([np.asarray(source[i]["controls"]) for i in range(len(source))])
    return action_space.ControlStats.of(np.asarray(action_space.SPEC_STATS.denormalize(stored)))


def stage_config(
    name: str,
    stage: int,
    steps: int,
    out: pathlib.Path,
    cfg: DemoConfig,
    init_from: str,
    stats: action_space.ControlStats,
):
    c = importlib.import_module(f"experiments.{name}").get_config("tiny")
    c.total_steps = steps
    c.model.control_stats.update(dataclasses.asdict(stats))
    c.mesh.shape = (1, -1, 1)
    c.data.kind = "tfds"
    c.data.data_dir = str(out / "tfds")
    c.data.sources = (dict(name="synthetic_drive", stage=stage, weight=1.0),)
    c.data.tokenizer.path = SP_MODEL
    c.data.seq_len = cfg.seq_len
    c.data.global_batch = cfg.batch
    c.optim.lr = cfg.lr
    c.optim.warmup_steps = max(steps // 10, 1)
    c.checkpoint.every_steps = steps
    c.eval.every_steps = 0
    c.init_from.path = init_from
    return c


def train_stages(
    out: pathlib.Path, cfg: DemoConfig, stats: action_space.ControlStats
) -> tuple[Any, Any, dict[str, list[dict]]]:
    """Trains the three stages in turn; returns (final params, stage-2 config, histories)."""
    histories, init_from, state, config = {}, "", None, None
    for (name, stage), steps in zip(STAGES, cfg.steps, strict=True):
        config = stage_config(name, stage, steps, out, cfg, init_from, stats)
        workdir = out / name
        start = time.time()
        state, _ = trainer.train(config, str(workdir))
        histories[name] = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        print(f"{name}: {steps} steps in {time.time() - start:.0f} s", flush=True)
        init_from = str(workdir)
    return state.params, config, histories


def constant_velocity(history_xyz_bh3: jax.Array, num_waypoints: int) -> jax.Array:
    """Straight ahead at the speed estimated from the history: `[B, A, 2]`."""
    v0 = action_space.estimate_v0(history_xyz_bh3)
    t = action_space.DT * jnp.arange(1, num_waypoints + 1)
    return jnp.stack([v0[:, None] * t, jnp.zeros((v0.shape[0], num_waypoints))], -1)


def held_out_batches(config: Any, model_cfg: Any) -> list:
    """Every validation keyframe once, one per batch (stage-2 layout: reasoning in the prefix)."""
    data_cfg = dict(pipeline_config(config.data, 1, 0, config.data.eval_split), num_epochs=1, shuffle=False)
    return list(pipeline.make_loader(data_cfg, model_cfg))


@functools.partial(jax.jit, static_argnums=0)
def sample_trajectories(model: Alpamayo, params: Any, batch: Any, rng: jax.Array) -> jax.Array:
    """6 flow samples `[B, 6, A, 2]` (jitted once per model: both parameter sets share the program)."""
    return evaluate.sample_trajectories(model, params, batch, rng, num_samples=6, flow_steps=10)


def score(model: Alpamayo, params: Any, batches: list, rng: jax.Array) -> tuple[dict[str, float], list]:
    """Mean trajectory metrics over the held-out batches and the sampled waypoints of each."""
    sums: dict[str, float] = {}
    samples = []
    for i, b in enumerate(batches):
        xy = sample_trajectories(model, params, b, jax.random.fold_in(rng, i))
        samples.append(np.asarray(xy))
        for k, v in evaluate.trajectory_metrics(xy, b.future_xy_ba2, b.has_trajectory_b).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / len(batches) for k, v in sums.items()}, samples


@functools.partial(jax.jit, static_argnums=0)
def token_trajectories(model: Alpamayo, params: Any, batch: Any) -> jax.Array:
    """The VLM's own trajectory: greedy decoding of the 128 discrete future tokens after the
    teacher-forced prefix (only future-control ids allowed), decoded to controls and integrated:
    `[B, 1, A, 2]`. The tokens after <|traj_future_start|> are masked out of the prompt."""
    cfg = model.cfg
    length = batch.tokens_bl.shape[1]
    prefix = jnp.arange(length)[None, :] < batch.expert_prefix_len_b[:, None]
    prompt = PromptInputs(
        tokens_bl=batch.tokens_bl,
        positions_3bl=batch.positions_3bl,
        valid_bl=batch.valid_bl & prefix,
        next_position_b=batch.expert_position_b,
        images=batch.images,
        image_slots_bl=jnp.where(prefix, batch.image_slots_bl, -1),
    )
    vlm = Qwen3VL(cfg.vlm)
    layout = cfg.tokens
    n = layout.num_future_tokens
    logits, cache = generation.prefill(vlm, params["vlm"], prompt, length + n)
    banned = ~layout.is_future_id(jnp.arange(cfg.vlm.text.vocab_size))
    tokens, _, _ = generation.decode(
        vlm, params["vlm"], logits, cache, prompt.next_position_b, jax.random.key(0), n, banned_v=banned
    )
    controls = trajectory_tokens.decode_future(tokens, layout, xp=jnp)
    return inference.controls_to_trajectory(controls, batch.history_xyz_bh3, cfg.control_stats)["xy"][:, None]


def token_score(model: Alpamayo, params: Any, batches: list) -> tuple[dict[str, float], list]:
    sums: dict[str, float] = {}
    samples = []
    for b in batches:
        xy = token_trajectories(model, params, b)
        samples.append(np.asarray(xy))
        for k, v in evaluate.trajectory_metrics(
            jnp.repeat(xy, 6, 1), b.future_xy_ba2, b.has_trajectory_b
        ).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / len(batches) for k, v in sums.items()}, samples


def cv_score(batches: list) -> dict[str, float]:
    """The constant-velocity baseline is deterministic: its 6 'samples' are one trajectory."""
    sums: dict[str, float] = {}
    for b in batches:
        xy = constant_velocity(jnp.asarray(b.history_xyz_bh3), b.future_xy_ba2.shape[1])
        xy = jnp.repeat(xy[:, None], 6, axis=1)
        for k, v in evaluate.trajectory_metrics(xy, b.future_xy_ba2, b.has_trajectory_b).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / len(batches) for k, v in sums.items()}


def reasoning_text(batch: Any, tok: Any, base_vocab: int) -> str:
    """The sample's ground-truth reasoning (the text tokens that carry a loss)."""
    ids = np.asarray(batch.tokens_bl[0])[np.asarray(batch.text_loss_bl[0]) > 0]
    return tok.decode([int(i) for i in ids if i < base_vocab])


def plot_losses(histories: dict[str, list[dict]], path: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.2))
    for ax, (name, hist) in zip(np.atleast_1d(axes), histories.items(), strict=True):
        steps = [h["step"] for h in hist if "loss" in h]
        for key in ("loss", "text_ce", "traj_ce", "flow"):
            values = [h.get(key) for h in hist if "loss" in h]
            if any(v is not None for v in values):
                ax.plot(steps, values, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(
    batches: list, samples: list, token_samples: list, texts: list[str], path: pathlib.Path, count: int = 4
) -> None:
    count = min(count, len(batches))
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 4.6))
    items = zip(
        np.atleast_1d(axes),
        batches[:count],
        samples[:count],
        token_samples[:count],
        texts[:count],
        strict=True,
    )
    for ax, b, xy, xy_tokens, text in items:
        hist = np.asarray(b.history_xyz_bh3[0])
        true = np.asarray(b.future_xy_ba2[0])
        cv = np.asarray(constant_velocity(jnp.asarray(b.history_xyz_bh3), true.shape[0])[0])
        ax.plot(-hist[:, 1], hist[:, 0], "k.-", ms=3, label="history")
        ax.plot(-true[:, 1], true[:, 0], "g-", lw=2.5, label="true future")
        for j, s in enumerate(xy[0]):
            ax.plot(
                -s[:, 1],
                s[:, 0],
                "b-",
                alpha=0.45,
                lw=1,
                label="policy (flow, 6 samples)" if j == 0 else None,
            )
        ax.plot(
            -xy_tokens[0, 0, :, 1], xy_tokens[0, 0, :, 0], "m-", lw=1.5, label="policy (trajectory tokens)"
        )
        ax.plot(-cv[:, 1], cv[:, 0], "r--", lw=1, label="constant velocity")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("right (m)")
        ax.set_ylabel("forward (m)")
        ax.set_title("\n".join(text[i : i + 48] for i in range(0, min(len(text), 144), 48)), fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: str | os.PathLike, cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary = build_data(out, cfg)
    print(f"data: {summary['examples']} keyframes in {time.time() - start:.0f} s", flush=True)
    stats = training_control_stats(out / "tfds")
    print(f"control statistics of the training split: {stats}", flush=True)
    params, config, histories = train_stages(out, cfg, stats)
    model_cfg = trainer.model_config_of(config.model)
    model = Alpamayo(model_cfg)
    batches = held_out_batches(config, model_cfg)
    # Jitted (an eager init runs the whole forward pass op by op). Both parameter sets on one device the
    # same way (from the host), so each scoring program compiles once for both.
    init = jax.jit(
        lambda b: nn.unbox(model.init(jax.random.key(config.seed), b, jax.random.key(0)))["params"]
    )(batches[0])
    init, params = (jax.device_put(jax.device_get(p), jax.devices()[0]) for p in (init, params))
    rng = jax.random.key(123)
    untrained, _ = score(model, init, batches, rng)
    trained, samples = score(model, params, batches, rng)
    tokens_untrained, _ = token_score(model, init, batches)
    tokens_trained, token_samples = token_score(model, params, batches)
    baseline = cv_score(batches)
    tok = tokenizer_lib.load("sentencepiece", SP_MODEL, model_cfg)
    texts = [reasoning_text(b, tok, model_cfg.tokens.base_vocab_size) for b in batches]
    plot_losses(histories, out / "losses.png")
    plot_trajectories(batches, samples, token_samples, texts, out / "trajectories.png")
    results = dict(
        untrained=untrained,
        trained=trained,
        untrained_tokens=tokens_untrained,
        trained_tokens=tokens_trained,
        constant_velocity=baseline,
        held_out=len(batches),
        control_stats=dataclasses.asdict(stats),
        seconds=time.time() - start,
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results, summary, cfg)
    return results


def improvement(trained: float, other: float, name: str) -> str:
    """'1.23 m (45%) lower than <name> (4.56 m)', or 'higher' when the trained policy is worse."""
    diff = other - trained
    word = "lower" if diff >= 0 else "higher"
    return f"{abs(diff):.2f} m ({100 * abs(diff) / other:.0f}%) {word} than {name} ({other:.2f} m)"


def write_report(out: pathlib.Path, results: dict[str, Any], summary: dict, cfg: DemoConfig) -> None:
    key = "minADE_6"
    names = {
        "untrained": "untrained, flow expert",
        "trained": "trained, flow expert",
        "untrained_tokens": "untrained, trajectory tokens",
        "trained_tokens": "trained, trajectory tokens",
        "constant_velocity": "constant velocity",
    }
    rows = [(label, results[name]) for name, label in names.items()]
    lines = [
        "# alpamayo_jax demo: the tiny policy on synthetic driving",
        "",
        f"{cfg.clips} synthetic clips ({summary['examples']['train']} training keyframes), stages "
        f"0 -> 1 -> 2 with {list(cfg.steps)} steps, batch {cfg.batch}; {results['held_out']} held-out "
        f"keyframes from the held-out clips; {results['seconds'] / 60:.1f} minutes in all.",
        "",
        "| policy | minADE_6 @ 6.4 s (m) | ADE 1 s | ADE 3 s | FDE 6.4 s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m[key]:.2f} | {m['ADE_1s']:.2f} | {m['ADE_3s']:.2f} | {m['FDE_6.4s']:.2f} |"
        )
    c = results["constant_velocity"][key]
    lines += ["", "minADE_6 of the trained policy against the untrained one and constant velocity:", ""]
    for kind, label in (("", "flow expert"), ("_tokens", "trajectory tokens")):
        t, u = results[f"trained{kind}"][key], results[f"untrained{kind}"][key]
        vs_untrained, vs_cv = improvement(t, u, "untrained"), improvement(t, c, "constant velocity")
        lines.append(f"- {label}: {vs_untrained}; {vs_cv}.")
    stats = results["control_stats"]
    lines += [
        "",
        "Controls are normalised with the training split's statistics: acceleration "
        f"{stats['accel_mean']:+.3f} +- {stats['accel_std']:.3f} m/s^2, curvature {stats['curv_mean']:+.5f} "
        f"+- {stats['curv_std']:.5f} 1/m (SPEC's real-driving ones are {action_space.ACCEL_MEAN:+.3f} +- "
        f"{action_space.ACCEL_STD:.3f} and {action_space.CURV_MEAN:+.5f} +- {action_space.CURV_STD:.5f}).",
        "",
        "Both read the teacher-forced prefix (images, ego history, prompt and the clip's ground-truth "
        "reasoning). The flow expert draws 6 samples (ADE/FDE use the first); the trajectory tokens are the "
        "VLM's greedy 128-token decode, one deterministic trajectory (as is constant velocity).",
        "",
        "![losses](losses.png)",
        "",
        "![trajectories](trajectories.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
