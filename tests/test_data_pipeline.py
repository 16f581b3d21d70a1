"""Dataset build, per-stage masks, and the grain loader: determinism, resume, host sharding, mixture."""

import itertools
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from alpamayo_jax.benchmarks import data as data_bench
from alpamayo_jax.data import batch as batch_lib
from alpamayo_jax.data import (
    drive_dataset,
    pipeline,
    prompts,
    synthetic,
    synthetic_render,
    tokenizer,
    transforms,
    vqa,
)
from alpamayo_jax.models import vision
from alpamayo_jax.models.alpamayo import alpamayo_config

SP_MODEL = str(pathlib.Path(__file__).parents[1] / "data" / "tokenizers" / "tiny_sp.model")
CAMERAS = ("camera_cross_left_120fov", "camera_front_wide_120fov")
BUCKETS = tuple(range(64, 4096, 16))


@pytest.fixture(scope="module")
def cfg():
    return alpamayo_config("tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.write_synthetic_dataset(root, 4, 3, synthetic.SyntheticConfig(96, 64, CAMERAS))
    splits = drive_dataset.synthetic_splits(root, validation_every=4)
    splits["train"].append("no-such-clip")
    data_dir = tmp_path_factory.mktemp("tfds")
    summary = drive_dataset.build(
        "synthetic_drive", root, data_dir, splits, cameras=CAMERAS, num_frames=2, image_hw=(64, 96)
    )
    return data_dir, summary, root


def _data_cfg(data_dir, sources, **kw):
    return (
        dict(
            data_dir=str(data_dir),
            sources=sources,
            tokenizer=dict(kind="sentencepiece", path=SP_MODEL),
            batch_size=2,
            seed=0,
            num_epochs=1,
            length_buckets=BUCKETS,
        )
        | kw
    )


def _src(stage, weight=1.0, split="train"):
    return dict(name="synthetic_drive", split=split, stage=stage, weight=weight)


def _equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def test_build_summary_reports_failed_clip(built):
    data_dir, summary, _ = built
    assert summary["clips"] == 4
    assert list(summary["failed"]) == ["no-such-clip"]
    assert "clip no-such-clip: not in" in summary["failed"]["no-such-clip"]
    assert summary["examples"]["train"] >= 6 and summary["examples"]["validation"] >= 2
    ex = pipeline.data_source(data_dir, "synthetic_drive", "train")[0]
    assert len(ex["images"]) == 4 and ex["controls"].shape == (64, 2)
    assert len(ex["vqa_questions"]) == len(ex["vqa_answers"]) == 5


def test_builders_in_data_folder(built, tmp_path):
    data_dir, summary, root = built
    for name in drive_dataset.DATASETS:
        cls = drive_dataset.builder_class(name)
        assert cls.name == name and str(cls.VERSION) in cls.RELEASE_NOTES
        assert cls.__module__ == f"{name}_dataset_builder" and cls is drive_dataset.builder_class(name)
    meta = json.loads((data_dir / "synthetic_drive" / "1.1.0" / "metadata.json").read_text())
    assert meta == dict(
        policy="both",
        fixed_t0_us=[3_000_000, 7_000_000, 11_000_000],
        cameras=list(CAMERAS),
        num_frames=2,
        image_hw=[64, 96],
        failed_clips=summary["failed"],
    )
    # The TFDS builder on its own: the source is the manual dir, the clip caches of a build are reused.
    clip = json.loads((root / synthetic.GT_DIR / "index.json").read_text())["clips"][0]["clip_id"]
    options = drive_dataset.ClipOptions("fixed", (3_000_000,), CAMERAS[1:], 1, (64, 96))
    builder = drive_dataset.builder_class("synthetic_drive")(
        data_dir=str(tmp_path), file_format="array_record", splits={"val": [clip]}, options=options
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    cache = tmp_path / drive_dataset.CACHE_DIR / "synthetic_drive" / f"{clip}.pkl"
    stamp = cache.stat().st_mtime_ns
    source = pipeline.data_source(tmp_path, "synthetic_drive", "val")
    assert len(source) == 1 and builder.info.metadata["failed_clips"] == {}
    assert source[0]["t0_us"] == 3_000_000 and len(source[0]["images"]) == 1
    shutil.rmtree(tmp_path / "synthetic_drive")
    again = drive_dataset.build(
        "synthetic_drive", root, tmp_path, {"val": [clip]}, "fixed", (3_000_000,), CAMERAS[1:], 1, (64, 96)
    )
    assert again["examples"] == {"val": 1} and cache.stat().st_mtime_ns == stamp
    # A built dataset is reused; its summary (failed clips included) comes back from its metadata.
    splits = drive_dataset.synthetic_splits(root, validation_every=4)
    splits["train"].append("no-such-clip")
    reused = drive_dataset.build(
        "synthetic_drive", root, data_dir, splits, cameras=CAMERAS, num_frames=2, image_hw=(64, 96)
    )
    assert reused == summary
    with pytest.raises(ValueError, match=r"split 'val' .*: no clip to build \(1 listed; failed: \{'no-such"):
        drive_dataset.build("synthetic_drive", root, tmp_path / "none", {"val": ["no-such-clip"]})
    with pytest.raises(ValueError, match="unknown keyframe policy"):
        drive_dataset.ClipOptions(policy="every")
    with pytest.raises(ValueError, match="needs splits"):
        drive_dataset.builder_class("physical_ai_av")(data_dir=str(tmp_path)).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root))
        )


