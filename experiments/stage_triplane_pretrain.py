"""Triplane pre-training (SPEC 1.5): the triplane tokenizer learns the scene's 3D layout self-supervised,
by volumetric rendering. Each timestep's rig is lifted to the three planes and its own views are
rendered back from rays of the calibrated cameras (loss 0.5 L1 + 0.5 DSSIM against the frames
box-filtered to `model.render.out_hw`). No VLM is built: the trainer's model is `TriplanePretrain`
(`model.kind = "triplane_render"`), its loss picked by the loss weights like every stage's. Its
`triplane/{backbone,value,lift}` parameters go into a policy stage with
`--config.model.vision_tokenizer=triplane --config.init_from.tokenizer_path=<this workdir>`.

tiny (CPU, fake procedural views of the synthetic rig, about a minute):
  python -m alpamayo_jax.train --config experiments/stage_triplane_pretrain.py:tiny --workdir runs/tp
  expect: `render` falls by a third or more within 30 steps (colours, sky and ground first).
full (GPU hosts; frames at 320x576, 4 cameras x 4 frames, from a dataset built at that size):
  python -m alpamayo_jax.train --config experiments/stage_triplane_pretrain.py:full --workdir $W/tp \
    --config.data.kind=tfds --config.data.data_dir=$DATA \
    --config.data.sources='({"name": "physical_ai_av", "stage": 1, "weight": 1.0},)'
  then e.g. stage 1 with the pre-trained tokenizer on top of the stage-0 VLM:
  python -m alpamayo_jax.train --config experiments/stage1_action_injection.py:2b --workdir $W/s1 \
    --config.model.vision_tokenizer=triplane --config.init_from.path=$W/s0 \
    --config.init_from.tokenizer_path=$W/tp
  expect: `render` falls steadily; `render_dssim` below 0.2 once ground structure is reconstructed.
"""

import ml_collections

from experiments import common

PRESETS = {"tiny": "tiny", "full": "2b"}  # full: the ar1 triplane (the LLM width is not used here)


def get_config(arg: str | None = None):
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {tuple(PRESETS)}")
    tiny = preset == "tiny"
    c = common.base_config(PRESETS[preset])
    c.model.kind = "triplane_render"
    c.model.vision_tokenizer = "triplane"
    c.model.loss_weights = ml_collections.ConfigDict(dict(render=1.0))
    c.model.render = ml_collections.ConfigDict(
        dict(
            out_hw=(7, 14) if tiny else (40, 72),
            hidden=32 if tiny else 64,
            num_samples=16 if tiny else 48,
            near=1.0,
            far=60.0 if tiny else 180.0,
            l1_weight=0.5,
            dssim_weight=0.5,
        )
    )
    c.total_steps = 30 if tiny else 50_000
    c.data.global_batch = 8 if tiny else 64
    c.optim.lr = 3e-3 if tiny else 3e-4
    c.optim.warmup_steps = 2 if tiny else 1000
    c.optim.lr_multipliers = ()
    c.lock()
    return c
