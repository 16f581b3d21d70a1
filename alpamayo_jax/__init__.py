"""alpamayo_jax: a reasoning vision-language-action model for driving, in JAX/Flax."""

__version__ = "0.1.0"
