"""Stage chaining: init_from restores exactly the requested subtrees; clear errors for bad paths/typos."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from alpamayo_jax.interop import model_dir
from alpamayo_jax.models import alpamayo
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


def test_init_from_a_scanned_checkpoint_into_a_per_layer_run(tmp_path):
    """A scanned stage's checkpoint chained into a `model.scan_layers=False` run (the 2b/10b presets'
    layout): every tower's stacked layers are unstacked, layer by layer, and sharded on restore."""
    source, _ = trainer.train(_stage0(), str(tmp_path / "s0"))
    c = tiny_config(
        "stage1_action_injection",
        0,
        init_from__path=str(tmp_path / "s0"),
        model__scan_layers=False,
        mesh__shape=(2, 2, 2),
        mesh__rules="fsdp_tp",
    )
    c.data.global_batch = 4
    state, _ = trainer.train(c, str(tmp_path / "s1"))
    got = leaves(state.params, "vlm")
    assert "vlm/text/layers/1/attn/q/kernel" in got and "vlm/vision/blocks/1/fc1/kernel" in got
    want = leaves(alpamayo.to_layout(source.params, trainer.model_config_of(c.model)), "vlm")
    assert got.keys() == want.keys()
    for name, x in got.items():
        np.testing.assert_array_equal(x, want[name], err_msg=name)
    stacked = leaves(source.params, "vlm/text/layers")["vlm/text/layers/attn/q/kernel"]
    np.testing.assert_array_equal(got["vlm/text/layers/1/attn/q/kernel"], stacked[1])


def _stage0(steps=2):
    # Two steps: the step program of the other stage-0 tests (test_train_resume, test_train_metrics),
    # which the session's compilation cache then holds.
    c = tiny_config("stage0_vlm_vqa", steps)
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


def test_init_from_converted_model_dir_adds_trajectory_rows(tmp_path):
    """A converted Qwen3-VL folder (base vocabulary) initialises `vlm`; the new token rows are added."""
    donor, _ = trainer.train(_stage0(0), str(tmp_path / "donor"))
    cfg = trainer.model_config_of(tiny_config("stage0_vlm_vqa", 0).model)
    base = cfg.tokens.base_vocab_size
    vlm = jax.tree_util.tree_map(np.asarray, donor.params["vlm"])
    vlm["text"]["embed"]["embedding"] = vlm["text"]["embed"]["embedding"][:base]
    vlm["text"]["lm_head"]["kernel"] = vlm["text"]["lm_head"]["kernel"][:, :base]
    text = dataclasses.replace(cfg.vlm.text, vocab_size=base)
    model_dir.save(str(tmp_path / "hf"), dataclasses.replace(cfg.vlm, text=text), vlm)

    c = tiny_config("stage0_vlm_vqa", 0, init_from__path=str(tmp_path / "hf"), init_from__kind="model_dir")
    state, _ = trainer.train(c, str(tmp_path / "s0"))
    got = leaves(state.params, "vlm")
    embed = got["vlm/text/embed/embedding"]
    np.testing.assert_array_equal(embed[:base], vlm["text"]["embed"]["embedding"])
    assert embed.shape[0] == cfg.tokens.vocab_size
    # New rows: mean of the old ones plus small noise, not the donor's random rows.
    np.testing.assert_allclose(embed[base:].mean(0), embed[:base].mean(0), atol=0.01)
    assert not np.allclose(embed[base:], np.asarray(donor.params["vlm"]["text"]["embed"]["embedding"])[base:])
    for name in ("vlm/text/layers/mlp/up/kernel", "vlm/vision/patch_embed/kernel"):
        np.testing.assert_array_equal(got[name], leaves(donor.params, name)[name])
