"""TFDS builder of `vqa_jsonl`: VQA conversations from JSONL files (see README.md)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from alpamayo_jax.data import drive_dataset


class Builder(tfds.core.GeneratorBasedBuilder):
    """One example per JSONL row: its images resized to `image_hw`, its question / answer pairs; no
    trajectory (zeros) and camera ids -1. files: {split: [JSONL paths]}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VQA rows: JPEG images, question / answer pairs, the drive features zeroed."}

    def __init__(
        self,
        *,
        files: dict[str, list[str]] | None = None,
        image_hw: tuple[int, int] = (320, 576),
        **kwargs,
    ):
        self.files, self.image_hw = files, tuple(image_hw)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(pathlib.Path(__file__).parent / "README.md").read_text(),
            features=drive_dataset.features(),
            metadata=tfds.core.MetadataDict(image_hw=list(self.image_hw)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        if not self.files:
            raise ValueError("vqa_jsonl needs files {split: [JSONL paths]} to build")
        cache = self.data_dir_root / drive_dataset.CACHE_DIR / self.name
        caches = drive_dataset.prepare_vqa_files(self.files, cache, self.image_hw)
        return {split: self._generate_examples(paths) for split, paths in caches.items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
        yield from drive_dataset.cached_examples(paths)
