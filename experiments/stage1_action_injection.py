"""Stage 1: action injection. Trajectory-token CE + flow matching of the expert (knowledge-insulated:
the expert reads the VLM's K/V through a stop-gradient), with VQA text CE co-training; initialised
from stage 0's VLM.

tiny (CPU, fake data, about a minute):
  python -m alpamayo_jax.train --config experiments/stage1_action_injection.py:tiny --workdir runs/s1 \
    --config.init_from.path=runs/s0
  expect: traj_ce and flow fall over 20 steps.
2b (one GPU host):
  python -m alpamayo_jax.train --config experiments/stage1_action_injection.py:2b --workdir $W/s1 \
    --config.init_from.path=$W/s0
  expect: traj_ce below 2 nats within a few thousand steps; flow loss falls toward 0.3.
10b: `:10b`, init_from the 10b stage-0 workdir.
"""

from experiments import common


def get_config(arg: str | None = None):
    preset = common.parse_arg(arg)
    c = common.base_config(preset)
    c.model.loss_weights.update(dict(text_ce=0.5, traj_ce=1.0, flow=1.0))
    c.init_from.subtrees = ("vlm",)
    c.lock()
    return c