def test_uint8_and_float_patch_rows_agree(built, cfg):
    data_dir, _, _ = built
    dc = _data_cfg(data_dir, [_src(2)], shuffle=False)
    u8, f32 = (next(pipeline.make_loader(dc | dict(patch_dtype=d), cfg)) for d in ("uint8", "float32"))
    vcfg = cfg.vlm.vision
    assert u8.images.patches_inp.dtype == np.uint8 and u8.images.patches_inp.shape[-1] == vcfg.pixel_dim
    assert f32.images.patches_inp.shape[-1] == vcfg.patch_dim
    assert _equal(u8.replace(images=None), f32.replace(images=None))
    rows = vision.patch_rows(u8.images.patches_inp, u8.images.lengths_i, vcfg)
    np.testing.assert_allclose(rows, f32.images.patches_inp, atol=1e-6)
    with pytest.raises(ValueError, match="patch_dtype 'int8'"):
        pipeline.SampleFn(2, dc["tokenizer"], cfg, "int8")


def test_masks_per_stage(built, cfg):
    data_dir, _, _ = built
    source = pipeline.data_source(data_dir, "synthetic_drive", "train")
    examples = [source[i] for i in range(len(source))]
    with_cot = next(e for e in examples if e["reasoning"])
    (record,) = json.loads(with_cot["coc"])
    assert record["description"] == with_cot["reasoning"].decode() and "causes" in record
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    lay = cfg.tokens
    rng = np.random.default_rng(0)
    s0, s1, s2, s3 = (transforms.example_sample(with_cot, st, tok, cfg, rng) for st in range(4))
    answer = tok.decode(s0["tokens"][s0["text_loss"] > 0])
    assert answer.endswith("<|im_end|>") and answer[: -len("<|im_end|>")].encode() in with_cot["vqa_answers"]
    assert not s0["traj_loss"].any() and s0["expert_prefix_len"] == 0
    assert not s1["text_loss"].any() and s1["traj_loss"].sum() == 2 * lay.num_waypoints + 1
    assert lay.is_future_id(s1["tokens"][s1["traj_loss"] > 0][:-1]).all()
    assert s1["tokens"][s1["expert_prefix_len"] - 1] == lay.special_id("traj_future_start")
    want = with_cot["reasoning"].decode() + "<|cot_end|><|traj_future_start|>"
    assert tok.decode(s2["tokens"][s2["text_loss"] > 0]) == want
    assert np.array_equal(s2["tokens"][s2["traj_loss"] > 0], s1["tokens"][s1["traj_loss"] > 0])
    assert not s3["text_loss"].any() and not s3["traj_loss"].any()
    assert s3["tokens"][-1] == lay.special_id("cot_start") and not s3["has_trajectory"]
    assert tok.decode(s3["tokens"]).startswith(f"<|im_start|>system\n{prompts.SYSTEM}<|im_end|>")
    assert (s1["tokens"] == cfg.vlm.image_token_id).sum() == 4 * (4 * 6) // 4


def test_determinism_and_seed(built, cfg):
    data_dir, summary, _ = built
    dc = _data_cfg(data_dir, [_src(1)])
    a, b = list(pipeline.make_loader(dc, cfg)), list(pipeline.make_loader(dc, cfg))
    assert len(a) == summary["examples"]["train"] // 2 and all(
        _equal(x, y) for x, y in zip(a, b, strict=True)
    )
    c = list(pipeline.make_loader(dc | dict(seed=5), cfg))
    assert not all(_equal(x, y) for x, y in zip(a, c, strict=True))


def test_resume_mid_epoch(built, cfg):
    data_dir, _, _ = built
    dc = _data_cfg(data_dir, [_src(2)], num_epochs=None)
    it = pipeline.make_loader(dc, cfg)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = pipeline.make_loader(dc, cfg)
    resumed.set_state(json.loads(json.dumps(state)) if isinstance(state, dict) else state)
    assert all(_equal(x, next(resumed)) for x in expected)


