"""Training input for the trainer: an iterator of host-local `Batch`es with `get_state()/set_state()`.

The trainer needs nothing else from the input pipeline, so the real pipeline replaces `FakeBatches`
through `make_input`'s table.
"""

from __future__ import annotations

from typing import Any

import jax

from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import pipeline
from alpamayo_jax.data.batch import Batch


class FakeBatches:
    """Random well-formed batches (`batch.fake`), a pure function of (seed, position, host): resuming
    at a position reproduces the batches exactly. `shape`: `fake(...)` keywords (num_images, num_frames,
    grid_hw, prompt_len, reasoning_len, length)."""

    def __init__(self, model_cfg: Any, batch_size: int, seed: int, **shape: Any):
        self.model_cfg, self.batch_size, self.shape = model_cfg, batch_size, shape
        self.seed, self.position = seed, 0

    def __iter__(self) -> FakeBatches:
        return self

    def __next__(self) -> Batch:
        seed = (self.seed * 1_000_003 + self.position) * jax.process_count() + jax.process_index()
        self.position += 1
        return batch_lib.fake(self.model_cfg, self.batch_size, seed=seed, **self.shape)

    def get_state(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed}

    def set_state(self, state: dict[str, int]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"data state is for seed {state.get('seed')}, this iterator has {self.seed}")
        self.position = int(state["position"])


def pipeline_config(data: Any, batch_size: int, seed: int, split: str) -> dict[str, Any]:
    """The grain pipeline's config for `data.kind == "tfds"`: every source read from `split`, one length
    bucket (`seq_len`) so the step compiles once."""
    return dict(
        data_dir=data.data_dir,
        sources=[dict(s, split=split) for s in data.sources],
        tokenizer=dict(data.tokenizer),
        batch_size=batch_size,
        seed=seed,
        num_epochs=None,
        length_buckets=(data.seq_len,),
        worker_count=data.worker_count,
        patch_dtype=data.patch_dtype,
    )


def make_input(data: Any, model_cfg: Any, seed: int, train: bool = True) -> Any:
    """The host-local iterator of `data` (config section): batch `global_batch / processes`; the eval
    iterator (`train=False`) reads `data.eval_split`."""
    if data.global_batch % jax.process_count():
        raise ValueError(f"data.global_batch {data.global_batch} does not divide {jax.process_count()} hosts")
    local = data.global_batch // jax.process_count()
    split = data.train_split if train else data.eval_split
    kinds = {
        "fake": lambda: FakeBatches(
            model_cfg,
            local,
            seed,
            num_images=data.num_images,
            num_frames=data.num_frames,
            grid_hw=tuple(data.fake.grid_hw),
            prompt_len=data.fake.prompt_len,
            reasoning_len=data.fake.reasoning_len,
            length=data.seq_len,
        ),
        "tfds": lambda: pipeline.make_loader(
            pipeline_config(data, local, seed, split), model_cfg, jax.process_index(), jax.process_count()
        ),
    }
    if data.kind not in kinds:
        raise ValueError(f"data.kind {data.kind!r}; known: {sorted(kinds)}")
    if data.kind == "tfds" and not data.sources:
        raise ValueError("data.kind 'tfds' needs data.sources (name, stage, weight) and data.data_dir")
    return kinds[data.kind]()
