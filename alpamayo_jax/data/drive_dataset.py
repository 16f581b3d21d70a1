"""Example making for the TFDS ArrayRecord datasets of keyframe samples (no TensorFlow).

The datasets are TFDS builders in the repository's `data/` folder, one folder each in the TFDS
convention (`data/<name>/<name>_dataset_builder.py` with `class Builder`): `synthetic_drive`,
`physical_ai_av` and `vqa_jsonl`. They are thin; this module holds what they share: the features,
the examples of a clip or a VQA file, the clip caches, and `build` / `build_vqa_jsonl`, which load a
builder from `data/` by path and run it.

One example = one keyframe: JPEG camera frames at the model resolution (camera-major, oldest frame
first), camera ids, calibration (intrinsics at the cameras' native resolution `image_size_wh`: the
resize keeps normalised image coordinates), ego history / future in the t0 frame with the fitted normalised
controls, the CoC record and its reasoning text when present, VQA pairs when present, clip id, t0.

Building runs in two steps: `prepare_splits` turns each clip into its examples, one cache file per
clip written atomically, in parallel processes; existing files are kept, so a build resumes where it
stopped, and a failing clip is reported by id and reason in the summary. The builder then writes the
TFDS ArrayRecord dataset from the caches. TFDS writes and reads ArrayRecord without TensorFlow as
long as no `tfds.features.Image` is used (frames are stored as encoded bytes).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import io
import json
import multiprocessing
import os
import pathlib
import pickle
import sys
import traceback
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from alpamayo_jax import action_space
from alpamayo_jax.coc import keyframes as coc_keyframes
from alpamayo_jax.coc import meta_actions
from alpamayo_jax.data import pai, pai_layout, synthetic, vqa

KEYFRAME_POLICIES = ("fixed", "coc", "both", "meta_actions")
MIN_T0_US = 1_600_000
FUTURE_US = 6_400_000
CACHE_DIR = "_clips"
DRIVE_DATASETS = ("synthetic_drive", "physical_ai_av")
DATASETS = (*DRIVE_DATASETS, "vqa_jsonl")
BUILDERS_DIR = pathlib.Path(__file__).resolve().parents[2] / "data"


def encode_jpeg(image_hw3: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_hw3).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def ego_10hz(data: pai.PaiDataset, clip_id: str) -> tuple[np.ndarray, ...]:
    """Egomotion resampled to 10 Hz: t_us [T], xy [T, 2], yaw [T], speed along the heading [T],
    acceleration [T] (speed and acceleration by differences, independent of the velocity frame)."""
    df = data.egomotion(clip_id)
    ts = df["timestamp"].to_numpy(np.int64)
    t_us = np.arange(ts[0], ts[-1] + 1, 100_000)
    xy = np.stack([np.interp(t_us, ts, df[c].to_numpy()) for c in ("x", "y")], -1)
    qx, qy, qz, qw = (np.interp(t_us, ts, df[c].to_numpy()) for c in ("qx", "qy", "qz", "qw"))
    yaw = np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy**2 + qz**2))
    step = np.diff(xy, axis=0)
    along = step[:, 0] * np.cos(yaw[:-1]) + step[:, 1] * np.sin(yaw[:-1])
    speed = np.concatenate([along, along[-1:]]) / 0.1
    accel = np.gradient(speed, 0.1)
    return t_us, xy, yaw, speed, accel


def keyframes(
    policy: str,
    coc_events: list[dict],
    duration_us: int,
    fixed_t0_us: Sequence[int],
    meta_action_us: Sequence[int] = (),
) -> list[int]:
    """Keyframe times of one clip: `fixed` times, the CoC event times (`coc`), `both` of those, or the
    meta-action transition keyframes (`meta_actions`), kept only when the 1.5 s history and 6.4 s
    future fit in the clip."""
    if policy not in KEYFRAME_POLICIES:
        raise ValueError(f"unknown keyframe policy {policy!r}; known: {KEYFRAME_POLICIES}")
    times = list(meta_action_us) if policy == "meta_actions" else []
    times += [int(e["event_start_timestamp"]) for e in coc_events] if policy in ("coc", "both") else []
    times += list(fixed_t0_us) if policy in ("fixed", "both") else []
    return sorted({int(t) for t in times if MIN_T0_US <= t <= duration_us - FUTURE_US})


def _reasoning(coc_events: list[dict], t0_us: int) -> str:
    """The CoC trace of the event starting within 0.5 s of t0 ('' when none)."""
    near = [e for e in coc_events if abs(int(e["event_start_timestamp"]) - t0_us) <= 500_000]
    return near[0]["cot"] if near else ""


def _coc_record(coc_events: list[dict], gt: dict | None, t0_us: int) -> str:
    """JSON of the CoC events near t0: with synthetic ground truth the full record (decision per axis,
    causal components, trace), else the layout's reasoning events."""
    if gt is None:
        return json.dumps([e for e in coc_events if abs(int(e["event_start_timestamp"]) - t0_us) <= 500_000])
    return json.dumps([e for e in gt["events"] if abs(int(e["t_us"]) - t0_us) <= 500_000])