def test_two_hosts_disjoint_complete(built, cfg):
    data_dir, _, _ = built
    dc = _data_cfg(data_dir, [_src(1)], batch_size=1)
    rows = [
        [b.controls_ba2[0].tobytes() for b in pipeline.make_loader(dc, cfg, host, 2)] for host in range(2)
    ]
    source = pipeline.data_source(data_dir, "synthetic_drive", "train")
    everything = sorted(source[i]["controls"].tobytes() for i in range(len(source)))
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == everything


def test_mixture_workers_and_padding(built, cfg):
    data_dir, _, _ = built
    dc = _data_cfg(data_dir, [_src(0, 3.0), _src(2, 1.0)], num_epochs=None)
    batches = list(itertools.islice(pipeline.make_loader(dc, cfg), 16))
    vqa_share = np.mean([not b.has_trajectory_b.any() for b in batches])
    assert 0.6 <= vqa_share <= 0.9
    padding = 1 - sum(b.valid_bl.sum() for b in batches) / sum(b.valid_bl.size for b in batches)
    assert padding < 0.15
    with_workers = pipeline.make_loader(dc | dict(worker_count=1), cfg)
    assert all(_equal(x, next(with_workers)) for x in batches[:4])


def test_clear_errors(built, cfg, tmp_path):
    data_dir, _, _ = built
    with pytest.raises(FileNotFoundError, match="'physical_ai_av' is not built"):
        pipeline.make_loader(_data_cfg(data_dir, [dict(name="physical_ai_av", split="train", stage=1)]), cfg)
    with pytest.raises(ValueError, match="no split 'test'"):
        pipeline.make_loader(_data_cfg(data_dir, [_src(1, split="test")]), cfg)
    with pytest.raises(ValueError, match="longer than the largest length bucket"):
        next(pipeline.make_loader(_data_cfg(data_dir, [_src(1)], length_buckets=(64,)), cfg))


def test_to_global(cfg):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    local = batch_lib.fake(cfg, 8, num_images=1)
    (glob,) = list(pipeline.device_prefetch(iter([local]), mesh))
    assert glob.tokens_bl.sharding.spec == jax.sharding.PartitionSpec("data", None)
    assert glob.positions_3bl.sharding.spec == jax.sharding.PartitionSpec(None, "data", None)
    np.testing.assert_array_equal(np.asarray(glob.positions_3bl), local.positions_3bl)
    np.testing.assert_array_equal(np.asarray(glob.images.patches_inp), local.images.patches_inp)


def test_keyframe_policies():
    events = [{"event_start_timestamp": 5_000_000}, {"event_start_timestamp": 19_000_000}]
    fixed = (1_000_000, 3_000_000)
    assert drive_dataset.keyframes("fixed", events, 20_000_000, fixed) == [3_000_000]
    assert drive_dataset.keyframes("coc", events, 20_000_000, fixed) == [5_000_000]
    assert drive_dataset.keyframes("both", events, 20_000_000, fixed) == [3_000_000, 5_000_000]
    assert drive_dataset.keyframes("meta_actions", events, 20_000_000, fixed, [4_200_000]) == [4_200_000]
    with pytest.raises(ValueError, match="unknown keyframe policy"):
        drive_dataset.keyframes("every", events, 20_000_000, fixed)


def test_physical_ai_av_split_file_and_vqa_jsonl(built, cfg, tmp_path):
    root = built[2]
    clip = json.loads((root / synthetic.GT_DIR / "index.json").read_text())["clips"][0]["clip_id"]
    (tmp_path / "splits.json").write_text(json.dumps({"train": [clip]}))
    summary = drive_dataset.build(
        "physical_ai_av",
        root,
        tmp_path / "tfds",
        drive_dataset.read_split_file(tmp_path / "splits.json"),
        policy="meta_actions",
        cameras=CAMERAS[:1],
        num_frames=1,
        image_hw=(64, 96),
    )
    assert summary["failed"] == {} and summary["examples"]["train"] >= 1
    ex = pipeline.data_source(tmp_path / "tfds", "physical_ai_av", "train")[0]
    assert list(ex["vqa_questions"]) == [] and len(ex["images"]) == 1
    for i in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rows = [
        dict(
            id=f"r{i}",
            images=[f"{i}.png"],
            conversation=[dict(role="user", text="Light?"), dict(role="assistant", text=f"Level {i}.")],
        )
        for i in range(2)
    ]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert drive_dataset.build_vqa_jsonl({"train": [str(tmp_path / "v.jsonl")]}, tmp_path / "tfds", (64, 96))[
        "examples"
    ] == {"train": 2}
    dc = _data_cfg(tmp_path / "tfds", [dict(name="vqa_jsonl", split="train", stage=0)], shuffle=False)
    (b,) = list(pipeline.make_loader(dc, cfg))
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    answers = sorted(tok.decode(b.tokens_bl[i][b.text_loss_bl[i] > 0]) for i in range(2))
    assert answers == ["Level 0.<|im_end|>", "Level 1.<|im_end|>"] and not b.has_trajectory_b.any()


