"""tools/label_coc.py end to end on synthetic clips read through the dataset reader."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from alpamayo_jax.coc.pai_source import PaiClipSource
from alpamayo_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = synthetic.SyntheticConfig(width=112, height=64)
KINDS = ("stop_for_light_or_sign", "yield_to_vru", "lane_change", "slow_for_lead")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for i, kind in enumerate(KINDS):
        synthetic.write_synthetic_dataset(root / kind, 1, 10 + i, TINY, scenario=kind)
    return root


def test_source_gives_consistent_egomotion_and_tracks(dataset):
    source = PaiClipSource(dataset / "stop_for_light_or_sign")
    (clip,) = source.list_clips()
    ego = source.egomotion(clip)
    assert np.all(np.diff(ego.t_us) == 100_000)
    step = np.linalg.norm(np.diff(ego.xy, axis=0), axis=-1) / 0.1
    np.testing.assert_allclose(
        np.abs(ego.speed[1:-1]), (step[1:] + step[:-1])[: len(ego.speed) - 2] / 2, atol=0.05
    )
    assert ego.speed.min() < 0.3  # this scenario stops at the line
    frames = source.frames(clip, ego.t_us[[20, 21]])
    assert all(v.shape == (2, 64, 112, 3) for v in frames.values())
    assert source.ground_truth(clip)["scenario"] == "stop_for_light_or_sign"


def test_label_coc_tool_with_the_oracle_agrees_with_ground_truth(dataset, tmp_path):
    agree = []
    for kind in KINDS:
        out = tmp_path / f"{kind}.parquet"
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
        r = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "label_coc.py"),
                "--root",
                str(dataset / kind),
                "--out",
                str(out),
                "--backend",
                "oracle",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["clips_seen"] == 1
        table = pd.read_parquet(out)
        assert table.index.name == "clip_id" and list(table.columns) == ["events"]
        source = PaiClipSource(dataset / kind)
        gt = source.ground_truth(source.list_clips()[0])["events"]
        with open(f"{out}.records.jsonl") as f:
            for line in f:
                for result in json.loads(line)["results"]:
                    rec = result["record"]
                    agree.append(
                        rec is not None
                        and any(
                            (rec["longitudinal"], rec["lateral"]) == (e["longitudinal"], e["lateral"])
                            for e in gt
                        )
                    )
    assert len(agree) >= len(KINDS)
    assert np.mean(agree) >= 0.95
