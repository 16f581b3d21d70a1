"""Runs a converted Qwen3-VL backbone on processor outputs and writes its logits (and greedy tokens).

    python tools/run_vlm.py --ckpt /path/to/converted --inputs in.npz --out out.npz [--generate 20]

`in.npz` holds the arrays a transformers Qwen3-VL processor returns: `input_ids`, `attention_mask`
(optional), `pixel_values` and `image_grid_thw` (when there are images), optionally `mm_token_type_ids`
(checked against the image tokens). `out.npz` gets float32 `logits` `[B, L, V]` and, with
`--generate N`, `tokens` `[B, N]` from greedy KV-cached decoding (one compiled program).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import numpy as np

from alpamayo_jax import generation
from alpamayo_jax.interop import model_dir
from alpamayo_jax.models import qwen3vl, qwen3vl_inputs

KNOWN = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}


def read_inputs(path: str, cfg: qwen3vl.Qwen3VLConfig) -> tuple[qwen3vl_inputs.PromptInputs, np.ndarray]:
    """The prompt (right-padded for the model) and the inverse permutation back to the file's layout."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    unknown = set(arrays) - KNOWN
    if unknown:
        raise ValueError(f"{path}: unexpected arrays {sorted(unknown)}; known: {sorted(KNOWN)}")
    if "input_ids" not in arrays:
        raise ValueError(f"{path}: missing input_ids")
    mm = arrays.pop("mm_token_type_ids", None)
    if mm is not None:
        if mm.shape != arrays["input_ids"].shape:
            raise ValueError(
                f"{path}: mm_token_type_ids shape {mm.shape} != input_ids {arrays['input_ids'].shape}"
            )
        if np.any(mm == 2):
            raise ValueError(f"{path}: video tokens (mm_token_type_ids == 2) are not supported")
        if not np.array_equal(mm == 1, arrays["input_ids"] == cfg.image_token_id):
            raise ValueError(f"{path}: mm_token_type_ids disagrees with the image tokens in input_ids")
    mask = arrays.get("attention_mask", np.ones(arrays["input_ids"].shape, bool))
    undo = np.argsort(qwen3vl_inputs.right_align_order(mask), axis=1)
    return qwen3vl_inputs.prompt_inputs(cfg, **arrays), undo


def run(ckpt: str, inputs: str, out: str, generate: int = 0, precision: str = "highest") -> None:
    jax.config.update("jax_default_matmul_precision", precision)
    cfg = model_dir.load_config(ckpt)
    params = model_dir.load_params(ckpt)
    prompt, undo = read_inputs(inputs, cfg)
    model = qwen3vl.Qwen3VL(cfg)
    logits, _ = jax.jit(model.apply)(
        {"params": params},
        prompt.tokens_bl,
        prompt.positions_3bl,
        prompt.valid_bl,
        prompt.images,
        prompt.image_slots_bl,
    )
    result = {"logits": np.take_along_axis(np.asarray(logits, np.float32), undo[:, :, None], 1)}
    if generate > 0:
        tokens, _ = jax.jit(generation.generate, static_argnums=(0, 3))(model, params, prompt, generate)
        result["tokens"] = np.asarray(tokens)
    out = os.path.abspath(out)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(out))
    os.close(fd)
    try:
        np.savez(tmp, **result)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="folder written by tools/convert_hf.py")
    parser.add_argument("--inputs", required=True, help=".npz of processor outputs")
    parser.add_argument("--out", required=True, help=".npz to write")
    parser.add_argument("--generate", type=int, default=0, help="greedy-decode this many tokens")
    parser.add_argument(
        "--precision",
        default="highest",
        choices=["default", "high", "highest"],
        help="float32 matmul precision (highest: exact float32, for parity checks)",
    )
    args = parser.parse_args(argv)
    try:
        run(args.ckpt, args.inputs, args.out, args.generate, args.precision)
    except (FileNotFoundError, ValueError) as e:
        print(f"run_vlm: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
