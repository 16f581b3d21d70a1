"""The triplane pre-training stage: the trainer lowers the rendering loss, and the tokenizer it trained
is restored into a stage-1 run with `vision_tokenizer = "triplane"` by `init_from.tokenizer_path`."""

import numpy as np
import pytest

from alpamayo_jax.train import trainer
from experiments import common
from tests.train_util import leaves, tiny_config, use_compilation_cache


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    use_compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("triplane_pretrain")
    c = tiny_config("stage_triplane_pretrain", 30)
    c.data.global_batch = 8
    c.checkpoint.every_steps = 100  # the last step is saved anyway
    state, history = trainer.train(c, str(workdir))
    return workdir, state, history


def test_rendering_loss_decreases(pretrained):
    _, state, history = pretrained
    assert set(state.params) == {"triplane", "render"}  # no VLM in this stage
    render = np.array([h["render"] for h in history])
    assert np.isfinite(render).all() and set(history[0]) >= {"render_l1", "render_dssim"}
    print(f"render loss {render[:3].mean():.4f} -> {render[-5:].mean():.4f}")
    assert render[-5:].mean() < 0.8 * render[:3].mean()


def test_pretrained_tokenizer_is_restored_into_stage1(pretrained, tmp_path):
    workdir, source, _ = pretrained
    c = tiny_config(
        "stage1_action_injection",
        0,
        model__vision_tokenizer="triplane",
        init_from__tokenizer_path=str(workdir),
    )
    state, _ = trainer.train(c, str(tmp_path))

    def pretrained_part(tree):
        return {n for n in tree if any(n.startswith(p + "/") for p in common.TRIPLANE_PRETRAINED)}

    restored = leaves(source.params, "triplane")
    here = leaves(state.params, "triplane")
    pretrained_names = pretrained_part(here)
    assert pretrained_names == pretrained_part(restored) and len(pretrained_names) > 10
    for name in pretrained_names:
        np.testing.assert_array_equal(here[name], restored[name], err_msg=name)
    # The LLM-width projection and plane embeddings are the policy's own (not pre-trained).
    assert set(here) - pretrained_names == {
        "triplane/plane_embed",
        "triplane/proj/bias",
        "triplane/proj/kernel",
    }
