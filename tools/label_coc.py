"""Auto-label CoC reasoning for the clips of a dataset root.

  python tools/label_coc.py --root DIR --out labels.parquet --backend {oracle,openai} \
      [--clips ID ...] [--workers N] [--base-url URL --model NAME --api-key KEY]

Writes OUT (public ood_reasoning.parquet shape), OUT.records.jsonl (full structured records and
rejections) and OUT.summary.json; re-running skips clips already in OUT.records.jsonl. Clips are read
from a local PhysicalAI-AV layout (real, or written by tools/make_synthetic.py, whose ground truth the
oracle backend uses) through `alpamayo_jax.coc.pai_source.PaiClipSource`.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from alpamayo_jax.coc.keyframes import KeyframeConfig
from alpamayo_jax.coc.labeller import Labeller
from alpamayo_jax.coc.openai_backend import OpenAIConfig, OpenAILabeller
from alpamayo_jax.coc.oracle_backend import OracleLabeller
from alpamayo_jax.coc.pai_source import PaiClipSource
from alpamayo_jax.coc.pipeline import ClipSource, PipelineConfig, run_labelling


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="output parquet (sidecars written next to it)")
    p.add_argument("--backend", choices=("oracle", "openai"), required=True)
    p.add_argument("--clips", nargs="*", help="clip ids (default: all clips of the root)")
    p.add_argument("--workers", type=int, default=1, help="clips labelled concurrently")
    p.add_argument("--per-scenario", type=int, default=None, help="cap on labelled keyframes per scenario")
    p.add_argument("--base-url", help="chat-completions base URL ending in /v1 (or OPENAI_BASE_URL)")
    p.add_argument("--model", help="model name (or OPENAI_MODEL)")
    p.add_argument("--api-key", help="API key (or OPENAI_API_KEY)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per keyframe before rejecting")
    p.add_argument("--response-format", choices=("json_object", "json_schema"), default="json_object")
    p.add_argument("--no-progress", action="store_true")
    return p


def make_labeller(args: argparse.Namespace) -> Labeller:
    if args.backend == "oracle":
        return OracleLabeller()
    config = OpenAIConfig.from_env(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        response_format=args.response_format,
    )
    return OpenAILabeller(config)


def main(
    argv: Sequence[str] | None = None, open_source: Callable[[Path], ClipSource] = PaiClipSource
) -> dict:
    """Runs the labelling and prints the summary; returns it."""
    args = build_parser().parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"--root {args.root} is not a directory")
    config = PipelineConfig(keyframes=KeyframeConfig(), per_scenario=args.per_scenario)
    summary = run_labelling(
        open_source(args.root),
        make_labeller(args),
        args.out,
        clips=args.clips,
        workers=args.workers,
        config=config,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
