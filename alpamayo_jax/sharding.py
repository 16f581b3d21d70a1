"""Device mesh (data, fsdp, tensor) and the tables mapping the models' logical axis names to it.

Every parameter and activation carries logical names (see `models/layers.py`); a rules table is plain
data, one per parallelism style, so the whole layout of a run is readable here. A parameter dimension
that the mapped mesh axes do not divide is replicated instead (small biases, the 3-way qkv axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_PARAM_NAMES = (
    "embed",
    "mlp",
    "q_heads",
    "kv_heads",
    "head_dim",
    "q_heads_head_dim",
    "vocab",
    "norm",
    "layers",
    "qkv",
    "gate_up",
    "merged",
    "merged_out",
    "patch",
    "vit_positions",
    "action_in",
    "action_out",
)
_ACTIVATION_NAMES = ("activation_length", "activation_embed", "activation_heads", "activation_mlp")


def _replicated_rest(*rules: tuple[str, Any]) -> Rules:
    """`rules` followed by an explicit `None` for every other known logical name."""
    named = {name for name, _ in rules}
    rest = tuple((n, None) for n in _PARAM_NAMES + _ACTIVATION_NAMES if n not in named)
    return (("activation_batch", BATCH_AXES), *rules, *rest)


RULES: dict[str, Rules] = {
    # Pure data parallel: parameters replicated, batch split over data x fsdp.
    "dp": _replicated_rest(),
    # FSDP (ZeRO-3): parameters split along their model width over `fsdp`, gathered per layer.
    "fsdp": _replicated_rest(("embed", "fsdp"), ("vit_positions", None)),
    # FSDP + Megatron-style tensor parallelism: heads / MLP / vocab over `tensor`.
    "fsdp_tp": _replicated_rest(
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("q_heads", "tensor"),
        ("kv_heads", "tensor"),
        ("q_heads_head_dim", "tensor"),
        ("vocab", "tensor"),
        ("merged_out", "tensor"),
        ("activation_heads", "tensor"),
        ("activation_mlp", "tensor"),
    ),
}


def rules_for(name: str) -> Rules:
    if name not in RULES:
        raise ValueError(f"unknown sharding rules {name!r}; known: {sorted(RULES)}")
    return RULES[name]


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one entry may be -1 (all remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape} must have 3 entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, have {len(devices)}")
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
    )


def divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with every dimension the mapped mesh axes do not divide replicated."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if dim % size == 0 else None)
    return PartitionSpec(*out)


def param_specs(boxed_params: Any, rules: Rules) -> Any:
    """PartitionSpecs (mesh axes) of a tree of `nn.Partitioned` parameters (plain leaves: replicated)."""
    logical = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh(logical, rules)


def param_shardings(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a boxed (abstract or concrete) parameter tree, unboxed structure."""
    specs = param_specs(boxed_params, rules)
    shapes = nn.unbox(boxed_params)
    return jax.tree_util.tree_map(
        lambda spec, x: NamedSharding(mesh, divisible_spec(spec, x.shape, mesh)),
        specs,
        shapes,
        is_leaf=lambda s: isinstance(s, PartitionSpec),
    )


def like_params(tree: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a tree holding copies of the params (optimizer moments, EMA): a leaf whose path
    ends with a parameter's path and has its shape takes that sharding; anything else is replicated."""
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(params_sharding)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        for i in range(len(path)):
            sharding = by_path.get(jax.tree_util.keystr(path[i:]))
            if sharding is not None:
                return NamedSharding(mesh, divisible_spec(sharding.spec, np.shape(leaf), mesh))
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_axis(field: str) -> int:
    """The batch dimension of a `Batch` field: 1 for `*_3bl` (M-RoPE positions), else 0."""
    return 1 if field.endswith("_3bl") else 0


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    """NamedShardings of a `Batch` (or its abstract shape): the batch axis over (data, fsdp)."""

    def one(path, leaf):
        field = path[0].name if hasattr(path[0], "name") else str(path[0])
        spec = [None] * np.ndim(leaf)
        spec[batch_axis(field)] = BATCH_AXES
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree_util.tree_map_with_path(one, batch)


def check_batch_divides(global_batch: int, mesh: Mesh) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % n:
        raise ValueError(
            f"global batch {global_batch} does not divide the data x fsdp devices ({n}) of mesh "
            f"{dict(mesh.shape)}"
        )
