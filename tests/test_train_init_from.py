"""Stage chaining: init_from restores exactly the requested subtrees; clear errors for bad paths/typos."""

import subprocess
import sys

import numpy as np
import pytest

from alpamayo_jax.train import trainer
from tests.train_util import leaves, tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


def test_init_from_restores_only_the_requested_subtrees(tmp_path):
    source, _ = trainer.train(_stage0(), str(tmp_path / "s0"))
    scratch, _ = trainer.train(tiny_config("stage1_action_injection", 0), str(tmp_path / "scratch"))
    chained = tiny_config("stage1_action_injection", 0, init_from__path=str(tmp_path / "s0"))
    state, _ = trainer.train(chained, str(tmp_path / "s1"))
    for name, x in leaves(state.params, "vlm").items():
        np.testing.assert_array_equal(x, leaves(source.params, "vlm")[name], err_msg=name)
    for name, x in leaves(state.params, "expert").items():
        np.testing.assert_array_equal(x, leaves(scratch.params, "expert")[name], err_msg=name)
        if name.endswith("kernel"):  # random initialisations differ between the two runs
            assert not np.array_equal(x, leaves(source.params, "expert")[name]), name


def _stage0():
    c = tiny_config("stage0_vlm_vqa", 1)
    c.seed = 7  # a different initialisation than the stage-1 scratch run
    return c


def test_missing_checkpoint_fails_before_compute(tmp_path):
    c = tiny_config("stage1_action_injection", 1, checkpoint__resume_from=str(tmp_path / "nowhere"))
    with pytest.raises(
        FileNotFoundError, match="checkpoint.resume_from: checkpoint .*nowhere does not exist"
    ):
        trainer.train(c, str(tmp_path / "w"))
    c = tiny_config("stage1_action_injection", 1, init_from__path=str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="init_from.path: checkpoint .*gone does not exist"):
        trainer.train(c, str(tmp_path / "w"))


def test_config_typo_fails_before_compute(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "alpamayo_jax.train",
        "--config",
        "experiments/stage1_action_injection.py:tiny",
        "--workdir",
        str(tmp_path),
        "--config.optim.lrr=0.1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert 'Did you mean "lr" instead of "lrr"?' in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
