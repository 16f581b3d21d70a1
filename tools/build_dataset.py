"""Builds a TFDS ArrayRecord dataset of keyframe samples (no TensorFlow needed).

Examples:
  python tools/build_dataset.py synthetic_drive --source /tmp/synth --data-dir /tmp/tfds --workers 2
  python tools/build_dataset.py physical_ai_av --source /data/pai --split-file splits.json \\
      --data-dir /tmp/tfds --policy meta_actions
Resumable: clips already prepared under <data-dir>/_clips/<name>/ are reused. Failed clips are
listed with their reason and make the exit status 1.
"""

import argparse
import json
import sys

from alpamayo_jax.data import drive_dataset, pai_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(drive_dataset.BUILDERS))
    parser.add_argument("--source", required=True, help="dataset root in the PhysicalAI-AV layout")
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write")
    parser.add_argument(
        "--split-file",
        help='JSON {"train": [clip ids], ...} (default for synthetic: every 10th clip validates)',
    )
    parser.add_argument("--policy", default="both", choices=drive_dataset.KEYFRAME_POLICIES)
    parser.add_argument("--t0-us", type=int, nargs="+", default=[3_000_000, 7_000_000, 11_000_000])
    parser.add_argument(
        "--cameras", nargs="+", default=list(pai_layout.DEFAULT_CAMERAS), choices=pai_layout.CAMERA_NAMES
    )
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--workers", type=int, default=0, help="parallel clip processes (0: in this process)")
    args = parser.parse_args(argv)
    if args.split_file:
        splits = drive_dataset.read_split_file(args.split_file)
    elif args.name == "synthetic_drive":
        splits = drive_dataset.synthetic_splits(args.source)
    else:
        parser.error("physical_ai_av needs --split-file")
    cameras = sorted(args.cameras, key=pai_layout.CAMERA_IDS.__getitem__)
    summary = drive_dataset.build(
        args.name,
        args.source,
        args.data_dir,
        splits,
        args.policy,
        args.t0_us,
        cameras,
        args.frames,
        (args.height, args.width),
        args.workers,
    )
    print(json.dumps(summary, indent=1))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
