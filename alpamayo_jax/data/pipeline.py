"""The grain loader: TFDS ArrayRecord sources -> per-stage samples -> fixed-length `Batch`es.

Order of operations per source: host shard (`process_index::process_count`, disjoint across hosts) ->
repeat over epochs -> seeded shuffle -> sample transform (seeded per index) -> batch with length
bucketing. Sources are mixed per batch with weights (each batch comes from one source, so its
images and lengths match), then worker processes prefetch. The iterator's `get_state()` /
`set_state()` go into the training checkpoint: a resumed run sees exactly the same batches.

data_cfg (dict-like): data_dir, sources [{name, split, stage, weight}], tokenizer {kind, path},
batch_size (per host), seed, num_epochs (None: forever), shuffle, worker_count (processes),
read_threads / prefetch (threads and batches buffered per process; batches are large, keep it
small), length_buckets, patch_dtype ("uint8", the default: pixel rows that the vision tower normalises
on the device, an eighth of the float32 bytes; "float32" or "bfloat16": rows normalised and repeated
over the temporal patch on the host, as the reference processor makes them).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator, Mapping

import absl.flags
import grain
import jax
import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds

from alpamayo_jax.data import tokenizer as tokenizer_lib
from alpamayo_jax.data import transforms
from alpamayo_jax.data.batch import Batch
from alpamayo_jax.models.triplane import Cameras
from alpamayo_jax.models.vision import VisionInputs

PATCH_DTYPES = {"uint8": np.uint8, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def data_source(data_dir: str | os.PathLike, name: str, split: str):
    """The ArrayRecord data source of `name`/`split` (newest version under `data_dir/name`)."""
    root = pathlib.Path(data_dir) / name
    versions = (
        sorted(p for p in root.glob("*.*.*") if (p / "dataset_info.json").is_file()) if root.is_dir() else []
    )
    if not versions:
        raise FileNotFoundError(f"dataset {name!r} is not built under {data_dir} (no {root}/<version>)")
    builder = tfds.builder_from_directory(str(versions[-1]))
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(builder.info.splits)}")
    return builder.as_data_source(split=split)


class SampleFn(grain.transforms.RandomMap):
    """Example -> sample for one stage; loads the tokenizer once per worker process."""

    def __init__(self, stage: int, tokenizer_cfg: Mapping, model_cfg, patch_dtype: str = "uint8"):
        if patch_dtype not in PATCH_DTYPES:
            raise ValueError(f"patch_dtype {patch_dtype!r}; known: {', '.join(PATCH_DTYPES)}")
        self.stage, self.model_cfg, self.patch_dtype = stage, model_cfg, patch_dtype
        self.tokenizer_cfg = dict(tokenizer_cfg)
        self._tok = None

    def __getstate__(self):
        return self.__dict__ | {"_tok": None}

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if self._tok is None:
            self._tok = tokenizer_lib.load(
                self.tokenizer_cfg["kind"], self.tokenizer_cfg["path"], self.model_cfg
            )
        dtype = PATCH_DTYPES[self.patch_dtype]
        return transforms.example_sample(element, self.stage, self._tok, self.model_cfg, rng, dtype)


NESTED_FIELDS = {"images": VisionInputs, "cameras": Cameras}


def batch_to_dict(batch: Batch) -> dict:
    """A `Batch` as nested dicts of arrays: grain moves those between processes in shared memory."""
    out = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    for name in NESTED_FIELDS:
        value = out[name]
        if value is not None:
            out[name] = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return out


def batch_from_dict(d: dict) -> Batch:
    nested = {k: None if d.get(k) is None else cls(**d[k]) for k, cls in NESTED_FIELDS.items()}
    return Batch(**(d | nested))


class BatchFn:
    """Samples -> `Batch` (as `batch_to_dict`) at the smallest fitting length bucket."""

    def __init__(self, model_cfg, buckets: tuple[int, ...]):
        self.model_cfg, self.buckets = model_cfg, tuple(buckets)

    def __call__(self, samples) -> dict:
        return batch_to_dict(transforms.batch_samples(list(samples), self.model_cfg, self.buckets))


def _source_dataset(src: Mapping, data_cfg: Mapping, model_cfg, index: int, count: int, seed: int):
    ds = grain.MapDataset.source(data_source(data_cfg["data_dir"], src["name"], src["split"]))
    ds = ds[index::count]
    if len(ds) < data_cfg["batch_size"]:
        raise ValueError(
            f"{src['name']}/{src['split']}: {len(ds)} examples on host {index} of {count}, "
            f"fewer than the batch size {data_cfg['batch_size']}"
        )
    ds = ds.repeat(data_cfg.get("num_epochs"))
    if data_cfg.get("shuffle", True):
        ds = ds.shuffle(seed=seed)
    fn = SampleFn(int(src["stage"]), data_cfg["tokenizer"], model_cfg, data_cfg.get("patch_dtype", "uint8"))
    ds = ds.random_map(fn, seed=seed + 1)
    return ds.batch(
        data_cfg["batch_size"], drop_remainder=True, batch_fn=BatchFn(model_cfg, data_cfg["length_buckets"])
    )


def make_dataset(
    data_cfg: Mapping, model_cfg, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """The host's dataset of `Batch`es (see the module docstring for `data_cfg`)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    sources = list(data_cfg["sources"])
    if not sources:
        raise ValueError("data_cfg.sources is empty")
    seed = int(data_cfg.get("seed", 0))
    parts = [
        _source_dataset(s, data_cfg, model_cfg, process_index, process_count, seed + 1000 * i)
        for i, s in enumerate(sources)
    ]
    weights = [float(s.get("weight", 1.0)) for s in sources]
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    read = grain.ReadOptions(
        num_threads=int(data_cfg.get("read_threads", 2)),
        prefetch_buffer_size=int(data_cfg.get("prefetch", 2)),
    )
    ds = ds.to_iter_dataset(read)
    workers = int(data_cfg.get("worker_count", 0))
    if workers > 0:
        if not absl.flags.FLAGS.is_parsed():  # grain's worker set-up reads absl flags (defaults are fine)
            absl.flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds.map(batch_from_dict)


def make_loader(
    data_cfg: Mapping, model_cfg, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """A checkpointable iterator of NumPy `Batch`es for this host (`get_state` / `set_state`)."""
    return iter(make_dataset(data_cfg, model_cfg, process_index, process_count))


def _batch_sharding(mesh: jax.sharding.Mesh, axes: str | tuple[str, ...], ndim: int, batch_dim: int):
    spec = [None] * ndim
    spec[batch_dim] = axes
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def to_global(batch: Batch, mesh: jax.sharding.Mesh, axes: str | tuple[str, ...] = "data") -> Batch:
    """Host-local NumPy batch -> global arrays with the batch dimension split over mesh `axes`
    (dimension 1 of `positions_3bl`, dimension 0 elsewhere)."""

    def put(x, batch_dim=0):
        return jax.make_array_from_process_local_data(_batch_sharding(mesh, axes, x.ndim, batch_dim), x)

    out = jax.tree_util.tree_map(put, batch.replace(positions_3bl=None))
    return out.replace(positions_3bl=put(batch.positions_3bl, 1))


def device_prefetch(
    batches: Iterator[Batch], mesh: jax.sharding.Mesh, axes: str | tuple[str, ...] = "data", size: int = 2
) -> Iterator[Batch]:
    """Puts the next `size` batches on device ahead of use."""
    queue: list[Batch] = []
    for b in batches:
        queue.append(to_global(b, mesh, axes))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue
