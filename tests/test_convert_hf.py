"""tools/convert_hf.py and tools/run_vlm.py end to end, and the converter's checks."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_util import hf_logits, image_prompt, random_hf_model
from safetensors.torch import save_file

from alpamayo_jax.interop import hf_qwen3vl, model_dir
from alpamayo_jax.models import qwen3vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_b() -> qwen3vl.Qwen3VLConfig:
    """A tiny config with other shapes than the parity tests: 3 layers, MHA-free GQA 6/3, 1 DeepStack tap."""
    cfg = qwen3vl.qwen3vl_config("tiny")
    text = dataclasses.replace(
        cfg.text,
        num_layers=3,
        num_heads=6,
        num_kv_heads=3,
        head_dim=8,
        width=48,
        mlp_dim=80,
        mrope_sections=(2, 1, 1),
        rope_theta=1e4,
    )
    vision = dataclasses.replace(
        cfg.vision,
        depth=3,
        width=24,
        num_heads=3,
        mlp_dim=40,
        out_width=48,
        deepstack_layers=(1,),
        num_position_embeddings=64,
    )
    return dataclasses.replace(cfg, text=text, vision=vision)


def tool(name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", name), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_convert_sharded_checkpoint_and_run(tmp_path):
    cfg = config_b()
    hf = random_hf_model(cfg, seed=3)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="100KB")
    assert (hf_dir / "model.safetensors.index.json").exists()
    out = tmp_path / "converted"
    r = tool("convert_hf.py", "--hf_dir", str(hf_dir), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert model_dir.load_config(str(out)) == cfg

    rng = np.random.default_rng(0)
    arrays = image_prompt(
        cfg, [[(1, 4, 6), (1, 2, 2)], [(1, 2, 4)]], [rng.integers(0, 400, 6), rng.integers(0, 400, 3)], rng
    )
    arrays["mm_token_type_ids"] = (arrays["input_ids"] == cfg.image_token_id).astype(np.int64)
    np.savez(tmp_path / "in.npz", **arrays)
    r = tool(
        "run_vlm.py",
        "--ckpt",
        str(out),
        "--inputs",
        str(tmp_path / "in.npz"),
        "--out",
        str(tmp_path / "out.npz"),
        "--generate",
        "5",
    )
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "out.npz")
    ref = hf_logits(hf, {k: v for k, v in arrays.items() if k != "mm_token_type_ids"}, cfg.image_token_id)
    valid = arrays["attention_mask"].astype(bool)
    assert got["logits"].dtype == np.float32
    assert np.abs(got["logits"][valid] - ref[valid]).max() <= 2e-4
    assert got["tokens"].shape == (2, 5)


def _save_state(path, state):
    path.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_hf():
    cfg = qwen3vl.qwen3vl_config("tiny")
    model = random_hf_model(cfg)
    return cfg, model.config.to_dict(), dict(model.state_dict())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("model.language_model.layers.1.mlp.up_proj.weight"), "1 missing"),
        (lambda s: s.__setitem__("model.visual.extra.weight", torch.zeros(2)), "1 unexpected"),
        (lambda s: s.__setitem__("model.language_model.norm.weight", torch.zeros(3)), "1 mis-shaped"),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_mismatched_checkpoint_lists_tensors_and_writes_nothing(tmp_path, tiny_hf, mutate, message):
    _, hf_config, state = tiny_hf
    state = dict(state)
    mutate(state)
    hf_dir = tmp_path / "hf"
    _save_state(hf_dir, state)
    (hf_dir / "config.json").write_text(json.dumps(hf_config))
    r = tool("convert_hf.py", "--hf_dir", str(hf_dir), "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 1
    assert message in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_old_checkpoint_naming_is_accepted(tmp_path, tiny_hf):
    cfg, hf_config, state = tiny_hf
    renamed = {}
    for k, v in state.items():
        k = k.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        renamed[k] = v
    hf_dir = tmp_path / "hf"
    _save_state(hf_dir, renamed)
    params = hf_qwen3vl.load_params(str(hf_dir), cfg)
    np.testing.assert_array_equal(
        params["text"]["norm"]["scale"], state["model.language_model.norm.weight"].numpy()
    )


def test_config_from_hf_reads_both_rope_layouts(tiny_hf):
    cfg, hf_config, _ = tiny_hf
    assert hf_qwen3vl.config_from_hf(hf_config) == cfg
    old = json.loads(json.dumps(hf_config))
    rope = old["text_config"].pop("rope_parameters")
    old["text_config"]["rope_theta"] = rope["rope_theta"]
    old["text_config"]["rope_scaling"] = {
        "mrope_section": rope["mrope_section"],
        "mrope_interleaved": True,
        "rope_type": "default",
    }
    assert hf_qwen3vl.config_from_hf(old) == cfg
