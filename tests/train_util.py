"""Shared helpers of the trainer tests: small 1-device configs and a session compilation cache."""

import importlib
import os

import jax
import numpy as np


def use_compilation_cache(tmp_path_factory) -> None:
    """One persistent XLA cache for the whole test session (the same step compiles once), shared by the
    pytest-xdist workers (their base temp folders are siblings in the session's): a program that tests
    on both workers build is compiled by the first one only."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def tiny_config(stage: str, steps: int, **overrides):
    c = importlib.import_module(f"experiments.{stage}").get_config("tiny")
    c.total_steps = steps
    c.mesh.shape = (1, 1, 1)
    c.data.global_batch = 2
    c.checkpoint.every_steps = 1
    c.checkpoint.async_save = False
    c.eval.every_steps = 0
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def leaves(tree, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        name = jax.tree_util.keystr(p, simple=True, separator="/")
        if name.startswith(prefix):
            out[name] = np.asarray(x)
    return out
