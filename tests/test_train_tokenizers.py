"""`model.vision_tokenizer` is a config switch for the policy stages: stage 1 trains with each tokenizer."""

import numpy as np
import pytest

from alpamayo_jax.train import trainer
from tests.train_util import leaves, tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


@pytest.mark.parametrize("tokenizer", ["per_image", "triplane", "flex"])
def test_stage1_trains_two_steps_with_each_tokenizer(tmp_path, tokenizer):
    c = tiny_config("stage1_action_injection", 2, model__vision_tokenizer=tokenizer)
    state, history = trainer.train(c, str(tmp_path))
    assert [h["step"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in history)
    assert all(h["traj_ce"] > 0 and h["flow"] > 0 for h in history)
    # Each tokenizer brings its own parameters; the triplane has no use for the Qwen ViT.
    assert bool(leaves(state.params, "vlm/vision")) == (tokenizer != "triplane")
    if tokenizer != "per_image":
        assert leaves(state.params, tokenizer)
