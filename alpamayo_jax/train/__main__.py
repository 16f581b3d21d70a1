"""`python -m alpamayo_jax.train --config experiments/FILE.py:PRESET --workdir DIR [--config.a.b=v ...]`.

The config file is locked, so an override naming no field fails here, before any compute.
"""

from absl import app, flags
from ml_collections import config_flags

from alpamayo_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file:preset", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics.jsonl)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