def _controls(history_xyz: np.ndarray, future_xyz: np.ndarray, future_yaw: np.ndarray) -> np.ndarray:
    v0 = action_space.estimate_v0(history_xyz)
    accel, curv = action_space.fit_controls(future_xyz[..., :2], future_yaw, v0)
    return np.asarray(action_space.normalize_controls(np.stack([accel, curv], -1)), np.float32)


def clip_examples(
    root: str | os.PathLike,
    clip_id: str,
    policy: str,
    fixed_t0_us: Sequence[int],
    cameras: Sequence[str],
    num_frames: int,
    image_hw: tuple[int, int],
    with_vqa: bool,
) -> list[dict]:
    """All keyframe examples of one clip (plain Python / NumPy values)."""
    data = pai.PaiDataset(root)
    events = data.reasoning_events(clip_id)
    t_us, xy, yaw, speed, accel = ego_10hz(data, clip_id)
    meta_us = []
    if policy == "meta_actions":
        meta = meta_actions.detect(xy, yaw, speed, accel)
        meta_us = [k.t_us for k in coc_keyframes.find_keyframes(meta, int(t_us[0]))]
    gt = synthetic.read_ground_truth(root, clip_id) if with_vqa else None
    out = []
    for t0 in keyframes(policy, events, int(t_us[-1]), fixed_t0_us, meta_us):
        s = pai.load_sample(root, clip_id, t0, cameras, num_frames, image_hw)
        rot = s["ego_future_rot"]
        yaw = np.arctan2(rot[:, 1, 0], rot[:, 0, 0]).astype(np.float32)
        reasoning = _reasoning(events, t0)
        pairs = vqa.synthetic_pairs(gt, t0) if gt is not None else []
        images = s["images"]
        out.append(
            {
                "clip_id": clip_id,
                "t0_us": t0,
                "images": [encode_jpeg(im) for im in images.reshape(-1, *images.shape[2:])],
                "camera_ids": np.asarray(s["camera_ids"], np.int32),
                "num_frames": num_frames,
                "fw_poly": s["fw_poly"].astype(np.float32),
                "bw_poly": s["bw_poly"].astype(np.float32),
                "principal_point": s["principal_point"].astype(np.float32),
                "image_size_wh": s["image_size_wh"].astype(np.float32),
                "t_rig_cam": s["t_rig_cam"].astype(np.float32),
                "history_xyz": s["ego_history_xyz"].astype(np.float32),
                "future_xyz": s["ego_future_xyz"].astype(np.float32),
                "future_yaw": yaw,
                "controls": _controls(s["ego_history_xyz"], s["ego_future_xyz"], yaw),
                "reasoning": reasoning,
                "coc": _coc_record(events, gt, t0) if reasoning else "",
                "vqa_questions": [q for q, _ in pairs],
                "vqa_answers": [a for _, a in pairs],
            }
        )
    return out


