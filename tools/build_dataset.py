"""Builds a TFDS ArrayRecord dataset with its builder in data/<name>/ (no TensorFlow needed).

Examples:
  python tools/build_dataset.py synthetic_drive --source /tmp/synth --data-dir /tmp/tfds --workers 2
  python tools/build_dataset.py physical_ai_av --source /data/pai --split-file splits.json \\
      --data-dir /tmp/tfds --policy meta_actions
  python tools/build_dataset.py vqa_jsonl --source /data/vqa --split-file files.json --data-dir /tmp/tfds
Resumable: clips already prepared under <data-dir>/_clips/<name>/ are reused. Failed clips are
listed with their reason and make the exit status 1. See data/README.md for the datasets.
"""

import argparse
import json
import pathlib
import sys

from alpamayo_jax.data import drive_dataset, pai_layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=drive_dataset.DATASETS)
    parser.add_argument(
        "--source", required=True, help="dataset root in the PhysicalAI-AV layout (vqa_jsonl: JSONL folder)"
    )
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write")
    parser.add_argument(
        "--split-file",
        help='JSON {"train": [clip ids], ...} (default for synthetic: every 10th clip validates); '
        'vqa_jsonl: {"train": [JSONL files relative to --source], ...}',
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
        parser.error(f"{args.name} needs --split-file")
    if args.name == "vqa_jsonl":
        files = {s: [str(pathlib.Path(args.source) / f) for f in paths] for s, paths in splits.items()}
        summary = drive_dataset.build_vqa_jsonl(files, args.data_dir, (args.height, args.width))
        print(json.dumps(summary, indent=1))
        return 0
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
