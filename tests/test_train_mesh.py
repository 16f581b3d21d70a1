"""The same tiny run on 1 device and on 8 devices with mesh (2, 2, 2) and FSDP + TP gives the same losses,
in the scanned layer layout and in the per-layer one (`model.scan_layers=False`)."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alpamayo_jax.train import trainer
from tests.train_util import tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)
    # Each run's final checkpoint without orbax's replica-parallel saving (its CPU default; it slices
    # every replicated shard per device, one small compile per device and shape: about 20 of this
    # test's 140 s). What is saved is the same; the test compares the runs' losses.
    default = ocp.type_handlers.get_type_handler(jax.Array)
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )
    yield
    ocp.type_handlers.register_type_handler(jax.Array, default, override=True)


def test_one_device_and_eight_device_mesh_agree(tmp_path):
    losses = {}
    runs = (("one", (1, 1, 1), True), ("eight", (2, 2, 2), True), ("eight_per_layer", (2, 2, 2), False))
    for name, shape, scan in runs:
        c = tiny_config(
            "stage1_action_injection", 3, mesh__shape=shape, mesh__rules="fsdp_tp", model__scan_layers=scan
        )
        c.data.global_batch = 4
        c.checkpoint.every_steps = 10
        _, history = trainer.train(c, str(tmp_path / name))
        losses[name] = np.array([h["loss"] for h in history])
        assert len(history) == 3
    np.testing.assert_allclose(losses["eight"], losses["one"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(losses["eight_per_layer"], losses["one"], rtol=0, atol=1e-5)
    assert losses["one"][2] != losses["one"][0]
