"""One trainer for every stage: mesh, input, model, shard, step, checkpoint, eval, loop.

A stage differs only by its config (experiments/*.py): trainable filter, loss weights, data, init_from,
and the model (`model.kind`: the policy, or the triplane rendering pre-training), whose losses the loss
weights pick.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from clu import parameter_overview
from jax.sharding import NamedSharding, PartitionSpec

from alpamayo_jax import sharding
from alpamayo_jax.action_space import ControlStats
from alpamayo_jax.models import alpamayo
from alpamayo_jax.models.alpamayo import Alpamayo, AlpamayoConfig, alpamayo_config
from alpamayo_jax.models.triplane_render import RenderConfig, TriplanePretrain
from alpamayo_jax.train import checkpoint, metric_collections, optimizer
from alpamayo_jax.train.evaluate import make_trajectory_eval
from alpamayo_jax.train.input import make_input
from alpamayo_jax.train.metrics import MetricWriter
from alpamayo_jax.train.state import TrainState
from alpamayo_jax.train.step import make_eval_step, make_train_step


def log(*args: Any) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def mesh_of(mesh_cfg: Any) -> jax.sharding.Mesh:
    """The run's mesh; a shape without -1 smaller than the device count uses the first devices."""
    shape = tuple(mesh_cfg.shape)
    devices = jax.devices()
    if -1 not in shape:
        devices = devices[: math.prod(shape)]
    return sharding.make_mesh(shape, devices)


def attention_impl_of(name: str) -> str | None:
    """`model.attention`: "auto" is cuDNN flash attention on GPUs and XLA's elsewhere."""
    known = ("auto", "cudnn", "xla")
    if name not in known:
        raise ValueError(f"model.attention {name!r}; known: {known}")
    if name == "auto":
        return "cudnn" if jax.default_backend() == "gpu" else None
    return None if name == "xla" else name


def model_config_of(model: Any):
    return alpamayo_config(
        model.variant,
        vision_tokenizer=model.vision_tokenizer,
        triplane=dict(model.triplane),
        flex=dict(model.flex),
        control_stats=ControlStats(**model.control_stats),
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        remat=model.remat,
        scan_layers=model.scan_layers,
        attention_impl=attention_impl_of(model.attention),
    )


def model_of(model: Any, model_cfg: AlpamayoConfig) -> nn.Module:
    """The module a run trains (`model.kind`): `Alpamayo`, or `TriplanePretrain` of the config's
    triplane tokenizer with `model.render` (RenderConfig fields plus `out_hw`)."""
    if model.kind == "alpamayo":
        return Alpamayo(model_cfg)
    if model.kind == "triplane_render":
        if model_cfg.vision_tokenizer != "triplane":
            raise ValueError("model.kind 'triplane_render' needs model.vision_tokenizer 'triplane'")
        render = dict(model.render)
        out_hw = tuple(render.pop("out_hw"))
        return TriplanePretrain(model_cfg.triplane, RenderConfig(**render), out_hw)
    raise ValueError(f"model.kind {model.kind!r}; known: 'alpamayo', 'triplane_render'")


def host_to_global(batch: Any, shardings: Any) -> Any:
    """Host-local NumPy batch -> global arrays (each host holds its slice of the batch axis)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), batch, shardings
    )


def flops_of(compiled: Any) -> float:
    """FLOPs of one call from XLA's cost analysis (0 when unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def check_finite(step: int, metrics: dict[str, float]) -> None:
    for name in ("loss", "grad_norm"):
        if not math.isfinite(metrics[name]):
            raise FloatingPointError(f"step {step}: {name} is {metrics[name]}; stopping the run")


