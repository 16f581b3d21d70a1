"""HF Qwen3-VL checkpoints <-> alpamayo_jax parameters.

`config_from_hf` reads a transformers `config.json`; `PARAM_MAP` lists, for every parameter of
`Qwen3VL`, the HF tensor it comes from and how it is reshaped; `convert` streams a safetensors
checkpoint into a parameter tree of memory-mapped arrays (one tensor in memory at a time).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from alpamayo_jax.interop.safetensors_io import SafetensorsCheckpoint
from alpamayo_jax.models.qwen3vl import Qwen3VLConfig
from alpamayo_jax.models.vision import VisionConfig
from alpamayo_jax.models.vlm import TextConfig

# ------------------------------------------------------------------------------------------ config


def _rope(text: dict[str, Any]) -> tuple[float, tuple[int, int, int]]:
    """Rope theta and M-RoPE sections from either the transformers 5 or the older config layout."""
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 5e6))
    sections = tuple(params.get("mrope_section", (24, 20, 20)))
    if params.get("mrope_interleaved") is False:
        raise ValueError("config.json: only interleaved M-RoPE (Qwen3-VL) is supported")
    return float(theta), sections


def config_from_hf(hf: dict[str, Any], **numerics: Any) -> Qwen3VLConfig:
    """Qwen3VLConfig from a transformers Qwen3-VL `config.json` dict."""
    if hf.get("model_type") not in ("qwen3_vl", None):
        raise ValueError(f"config.json: model_type {hf.get('model_type')!r} is not qwen3_vl")
    try:
        t, v = hf["text_config"], hf["vision_config"]
    except KeyError as e:
        raise ValueError(f"config.json: missing section {e}") from None
    if t.get("attention_bias"):
        raise ValueError("config.json: text_config.attention_bias=true is not supported by Qwen3-VL")
    theta, sections = _rope(t)
    head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
    tie = bool(hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False)))
    text = TextConfig(
        vocab_size=t["vocab_size"],
        width=t["hidden_size"],
        num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"],
        num_kv_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
        head_dim=head_dim,
        mlp_dim=t["intermediate_size"],
        rms_eps=t.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        mrope_sections=sections,
        tie_embeddings=tie,
    )
    if v.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"config.json: vision hidden_act {v['hidden_act']!r} is not supported")
    vrope = v.get("rope_parameters") or {}
    vision = VisionConfig(
        depth=v["depth"],
        width=v["hidden_size"],
        mlp_dim=v["intermediate_size"],
        num_heads=v["num_heads"],
        out_width=v["out_hidden_size"],
        deepstack_layers=tuple(v.get("deepstack_visual_indexes", (8, 16, 24))),
        patch_size=v.get("patch_size", 16),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        in_channels=v.get("in_channels", 3),
        spatial_merge=v.get("spatial_merge_size", 2),
        num_position_embeddings=v.get("num_position_embeddings", 2304),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
    )
    if vision.out_width != text.width:
        raise ValueError(
            f"config.json: vision out_hidden_size {vision.out_width} != text hidden_size {text.width}"
        )
    cfg = Qwen3VLConfig(
        text=text,
        vision=vision,
        image_token_id=hf.get("image_token_id", 151655),
        vision_start_token_id=hf.get("vision_start_token_id", 151652),
        vision_end_token_id=hf.get("vision_end_token_id", 151653),
    )
    return cfg.with_numerics(**numerics) if numerics else cfg


def hf_config_dict(cfg: Qwen3VLConfig) -> dict[str, Any]:
    """The transformers `Qwen3VLConfig` keyword arguments equivalent to `cfg` (tests and exports)."""
    t, v = cfg.text, cfg.vision
    return dict(
        text_config=dict(
            vocab_size=t.vocab_size,
            hidden_size=t.width,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            head_dim=t.head_dim,
            intermediate_size=t.mlp_dim,
            rms_norm_eps=t.rms_eps,
            rope_parameters=dict(
                rope_type="default",
                rope_theta=t.rope_theta,
                mrope_section=list(t.mrope_sections),
                mrope_interleaved=True,
            ),
            tie_word_embeddings=t.tie_embeddings,
        ),
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.width,
            intermediate_size=v.mlp_dim,
            num_heads=v.num_heads,
            out_hidden_size=v.out_width,
            deepstack_visual_indexes=list(v.deepstack_layers),
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            in_channels=v.in_channels,
            spatial_merge_size=v.spatial_merge,
            num_position_embeddings=v.num_position_embeddings,
        ),
        image_token_id=cfg.image_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=t.tie_embeddings,
    )


# ------------------------------------------------------------------------------------- tensor map


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: its path in our tree, its HF source (`{i}` = layer), shapes, and the transform."""

    path: tuple[str, ...]
    hf_name: str
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray]
    layers: int = 0  # > 0: stacked over this many layers along a new leading axis

    def hf_names(self) -> list[str]:
        return [self.hf_name.format(i=i) for i in range(self.layers)] if self.layers else [self.hf_name]


def _t(x: np.ndarray) -> np.ndarray:
    return x.T