def _prepare_one(args: tuple) -> tuple[str, str | None]:
    cache, clip_id, kwargs = args
    path = pathlib.Path(cache) / f"{clip_id}.pkl"
    if path.exists():
        return clip_id, None
    try:
        examples = clip_examples(clip_id=clip_id, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported per clip in the build summary
        return clip_id, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(examples))
    os.replace(tmp, path)
    return clip_id, None


def prepare_clips(
    root: str | os.PathLike,
    clip_ids: Sequence[str],
    cache: str | os.PathLike,
    workers: int = 0,
    **kwargs,
) -> dict:
    """Writes `cache/<clip_id>.pkl` for every clip not cached yet.

    Returns {"ok": [clip ids], "failed": {clip id: reason}}.
    """
    cache = pathlib.Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(str(cache), c, dict(root=str(root), **kwargs)) for c in clip_ids]
    if workers > 0:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_prepare_one, jobs))
    else:
        results = [_prepare_one(j) for j in jobs]
    failed = {c: why for c, why in results if why is not None}
    return {"ok": [c for c, why in results if why is None], "failed": failed}


def features() -> tfds.features.FeaturesDict:
    """The features of every dataset here (VQA-only examples fill the trajectory fields with zeros)."""
    f32, i32 = np.float32, np.int32
    T = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "clip_id": tfds.features.Text(),
            "t0_us": np.int64,
            "images": tfds.features.Sequence(T(shape=(), dtype=np.object_)),
            "camera_ids": T(shape=(None,), dtype=i32),
            "num_frames": np.int32,
            "fw_poly": T(shape=(None, 5), dtype=f32),
            "bw_poly": T(shape=(None, 5), dtype=f32),
            "principal_point": T(shape=(None, 2), dtype=f32),
            "image_size_wh": T(shape=(None, 2), dtype=f32),
            "t_rig_cam": T(shape=(None, 4, 4), dtype=f32),
            "history_xyz": T(shape=(16, 3), dtype=f32),
            "future_xyz": T(shape=(64, 3), dtype=f32),
            "future_yaw": T(shape=(64,), dtype=f32),
            "controls": T(shape=(64, 2), dtype=f32),
            "reasoning": tfds.features.Text(),
            "coc": tfds.features.Text(),
            "vqa_questions": tfds.features.Sequence(tfds.features.Text()),
            "vqa_answers": tfds.features.Sequence(tfds.features.Text()),
        }
    )


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """What a drive dataset keeps of each clip: keyframe policy (`keyframes`), the fixed keyframe times,
    cameras (in camera-id order), frames per camera and the image size (the model resolution)."""

    policy: str = "both"
    fixed_t0_us: tuple[int, ...] = (3_000_000, 7_000_000, 11_000_000)
    cameras: tuple[str, ...] = pai_layout.DEFAULT_CAMERAS
    num_frames: int = 4
    image_hw: tuple[int, int] = (320, 576)

    def __post_init__(self):
        if self.policy not in KEYFRAME_POLICIES:
            raise ValueError(f"unknown keyframe policy {self.policy!r}; known: {KEYFRAME_POLICIES}")
        unknown = [c for c in self.cameras if c not in pai_layout.CAMERA_IDS]
        if unknown or not self.cameras:
            known = ", ".join(pai_layout.CAMERA_NAMES)
            raise ValueError(f"cameras {list(self.cameras)}: none or unknown {unknown}; known: {known}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    def metadata(self) -> dict:
        """JSON-able record of the options, saved with the built dataset (`metadata.json`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def prepare_splits(
    root: str | os.PathLike,
    splits: dict[str, list[str]],
    cache: str | os.PathLike,
    options: ClipOptions,
    with_vqa: bool,
    workers: int = 0,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Prepares every clip of `splits` (`prepare_clips`) -> (cache files per split, {failed clip: reason})."""
    if not splits:
        raise ValueError(f"no splits to build from {root}")
    clips = list(dict.fromkeys(c for ids in splits.values() for c in ids))
    kwargs = dataclasses.asdict(options) | dict(with_vqa=with_vqa)
    prepared = prepare_clips(root, clips, cache, workers, **kwargs)
    ok, failed = set(prepared["ok"]), prepared["failed"]
    caches = {s: [str(pathlib.Path(cache) / f"{c}.pkl") for c in ids if c in ok] for s, ids in splits.items()}
    for split, paths in caches.items():
        if not paths:
            why = {c: failed[c].splitlines()[0] for c in splits[split] if c in failed}
            raise ValueError(
                f"split {split!r} of {root}: no clip to build ({len(splits[split])} listed; failed: {why})"
            )
    return caches, failed


def cached_examples(paths: Sequence[str | os.PathLike]) -> Iterator[tuple[str, dict]]:
    """(key, example) of every example in the cache files (`<clip id>_<t0>` keys, unique per dataset)."""
    for path in paths:
        for ex in pickle.loads(pathlib.Path(path).read_bytes()):
            yield f"{ex['clip_id']}_{ex['t0_us']}", ex


class ClipBuilder:
    """What the TFDS builders of clip datasets share; mixed in before `tfds.core.GeneratorBasedBuilder`.

    The builder module sets `README` (its README.md: the dataset description) and `WITH_VQA`. splits:
    {split: [clip ids]}; options: keyframe policy, cameras, frames, image size; workers: clip
    processes. Clips that could not be read are kept with their reason in the dataset's metadata
    (`failed_clips`, saved in metadata.json).
    """

    README: pathlib.Path
    WITH_VQA: bool = False

    def __init__(
        self,
        *,
        splits: dict[str, list[str]] | None = None,
        options: ClipOptions | None = None,
        workers: int = 0,
        **kwargs,
    ):
        self.splits, self.options, self.workers = splits, options or ClipOptions(), workers
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.README.read_text(),
            features=features(),
            metadata=tfds.core.MetadataDict(self.options.metadata() | {"failed_clips": {}}),
        )

    def clip_splits(self, root: pathlib.Path, splits: dict[str, list[str]]) -> dict[str, Iterator]:
        """Examples of each split from the clip caches (prepared in parallel, resumable)."""
        cache = self.data_dir_root / CACHE_DIR / self.name
        caches, failed = prepare_splits(
            root, splits, cache, self.options, with_vqa=self.WITH_VQA, workers=self.workers
        )
        self.info.metadata["failed_clips"] = failed
        return {split: self._generate_examples(paths) for split, paths in caches.items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
        yield from cached_examples(paths)


def vqa_examples(path: str | os.PathLike, image_hw: tuple[int, int]) -> list[dict]:
    """Examples of one VQA JSONL file, images resized to `image_hw`."""
    out = []
    for row in vqa.read_jsonl(path):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in row["images"]]
        images = [pai.resize_images(im[None], image_hw)[0] for im in images]
        n = len(images)
        out.append(
            {
                "clip_id": row["id"],
                "t0_us": 0,
                "images": [encode_jpeg(im) for im in images],
                "camera_ids": np.full(n, -1, np.int32),
                "num_frames": 1,
                "fw_poly": np.zeros((n, 5), np.float32),
                "bw_poly": np.zeros((n, 5), np.float32),
                "principal_point": np.zeros((n, 2), np.float32),
                "image_size_wh": np.tile(np.array([image_hw[1], image_hw[0]], np.float32), (n, 1)),
                "t_rig_cam": np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
                "history_xyz": np.zeros((16, 3), np.float32),
                "future_xyz": np.zeros((64, 3), np.float32),
                "future_yaw": np.zeros(64, np.float32),
                "controls": np.zeros((64, 2), np.float32),
                "reasoning": "",
                "coc": "",
                "vqa_questions": [q for q, _ in row["pairs"]],
                "vqa_answers": [a for _, a in row["pairs"]],
            }
        )
    return out


