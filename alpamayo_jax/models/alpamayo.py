"""Alpamayo-R1: the Qwen3-VL backbone with trajectory tokens plus the flow-matching action expert.

Sequence: [images][history tokens][prompt][<|cot_start|> reasoning <|cot_end|>][<|traj_future_start|>]
[128 future tokens][<|traj_future_end|>]. The backbone is trained by next-token cross-entropy (text /
reasoning and trajectory tokens weighted separately); the expert reads the backbone's per-layer K/V of
the prefix that ends at <|traj_future_start|> (never the discrete future tokens) and is trained by
flow matching on the normalised (acceleration, curvature) controls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alpamayo_jax.action_space import SPEC_STATS, ControlStats
from alpamayo_jax.data.batch import Batch
from alpamayo_jax.models import flow_matching
from alpamayo_jax.models.action_expert import ActionExpert, ExpertConfig, expert_config
from alpamayo_jax.models.qwen3vl import Qwen3VL, Qwen3VLConfig, qwen3vl_config
from alpamayo_jax.models.vlm import unstack_layers
from alpamayo_jax.trajectory_tokens import TokenLayout


@dataclasses.dataclass(frozen=True)
class AlpamayoConfig:
    """The composed policy. `vlm.text.vocab_size == tokens.vocab_size` (base + trajectory + special).

    `control_stats` normalise the controls that the expert generates and the trajectory tokens bin (the
    batch carries controls in these units): SPEC's real-driving statistics unless a config sets others.
    """

    vlm: Qwen3VLConfig
    expert: ExpertConfig
    tokens: TokenLayout
    max_loss_tokens: int | None = None  # CE only on this many positions per row (None: every position)
    control_stats: ControlStats = SPEC_STATS

    def __post_init__(self):
        if self.vlm.text.vocab_size != self.tokens.vocab_size:
            raise ValueError(
                f"vlm vocab {self.vlm.text.vocab_size} != token layout vocab {self.tokens.vocab_size}"
            )
        for field in ("num_layers", "num_kv_heads", "head_dim"):
            if getattr(self.expert, field) != getattr(self.vlm.text, field):
                raise ValueError(
                    f"expert.{field} must equal the backbone's ({getattr(self.vlm.text, field)})"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlpamayoConfig:
        expert = dict(d["expert"], mrope_sections=tuple(d["expert"]["mrope_sections"]))
        if "fourier_freqs" in expert:
            expert["fourier_freqs"] = tuple(expert["fourier_freqs"])
        tokens = dict(d["tokens"], special_tokens=tuple(d["tokens"]["special_tokens"]))
        return cls(
            vlm=Qwen3VLConfig.from_dict(d["vlm"]),
            expert=ExpertConfig(**expert),
            tokens=TokenLayout(**tokens),
            max_loss_tokens=d.get("max_loss_tokens"),
            control_stats=ControlStats(**d.get("control_stats", {})),
        )


VARIANTS: dict[str, dict[str, Any]] = {
    # CPU tests: tiny towers and a reduced trajectory vocabulary (256 future / 128 history bins). The
    # expert's Fourier features span 0.05..5 cycles per unit: the release's 1..100 alias the normalised
    # inputs (|x| up to a few units) into noise that a 32-wide projection cannot invert, so the tiny
    # flow could not read its noisy controls and its samples stayed as wide as the noise.
    "tiny": dict(
        backbone="tiny",
        expert=dict(width=32, mlp_dim=64, num_heads=2, input_hidden=32, fourier_freqs=(0.05, 5.0)),
        tokens=dict(base_vocab_size=512, num_future_bins=256, num_history_bins=128),
    ),
    # Qwen3-VL-2B backbone + a 1024-wide expert (issue "action pathway").
    "ar1_2b": dict(
        backbone="qwen3vl_2b",
        expert=dict(width=1024, mlp_dim=3072, num_heads=8),
        tokens=dict(),
        max_loss_tokens=512,
    ),
    # The Alpamayo-R1-10B release: Qwen3-VL-8B + the 2048-wide expert (about 8.8B + 2.3B).
    "ar1_10b": dict(
        backbone="qwen3vl_8b",
        expert=dict(width=2048, mlp_dim=8256, num_heads=16),
        tokens=dict(),
        max_loss_tokens=512,
    ),
}


def alpamayo_config(
    variant: str, control_stats: ControlStats = SPEC_STATS, **numerics: Any
) -> AlpamayoConfig:
    """A preset; `numerics` (dtype, param_dtype, remat, attention_impl) apply to every tower."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Alpamayo variant {variant!r}; known: {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    tokens = TokenLayout(**v["tokens"])
    vlm = qwen3vl_config(v["backbone"], **numerics)
    vlm = dataclasses.replace(vlm, text=dataclasses.replace(vlm.text, vocab_size=tokens.vocab_size))
    expert = expert_config(vlm.text, **v["expert"])
    if "attention_impl" in numerics:
        expert = dataclasses.replace(expert, attention_impl=numerics["attention_impl"])
    return AlpamayoConfig(
        vlm=vlm,
        expert=expert,
        tokens=tokens,
        max_loss_tokens=v.get("max_loss_tokens"),
        control_stats=control_stats,
    )


