"""Every experiment: two steps, then an exact resume from the step-1 checkpoint; frozen params fixed."""

import json
import os
import signal
import threading
import time

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


def test_sigterm_saves_and_stops(tmp_path):
    """A SIGTERM mid-run (preemption) saves the current step and returns; the next run resumes there."""
    workdir = tmp_path / "a"
    metrics = workdir / "metrics.jsonl"

    def preempt_after_first_step():
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt_after_first_step, daemon=True).start()
    state, history = trainer.train(tiny_config("stage1_action_injection", 50), str(workdir))
    stopped = int(state.step)
    assert 1 <= stopped < 50 and history[-1]["step"] == stopped
    assert str(stopped) in os.listdir(workdir / "checkpoints")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed, history2 = trainer.train(tiny_config("stage1_action_injection", stopped + 1), str(workdir))
    assert [h["step"] for h in history2] == [stopped + 1] and int(resumed.step) == stopped + 1


def test_eval_and_throughput_metrics_are_logged(tmp_path):
    c = tiny_config("stage2_coc_sft", 2, eval__every_steps=2)
    trainer.train(c, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train_records] == [1, 2] and [r["step"] for r in evals] == [2]
    assert all(r["tokens_per_s"] > 0 and r["steps_per_s"] > 0 for r in train_records)
    assert np.isfinite(evals[0]["eval/traj_ce"]) and evals[0]["eval/loss"] > 0
    assert 0 < evals[0]["eval/minADE_6"] <= evals[0]["eval/ADE_6.4s"] + 1e-6
    assert evals[0]["eval/ADE_1s"] < evals[0]["eval/ADE_6.4s"] < evals[0]["eval/FDE_6.4s"]
