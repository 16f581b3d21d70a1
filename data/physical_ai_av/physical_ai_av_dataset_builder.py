"""TFDS builder of `physical_ai_av`: keyframes of a local copy of the PhysicalAI-AV layout (see README.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from alpamayo_jax.data import drive_dataset


class Builder(tfds.core.GeneratorBasedBuilder):
    """Keyframe examples of the clips of a split file, read from the PhysicalAI-AV layout in the manual dir.

    splits: {split: [clip ids]} (required to build); options: keyframe policy, cameras, frames, image
    size; workers: clip processes. The clips that could not be read are reported with their reason
    in the dataset's metadata (`failed_clips`, saved in metadata.json).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.1.0": "Intrinsics at the cameras' native resolution with image_size_wh (triplane tokenizer).",
        "1.0.0": "Keyframes: JPEG frames, calibration, ego history / future, controls, CoC reasoning events.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "A local copy of the PhysicalAI-AV dataset (clip index, calibration, egomotion, camera videos, "
        "reasoning events); the data is gated, fetch it with its devkit after accepting the license."
    )

    def __init__(
        self,
        *,
        splits: dict[str, list[str]] | None = None,
        options: drive_dataset.ClipOptions | None = None,
        workers: int = 0,
        **kwargs,
    ):
        self.splits, self.options, self.workers = splits, options or drive_dataset.ClipOptions(), workers
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(pathlib.Path(__file__).parent / "README.md").read_text(),
            features=drive_dataset.features(),
            metadata=tfds.core.MetadataDict(self.options.metadata() | {"failed_clips": {}}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        if not self.splits:
            raise ValueError("physical_ai_av needs splits {split: [clip ids]} (a split file) to build")
        cache = self.data_dir_root / drive_dataset.CACHE_DIR / self.name
        caches, failed = drive_dataset.prepare_splits(
            dl_manager.manual_dir, self.splits, cache, self.options, with_vqa=False, workers=self.workers
        )
        self.info.metadata["failed_clips"] = failed
        return {split: self._generate_examples(paths) for split, paths in caches.items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
        yield from drive_dataset.cached_examples(paths)
