"""Benchmarks; prints one JSON object (record GPU numbers in docs/PERFORMANCE.md).

    python tools/benchmark.py --preset ar1_2b --what infer --json
    python tools/benchmark.py --preset ar1_2b --what infer --tokenizer triplane --json
    python tools/benchmark.py --preset ar1_2b --what decode_attention --json

`--what infer`: latency of the compiled policy at the release input shapes (vision, prefill, decode per
token, flow per step, end to end), medians after warm-up, compile times apart; `--decode-attention`
picks the decode step's cache attention (xla, or the Pallas kernel: the GPU default); `--tokenizer`
picks the vision tokenizer (per_image, triplane with `--triplane-patch`, flex with `--flex-tokens` per
image).
`--what train`: step time, tokens/s, MFU and memory of a stage's train step (`--stage`, `--remat`,
`--batch` per device, `--mesh`, `--rules`) at the release input shapes; several GPUs: weak scaling.
`--what data`: samples/s of the input pipeline.
`--what decode_attention`: microseconds per layer of the decode step's cache attention, XLA against the
Pallas cache kernel and the fused decode layer kernel (with its split combine) at several chunk /
block_s / num_warps / num_stages settings (the preset's text decoder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from alpamayo_jax.train import host_env

host_env.disable_nvlink_multicast()

import importlib  # noqa: E402

# --what -> its module under alpamayo_jax.benchmarks, imported only when chosen: the inference and
# kernel benchmarks need neither the input pipeline's packages (grain, tensorflow-datasets, PyAV)
# nor the trainer's, which a GPU host may lack.
BENCHMARKS = ("infer", "data", "train", "decode_attention")


def benchmark_module(what: str):
    """The module of benchmark `what` (one of BENCHMARKS)."""
    return importlib.import_module(f"alpamayo_jax.benchmarks.{what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=sorted(BENCHMARKS), default="infer")
    parser.add_argument("--preset", default="ar1_2b", help="alpamayo preset: tiny, ar1_2b, ar1_10b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--attention", default=None, choices=["xla", "cudnn"], help="default: cudnn on GPU")
    parser.add_argument(
        "--decode-attention", default=None, choices=["xla", "pallas"], help="default: pallas on GPU"
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--unroll", type=int, default=1, help="layers unrolled per scan step")
    parser.add_argument("--scan", action="store_true", help="infer: stacked (training) layer layout")
    parser.add_argument(
        "--layers",
        default="config",
        choices=["config", "scan", "loop"],
        help="train: layer layout (model.scan_layers; config: the experiment's, per-layer loop at 2b/10b)",
    )
    parser.add_argument("--unfused", action="store_true", help="separate q/k/v and gate/up kernels")
    parser.add_argument("--tokenizer", default="per_image", choices=["per_image", "triplane", "flex"])
    parser.add_argument("--triplane-patch", type=int, nargs=3, default=(8, 8, 8), help="p_x p_y p_z")
    parser.add_argument("--half-planes", action="store_true", help="triplane: front half planes only")
    parser.add_argument("--flex-tokens", type=int, default=16, help="Flex scene tokens per image")
    parser.add_argument("--stage", default="stage2_coc_sft", help="train: experiment file (stage1/2)")
    parser.add_argument(
        "--remat", default="attention", help="train: remat policy (none, full, attention, dots, ...)"
    )
    parser.add_argument(
        "--seq-len", type=int, default=None, help="train: sequence bucket (default: data.seq_len)"
    )
    parser.add_argument("--mesh", default="1,-1,1", help="train: mesh shape data,fsdp,tensor (-1: the rest)")
    parser.add_argument("--rules", default="fsdp", help="train: logical-axis rules table (dp, fsdp, fsdp_tp)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    # With --json, stdout carries the JSON object only: progress and logs go to stderr.
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        result = run(parser, args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    bench = benchmark_module(args.what)
    if args.what == "train":
        host_env.add_training_xla_flags()  # as the trainer's entry point (before the backend starts)
        mesh = tuple(int(n) for n in args.mesh.split(","))
        if len(mesh) != 3:
            parser.error(f"--mesh {args.mesh!r}: three sizes data,fsdp,tensor")
        result = bench.run(
            args.preset,
            batch=args.batch,
            reps=args.reps,
            stage=args.stage,
            remat=args.remat,
            seq_len=args.seq_len,
            mesh=mesh,
            rules=args.rules,
            scan_layers={"config": None, "scan": True, "loop": False}[args.layers],
        )
    elif args.what == "data":
        result = bench.run(args.preset, batch=args.batch, reps=args.reps)
    elif args.what == "decode_attention":
        result = bench.run(args.preset, batch=args.batch, reps=args.reps, dtype=args.dtype)
    else:
        result = bench.run(
            args.preset,
            batch=args.batch,
            reps=args.reps,
            attention_impl=args.attention,
            decode_attention=args.decode_attention,
            dtype=args.dtype,
            unroll=args.unroll,
            scan_layers=args.scan,
            fused_projections=not args.unfused,
            tokenizer=args.tokenizer,
            triplane_patch=tuple(args.triplane_patch),
            triplane_half_planes=args.half_planes,
            flex_tokens=args.flex_tokens,
        )
    return result


if __name__ == "__main__":
    sys.exit(main())