def interval_record(
    steps: list[tuple[int, Any]], seconds: float, tokens: int, step_flops: float, peak_flops: float
) -> dict[str, float]:
    """One log record from the per-step collections `(step, TrainMetrics)` since the last log point
    (which took `seconds` and consumed `tokens`): the merged collection's values, steps/s, tokens/s and
    (when both FLOP numbers are known) MFU. A non-finite loss or grad norm stops the run naming its step.
    """
    host = jax.device_get([m for _, m in steps])
    for (step, _), m in zip(steps, host, strict=True):
        check_finite(step, {k: float(getattr(m, k).compute()) for k in ("loss", "grad_norm")})
    record = metric_collections.to_floats(metric_collections.merge_all(host))
    seconds = max(seconds, 1e-9)
    record.update(steps_per_s=len(steps) / seconds, tokens_per_s=tokens / seconds)
    if peak_flops > 0 and step_flops > 0:
        record["mfu"] = step_flops * len(steps) / seconds / peak_flops
    return record


def progress(step: int, total: int, metrics: dict[str, float], started: float, first_step: int) -> str:
    done = step - first_step
    rate = done / max(time.time() - started, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("inf")
    eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
    return f"step {step}/{total} loss {metrics['loss']:.4f} {rate:.2f} steps/s ETA {eta_s}"


def parameter_table(params: Any, trainable: Any) -> str:
    """clu's table of the parameters (name, shape, dtype, size, sharding) and the trainable count."""
    sizes = jax.tree.map(lambda x, t: math.prod(x.shape) if t else 0, params, trainable)
    total = parameter_overview.count_parameters(params)
    table = parameter_overview.get_parameter_overview(params, include_stats="sharding")
    return f"{table}\ntrainable: {sum(jax.tree.leaves(sizes)):,} of {total:,} parameters"


def check_paths(config: Any) -> None:
    """Fails before any compute when a checkpoint the config names does not exist."""
    for field, path in (
        ("checkpoint.resume_from", config.checkpoint.resume_from),
        ("init_from.path", config.init_from.path),
        ("init_from.tokenizer_path", config.init_from.tokenizer_path),
    ):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{field}: checkpoint {path} does not exist")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run needs before its first step: mesh and rules, the model, the abstract state and
    its shardings, the jitted init / train step / eval, and the input iterators."""

    mesh: jax.sharding.Mesh
    rules: Any
    model: Alpamayo
    global_example: Any
    batch_sh: Any
    params_sh: Any
    abstract_state: TrainState
    spec_for: Callable[[str, tuple], NamedSharding]
    layout: Callable[[Any], Any]
    init: Callable[[], TrainState]
    step_jit: Any
    eval_fn: Any
    train_iter: Any
    eval_iter: Any

    def compile_step(self) -> Any:
        """Ahead-of-time compile of the train step (once)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
            return self.step_jit.lower(self.abstract_state, self.global_example, key).compile()


def build(config: Any) -> Setup:
    """Mesh, input, model, shardings and the jitted functions of `config` (no compute yet)."""
    mesh = mesh_of(config.mesh)
    rules = sharding.rules_for(config.mesh.rules)
    sharding.check_batch_divides(config.data.global_batch, mesh)
    log(f"mesh {dict(mesh.shape)} rules {config.mesh.rules} on {jax.device_count()} devices")
    # Input (host-local batches; the global batch stacks every host's along the batch axis).
    model_cfg = model_config_of(config.model)
    train_iter = make_input(config.data, model_cfg, config.seed)
    eval_iter = make_input(config.data, model_cfg, config.seed + 1, train=False)
    example = next(make_input(config.data, model_cfg, config.seed))
    global_example = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.ShapeDtypeStruct(
            tuple(
                d * jax.process_count() if i == sharding.batch_axis(p[0].name) else d
                for i, d in enumerate(x.shape)
            ),
            x.dtype,
        ),
        example,
    )
    batch_sh = sharding.batch_shardings(global_example, mesh)
    # Model.
    model = model_of(config.model, model_cfg)
    init_rng, run_rng = jax.random.split(jax.random.key(config.seed))
    boxed = jax.eval_shape(lambda b: model.init(init_rng, b, init_rng), global_example)["params"]
    abstract_params = nn.unbox(boxed)
    trainable = optimizer.trainable_mask(abstract_params, config.trainable.include, config.trainable.frozen)
    tx = optimizer.make_optimizer(config.optim, config.trainable, abstract_params, config.total_steps)
    use_ema = config.optim.ema_decay > 0
    # Shard: abstract state -> shardings -> jitted init that creates it directly sharded.
    params_sh = sharding.param_shardings(boxed, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init_fn() -> TrainState:
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), global_example)
        if isinstance(model, Alpamayo) and not alpamayo.is_scanned(model_cfg):
            # Per-layer layout: initialised in the scanned layout and unstacked (the same values for a
            # seed as the scanned model; XLA took minutes to compile 80 layers' initialisers one by one).
            scanned = Alpamayo(alpamayo.scanned_layout(model_cfg))
            stacked = nn.unbox(scanned.init(init_rng, zeros, init_rng))["params"]
            params = alpamayo.to_layout(stacked, model_cfg)
        else:
            params = nn.unbox(model.init(init_rng, zeros, init_rng))["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng_key=jax.random.key_data(run_rng),
            ema=params if use_ema else None,
        )

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract_state = jax.eval_shape(init_fn)
    state_sh = TrainState(
        step=replicated,
        params=params_sh,
        opt_state=sharding.like_params(abstract_state.opt_state, params_sh, mesh),
        rng_key=replicated,
        ema=params_sh if use_ema else None,
    )
    abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sh
    )
    log(parameter_table(abstract_state.params, trainable))
    specs = {optimizer.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(params_sh)}

    def spec_for(path: str, shape: tuple) -> NamedSharding:
        key = path.removeprefix("params/")
        spec = specs[key] if key in specs else stacked_spec(key) or PartitionSpec()
        return NamedSharding(mesh, sharding.divisible_spec(spec, shape, mesh))

    def stacked_spec(key: str) -> PartitionSpec | None:
        """A scanned checkpoint's stacked layer parameter restored for a per-layer run: layer 0's
        spec behind the layer axis (`layout` then unstacks it)."""
        for stack in alpamayo.LAYER_STACKS:
            if key.startswith(stack + "/"):
                per_layer = specs.get(f"{stack}/0/{key.removeprefix(stack + '/')}")
                return None if per_layer is None else PartitionSpec(None, *per_layer)
        return None

    def layout(params: Any) -> Any:
        """Restored parameters (either layer layout) -> this run's."""
        return alpamayo.to_layout(params, model_cfg) if isinstance(model, Alpamayo) else params

    def jitted_init() -> TrainState:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jax.jit(init_fn, out_shardings=state_sh)()

    # Step: jitted once with explicit shardings, state donated.
    max_loss_tokens = model_cfg.max_loss_tokens
    collect = metric_collections.averages
    if isinstance(model, Alpamayo):
        collect = functools.partial(metric_collections.train_metrics, max_loss_tokens=max_loss_tokens)
    train_step = make_train_step(
        model, tx, dict(config.model.loss_weights), trainable, collect, config.optim.ema_decay
    )
    ce_eval = make_eval_step(model, dict(config.model.loss_weights))
    traj_eval = None
    if isinstance(model, Alpamayo):
        traj_eval = make_trajectory_eval(model, config.eval.num_samples, config.eval.flow_steps)

    def eval_step(params: Any, batch: Any, rng: jax.Array) -> metric_collections.Collection:
        if traj_eval is None:
            return metric_collections.averages(ce_eval(params, batch, rng))
        out = {**ce_eval(params, batch, rng), **traj_eval(params, batch, rng)}
        return metric_collections.eval_metrics(out, batch, max_loss_tokens, config.eval.num_samples)

    step_jit = jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sh, replicated),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )
    eval_fn = jax.jit(eval_step, in_shardings=(params_sh, batch_sh, replicated), out_shardings=replicated)
    return Setup(
        mesh=mesh,
        rules=rules,
        model=model,
        global_example=global_example,
        batch_sh=batch_sh,
        params_sh=params_sh,
        abstract_state=abstract_state,
        spec_for=spec_for,
        layout=layout,
        init=jitted_init,
        step_jit=step_jit,
        eval_fn=eval_fn,
        train_iter=train_iter,
        eval_iter=eval_iter,
    )


