"""A converted model on disk: `config.json` (model kind + config as plain data) and `params/` (Orbax).

Written to `<dir>.tmp-*` and renamed into place, so an interrupted conversion never leaves a folder
that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from alpamayo_jax.models.qwen3vl import Qwen3VLConfig

FORMAT = "alpamayo_jax.model_dir/1"


def save(
    out_dir: str,
    cfg: Qwen3VLConfig,
    params: Any,
    extra: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> None:
    """Writes config + params atomically; `files` (name -> source path) are copied alongside."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists; choose a new --out or remove it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(tmp, "params"), params)
        meta = {"format": FORMAT, "model": "qwen3vl", "config": cfg.to_dict(), **(extra or {})}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(meta, f, indent=2)
        for name, src in (files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_config(model_dir: str) -> Qwen3VLConfig:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{model_dir}: no config.json (is this a converted model folder?)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return Qwen3VLConfig.from_dict(meta["config"])


def load_params(model_dir: str, target: Any = None, dtype: Any = None) -> Any:
    """Restores params; `target` (abstract arrays with shardings) restores directly sharded.

    `dtype` casts every floating array (e.g. 'bfloat16' for inference).
    """
    path = os.path.join(os.path.abspath(model_dir), "params")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{model_dir}: no params/ folder")
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(path, target) if target is not None else ckpt.restore(path)
    if dtype is None:
        return params

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, params)
