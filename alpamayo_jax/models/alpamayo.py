"""Alpamayo-R1: the Qwen3-VL backbone with trajectory tokens plus the flow-matching action expert.

Sequence: [images][history tokens][prompt][<|cot_start|> reasoning <|cot_end|>][<|traj_future_start|>]
[128 future tokens][<|traj_future_end|>]. The backbone is trained by next-token cross-entropy (text /
reasoning and trajectory tokens weighted separately); the expert reads the backbone's per-layer K/V of
the prefix that ends at <|traj_future_start|> (never the discrete future tokens) and is trained by
flow matching on the normalised (acceleration, curvature) controls.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alpamayo_jax.action_space import SPEC_STATS, ControlStats
from alpamayo_jax.data.batch import Batch
from alpamayo_jax.models import decode_attention, decode_mlp, flow_matching, layers, vision_tokens
from alpamayo_jax.models.action_expert import ActionExpert, ExpertConfig, expert_config
from alpamayo_jax.models.flex import FlexConfig, FlexTokenizer, flex_config
from alpamayo_jax.models.qwen3vl import Qwen3VL, Qwen3VLConfig, qwen3vl_config
from alpamayo_jax.models.qwen3vl_inputs import PromptInputs
from alpamayo_jax.models.triplane import GridAxis, TriplaneConfig, TriplaneTokenizer, triplane_config
from alpamayo_jax.models.vlm import stack_layers, unstack_layers
from alpamayo_jax.trajectory_tokens import TokenLayout

TRIPLANE_AXES = ("x_axis", "y_axis", "z_axis")


@dataclasses.dataclass(frozen=True)
class AlpamayoConfig:
    """The composed policy. `vlm.text.vocab_size == tokens.vocab_size` (base + trajectory + special).

    vision_tokenizer (`vision_tokens.TOKENIZERS`) picks what fills the image slots: the Qwen3-VL ViT
    (`per_image`), the `triplane` tokenizer (its config and the patch (p_x, p_y, p_z), a static
    inference-time choice) or `flex` over the ViT's merged tokens (its config). `control_stats`
    normalise the controls that the expert generates and the trajectory tokens bin (the batch carries
    controls in these units): SPEC's real-driving statistics unless a config sets others.
    """

    vlm: Qwen3VLConfig
    expert: ExpertConfig
    tokens: TokenLayout
    max_loss_tokens: int | None = None  # CE only on this many positions per row (None: every position)
    vision_tokenizer: str = "per_image"
    triplane: TriplaneConfig | None = None
    triplane_patch: tuple[int, int, int] = (8, 8, 8)
    flex: FlexConfig | None = None
    control_stats: ControlStats = SPEC_STATS

    def __post_init__(self):
        if self.vision_tokenizer not in vision_tokens.TOKENIZERS:
            raise ValueError(f"vision_tokenizer {self.vision_tokenizer!r}; known: {vision_tokens.TOKENIZERS}")
        width = self.vlm.text.width
        if self.vision_tokenizer == "triplane":
            if self.triplane is None or self.triplane.out_width != width:
                raise ValueError(f"vision_tokenizer 'triplane' needs a triplane config of out_width {width}")
            vision_tokens.plane_grids(self.triplane, self.triplane_patch)
        widths = (self.vlm.vision.out_width, width)
        if self.vision_tokenizer == "flex" and (
            self.flex is None or (self.flex.in_width, self.flex.out_width) != widths
        ):
            raise ValueError(
                f"vision_tokenizer 'flex' needs a flex config of in_width {self.vlm.vision.out_width} "
                f"(the ViT's merged tokens) and out_width {width}"
            )
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
        triplane = d.get("triplane")
        if triplane is not None:
            axes = {
                a: GridAxis(tuple(triplane[a]["edge_cells"]), tuple(triplane[a]["edge_m"]))
                for a in TRIPLANE_AXES
            }
            triplane = TriplaneConfig(**dict(triplane, image_hw=tuple(triplane["image_hw"]), **axes))
        return cls(
            vlm=Qwen3VLConfig.from_dict(d["vlm"]),
            expert=ExpertConfig(**expert),
            tokens=TokenLayout(**tokens),
            max_loss_tokens=d.get("max_loss_tokens"),
            vision_tokenizer=d.get("vision_tokenizer", "per_image"),
            triplane=triplane,
            triplane_patch=tuple(d.get("triplane_patch", (8, 8, 8))),
            flex=None if d.get("flex") is None else FlexConfig(**d["flex"]),
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


# The multi-camera tokenizers of each preset. Full size: SPEC 1.5's triplane at the release frame size
# (320x576: ViT patch 16 instead of DINOv2's 14, which does not divide it) and Flex over 4 cameras x
# 4 frames; both into the backbone's width.
TOKENIZER_VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "tiny": dict(triplane=("tiny", {}), flex=("tiny", dict(num_frames=1))),
    "ar1_2b": dict(triplane=("default", dict(image_hw=(320, 576), patch_size=16)), flex=("default", {})),
    "ar1_10b": dict(triplane=("default", dict(image_hw=(320, 576), patch_size=16)), flex=("default", {})),
}
TOKENIZER_NUMERICS = ("dtype", "param_dtype", "remat", "attention_impl")


def tokenizer_configs(
    variant: str, vlm: Qwen3VLConfig, triplane: Mapping[str, Any], flex: Mapping[str, Any], numerics: dict
) -> tuple[TriplaneConfig, FlexConfig]:
    """The preset's triplane and flex configs with `triplane` / `flex` overrides, into the LM width."""
    num = {k: v for k, v in numerics.items() if k in TOKENIZER_NUMERICS}
    (t_name, t_over), (f_name, f_over) = (TOKENIZER_VARIANTS[variant][k] for k in ("triplane", "flex"))
    tcfg = triplane_config(t_name, **{**t_over, "out_width": vlm.text.width, **num, **triplane})
    fcfg = flex_config(
        f_name,
        **{**f_over, "in_width": vlm.vision.out_width, "out_width": vlm.text.width, **num, **flex},
    )
    return tcfg, fcfg


