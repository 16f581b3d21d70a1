"""The demo end to end at a toy size: data, three chained stages, scores, plots and the report."""

import json

import numpy as np

from alpamayo_jax import demo
from tests.train_util import use_compilation_cache


def test_demo_writes_a_report_with_every_policy(tmp_path, tmp_path_factory):
    use_compilation_cache(tmp_path_factory)
    cfg = demo.DemoConfig(clips=10, steps=(1, 2, 2), batch=8)
    results = demo.run(tmp_path, cfg)
    for name in ("untrained", "trained", "untrained_tokens", "trained_tokens", "constant_velocity"):
        assert np.isfinite(results[name]["minADE_6"]) and results[name]["minADE_6"] >= 0
    # Constant velocity is deterministic: its minADE equals its ADE over the full horizon.
    cv = results["constant_velocity"]
    assert abs(cv["minADE_6"] - cv["ADE_6.4s"]) < 1e-6
    assert json.loads((tmp_path / "results.json").read_text())["held_out"] == results["held_out"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "| trained, trajectory tokens |" in report and "constant velocity" in report
    for png in ("losses.png", "trajectories.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    # Stage 1 started from stage 0's VLM, stage 2 from stage 1.
    for stage in ("stage0_vlm_vqa", "stage1_action_injection", "stage2_coc_sft"):
        assert (tmp_path / stage / "checkpoints").is_dir()