def train(config: Any, workdir: str) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains `config` in `workdir` (resuming from its checkpoints); returns the final state and the
    logged records (one per log point: the step collections merged over the steps since the last one)."""
    check_paths(config)
    os.makedirs(workdir, exist_ok=True)
    config_json = config.to_json_best_effort(indent=2)
    run = build(config)
    mesh, rules, batch_sh = run.mesh, run.rules, run.batch_sh
    train_iter, eval_iter = run.train_iter, run.eval_iter
    # Checkpoint.
    mngr = checkpoint.manager(
        os.path.join(workdir, "checkpoints"),
        config.checkpoint.every_steps,
        config.checkpoint.keep_last,
        config.checkpoint.keep_every,
        config.checkpoint.async_save,
    )
    state, data_state, source = checkpoint.resume_or_init(
        mngr, config, run.init, run.abstract_state, run.spec_for, run.layout
    )
    if data_state is not None:
        train_iter.set_state(data_state)
    log(source)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    # Eval.

    def evaluate(params: Any, step: int) -> dict[str, float]:
        """EvalMetrics merged over `eval.num_batches` held-out batches (the same ones every time)."""
        batches = []
        eval_iter.set_state({"position": 0, "seed": config.seed + 1})
        for i in range(config.eval.num_batches):
            batch = host_to_global(next(eval_iter), batch_sh)
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                batches.append(run.eval_fn(params, batch, jax.random.fold_in(jax.random.key(config.seed), i)))
        merged = metric_collections.merge_all(jax.device_get(batches))
        record = {f"eval/{k}": v for k, v in metric_collections.to_floats(merged).items()}
        writer.write(step, record)
        return record

    # Loop.
    history: list[dict[str, float]] = []
    pending: list[tuple[int, Any]] = []
    pending_tokens = 0
    first_step = int(state.step)
    step_fn = run.compile_step() if first_step < config.total_steps else None
    step_flops = flops_of(step_fn) if step_fn is not None else 0.0
    started = time.time()
    last_log = time.time()
    peak = config.mesh.peak_tflops_per_device * 1e12 * mesh.size
    with checkpoint.Preemption() as preemption:
        for step in range(first_step, config.total_steps):
            host_batch = next(train_iter)
            pending_tokens += int(np.asarray(host_batch.valid_bl).sum()) * jax.process_count()
            batch = host_to_global(host_batch, batch_sh)
            rng = jax.random.fold_in(state.rng, step)
            state, metrics = step_fn(state, batch, rng)
            done = step + 1
            pending.append((done, metrics))
            last = done == config.total_steps
            if done % config.log_every == 0 or last or preemption.requested:
                now = time.time()
                record = interval_record(pending, now - last_log, pending_tokens, step_flops, peak)
                record["step"] = done
                writer.write(done, record)
                history.append(record)
                last_log, pending, pending_tokens = now, [], 0
                log(progress(done, config.total_steps, record, started, first_step))
            checkpoint.save(
                mngr, done, state, train_iter.get_state(), config_json, force=last or preemption.requested
            )
            if config.eval.every_steps and (done % config.eval.every_steps == 0 or last):
                log(f"eval at step {done}: {json.dumps(evaluate(state.params, done))}")
            if preemption.requested:
                log(f"SIGTERM: saved step {done}, exiting")
                break
    mngr.wait_until_finished()
    mngr.close()
    sys.stdout.flush()
    return state, history