def unstack_for_inference(params: Any, cfg: AlpamayoConfig) -> Any:
    """Stacked (training / checkpoint) parameters -> the `scan_layers=False` layout of the text
    decoder and the expert (vision stays scanned: it is compute-bound)."""
    text = dict(
        params["vlm"]["text"], layers=unstack_layers(params["vlm"]["text"]["layers"], cfg.vlm.text.num_layers)
    )
    expert = dict(params["expert"], layers=unstack_layers(params["expert"]["layers"], cfg.expert.num_layers))
    return dict(params, vlm=dict(params["vlm"], text=text), expert=expert)


def masked_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
    weight = weight.astype(jnp.float32)
    return (x * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def select_loss_positions(weights_bl: jax.Array, num: int | None) -> tuple[jax.Array, jax.Array]:
    """Indices `[B, N]` of the positions with a loss (first N per row) and the count left out `[B]`."""
    length = weights_bl.shape[1]
    if num is None or num >= length:
        return jnp.broadcast_to(jnp.arange(length), weights_bl.shape), jnp.zeros(
            weights_bl.shape[:1], jnp.int32
        )
    has_loss = weights_bl > 0
    idx = jax.vmap(lambda row: jnp.nonzero(row, size=num, fill_value=length - 1)[0])(has_loss)
    dropped = jnp.maximum(has_loss.sum(axis=1) - num, 0).astype(jnp.int32)
    return idx, dropped


class Alpamayo(nn.Module):
    """Backbone + action expert. `__call__` returns the training losses and metrics of a batch."""

    cfg: AlpamayoConfig

    def setup(self):
        self.vlm = Qwen3VL(self.cfg.vlm)
        self.expert = ActionExpert(self.cfg.expert)

    def prefix_valid(self, batch: Batch) -> jax.Array:
        """Slots the expert may see: valid tokens up to and including <|traj_future_start|>."""
        slots = jnp.arange(batch.tokens_bl.shape[1])[None, :]
        return batch.valid_bl & (slots < batch.expert_prefix_len_b[:, None])

    def velocity(self, x_ba2, t_b, prefix_k, prefix_v, prefix_valid_bp, first_position_b):
        return self.expert(x_ba2, t_b, prefix_k, prefix_v, prefix_valid_bp, first_position_b)

    def __call__(self, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-kind losses: `text_ce` (reasoning / answers), `traj_ce` (discrete future tokens), `flow`."""
        embeds, deepstack = self.vlm.embed(batch.tokens_bl, batch.images, batch.image_slots_bl)
        hidden, (k, v) = self.vlm.text(embeds, batch.positions_3bl, batch.valid_bl, None, deepstack)
        # Next-token CE on the positions that carry a loss: logits at l-1 predict token l.
        total_w = (batch.text_loss_bl + batch.traj_loss_bl)[:, 1:]
        idx, dropped = select_loss_positions(total_w, self.cfg.max_loss_tokens)
        h_sel = jnp.take_along_axis(hidden[:, :-1], idx[..., None], axis=1)
        logits = self.vlm.text.logits(h_sel)
        targets = jnp.take_along_axis(batch.tokens_bl[:, 1:], idx, axis=1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        w_text = jnp.take_along_axis(batch.text_loss_bl[:, 1:], idx, axis=1)
        w_traj = jnp.take_along_axis(batch.traj_loss_bl[:, 1:], idx, axis=1)
        # Flow matching on the normalised controls, reading the prefix K/V.
        rng_t, rng_n = jax.random.split(rng)
        x1 = batch.controls_ba2
        t = flow_matching.sample_flow_time(rng_t, x1.shape[:1])
        noise = jax.random.normal(rng_n, x1.shape, jnp.float32)
        x_t = flow_matching.flow_interpolate(x1, noise, t)
        pred = self.expert(x_t, t, k, v, self.prefix_valid(batch), batch.expert_position_b)
        flow = flow_matching.flow_matching_loss(
            pred, flow_matching.flow_target(x1, noise), batch.has_trajectory_b
        )
        return {
            "text_ce": masked_mean(nll, w_text),
            "traj_ce": masked_mean(nll, w_traj),
            "flow": flow,
            "text_accuracy": masked_mean(correct, w_text),
            "traj_accuracy": masked_mean(correct, w_traj),
            "loss_tokens_dropped": dropped.sum(),
        }