def test_vqa_jsonl(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    row = dict(
        id="q1",
        images=["a.jpg"],
        conversation=[dict(role="user", text="Is it dark?"), dict(role="assistant", text="Yes.")],
    )
    (tmp_path / "v.jsonl").write_text(json.dumps(row) + "\n")
    (got,) = vqa.read_jsonl(tmp_path / "v.jsonl")
    assert got["pairs"] == [("Is it dark?", "Yes.")] and got["images"] == [str(tmp_path / "a.jpg")]
    (tmp_path / "bad.jsonl").write_text(json.dumps(row | dict(images=["b.jpg"])) + "\n")
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl:1: images not found"):
        vqa.read_jsonl(tmp_path / "bad.jsonl")


def test_loader_benchmark_runs():
    out = data_bench.run("tiny", batch=1, reps=2, clips=1, workers=1, height=64, width=96)
    assert out["examples"] >= 1 and out["shape"] == "4 cameras x 4 frames x 64x96"
    for dtype in ("uint8", "float32", "bfloat16"):
        for key in ("samples_per_s_per_core", "workers0_samples_per_s", "workers1_samples_per_s"):
            assert out[f"{dtype}_{key}"] > 0
    # 16 frames of 4 x 6 patches: uint8 pixel rows vs float32 rows repeated over the temporal patch.
    pixels = 16 * 4 * 6 * 3 * 16 * 16
    assert pixels / 1e6 < out["uint8_batch_mb_per_sample"] < pixels / 1e6 + 0.1
    assert 8 * pixels / 1e6 < out["float32_batch_mb_per_sample"] < 8 * pixels / 1e6 + 0.1


@pytest.mark.parametrize("kind", ["triplane", "flex"])
def test_tokenizer_inputs_from_the_dataset(built, kind):
    """Triplane: frames [T, V] at the model size and the rig's native calibration; Flex: ViT patch rows
    with the frame / camera index of each camera-major image. Through the transforms and the loader."""
    data_dir, _, _ = built
    cfg = alpamayo_config(
        "tiny",
        vision_tokenizer=kind,
        triplane=dict(image_hw=(64, 96), patch_size=8, patch=(4, 4, 4)),
        flex=dict(num_cameras=2, num_frames=2),
    )
    source = pipeline.data_source(data_dir, "synthetic_drive", "train")
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    samples = [transforms.example_sample(source[i], 1, tok, cfg, np.random.default_rng(i)) for i in range(2)]
    b = transforms.batch_samples(samples, cfg, BUCKETS)
    n_image = (b.tokens_bl == cfg.vlm.image_token_id).sum(1)
    if kind == "triplane":
        assert b.images is None and b.frames_btvhw3.shape == (2, 2, 2, 64, 96, 3)
        assert n_image.tolist() == [2 * 32] * 2  # 32 tokens per timestep
        for t, v in itertools.product(range(2), range(2)):
            np.testing.assert_array_equal(
                b.frames_btvhw3[0, t, v], drive_dataset.decode_jpeg(source[0]["images"][2 * v + t])
            )
        for v, name in enumerate(CAMERAS):
            spec = synthetic_render.make_camera(name, 96, 64)
            np.testing.assert_allclose(b.cameras.fw_poly_bvk[0, v], spec.fw_poly, rtol=1e-5)
            np.testing.assert_allclose(b.cameras.principal_point_bv2[0, v], spec.principal_point, rtol=1e-5)
            assert b.cameras.size_bv2[0, v].tolist() == [96, 64]
            np.testing.assert_allclose(b.cameras.t_rig_cam_bv44[0, v, :3, :3], spec.rotation_33, atol=1e-5)
    else:
        assert b.frames_btvhw3 is None and b.images.patches_inp.shape[:2] == (2, 4)
        assert n_image.tolist() == [16 * 4] * 2
        assert b.image_frame_bn.tolist() == [[0, 1, 0, 1]] * 2
        assert b.image_camera_bn.tolist() == [[0, 0, 1, 1]] * 2
    loaded = next(pipeline.make_loader(_data_cfg(data_dir, [_src(1)]), cfg))
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(b)
