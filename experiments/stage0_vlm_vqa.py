"""Stage 0: VLM supervised fine-tuning on driving VQA (text cross-entropy only; the expert is frozen).

tiny (CPU, fake data, about a minute):
  python -m alpamayo_jax.train --config experiments/stage0_vlm_vqa.py:tiny --workdir runs/s0
  expect: text_ce falls from about ln(1024) = 6.9 over 20 steps.
2b (one GPU host, Qwen3-VL-2B converted with tools/convert_hf):
  python -m alpamayo_jax.train --config experiments/stage0_vlm_vqa.py:2b --workdir $W/s0 \
    --config.init_from.path=$MODELS/qwen3vl_2b
  expect: the trajectory-token rows are added to the vocabulary at start; text_ce falls steadily.
10b: the same with `:10b` and the Qwen3-VL-8B folder, mesh (1, -1, 1) FSDP over all devices.
"""

from experiments import common


def get_config(arg: str | None = None):
    preset = common.parse_arg(arg)
    c = common.base_config(preset)
    c.model.loss_weights.update(dict(text_ce=1.0, traj_ce=0.0, flow=0.0))
    c.trainable.frozen = ("expert",)
    c.init_from.kind = "model_dir"
    c.lock()
    return c
