"""TFDS builder of `synthetic_drive`: keyframes of `tools/make_synthetic.py` output (see README.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from alpamayo_jax.data import drive_dataset


class Builder(tfds.core.GeneratorBasedBuilder):
    """Keyframe examples of the synthetic clips in the manual dir, with VQA pairs from their ground truth.

    splits: {split: [clip ids]} (default: every 10th clip of the index validates); options: keyframe
    policy, cameras, frames, image size; workers: clip processes. The clips that could not be read are
    reported with their reason in the dataset's metadata (`failed_clips`, saved in metadata.json).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.1.0": "Intrinsics at the cameras' native resolution with image_size_wh (triplane tokenizer).",
        "1.0.0": "Keyframes: JPEG frames, calibration, ego history / future, controls, CoC, VQA pairs.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = "The output folder of tools/make_synthetic.py (clips and ground truth)."

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
        root = dl_manager.manual_dir
        splits = self.splits or drive_dataset.synthetic_splits(root)
        cache = self.data_dir_root / drive_dataset.CACHE_DIR / self.name
        caches, failed = drive_dataset.prepare_splits(
            root, splits, cache, self.options, with_vqa=True, workers=self.workers
        )
        self.info.metadata["failed_clips"] = failed
        return {split: self._generate_examples(paths) for split, paths in caches.items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
        yield from drive_dataset.cached_examples(paths)
