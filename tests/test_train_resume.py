"""Every experiment: two steps, then an exact resume from the step-1 checkpoint; frozen params fixed."""

import json
import os

import numpy as np
import pytest

from alpamayo_jax.train import trainer
from tests.train_util import leaves, tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


@pytest.mark.parametrize("stage", ["stage0_vlm_vqa", "stage1_action_injection", "stage2_coc_sft"])
def test_two_steps_and_exact_resume(tmp_path, stage):
    first, history = trainer.train(tiny_config(stage, 2), str(tmp_path / "a"))
    assert [h["step"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in history)
    ckpts = tmp_path / "a" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["1", "2"]
    saved = json.load(open(ckpts / "2" / "config" / "metadata"))
    assert saved["model"]["loss_weights"] == dict(tiny_config(stage, 2).model.loss_weights)
    assert json.load(open(ckpts / "1" / "data" / "metadata")) == {"position": 1, "seed": 0}

    resume = tiny_config(stage, 2, checkpoint__resume_from=str(ckpts / "1"))
    second, history2 = trainer.train(resume, str(tmp_path / "b"))
    assert [h["step"] for h in history2] == [2]
    assert history2[0]["loss"] == history[1]["loss"]
    for name, x in leaves(first.params, "").items():
        np.testing.assert_array_equal(x, leaves(second.params, "")[name], err_msg=name)
    # Resuming a finished workdir restores its last step and trains no further.
    again, history3 = trainer.train(tiny_config(stage, 2), str(tmp_path / "a"))
    assert history3 == [] and int(again.step) == 2


def test_frozen_parameters_do_not_change(tmp_path):
    """Stage 0 freezes the expert: its weights after two steps equal its initialisation."""
    trained, _ = trainer.train(tiny_config("stage0_vlm_vqa", 2), str(tmp_path / "a"))
    init, _ = trainer.train(tiny_config("stage0_vlm_vqa", 0), str(tmp_path / "b"))
    for name, x in leaves(init.params, "expert").items():
        np.testing.assert_array_equal(x, leaves(trained.params, "expert")[name], err_msg=name)
    after = leaves(trained.params, "vlm")
    changed = {n for n, x in leaves(init.params, "vlm").items() if not np.array_equal(x, after[n])}
    # The last deepstack merger only feeds image slots after the last text layer: no gradient from
    # text CE, so its norms and biases legitimately stay put.
    assert set(leaves(init.params, "vlm/text")) <= changed
    assert "vlm/vision/patch_embed/kernel" in changed