def alpamayo_config(
    variant: str,
    vision_tokenizer: str = "per_image",
    triplane: Mapping[str, Any] | None = None,
    flex: Mapping[str, Any] | None = None,
    control_stats: ControlStats = SPEC_STATS,
    **numerics: Any,
) -> AlpamayoConfig:
    """A preset; `numerics` (dtype, param_dtype, remat, attention_impl, ...) apply to every tower.

    vision_tokenizer: `per_image` (default), `triplane` or `flex`; `triplane` overrides the preset's
    triplane config (plus `patch`, the (p_x, p_y, p_z) of the tokens), `flex` its flex config (e.g.
    tokens_per_image, num_cameras, num_frames); control_stats: the controls' normalisation.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Alpamayo variant {variant!r}; known: {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    tokens = TokenLayout(**v["tokens"])
    vlm = qwen3vl_config(v["backbone"], **numerics)
    vlm = dataclasses.replace(vlm, text=dataclasses.replace(vlm.text, vocab_size=tokens.vocab_size))
    expert = expert_config(vlm.text, **v["expert"])
    if "attention_impl" in numerics:
        expert = dataclasses.replace(expert, attention_impl=numerics["attention_impl"])
    tokenizer: dict[str, Any] = {}
    if vision_tokenizer != "per_image":
        triplane = dict(triplane or {})
        patch = tuple(triplane.pop("patch", (8, 8, 8)))
        tcfg, fcfg = tokenizer_configs(variant, vlm, triplane, dict(flex or {}), numerics)
        tokenizer = (
            dict(triplane=tcfg, triplane_patch=patch) if vision_tokenizer == "triplane" else dict(flex=fcfg)
        )
    return AlpamayoConfig(
        vlm=vlm,
        expert=expert,
        tokens=tokens,
        max_loss_tokens=v.get("max_loss_tokens"),
        vision_tokenizer=vision_tokenizer,
        control_stats=control_stats,
        **tokenizer,
    )


# Parameter paths of the layer stacks: `{path}/{leaf}` `[layers, ...]` in a scanned tower,
# `{path}/{i}/{leaf}` per layer (`to_layout` converts between them).
LAYER_STACKS = ("vlm/text/layers", "vlm/vision/blocks", "expert/layers")
TEXT_LAYERS, VISION_BLOCKS, EXPERT_LAYERS = LAYER_STACKS


def scanned_layout(cfg: AlpamayoConfig) -> AlpamayoConfig:
    """`cfg` with every tower's layers scanned and unfused (stacked parameters; `to_layout` converts
    them to any other layout)."""
    stacked = dict(scan_layers=True, fused_projections=False)
    text = dataclasses.replace(cfg.vlm.text, **stacked, decode_attention="xla")
    vision = dataclasses.replace(cfg.vlm.vision, scan_layers=True)
    expert = dataclasses.replace(cfg.expert, **stacked, prefix_attention="xla")
    return dataclasses.replace(cfg, vlm=dataclasses.replace(cfg.vlm, text=text, vision=vision), expert=expert)


def is_scanned(cfg: AlpamayoConfig) -> bool:
    return cfg.vlm.text.scan_layers and cfg.vlm.vision.scan_layers and cfg.expert.scan_layers


def inference_layout(cfg: AlpamayoConfig, impl: str | None = None) -> AlpamayoConfig:
    """`cfg` in the inference layout: per-layer parameters and fused projections in the text decoder
    and the expert (convert a checkpoint's parameters with `to_layout`), and with `impl` "pallas" (the
    default on a GPU: `decode_attention.default_impl`) the fused Pallas attention kernels in the text
    decoder's decode steps and the expert's flow steps, and `decode_mlp`'s kernels in the decode
    steps' projections where they are the faster (`decode_mlp.pays_off`: ar1_2b, not ar1_10b).
    The ViT is unstacked too (one parameter set per block: the DeepStack taps are the tap blocks'
    outputs, with no per-block write into a tap buffer and no weight slice out of a stack); its
    LayerNorms apply their own affine (`VisionConfig.fold_norms` off: a training-time saving that
    would cost a kernel product per call here)."""
    flat = dict(scan_layers=False, fused_projections=True)
    impl = decode_attention.default_impl() if impl is None else impl
    t = cfg.vlm.text
    itemsize = jnp.dtype(layers.dtype_of(t.dtype)).itemsize
    faster = decode_mlp.pays_off(t.width, t.mlp_dim, t.num_heads * t.head_dim, itemsize)
    projections = impl if faster else "xla"
    text = dataclasses.replace(t, **flat, decode_attention=impl, decode_projections=projections)
    vision = dataclasses.replace(cfg.vlm.vision, scan_layers=False, fold_norms=False)
    expert = dataclasses.replace(cfg.expert, **flat, prefix_attention=impl)
    vlm = dataclasses.replace(cfg.vlm, text=text, vision=vision)
    return dataclasses.replace(cfg, vlm=vlm, expert=expert)


def to_layout(params: Any, cfg: AlpamayoConfig) -> Any:
    """Parameters in a training layout (each tower stacked, or per layer) -> the layout of `cfg`: a
    tower whose config has `scan_layers=True` stacked (`[layers, ...]` leaves), one with
    `scan_layers=False` one parameter set per layer (`{i}/...`), with fused qkv / gate_up kernels,
    output-major qkv / o / gate_up / down kernels and the pre-norms' scales folded into them when
    `fused_projections` (the inference layout, `inference_layout`). Towers that `params` lacks (a
    partial tree) are skipped."""
    text_cfg, vision_cfg, expert_cfg = cfg.vlm.text, cfg.vlm.vision, cfg.expert

    def layer(p: dict, attn: str | None, heads: int) -> dict:
        if not text_cfg.fused_projections:
            return p
        # Fused kernels; the pre-norms' scales folded into them (`layers.pre_norm`).
        mlp = layers.fuse_gate_up_params(p["mlp"])
        kernel = layers.fold_norm_scale(mlp["gate_up"]["kernel"], p["post_norm"]["scale"], axis=-1)
        mlp = dict(mlp, gate_up={"kernel": kernel})
        qkv_owner = p if attn is None else p[attn]
        fused = layers.fuse_qkv_params(qkv_owner, heads, text_cfg.num_kv_heads)
        kernel = layers.fold_norm_scale(fused["qkv"]["kernel"], p["input_norm"]["scale"], axis=-1)
        fused = dict(fused, qkv={"kernel": kernel})
        rest = {k: v for k, v in p.items() if k not in ("input_norm", "post_norm", "mlp")}
        if attn is None:  # the expert: attention parameters at the layer's top level
            rest = {k: v for k, v in rest.items() if k not in ("q", "k", "v", "o")}
            return {**rest, "qkv": fused["qkv"], "o": fused["o"], "mlp": mlp}
        return {**rest, attn: fused, "mlp": mlp}

    def flat(stacked: Any, num_layers: int, attn: str | None, heads: int) -> dict:
        return {i: layer(p, attn, heads) for i, p in unstack_layers(stacked, num_layers).items()}

    def convert(stack: dict, scanned: bool, num_layers: int, unstack: Callable[[Any], dict]) -> dict:
        if "0" in stack:  # per layer: stacked again first
            if "gate_up" in stack["0"].get("mlp", {}):
                raise ValueError("fused inference-layout parameters; convert from a training layout")
            stack = stack_layers(stack, num_layers)
        return stack if scanned else unstack(stack)

    def at(tree: dict, path: str, fn: Callable[[dict], dict]) -> dict:
        """`tree` with fn applied to the subtree at '/'-joined `path` (unchanged where it is missing)."""
        head, _, rest = path.partition("/")
        if head not in tree:
            return tree
        return dict(tree, **{head: at(tree[head], rest, fn) if rest else fn(tree[head])})

    stacks = (  # (path, scanned in cfg, layers, per-layer conversion of the stack)
        (
            TEXT_LAYERS,
            text_cfg.scan_layers,
            text_cfg.num_layers,
            lambda p: flat(p, text_cfg.num_layers, "attn", text_cfg.num_heads),
        ),
        (
            VISION_BLOCKS,
            vision_cfg.scan_layers,
            vision_cfg.depth,
            lambda p: unstack_layers(p, vision_cfg.depth),
        ),
        (
            EXPERT_LAYERS,
            expert_cfg.scan_layers,
            expert_cfg.num_layers,
            lambda p: flat(p, expert_cfg.num_layers, None, expert_cfg.num_heads),
        ),
    )
    for path, scanned, num_layers, unstack in stacks:
        params = at(
            params, path, functools.partial(convert, scanned=scanned, num_layers=num_layers, unstack=unstack)
        )
    return params


def masked_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
    weight = weight.astype(jnp.float32)
    return (x * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def select_loss_positions(weights_bl: jax.Array, num: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The positions with a loss, first `num` per row: indices `[B, N]`, which of them are real `[B, N]`
    (a row with fewer than N loss positions is filled up with its last position, which must not count
    again) and the count left out `[B]`."""
    length = weights_bl.shape[1]
    if num is None or num >= length:
        idx = jnp.broadcast_to(jnp.arange(length), weights_bl.shape)
        return idx, jnp.ones(weights_bl.shape, bool), jnp.zeros(weights_bl.shape[:1], jnp.int32)
    has_loss = weights_bl > 0
    idx = jax.vmap(lambda row: jnp.nonzero(row, size=num, fill_value=length - 1)[0])(has_loss)
    count = has_loss.sum(axis=1)
    real = jnp.arange(num)[None, :] < count[:, None]
    dropped = jnp.maximum(count - num, 0).astype(jnp.int32)
    return idx, real, dropped


