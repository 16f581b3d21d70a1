"""Orbax checkpoints of a run and the one function that decides where a run starts from.

A checkpoint step folder holds `state` (the TrainState, restored directly sharded), `data` (the input
iterator state, JSON) and `config` (the run's config, JSON). Resume order: the latest checkpoint in
the workdir > `checkpoint.resume_from` > `init_from` (selected parameter subtrees from another stage's
checkpoint or a converted HF model folder, then optionally the vision tokenizer's subtrees from a
triplane pre-training run) > scratch.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alpamayo_jax import trajectory_tokens
from alpamayo_jax.interop import model_dir
from alpamayo_jax.train.optimizer import matches, path_str
from alpamayo_jax.train.state import TrainState


def manager(directory: str, every_steps: int, keep_last: int, keep_every: int, async_save: bool = True):
    """CheckpointManager saving every `every_steps`, keeping the last `keep_last` plus every
    `keep_every`-th step (0: none)."""
    policies = [ocp.checkpoint_managers.LatestN(keep_last)]
    if keep_every:
        policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "data", "config"), options=options
    )


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    data_state: dict,
    config_json: str,
    force: bool = False,
) -> bool:
    """Saves (asynchronously) if the policy says so or `force`; returns whether a save started."""
    return mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(json.loads(config_json)),
        ),
        force=force,
    )


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
    """The state (sharded like `abstract_state`'s shardings) and data iterator state of `step`."""
    out = mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return out["state"], out["data"]


class Preemption:
    """Turns SIGTERM into a flag the loop polls, so the run saves and exits cleanly; restores the
    previous handler on exit."""

    def __init__(self):
        self.requested = False

    def __enter__(self) -> Preemption:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _checkpoint_step_dir(path: str) -> tuple[str, int]:
    """(workdir-with-checkpoints, step) for a workdir (latest step) or a step folder `<dir>/<step>`."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(base)
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps in {ckpt_dir}")
    return ckpt_dir, max(steps)


def _restore_params_of(path: str, shardings_for: Callable[[str, tuple], Any]) -> Any:
    """Params of another run's checkpoint (workdir or step folder), each leaf placed by
    `shardings_for(path, shape)`; the optimizer state there is not read."""
    ckpt_dir, step = _checkpoint_step_dir(path)
    item = os.path.join(ckpt_dir, str(step), "state")
    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(item)
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
        target = jax.tree_util.tree_map_with_path(
            lambda p, m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=shardings_for(path_str(p), m.shape)),
            {"params": dict(tree)["params"]},
        )
        args = ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        )
        return ckpt.restore(item, args=args)["params"]


def _restore_params_of_model_dir(path: str, mount: str, shardings_for: Callable[[str, tuple], Any]) -> Any:
    """Params of a converted HF model folder, placed under `mount` (e.g. 'vlm')."""
    params_dir = os.path.join(os.path.abspath(path), "params")
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"init_from model folder {path}: no params/ folder")
    with ocp.StandardCheckpointer() as ckpt:
        meta = ckpt.metadata(params_dir)
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
    target = jax.tree_util.tree_map_with_path(
        lambda p, m: jax.ShapeDtypeStruct(
            m.shape, m.dtype, sharding=shardings_for(f"{mount}/{path_str(p)}", m.shape)
        ),
        dict(tree),
    )
    return {mount: model_dir.load_params(path, target)}


def _graft(params: Any, source: Any, subtrees: Sequence[str], shardings: Any) -> Any:
    """`params` with every leaf under one of `subtrees` taken from `source` (same shape required)."""
    src = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
    found = {s: False for s in subtrees}

    def one(path, x, sharding):
        name = path_str(path)
        hits = [s for s in subtrees if matches(name, s)]
        if not hits:
            return x
        if name not in src:
            raise KeyError(f"init_from: parameter {name} (subtree {hits[0]!r}) is not in the source")
        for s in hits:
            found[s] = True
        if src[name].shape != x.shape:
            raise ValueError(f"init_from: {name} has shape {src[name].shape} in the source, {x.shape} here")
        return jax.device_put(src[name].astype(x.dtype), sharding)

    out = jax.tree_util.tree_map_with_path(one, params, shardings)
    missing = [s for s, f in found.items() if not f]
    if missing:
        raise KeyError(f"init_from: subtrees {missing} match no parameter of this model")
    return out


def _extend_vocab_if_needed(source: Any, vocab: int, rng: jax.Array) -> Any:
    """Grows the source's text embedding / LM head to `vocab` rows (new trajectory tokens)."""
    if "vlm" not in source:
        return source
    embed = source["vlm"]["text"]["embed"]["embedding"]
    if embed.shape[0] == vocab:
        return source
    vlm = trajectory_tokens.extend_vocab(source["vlm"], embed.shape[0], vocab, rng)
    return dict(source, vlm=vlm)


def resume_or_init(
    mngr: ocp.CheckpointManager,
    config: Any,
    init_state: Callable[[], TrainState],
    abstract_state: TrainState,
    spec_for: Callable[[str, tuple], Any],
    layout: Callable[[Any], Any] = lambda params: params,
) -> tuple[TrainState, dict | None, str]:
    """(state, data iterator state or None, where it came from), in the resume order of the module doc.

    init_state: jitted scratch initialisation (directly sharded); spec_for(path, shape): the sharding
    of a parameter path for an arbitrary shape (source checkpoints may differ in vocabulary);
    layout(params): init_from sources in this run's layer layout (a scanned checkpoint's stacked
    layers unstacked for a `model.scan_layers=False` run, or the other way round).
    """
    latest = mngr.latest_step()
    if latest is not None:
        state, data = restore(mngr, latest, abstract_state)
        return state, data, f"resumed from {mngr.directory}/{latest}"
    resume = config.checkpoint.resume_from
    if resume:
        ckpt_dir, step = _checkpoint_step_dir(resume)
        with ocp.CheckpointManager(ckpt_dir, item_names=("state", "data", "config")) as other:
            state, data = restore(other, step, abstract_state)
        return state, data, f"resumed from {ckpt_dir}/{step}"
    init = config.init_from
    if init.kind not in ("checkpoint", "model_dir"):
        raise ValueError(f"init_from.kind {init.kind!r}: expected 'checkpoint' or 'model_dir'")
    state = init_state()
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.params)
    params, done = state.params, []
    if init.path:
        if init.kind == "checkpoint":
            source = _restore_params_of(init.path, spec_for)
        else:
            source = _restore_params_of_model_dir(init.path, "vlm", spec_for)
        if "vlm" in params:
            vocab = params["vlm"]["text"]["embed"]["embedding"].shape[0]
            source = _extend_vocab_if_needed(source, vocab, jax.random.key(int(np.uint32(config.seed) + 1)))
        source = layout(source)
        params = _graft(params, source, tuple(init.subtrees), shardings)
        done.append(f"initialised {list(init.subtrees)} from {init.path}")
    if init.get("tokenizer_path"):
        source = layout(_restore_params_of(init.tokenizer_path, spec_for))
        params = _graft(params, source, tuple(init.tokenizer_subtrees), shardings)
        done.append(f"initialised {list(init.tokenizer_subtrees)} from {init.tokenizer_path}")
    if not done:
        return state, None, "initialised from scratch"
    ema = params if state.ema is not None else None
    return state.replace(params=params, ema=ema), None, "; ".join(done)
