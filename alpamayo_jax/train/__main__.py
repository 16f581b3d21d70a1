"""`python -m alpamayo_jax.train --config experiments/FILE.py:PRESET --workdir DIR [--config.a.b=v ...]`.

The config file is locked, so an override naming no field fails here, before any compute. Multi-host:
pass `--coordinator HOST:PORT --num_processes N --process_id I` on every host (or `--distributed` to
let `jax.distributed.initialize` read the cluster environment: TPU pods, SLURM, Kubernetes).
"""

from alpamayo_jax.train import host_env

# NVLink multicast (NVLS) stays off on the multi-GPU hosts, and the training XLA flags are on; set
# before JAX (and NCCL) start, and inherited by every process the trainer starts.
host_env.disable_nvlink_multicast()
host_env.add_training_xla_flags()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from alpamayo_jax.train import trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file:preset", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics.jsonl, tensorboard/)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-host)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the environment")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