class Alpamayo(nn.Module):
    """Backbone + action expert. `__call__` returns the training losses and metrics of a batch."""

    cfg: AlpamayoConfig

    def setup(self):
        cfg = self.cfg
        self.vlm = Qwen3VL(cfg.vlm)
        self.expert = ActionExpert(cfg.expert)
        if cfg.vision_tokenizer == "triplane":
            self.triplane = TriplaneTokenizer(cfg.triplane)
        if cfg.vision_tokenizer == "flex":
            self.flex = FlexTokenizer(cfg.flex)

    def vision_features(self, inputs: Batch | PromptInputs) -> jax.Array:
        """Per-sample LM-width tokens `[B, F, D]` of the triplane or flex tokenizer, in the order of the
        sample's image slots (see `vision_tokens`)."""
        cfg = self.cfg
        if cfg.vision_tokenizer == "triplane":
            if inputs.frames_btvhw3 is None or inputs.cameras is None:
                raise ValueError("vision_tokenizer 'triplane' needs frames_btvhw3 and cameras in the inputs")
            b, t = inputs.frames_btvhw3.shape[:2]
            frames, cams = vision_tokens.fold_timesteps(inputs.frames_btvhw3, inputs.cameras)
            tokens, _ = self.triplane(vision_tokens.to_unit(frames), cams, cfg.triplane_patch)
            return tokens.reshape(b, t * tokens.shape[1], tokens.shape[2])
        if inputs.images is None or inputs.image_frame_bn is None or inputs.image_camera_bn is None:
            raise ValueError("vision_tokenizer 'flex' needs images, image_frame_bn and image_camera_bn")
        b, n = inputs.image_frame_bn.shape
        images = jax.tree_util.tree_map(lambda x: x.reshape(b * n, *x.shape[2:]), inputs.images)
        merged_imd, _ = self.vlm.vision(images)
        grid = vision_tokens.frame_camera_grid(
            merged_imd.reshape(b, n, *merged_imd.shape[1:]),
            inputs.image_frame_bn,
            inputs.image_camera_bn,
            cfg.flex.num_frames,
            cfg.flex.num_cameras,
        )
        return self.flex(grid)

    def embed(self, inputs: Batch | PromptInputs) -> tuple[jax.Array, jax.Array | None]:
        """Token embeddings with the selected tokenizer's tokens in the image slots, and DeepStack
        additions (per_image only)."""
        if self.cfg.vision_tokenizer == "per_image":
            return self.vlm.embed(inputs.tokens_bl, inputs.images, inputs.image_slots_bl)
        feats = self.vision_features(inputs)
        return self.vlm.embed_features(inputs.tokens_bl, feats, inputs.image_slots_bl), None

    def prefix_valid(self, batch: Batch) -> jax.Array:
        """Slots the expert may see: valid tokens up to and including <|traj_future_start|>."""
        slots = jnp.arange(batch.tokens_bl.shape[1])[None, :]
        return batch.valid_bl & (slots < batch.expert_prefix_len_b[:, None])

    def velocity(self, x_ba2, t_b, prefix_k, prefix_v, prefix_valid_bp, first_position_b):
        return self.expert(x_ba2, t_b, prefix_k, prefix_v, prefix_valid_bp, first_position_b)

    def __call__(self, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-kind losses: `text_ce` (reasoning / answers), `traj_ce` (discrete future tokens), `flow`."""
        embeds, deepstack = self.embed(batch)
        hidden, (k, v) = self.vlm.text(embeds, batch.positions_3bl, batch.valid_bl, None, deepstack)
        # Next-token CE on the positions that carry a loss: logits at l-1 predict token l.
        total_w = (batch.text_loss_bl + batch.traj_loss_bl)[:, 1:]
        idx, real, dropped = select_loss_positions(total_w, self.cfg.max_loss_tokens)
        h_sel = jnp.take_along_axis(hidden[:, :-1], idx[..., None], axis=1)
        logits = self.vlm.text.logits(h_sel)
        targets = jnp.take_along_axis(batch.tokens_bl[:, 1:], idx, axis=1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        w_text = jnp.take_along_axis(batch.text_loss_bl[:, 1:], idx, axis=1) * real
        w_traj = jnp.take_along_axis(batch.traj_loss_bl[:, 1:], idx, axis=1) * real
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