def prepare_vqa_files(
    files: dict[str, list[str]], cache: str | os.PathLike, image_hw: tuple[int, int]
) -> dict[str, list[str]]:
    """Writes the examples of each VQA JSONL file to `cache/<split>_<i>.pkl` (atomically); returns the
    cache files per split."""
    cache = pathlib.Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    caches: dict[str, list[str]] = {}
    for split, paths in files.items():
        caches[split] = []
        for i, path in enumerate(paths):
            target = cache / f"{split}_{i}.pkl"
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(vqa_examples(path, image_hw)))
            os.replace(tmp, target)
            caches[split].append(str(target))
    return caches


def synthetic_splits(root: str | os.PathLike, validation_every: int = 10) -> dict[str, list[str]]:
    """Clip ids of a synthetic dataset: every `validation_every`-th clip goes to validation."""
    index = json.loads((pathlib.Path(root) / synthetic.GT_DIR / "index.json").read_text())
    ids = [c["clip_id"] for c in index["clips"]]
    return {
        "train": [c for i, c in enumerate(ids) if i % validation_every != validation_every - 1],
        "validation": [c for i, c in enumerate(ids) if i % validation_every == validation_every - 1],
    }


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """A JSON split file {"train": [clip_id, ...], ...}."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    splits = json.loads(path.read_text())
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ValueError(f"split file {path} must map split names to lists of clip ids")
    return splits


def builder_class(name: str, builders_dir: str | os.PathLike = BUILDERS_DIR) -> type:
    """The `Builder` class of `builders_dir/<name>/<name>_dataset_builder.py` (TFDS's folder convention).

    The module is loaded by path once per process (kept in `sys.modules` as `<name>_dataset_builder`,
    from which TFDS names the dataset) and not added to TFDS's global registry.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    module_name = f"{name}_dataset_builder"
    path = pathlib.Path(builders_dir) / name / f"{module_name}.py"
    module = sys.modules.get(module_name)
    if module is None or pathlib.Path(module.__file__) != path:
        if not path.is_file():
            raise FileNotFoundError(f"dataset builder {name!r}: {path} does not exist")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        with tfds.core.registered.skip_registration():
            spec.loader.exec_module(module)
    return module.Builder


def build(
    name: str,
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    splits: dict[str, list[str]],
    policy: str = "both",
    fixed_t0_us: Sequence[int] = (3_000_000, 7_000_000, 11_000_000),
    cameras: Sequence[str] = pai_layout.DEFAULT_CAMERAS,
    num_frames: int = 4,
    image_hw: tuple[int, int] = (320, 576),
    workers: int = 0,
) -> dict:
    """Builds drive dataset `name` (`synthetic_drive` or `physical_ai_av`) from the layout at `root` with
    its builder in `data/`; returns the summary (examples per split, clips, failed clips with reasons).
    A dataset already built under `data_dir` is kept and its summary read back from its metadata."""
    if name not in DRIVE_DATASETS:
        raise ValueError(f"unknown drive dataset {name!r}; known: {', '.join(DRIVE_DATASETS)}")
    options = ClipOptions(policy, tuple(fixed_t0_us), tuple(cameras), num_frames, tuple(image_hw))
    builder = builder_class(name)(
        data_dir=str(data_dir), file_format="array_record", splits=splits, options=options, workers=workers
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    counts = {s: builder.info.splits[s].num_examples for s in splits}
    failed = dict(builder.info.metadata["failed_clips"])
    clips = {c for ids in splits.values() for c in ids} - set(failed)
    return {"dataset": name, "examples": counts, "clips": len(clips), "failed": failed}


def build_vqa_jsonl(
    files: dict[str, list[str]], data_dir: str | os.PathLike, image_hw: tuple[int, int] = (320, 576)
) -> dict:
    """Builds `vqa_jsonl` from JSONL files per split; returns the examples per split."""
    builder = builder_class("vqa_jsonl")(
        data_dir=str(data_dir), file_format="array_record", files=files, image_hw=tuple(image_hw)
    )
    builder.download_and_prepare()
    return {"dataset": "vqa_jsonl", "examples": {s: builder.info.splits[s].num_examples for s in files}}
