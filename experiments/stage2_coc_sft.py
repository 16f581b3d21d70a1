"""Stage 2: chain-of-causation SFT. Reasoning text CE + trajectory CE + flow matching, every parameter
trainable; initialised from all of stage 1 (VLM and expert).

tiny (CPU, fake data, about a minute):
  python -m alpamayo_jax.train --config experiments/stage2_coc_sft.py:tiny --workdir runs/s2 \
    --config.init_from.path=runs/s1
  expect: text_ce (reasoning) and traj_ce fall over 20 steps.
2b (one GPU host):
  python -m alpamayo_jax.train --config experiments/stage2_coc_sft.py:2b --workdir $W/s2 \
    --config.init_from.path=$W/s1
  expect: reasoning CE falls below 1 nat; minADE_6 at 6.4 s improves on stage 1.
10b: `:10b`, init_from the 10b stage-1 workdir.
"""

from experiments import common


def get_config(arg: str | None = None):
    preset = common.parse_arg(arg)
    c = common.base_config(preset)
    c.model.loss_weights.update(dict(text_ce=1.0, traj_ce=1.0, flow=1.0))
    c.init_from.subtrees = ("vlm", "expert")
    c.lock()
    return c
