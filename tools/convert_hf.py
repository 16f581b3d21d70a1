"""Converts a transformers Qwen3-VL checkpoint (Cosmos-Reason, Qwen3-VL-2B/8B, ...) to alpamayo_jax.

    python tools/convert_hf.py --hf_dir /path/to/Qwen3-VL-8B-Instruct --out /path/to/qwen3vl_8b

Reads `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`), checks every
tensor name and shape against the config first (a mismatch lists all missing, unexpected and
mis-shaped tensors and writes nothing), then streams tensor by tensor into disk-backed arrays and
saves an Orbax checkpoint plus the model config; peak RAM stays near one tensor. The tokenizer files,
when present, are copied alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from tqdm import tqdm

from alpamayo_jax.interop import hf_qwen3vl, model_dir
from alpamayo_jax.interop.safetensors_io import SafetensorsCheckpoint

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "preprocessor_config.json",
    "generation_config.json",
)


def convert(hf_dir: str, out: str, progress: bool = True) -> None:
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{hf_dir}: no config.json")
    with open(config_path) as f:
        hf_config = json.load(f)
    cfg = hf_qwen3vl.config_from_hf(hf_config)
    ckpt = SafetensorsCheckpoint(hf_dir)
    entries = hf_qwen3vl.param_map(cfg)
    hf_qwen3vl.check(ckpt, entries, cfg.text.tie_embeddings)
    scratch_parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(scratch_parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convert-", dir=scratch_parent) as scratch:
        items = hf_qwen3vl.iter_params(ckpt, cfg, hf_qwen3vl.memmap_allocator(scratch))
        items = tqdm(items, total=len(entries), desc="tensors", disable=not progress)
        params = hf_qwen3vl.nest(items)
        files = {
            n: os.path.join(hf_dir, n) for n in TOKENIZER_FILES if os.path.exists(os.path.join(hf_dir, n))
        }
        model_dir.save(
            out, cfg, params, extra={"source": os.path.abspath(hf_dir), "hf_config": hf_config}, files=files
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf_dir", required=True, help="folder with config.json and *.safetensors")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        convert(args.hf_dir, args.out, progress=not args.quiet)
    except (hf_qwen3vl.ConversionError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"convert_hf: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
