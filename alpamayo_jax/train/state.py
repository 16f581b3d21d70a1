"""The training state: everything a checkpoint holds besides the data iterator position."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken (micro-steps with gradient accumulation); params: float32 master
    weights (or `param_dtype`); rng_key: raw uint32 key data of the run's base key (typed keys do not
    checkpoint); ema: exponential moving average of params, or None."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng_key: jax.Array
    ema: Any = None

    @property
    def rng(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng_key)
