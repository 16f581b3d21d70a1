"""The trainer on real batches: synthetic clips -> TFDS ArrayRecord -> grain -> two steps and a resume."""

import json
import pathlib

import numpy as np
import pytest

from alpamayo_jax.data import drive_dataset, synthetic
from alpamayo_jax.train import trainer
from tests.train_util import tiny_config, use_compilation_cache

SP_MODEL = str(pathlib.Path(__file__).parents[1] / "data" / "tokenizers" / "tiny_sp.model")
CAMERAS = ("camera_cross_left_120fov", "camera_front_wide_120fov")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.write_synthetic_dataset(root, 3, 5, synthetic.SyntheticConfig(96, 64, CAMERAS))
    out = tmp_path_factory.mktemp("tfds")
    splits = drive_dataset.synthetic_splits(root, validation_every=3)
    summary = drive_dataset.build(
        "synthetic_drive", root, out, splits, cameras=CAMERAS, num_frames=2, image_hw=(64, 96)
    )
    assert not summary["failed"]
    return out


def config(data_dir, steps, **overrides):
    c = tiny_config("stage1_action_injection", steps, **overrides)
    c.data.kind = "tfds"
    c.data.data_dir = str(data_dir)
    c.data.sources = (dict(name="synthetic_drive", stage=1, weight=1.0),)
    c.data.tokenizer.path = SP_MODEL
    c.data.seq_len = 384
    return c


def test_stage1_trains_on_built_dataset_and_resumes_exactly(data_dir, tmp_path):
    state, history = trainer.train(config(data_dir, 2), str(tmp_path / "a"))
    assert [h["step"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in history)
    data_state = json.load(open(tmp_path / "a" / "checkpoints" / "1" / "data" / "metadata"))
    assert data_state, "the grain iterator state is saved with the checkpoint"
    resumed, history2 = trainer.train(
        config(data_dir, 2, checkpoint__resume_from=str(tmp_path / "a" / "checkpoints" / "1")),
        str(tmp_path / "b"),
    )
    assert [h["step"] for h in history2] == [2]
    assert history2[0]["loss"] == history[1]["loss"]
