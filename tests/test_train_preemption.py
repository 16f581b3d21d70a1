"""Preemption (SIGTERM saves and stops; the next run resumes) and the logged eval/throughput metrics."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from alpamayo_jax.train import trainer
from tests.train_util import tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


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
