"""The demo on the embedded synthetic default: synthetic clips -> dataset -> stages 0, 1, 2 -> report.

    python tools/demo.py --out runs/demo

Writes `report.md`, `losses.png`, `trajectories.png` and `results.json` to --out (see
alpamayo_jax/demo.py for what is measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from alpamayo_jax import demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--clips", type=int, default=demo.DemoConfig.clips)
    parser.add_argument(
        "--steps",
        type=int,
        nargs=3,
        default=list(demo.DemoConfig.steps),
        help="training steps of stages 0, 1, 2",
    )
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(demo.DemoConfig(), clips=args.clips, steps=tuple(args.steps))
    results = demo.run(args.out, cfg)
    print(json.dumps({k: v for k, v in results.items() if k != "seconds"}, indent=1))
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
