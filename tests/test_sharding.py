"""Mesh construction and golden parameter / batch shardings of the tiny model under each rules table."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from alpamayo_jax import sharding
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.models import alpamayo

GOLDEN = {
    "dp": {
        "vlm/text/embed/embedding": P(None, None),
        "vlm/text/layers/attn/q/kernel": P(None, None, None, None),
        "vlm/text/layers/mlp/down/kernel": P(None, None, None),
        "vlm/vision/blocks/qkv/kernel": P(None, None, None, None, None),
        "expert/layers/k/kernel": P(None, None, None, None),
    },
    "fsdp": {
        "vlm/text/embed/embedding": P(None, "fsdp"),
        "vlm/text/lm_head/kernel": P("fsdp", None),
        "vlm/text/layers/attn/q/kernel": P(None, "fsdp", None, None),
        "vlm/text/layers/mlp/down/kernel": P(None, None, "fsdp"),
        "vlm/vision/blocks/qkv/kernel": P(None, "fsdp", None, None, None),
        "vlm/vision/pos_embed": P(None, "fsdp"),
        "expert/layers/k/kernel": P(None, "fsdp", None, None),
        "vlm/text/norm/scale": P(None),
    },
    "fsdp_tp": {
        "vlm/text/embed/embedding": P("tensor", "fsdp"),
        "vlm/text/lm_head/kernel": P("fsdp", "tensor"),
        "vlm/text/layers/attn/q/kernel": P(None, "fsdp", "tensor", None),
        "vlm/text/layers/attn/k/kernel": P(None, "fsdp", "tensor", None),
        "vlm/text/layers/attn/o/kernel": P(None, "tensor", "fsdp"),
        "vlm/text/layers/mlp/down/kernel": P(None, "tensor", "fsdp"),
        "vlm/vision/blocks/qkv/kernel": P(None, "fsdp", None, "tensor", None),
        "vlm/vision/merger/fc1/kernel": P(None, "tensor"),
        "expert/velocity/proj/kernel": P("fsdp", None),
        "vlm/text/norm/scale": P(None),
    },
}


@pytest.fixture(scope="module")
def boxed():
    cfg = alpamayo.alpamayo_config("tiny")
    b = batch_lib.fake(cfg, 4, seed=0)
    return jax.eval_shape(lambda x: alpamayo.Alpamayo(cfg).init(jax.random.key(0), x, jax.random.key(1)), b)[
        "params"
    ], b


@pytest.mark.parametrize("rules", sorted(GOLDEN))
def test_param_shardings_match_golden(boxed, rules):
    mesh = sharding.make_mesh((2, 2, 2))
    sh = sharding.param_shardings(boxed[0], mesh, sharding.rules_for(rules))
    got = {
        jax.tree_util.keystr(p, simple=True, separator="/"): s.spec
        for p, s in jax.tree_util.tree_leaves_with_path(sh)
    }
    for path, spec in GOLDEN[rules].items():
        assert got[path] == spec, path
    shapes = {
        jax.tree_util.keystr(p, simple=True, separator="/"): x.shape
        for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(boxed[0]))
    }
    for path, spec in got.items():  # every sharded dimension divides its mesh axes
        for dim, axis in zip(shapes[path], spec, strict=False):
            assert axis is None or dim % mesh.shape[axis] == 0, path


def test_batch_sharding_splits_the_batch_axis(boxed):
    mesh = sharding.make_mesh((2, 2, 2))
    sh = sharding.batch_shardings(boxed[1], mesh)
    assert sh.tokens_bl.spec == P(("data", "fsdp"), None)
    assert sh.positions_3bl.spec == P(None, ("data", "fsdp"), None)
    assert sh.images.patches_inp.spec == P(("data", "fsdp"), None, None, None)
    with pytest.raises(ValueError, match="global batch 6 does not divide"):
        sharding.check_batch_divides(6, mesh)


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
    assert dict(sharding.make_mesh((1, -1, 2)).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh((3, 2, 1))
    with pytest.raises(ValueError, match="unknown sharding rules"):
        sharding.rules_for("zero3")
