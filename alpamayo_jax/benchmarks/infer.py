"""Inference latency of the compiled policy at the release input shapes (random bf16 weights).

Release shapes (SPEC 1.2): 4 cameras x 4 frames at 320x576 (180 merged tokens each, 2,880 in all),
48 history tokens, a 30-token prompt, batch 1; 40 reasoning tokens (forced, greedy) and 5 or 10 flow
steps. Each stage is its own compiled program so its time is measured alone; `total_ms` is the one
program that users call. The `tiny` preset runs at tiny shapes (CPU smoke test).

`tokenizer` picks the vision tokenizer (SPEC 1.5): `per_image` (the ViT: 2,880 image tokens),
`triplane` (patch `triplane_patch`, 288 tokens per timestep: 1,152) or `flex` (`flex_tokens` per
image: 256 at 16). `vision_tokens` and `prefix_tokens` are the image and prompt tokens per sample;
`vision_ms` the tokenizer alone (ViT + Flex for flex), `prefill_ms` the prefill without it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax import generation, inference, trajectory_tokens
from alpamayo_jax.benchmarks.timing import time_compiled
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.models import alpamayo, qwen3vl_inputs
from alpamayo_jax.models import decode_attention as decode_attention_lib
from alpamayo_jax.models.qwen3vl import Qwen3VL
from alpamayo_jax.models.qwen3vl_inputs import PromptInputs

RELEASE_SHAPES = dict(
    cameras=4, frames=4, height=320, width=576, history_tokens=48, prompt_tokens=30, reasoning_tokens=40
)
TINY_SHAPES = dict(
    cameras=2, frames=2, height=64, width=64, history_tokens=48, prompt_tokens=8, reasoning_tokens=4
)


def release_prompt(
    cfg: alpamayo.AlpamayoConfig,
    batch: int,
    rng: np.random.Generator,
    shapes: dict[str, int] = RELEASE_SHAPES,
) -> tuple[PromptInputs, np.ndarray]:
    """A prompt of the release layout: images (the tokenizer's inputs), history block, prompt text,
    <|cot_start|>. Images are camera-major; triplane frames come from the synthetic rig."""
    vcfg = cfg.vlm.vision
    h, w = shapes["height"] // vcfg.patch_size, shapes["width"] // vcfg.patch_size
    num_images = shapes["cameras"] * shapes["frames"]
    ids = batch_lib.SequenceIds.of(
        cfg.vlm.image_token_id, cfg.vlm.vision_start_token_id, cfg.vlm.vision_end_token_id, cfg.tokens
    )
    text_hi = min(cfg.tokens.base_vocab_size, cfg.vlm.image_token_id)
    samples, images, trajs, runs, views = [], [], [], [], []
    for _ in range(batch):
        traj = batch_lib.random_trajectory(rng, cfg.tokens.num_waypoints, cfg.tokens.num_history)
        history = trajectory_tokens.encode_history(traj["history_xyz"], cfg.tokens)
        run, view = batch_lib.tokenizer_views(cfg, rng, num_images, shapes["frames"])
        sample = batch_lib.assemble_sample(
            ids,
            list(run.tokens) if run else [h * w // vcfg.spatial_merge**2] * num_images,
            history,
            rng.integers(0, text_hi, shapes["prompt_tokens"]),
            None,
            None,
        )
        sample["tokens"] = np.append(sample["tokens"], ids.cot_start).astype(np.int32)
        sample["text_loss"] = np.append(sample["text_loss"], 0.0)
        sample["traj_loss"] = np.append(sample["traj_loss"], 0.0)
        samples.append(sample)
        if cfg.vision_tokenizer != "triplane":
            pixels = rng.standard_normal((num_images * h * w, vcfg.patch_dim)).astype(np.float32)
            grid = np.array([[1, h, w]] * num_images)
            images.append((qwen3vl_inputs.vision_inputs(pixels, grid, vcfg), grid))
        trajs.append(traj)
        runs.append(run)
        views.append(view)
    length = len(samples[0]["tokens"])
    per_image = cfg.vision_tokenizer == "per_image"
    b = batch_lib.collate(
        samples,
        images or None,
        trajs,
        length,
        cfg.vlm.image_token_id,
        vcfg.spatial_merge,
        runs=None if per_image else runs,
        views=None if per_image else views,
    )
    patches = None
    if b.images is not None:
        patches = b.images.replace(patches_inp=b.images.patches_inp.astype(jnp.dtype(cfg.vlm.vision.dtype)))
    prompt = PromptInputs(
        tokens_bl=b.tokens_bl,
        positions_3bl=b.positions_3bl,
        valid_bl=b.valid_bl,
        next_position_b=b.positions_3bl[0, :, -1] + 1,
        images=patches,
        image_slots_bl=b.image_slots_bl,
        frames_btvhw3=b.frames_btvhw3,
        cameras=b.cameras,
        image_frame_bn=b.image_frame_bn,
        image_camera_bn=b.image_camera_bn,
    )
    return prompt, b.history_xyz_bh3


def init_params(cfg: alpamayo.AlpamayoConfig, seed: int = 0) -> Any:
    """Random parameters created on the device in the config's param dtype."""
    cameras, frames = (
        (cfg.flex.num_cameras, cfg.flex.num_frames) if cfg.vision_tokenizer == "flex" else (1, 1)
    )
    tiny_batch = batch_lib.fake(
        cfg, 1, num_images=cameras * frames, num_frames=frames, grid_hw=(2, 2), prompt_len=2, reasoning_len=1
    )
    init = jax.jit(lambda rng: nn.unbox(alpamayo.Alpamayo(cfg).init(rng, tiny_batch, rng))["params"])
    return init(jax.random.key(seed))


def progress(key: str, result: dict[str, Any], compile_ms: dict[str, float]) -> None:
    """One line per finished measurement on stderr (a run cut short still shows what it measured)."""
    print(f"{key} {result[key]:.3f} ms (compiles so far {compile_ms})", file=sys.stderr, flush=True)


def run(
    preset: str,
    batch: int = 1,
    flow_steps: tuple[int, ...] = (5, 10),
    reps: int = 10,
    attention_impl: str | None = None,
    decode_attention: str | None = None,
    dtype: str = "bfloat16",
    unroll: int = 1,
    scan_layers: bool = False,
    fused_projections: bool = True,
    tokenizer: str = "per_image",
    triplane_patch: tuple[int, int, int] = (8, 8, 8),
    triplane_half_planes: bool = False,
    flex_tokens: int = 16,
) -> dict[str, Any]:
    """`scan_layers=False, fused_projections=True` is the inference layout (one parameter set per layer,
    one qkv and one gate_up GEMM per layer); `unroll` applies to scanned towers. `decode_attention`:
    the text decoder's attention over the cache per decode step (xla, or pallas: the default on a GPU,
    as in `alpamayo.inference_layout`). `tokenizer`:
    per_image, triplane (patch `triplane_patch`; `triplane_half_planes`: the front half of each plane,
    for front-only rigs) or flex (`flex_tokens` per image)."""
    if attention_impl is None:
        attention_impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
    if decode_attention is None:
        decode_attention = decode_attention_lib.default_impl(scan_layers)
    shapes = TINY_SHAPES if preset == "tiny" else RELEASE_SHAPES
    cfg = alpamayo.alpamayo_config(
        preset,
        vision_tokenizer=tokenizer,
        triplane=dict(patch=triplane_patch, half_planes=triplane_half_planes),
        flex=dict(tokens_per_image=flex_tokens, num_cameras=shapes["cameras"], num_frames=shapes["frames"]),
        dtype=dtype,
        param_dtype=dtype,
        attention_impl=attention_impl,
        decode_attention=decode_attention,
        scan_unroll=unroll,
        scan_layers=scan_layers,
        fused_projections=fused_projections and not scan_layers,
    )
    if not scan_layers and cfg.vlm.text.fused_projections:
        # The inference layout of `compile_policy`'s users (`alpamayo.inference_layout`: among others the
        # ViT unstacked, with its LayerNorms' own affine), with this run's kernel choice.
        cfg = alpamayo.inference_layout(cfg, decode_attention)
    else:  # a training layout of the towers; the ViT stays scanned (`scan_layers` is the text decoder's
        # and the expert's layout here)
        vision = dataclasses.replace(cfg.vlm.vision, scan_layers=True)
        cfg = dataclasses.replace(cfg, vlm=dataclasses.replace(cfg.vlm, vision=vision))
    params = init_params(cfg)
    prompt, history = release_prompt(cfg, batch, np.random.default_rng(0), shapes)
    prompt, history = jax.device_put((prompt, history))
    n_reason = shapes["reasoning_tokens"]
    vlm = Qwen3VL(cfg.vlm)
    result: dict[str, Any] = dict(
        preset=preset,
        tokenizer=tokenizer,
        device=jax.devices()[0].device_kind,
        backend=jax.default_backend(),
        batch=batch,
        dtype=dtype,
        attention_impl=attention_impl,
        decode_attention=decode_attention,
        decode_projections=cfg.vlm.text.decode_projections,
        prefix_attention=cfg.expert.prefix_attention,
        compiler_options=inference.compiler_options(),
        layout=dict(scan_layers=scan_layers, fused_projections=cfg.vlm.text.fused_projections),
        prefix_tokens=int(prompt.tokens_bl.shape[1]),
        vision_tokens=int((np.asarray(prompt.image_slots_bl) >= 0).sum() // batch),
        reasoning_tokens=n_reason,
        params_b={k: sum(x.size for x in jax.tree_util.tree_leaves(v)) / 1e9 for k, v in params.items()},
    )

    # Every program with the compiler options of the policy program (`inference.compile_policy`).
    jit = functools.partial(jax.jit, compiler_options=inference.compiler_options())
    if tokenizer == "per_image":
        vision = jit(
            lambda p, pr: nn.apply(
                lambda m, im: m.vision(jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), im)), vlm
            )({"params": p["vlm"]}, pr.images)
        )
    else:
        vision = jit(lambda p, pr: inference.vision_features(cfg, p, pr))
    t = time_compiled(vision, params, prompt, reps=reps)
    result["vision_ms"], compile_ms = t["median_ms"], {"vision": t["compile_ms"]}
    progress("vision_ms", result, compile_ms)

    cache_size = prompt.tokens_bl.shape[1] + n_reason + 1
    prefill = jit(
        lambda p, pr: generation.prefill(vlm, p["vlm"], pr, cache_size, inference.vision_features(cfg, p, pr))
    )
    t = time_compiled(prefill, params, prompt, reps=reps)
    result["prefill_with_vision_ms"], compile_ms["prefill"] = t["median_ms"], t["compile_ms"]
    result["prefill_ms"] = result["prefill_with_vision_ms"] - result["vision_ms"]
    progress("prefill_ms", result, compile_ms)

    logits, cache = prefill(params, prompt)
    sampling = generation.SamplingConfig(0.0, 1.0, None)
    decode = jit(lambda p, lg, c, pos, rng: generation.decode(vlm, p, lg, c, pos, rng, n_reason, sampling))
    t = time_compiled(
        decode, params["vlm"], logits, cache, prompt.next_position_b, jax.random.key(1), reps=reps
    )
    result["decode_ms"], compile_ms["decode"] = t["median_ms"], t["compile_ms"]
    result["decode_ms_per_token"] = t["median_ms"] / n_reason
    progress("decode_ms_per_token", result, compile_ms)

    icfg = inference.InferenceConfig(
        max_reasoning_tokens=n_reason, min_reasoning_tokens=n_reason, temperature=0.0
    )
    _, _, full_cache, first = jit(lambda p, pr, r: inference.reason(cfg, icfg, p, pr, r))(
        params, prompt, jax.random.key(2)
    )
    for steps in flow_steps:
        flow = jit(lambda p, c, f, r, steps=steps: inference.flow_sample(cfg, p, c, f, r, steps))
        t = time_compiled(flow, params, full_cache, first, jax.random.key(3), reps=reps)
        result[f"flow_{steps}_steps_ms"], compile_ms[f"flow_{steps}"] = t["median_ms"], t["compile_ms"]
        progress(f"flow_{steps}_steps_ms", result, compile_ms)
    result["flow_ms_per_step"] = result[f"flow_{flow_steps[0]}_steps_ms"] / flow_steps[0]

    steps = flow_steps[0]
    policy = inference.compile_policy(cfg, dataclasses.replace(icfg, flow_steps=steps))
    t = time_compiled(policy, params, prompt, history, jax.random.key(4), reps=reps)
    result[f"total_{steps}_steps_ms"], compile_ms[f"total_{steps}"] = t["median_ms"], t["compile_ms"]
    for other in flow_steps[1:]:  # the same program with more Euler steps: measured flow difference added
        result[f"total_{other}_steps_ms_derived"] = (
            result[f"total_{steps}_steps_ms"]
            + result[f"flow_{other}_steps_ms"]
            - result[f"flow_{steps}_steps_ms"]
        )
    result["total_ms"] = result[f"total_{flow_steps[0]}_steps_ms"]
    result["compile_ms"] = compile_ms
    return result