def _reshape_t(*shape: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x.T.reshape(shape)


def _reshape(*shape: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x.reshape(shape)


def _same(x: np.ndarray) -> np.ndarray:
    return x


def param_map(cfg: Qwen3VLConfig) -> list[Entry]:
    """Every parameter of `Qwen3VL(cfg)` with its HF source tensor."""
    t, v = cfg.text, cfg.vision
    d, h, k, hd, f, vocab = t.width, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim, t.vocab_size
    lm = "model.language_model."
    layer = lm + "layers.{i}."
    n = t.num_layers
    entries = [
        Entry(("text", "embed", "embedding"), lm + "embed_tokens.weight", (vocab, d), (vocab, d), _same),
        Entry(("text", "norm", "scale"), lm + "norm.weight", (d,), (d,), _same),
        Entry(
            ("text", "layers", "attn", "q", "kernel"),
            layer + "self_attn.q_proj.weight",
            (h * hd, d),
            (d, h, hd),
            _reshape_t(d, h, hd),
            n,
        ),
        Entry(
            ("text", "layers", "attn", "k", "kernel"),
            layer + "self_attn.k_proj.weight",
            (k * hd, d),
            (d, k, hd),
            _reshape_t(d, k, hd),
            n,
        ),
        Entry(
            ("text", "layers", "attn", "v", "kernel"),
            layer + "self_attn.v_proj.weight",
            (k * hd, d),
            (d, k, hd),
            _reshape_t(d, k, hd),
            n,
        ),
        Entry(
            ("text", "layers", "attn", "o", "kernel"),
            layer + "self_attn.o_proj.weight",
            (d, h * hd),
            (h * hd, d),
            _t,
            n,
        ),
        Entry(
            ("text", "layers", "attn", "q_norm", "scale"),
            layer + "self_attn.q_norm.weight",
            (hd,),
            (hd,),
            _same,
            n,
        ),
        Entry(
            ("text", "layers", "attn", "k_norm", "scale"),
            layer + "self_attn.k_norm.weight",
            (hd,),
            (hd,),
            _same,
            n,
        ),
        Entry(
            ("text", "layers", "mlp", "gate", "kernel"), layer + "mlp.gate_proj.weight", (f, d), (d, f), _t, n
        ),
        Entry(("text", "layers", "mlp", "up", "kernel"), layer + "mlp.up_proj.weight", (f, d), (d, f), _t, n),
        Entry(
            ("text", "layers", "mlp", "down", "kernel"), layer + "mlp.down_proj.weight", (d, f), (f, d), _t, n
        ),
        Entry(
            ("text", "layers", "input_norm", "scale"), layer + "input_layernorm.weight", (d,), (d,), _same, n
        ),
        Entry(
            ("text", "layers", "post_norm", "scale"),
            layer + "post_attention_layernorm.weight",
            (d,),
            (d,),
            _same,
            n,
        ),
    ]
    if not t.tie_embeddings:
        entries.append(Entry(("text", "lm_head", "kernel"), "lm_head.weight", (vocab, d), (d, vocab), _t))
    w, vh, vhd, vf, pd = v.width, v.num_heads, v.head_dim, v.mlp_dim, v.patch_dim
    vis = "model.visual."
    blk = vis + "blocks.{i}."
    nb = v.depth
    patch_kernel = (w, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    entries += [
        Entry(
            ("vision", "patch_embed", "kernel"),
            vis + "patch_embed.proj.weight",
            patch_kernel,
            (pd, w),
            lambda x: x.reshape(w, pd).T,
        ),
        Entry(("vision", "patch_embed", "bias"), vis + "patch_embed.proj.bias", (w,), (w,), _same),
        Entry(
            ("vision", "pos_embed"),
            vis + "pos_embed.weight",
            (v.num_position_embeddings, w),
            (v.num_position_embeddings, w),
            _same,
        ),
        Entry(
            ("vision", "blocks", "qkv", "kernel"),
            blk + "attn.qkv.weight",
            (3 * w, w),
            (w, 3, vh, vhd),
            _reshape_t(w, 3, vh, vhd),
            nb,
        ),
        Entry(
            ("vision", "blocks", "qkv", "bias"),
            blk + "attn.qkv.bias",
            (3 * w,),
            (3, vh, vhd),
            _reshape(3, vh, vhd),
            nb,
        ),
        Entry(("vision", "blocks", "proj", "kernel"), blk + "attn.proj.weight", (w, w), (w, w), _t, nb),
        Entry(("vision", "blocks", "proj", "bias"), blk + "attn.proj.bias", (w,), (w,), _same, nb),
        Entry(("vision", "blocks", "fc1", "kernel"), blk + "mlp.linear_fc1.weight", (vf, w), (w, vf), _t, nb),
        Entry(("vision", "blocks", "fc1", "bias"), blk + "mlp.linear_fc1.bias", (vf,), (vf,), _same, nb),
        Entry(("vision", "blocks", "fc2", "kernel"), blk + "mlp.linear_fc2.weight", (w, vf), (vf, w), _t, nb),
        Entry(("vision", "blocks", "fc2", "bias"), blk + "mlp.linear_fc2.bias", (w,), (w,), _same, nb),
    ]
    for norm in ("norm1", "norm2"):
        entries += [
            Entry(("vision", "blocks", norm, "scale"), blk + f"{norm}.weight", (w,), (w,), _same, nb),
            Entry(("vision", "blocks", norm, "bias"), blk + f"{norm}.bias", (w,), (w,), _same, nb),
        ]
    mw = w * v.spatial_merge**2
    mergers = [("merger", vis + "merger.", w)] + [
        (f"deepstack_merger_{j}", vis + f"deepstack_merger_list.{j}.", mw)
        for j in range(len(v.deepstack_layers))
    ]
    for name, prefix, norm_width in mergers:
        entries += [
            Entry(
                ("vision", name, "norm", "scale"), prefix + "norm.weight", (norm_width,), (norm_width,), _same
            ),
            Entry(
                ("vision", name, "norm", "bias"), prefix + "norm.bias", (norm_width,), (norm_width,), _same
            ),
            Entry(("vision", name, "fc1", "kernel"), prefix + "linear_fc1.weight", (mw, mw), (mw, mw), _t),
            Entry(("vision", name, "fc1", "bias"), prefix + "linear_fc1.bias", (mw,), (mw,), _same),
            Entry(
                ("vision", name, "fc2", "kernel"),
                prefix + "linear_fc2.weight",
                (v.out_width, mw),
                (mw, v.out_width),
                _t,
            ),
            Entry(
                ("vision", name, "fc2", "bias"),
                prefix + "linear_fc2.bias",
                (v.out_width,),
                (v.out_width,),
                _same,
            ),
        ]
    return entries


def canonical_name(name: str) -> str:
    """Maps the naming variants of released checkpoints to the transformers 5 names."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("language_model.model."):
        return "model.language_model." + name[len("language_model.model.") :]
    if name == "language_model.lm_head.weight":
        return "lm_head.weight"
    return name


class ConversionError(ValueError):
    """The checkpoint does not match the config: lists every missing, unexpected and mis-shaped tensor."""


def check(ckpt: SafetensorsCheckpoint, entries: list[Entry], tied: bool) -> dict[str, str]:
    """Validates names and shapes from the headers alone; returns canonical -> stored name."""
    stored = {canonical_name(n): n for n in ckpt.tensors}
    wanted = {name: e for e in entries for name in e.hf_names()}
    missing = sorted(set(wanted) - set(stored))
    ignorable = {"lm_head.weight"} if tied else set()
    unexpected = sorted(set(stored) - set(wanted) - ignorable)
    misshaped = [
        f"{name}: checkpoint {ckpt.shape(stored[name])}, config expects {e.hf_shape}"
        for name, e in wanted.items()
        if name in stored and ckpt.shape(stored[name]) != e.hf_shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"{len(items)} {title}:\n  " + "\n  ".join(items[:50]))
        raise ConversionError("checkpoint does not match its config.json\n" + "\n".join(parts))
    return stored


def iter_params(
    ckpt: SafetensorsCheckpoint,
    cfg: Qwen3VLConfig,
    allocate: Callable[[tuple[str, ...], tuple, Any], np.ndarray],
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields (path, array) for every parameter, filling arrays from `allocate(path, shape, dtype)`
    layer by layer, so only one source tensor is read at a time."""
    entries = param_map(cfg)
    stored = check(ckpt, entries, cfg.text.tie_embeddings)
    for e in entries:
        names = e.hf_names()
        dtype = ckpt.dtype(stored[names[0]])
        shape = ((e.layers,) if e.layers else ()) + e.shape
        out = allocate(e.path, shape, dtype)
        if e.layers:
            for i, name in enumerate(names):
                out[i] = e.transform(np.asarray(ckpt.get(stored[name])))
        else:
            out[...] = e.transform(np.asarray(ckpt.get(stored[names[0]])))
        yield e.path, out


def nest(items: Iterator[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """{('a', 'b'): x} -> {'a': {'b': x}}."""
    tree: dict[str, Any] = {}
    for path, value in items:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def load_params(hf_dir: str, cfg: Qwen3VLConfig) -> dict[str, Any]:
    """All parameters in memory (small checkpoints and tests); `tools/convert_hf.py` streams instead."""
    ckpt = SafetensorsCheckpoint(hf_dir)
    return nest(iter_params(ckpt, cfg, lambda path, shape, dtype: np.empty(shape, dtype)))


def memmap_allocator(directory: str) -> Callable[[tuple[str, ...], tuple, Any], np.ndarray]:
    """Allocates each parameter as a disk-backed array under `directory` (bounded RAM)."""

    def allocate(path: tuple[str, ...], shape: tuple, dtype: Any) -> np.ndarray:
        return np.lib.format.open_memmap(
            os.path.join(directory, "__".join(path) + ".npy"), mode="w+", dtype=dtype, shape=shape
        )

    return allocate
