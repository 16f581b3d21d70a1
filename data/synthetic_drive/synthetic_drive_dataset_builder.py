"""TFDS builder of `synthetic_drive`: keyframes of `tools/make_synthetic.py` output (see README.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from alpamayo_jax.data import drive_dataset


class Builder(drive_dataset.ClipBuilder, tfds.core.GeneratorBasedBuilder):
    """Keyframe examples of the synthetic clips in the manual dir, with VQA pairs from their ground truth.

    splits: {split: [clip ids]} (default: every 10th clip of the index validates); options: keyframe
    policy, cameras, frames, image size; workers: clip processes. The clips that could not be read are
    reported with their reason in the dataset's metadata (`failed_clips`, saved in metadata.json).
    """

    README = pathlib.Path(__file__).parent / "README.md"
    WITH_VQA = True
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.1.0": "Intrinsics at the cameras' native resolution with image_size_wh (triplane tokenizer).",
        "1.0.0": "Keyframes: JPEG frames, calibration, ego history / future, controls, CoC, VQA pairs.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = "The output folder of tools/make_synthetic.py (clips and ground truth)."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        root = dl_manager.manual_dir
        return self.clip_splits(root, self.splits or drive_dataset.synthetic_splits(root))
