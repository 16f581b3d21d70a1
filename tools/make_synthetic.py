"""Writes procedural driving clips in the PhysicalAI-AV layout, with ground-truth sidecars.

Example: python tools/make_synthetic.py --out /tmp/synth --clips 20 --seed 0 --width 576 --height 320
Deterministic per (seed, clip index).
"""

import argparse
import time

import tqdm

from alpamayo_jax import geometry
from alpamayo_jax.coc import vocab as scenarios
from alpamayo_jax.data import pai_layout, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, help="dataset root to write (files of the same name are replaced)"
    )
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument(
        "--cameras", nargs="+", default=list(pai_layout.DEFAULT_CAMERAS), choices=pai_layout.CAMERA_NAMES
    )
    parser.add_argument("--camera-model", default=geometry.FTHETA, choices=geometry.CAMERA_MODELS)
    parser.add_argument(
        "--scenario", default=None, choices=scenarios.SCENARIOS, help="default: uniform per clip"
    )
    args = parser.parse_args()
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    cameras = tuple(sorted(args.cameras, key=pai_layout.CAMERA_IDS.__getitem__))
    config = synthetic.SyntheticConfig(args.width, args.height, cameras, args.camera_model)
    start = time.perf_counter()
    with tqdm.tqdm(total=args.clips, unit="clip") as bar:
        synthetic.write_synthetic_dataset(
            args.out, args.clips, args.seed, config, args.scenario, on_clip=bar.update
        )
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {args.clips} clips to {args.out}: {args.clips / minutes:.1f} clips/minute")


if __name__ == "__main__":
    main()
