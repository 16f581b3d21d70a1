"""Input-pipeline throughput at the release shapes: 4 cameras x 4 frames at 320x576 (SPEC 1.2).

Makes a few synthetic clips, builds `synthetic_drive` from them, then times the grain loader (JPEG
decode, patch rows, tokenisation, prompt assembly, collation into a `Batch`) for stage 2, for each
patch dtype (`uint8`: pixel rows normalised in the vision tower; `float32` / `bfloat16`: rows
normalised and repeated over the temporal patch on the host): the transforms alone in one process
(samples/s per core), and the loader in this process (`read_threads` threads) and with 1 ...
`workers` worker processes (steady state after the first batch; the start-up apart). Also reports
the bytes of a batch per sample and the load average (the CPU may be shared).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import tempfile
import time
from typing import Any

import jax
import numpy as np

from alpamayo_jax.data import drive_dataset, pipeline, synthetic
from alpamayo_jax.models import alpamayo

SP_MODEL = pathlib.Path(__file__).parents[2] / "data" / "tokenizers" / "tiny_sp.model"


def _per_core(data_cfg: dict, cfg, num_batches: int) -> float:
    """Samples per second of the sample and batch transforms in this process (one core, no grain)."""
    source = pipeline.data_source(data_cfg["data_dir"], "synthetic_drive", "train")
    fn = pipeline.SampleFn(2, data_cfg["tokenizer"], cfg, data_cfg["patch_dtype"])
    batch_fn = pipeline.BatchFn(cfg, data_cfg["length_buckets"])  # returns the dict form of a Batch
    rng = np.random.default_rng(0)
    size = data_cfg["batch_size"]
    start = time.perf_counter()
    for i in range(num_batches):
        batch_fn([fn.random_map(source[(i * size + j) % len(source)], rng) for j in range(size)])
    return num_batches * size / (time.perf_counter() - start)


def _loader(data_cfg: dict, cfg, num_batches: int) -> tuple[float, float, float]:
    """(seconds to the first batch: start-up, samples per second over the next `num_batches` batches,
    bytes of a batch per sample)."""
    start = time.perf_counter()
    it = pipeline.make_loader(data_cfg, cfg)
    first_batch = next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in itertools.islice(it, num_batches):
        pass
    rate = num_batches * data_cfg["batch_size"] / (time.perf_counter() - start)
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(first_batch))
    return first, rate, nbytes / data_cfg["batch_size"]


def run(
    preset: str,
    batch: int = 2,
    reps: int = 10,
    clips: int = 2,
    workers: int = 2,
    height: int = 320,
    width: int = 576,
    patch_dtypes: tuple[str, ...] = ("uint8", "float32", "bfloat16"),
    **_: Any,
) -> dict[str, Any]:
    """Samples/s of the transforms on one core and of the loader in this process (`workers` read
    threads) and with 1 ... `workers` processes, per patch dtype; the model flags of
    `tools/benchmark.py` are ignored."""
    cfg = alpamayo.alpamayo_config(preset)
    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = pathlib.Path(tmp) / "synth", pathlib.Path(tmp) / "tfds"
        t0 = time.perf_counter()
        synthetic.write_synthetic_dataset(root, clips, 0, synthetic.SyntheticConfig(width, height))
        made = time.perf_counter() - t0
        splits = {"train": drive_dataset.synthetic_splits(root, validation_every=clips + 1)["train"]}
        summary = drive_dataset.build("synthetic_drive", root, data_dir, splits, image_hw=(height, width))
        data_cfg = dict(
            data_dir=str(data_dir),
            sources=[dict(name="synthetic_drive", split="train", stage=2)],
            tokenizer=dict(kind="sentencepiece", path=str(SP_MODEL)),
            batch_size=batch,
            seed=0,
            num_epochs=None,
            read_threads=workers,
            length_buckets=tuple(range(256, 8192, 64)),
        )
        out = dict(
            what="data",
            preset=preset,
            shape=f"4 cameras x 4 frames x {height}x{width}",
            batch=batch,
            examples=summary["examples"]["train"],
            synthetic_s_per_clip=round(made / clips, 2),
            workers=workers,
            cpus=os.cpu_count(),
            load_average_before=[round(x, 2) for x in os.getloadavg()],
        )
        for dtype in patch_dtypes:
            dc = data_cfg | dict(patch_dtype=dtype)
            out[f"{dtype}_samples_per_s_per_core"] = round(_per_core(dc, cfg, reps), 2)
            for count in range(workers + 1):
                startup, rate, nbytes = _loader(dc | dict(worker_count=count), cfg, reps)
                out[f"{dtype}_workers{count}_samples_per_s"] = round(rate, 2)
                out[f"{dtype}_workers{count}_first_batch_s"] = round(startup, 2)
            out[f"{dtype}_batch_mb_per_sample"] = round(nbytes / 1e6, 2)
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out
