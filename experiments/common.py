"""The config every stage derives from: sections model / data / optim / mesh / checkpoint / eval /
trainable / init_from, and the presets `tiny` (CPU, fake data), `2b` and `10b` (GPU/TPU pods).

Values are plain data (the config is saved as JSON with every checkpoint); the returned ConfigDict is
locked, so an override naming no field fails before any compute.

Every stage honours `model.vision_tokenizer` (per_image | triplane | flex, with `model.triplane` /
`model.flex`), e.g. `--config.model.vision_tokenizer=triplane --config.model.triplane.patch='(4,6,6)'`;
a triplane policy takes its pre-trained tokenizer from `init_from.tokenizer_path`
(experiments/stage_triplane_pretrain.py).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from alpamayo_jax import action_space

PRESETS = ("tiny", "2b", "10b")
MODEL_VARIANT = {"tiny": "tiny", "2b": "ar1_2b", "10b": "ar1_10b"}
# What a triplane pre-training run (stage_triplane_pretrain.py) trains of the tokenizer: everything but
# the LLM-width projection and the plane embeddings, which only a policy stage trains.
TRIPLANE_PRETRAINED = ("triplane/backbone", "triplane/value", "triplane/lift")


def base_config(preset: str) -> ml_collections.ConfigDict:
    """Defaults of a preset, unlocked so that a stage can set its own values before locking."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {PRESETS}")
    tiny = preset == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 20 if tiny else 20_000
    c.log_every = 1 if tiny else 50

    c.model = ml_collections.ConfigDict()
    c.model.variant = MODEL_VARIANT[preset]
    c.model.dtype = "float32" if tiny else "bfloat16"
    c.model.param_dtype = "float32"
    # Remat: "attention" recomputes each layer but keeps the attention outputs (on one H100: ar1_2b
    # 42.2% MFU at 12 per device vs "full" 41.5% at 24, its largest batch); "full" when memory is short.
    c.model.remat = "none" if tiny else "attention"
    # Layers: True stacks each tower's layers under one scan (one parameter set with a leading layer
    # axis; each tower's layer compiles once); False calls one parameter set per layer in a Python loop:
    # no scan stacks of saved activations to zero-fill, write and slice. On one H100 the ar1_2b step at
    # batch 12: 43.1% -> 44.5% MFU in the same call, 2.6 GB less memory, but 270 s to compile instead of
    # 24 (docs/PERFORMANCE.md). Checkpoints keep the layout they were saved in; init_from unstacks a
    # scanned source (e.g. a converted HF checkpoint) for a per-layer run.
    c.model.scan_layers = tiny
    c.model.attention = "auto"  # auto (cuDNN flash attention on GPUs, XLA elsewhere) | cudnn | xla
    c.model.loss_weights = ml_collections.ConfigDict(dict(text_ce=1.0, traj_ce=1.0, flow=1.0))
    c.model.kind = "alpamayo"  # the trainer's model: "alpamayo" (policy) or "triplane_render" (pre-training)
    # What fills the image slots (models/vision_tokens.py): "per_image" (the ViT), "triplane", "flex".
    c.model.vision_tokenizer = "per_image"
    # Triplane: patch (p_x, p_y, p_z) of the tokens (an inference-time choice), front-only half planes.
    c.model.triplane = ml_collections.ConfigDict(
        dict(patch=(4, 4, 4) if tiny else (8, 8, 8), half_planes=False)
    )
    # Flex: scene tokens per image over a fixed cameras x frames layout (= data.num_images, num_frames).
    c.model.flex = ml_collections.ConfigDict(
        dict(tokens_per_image=8 if tiny else 16, num_cameras=2 if tiny else 4, num_frames=1 if tiny else 4)
    )
    # Normalisation of the controls the expert generates and the trajectory tokens bin (SPEC: real driving;
    # the demo writes its synthetic training split's statistics here).
    c.model.control_stats = ml_collections.ConfigDict(dataclasses.asdict(action_space.ControlStats()))

    c.data = ml_collections.ConfigDict()
    c.data.kind = "fake"
    c.data.global_batch = 8 if tiny else 256
    c.data.seq_len = 256 if tiny else 3328
    c.data.num_images = 2 if tiny else 16
    # kind "fake": random batches of the release layout (20x36 patches = 320x576 pixels per image).
    c.data.fake = ml_collections.ConfigDict()
    c.data.fake.grid_hw = (4, 4) if tiny else (20, 36)
    c.data.fake.prompt_len = 8 if tiny else 30
    c.data.fake.reasoning_len = 6 if tiny else 40
    c.data.num_frames = 1 if tiny else 4  # per camera (images are camera-major)
    # kind "tfds": datasets built by tools/build_dataset.py, read through alpamayo_jax.data.pipeline.
    c.data.data_dir = ""
    c.data.sources = ()  # each dict(name=..., stage=0..3, weight=...)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.tokenizer = ml_collections.ConfigDict(dict(kind="sentencepiece", path=""))
    c.data.worker_count = 0
    c.data.patch_dtype = "uint8"  # pixel rows normalised in the vision tower; float32 / bfloat16: on the host

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3 if tiny else 1e-5
    c.optim.warmup_steps = 2 if tiny else 500
    c.optim.end_lr_fraction = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.optim.lr_multipliers = (("vlm/vision", 0.1),)
    c.optim.grad_accum_steps = 1
    c.optim.ema_decay = 0.0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)
    c.mesh.rules = "fsdp"
    c.mesh.peak_tflops_per_device = 0.0 if tiny else 989.0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 10 if tiny else 1000
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_every = 0 if tiny else 5000
    c.checkpoint.async_save = True
    c.checkpoint.resume_from = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 10 if tiny else 1000
    c.eval.num_batches = 1 if tiny else 16
    c.eval.num_samples = 6  # minADE_6
    c.eval.flow_steps = 4 if tiny else 10

    c.trainable = ml_collections.ConfigDict()
    c.trainable.include = ("",)
    c.trainable.frozen = ()

    c.init_from = ml_collections.ConfigDict()
    c.init_from.path = ""
    c.init_from.kind = "checkpoint"
    c.init_from.subtrees = ("vlm",)
    # A stage_triplane_pretrain run whose tokenizer is restored on top (vision_tokenizer "triplane").
    c.init_from.tokenizer_path = ""
    c.init_from.tokenizer_subtrees = TRIPLANE_PRETRAINED
    return c


def parse_arg(arg: str | None) -> str:
    """`get_config`'s argument: the preset name ('tiny' when empty)."""
    return arg or "tiny"
