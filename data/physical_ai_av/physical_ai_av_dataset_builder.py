"""TFDS builder of `physical_ai_av`: keyframes of a local copy of the PhysicalAI-AV layout (see README.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from alpamayo_jax.data import drive_dataset


class Builder(drive_dataset.ClipBuilder, tfds.core.GeneratorBasedBuilder):
    """Keyframe examples of the clips of a split file, read from the PhysicalAI-AV layout in the manual dir.

    splits: {split: [clip ids]} (required to build); options: keyframe policy, cameras, frames, image
    size; workers: clip processes. The clips that could not be read are reported with their reason
    in the dataset's metadata (`failed_clips`, saved in metadata.json).
    """

    README = pathlib.Path(__file__).parent / "README.md"
    WITH_VQA = False
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.1.0": "Intrinsics at the cameras' native resolution with image_size_wh (triplane tokenizer).",
        "1.0.0": "Keyframes: JPEG frames, calibration, ego history / future, controls, CoC reasoning events.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "A local copy of the PhysicalAI-AV dataset (clip index, calibration, egomotion, camera videos, "
        "reasoning events); the data is gated, fetch it with its devkit after accepting the license."
    )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        if not self.splits:
            raise ValueError("physical_ai_av needs splits {split: [clip ids]} (a split file) to build")
        return self.clip_splits(dl_manager.manual_dir, self.splits)
