"""gem_depth_targets on a tiny random Depth Anything model: layout, determinism, atomicity, skip/overwrite, errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gem_train import depth_targets as dt
from gem_train.data.episodes import EpisodeWriter

CAMS = {"scene": (24, 32), "wrist": (20, 20)}      # (H, W): different sizes, neither a multiple of 14
STEPS = (5, 3)


def tiny_depth_model_dir(path: Path) -> Path:
    """A ~40k-parameter Depth Anything (Dinov2 backbone) + its PIL image processor, saved like a hub folder."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    backbone = Dinov2Config(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=32, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=16,
                                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3).save_pretrained(path)
    return path


def write_episodes(folder: Path) -> list[Path]:
    """Episode 0 without sensor depth, episode 1 with metric depth for 'scene' (must stay untouched)."""
    paths = []
    for k, n in enumerate(STEPS):
        rng = np.random.default_rng(k)
        with EpisodeWriter(folder / f"episode_{k}.hdf5", instructions="pick up the red cube", control_rate_hz=10,
                           camera_names=list(CAMS)) as writer:
            for _ in range(n):
                images = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c, size in CAMS.items()}
                depth = {"scene": rng.uniform(0.2, 1.5, CAMS["scene"]).astype(np.float32)} if k == 1 else None
                writer.add_step(images, rng.normal(size=9), rng.normal(size=8), depth)
        paths.append(writer.path)
    return paths


def snapshot(path: Path) -> dict:
    """Every dataset (except our targets) and every attribute of an episode file."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = dict(f.attrs)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith(dt.TARGET_GROUP):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "/":
            assert {k: str(v) for k, v in a[key].items()} == {k: str(v) for k, v in b[key].items()}
        else:
            np.testing.assert_array_equal(a[key], b[key])


def read_targets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {cam: ds[()] for cam, ds in f[dt.TARGET_GROUP].items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: a second intra-op thread only spins against whatever else runs on CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_depth_model_dir(tmp_path_factory.mktemp("tiny_depth_anything"))


@pytest.fixture
def episodes(tmp_path) -> list[Path]:
    (tmp_path / "data").mkdir()
    return write_episodes(tmp_path / "data")


def test_cli_writes_targets_then_skips_then_overwrites(model_dir, episodes, capsys):
    before = [snapshot(p) for p in episodes]
    data = str(episodes[0].parent)
    assert dt.main(["--model", str(model_dir), "--data", data, "--batch-size", "2"]) == 0
    assert "2 episodes written (16 frames" in capsys.readouterr().out
    first = []
    for path, n, original in zip(episodes, STEPS, before):
        assert_same(original, snapshot(path))                     # images, sensor depth, actions, attrs intact
        targets = read_targets(path)
        assert sorted(targets) == sorted(CAMS)
        for cam, (h, w) in CAMS.items():
            assert targets[cam].shape == (n, h, w) and targets[cam].dtype == np.float32
            assert np.isfinite(targets[cam]).all() and targets[cam].std() > 0
        with h5py.File(path, "r") as f:
            attrs = dict(f[f"{dt.TARGET_GROUP}/scene"].attrs)
        assert attrs["kind"] == "disparity" and attrs["model_type"] == "depth_anything"
        first.append(targets)
    assert not list(episodes[0].parent.glob("*.tmp"))

    # Same frames through the model directly (another batch split): the stored values, bit for bit or nearly.
    cfg = dt.DepthTargetConfig(model_path=str(model_dir), batch_size=5)
    model, processor = dt.load_depth_model(cfg)
    with h5py.File(episodes[0], "r") as f:
        frames = f["observations/images/scene"][()]
    np.testing.assert_allclose(dt.predict_depth(frames, model, processor), first[0]["scene"], rtol=1e-5, atol=1e-6)

    inodes = [p.stat().st_ino for p in episodes]
    assert dt.main(["--model", str(model_dir), "--data", data]) == 0   # second run: nothing to do
    out = capsys.readouterr().out
    assert "0 episodes written" in out and "2 skipped" in out
    assert [p.stat().st_ino for p in episodes] == inodes             # files were not even rewritten

    with h5py.File(episodes[1], "r+") as f:                          # spoil one target; overwrite recomputes it
        f[f"{dt.TARGET_GROUP}/wrist"][...] = 0.0
    assert dt.main(["--model", str(model_dir), "--data", data, "--overwrite", "--cameras", "wrist"]) == 0
    again = read_targets(episodes[1])
    np.testing.assert_allclose(again["wrist"], first[1]["wrist"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again["scene"], first[1]["scene"])   # not requested: kept as it was
    assert_same(before[1], snapshot(episodes[1]))


def test_interrupted_run_leaves_the_episode_unchanged(model_dir, episodes, monkeypatch):
    cfg = dt.DepthTargetConfig(model_path=str(model_dir), batch_size=2)
    model, processor = dt.load_depth_model(cfg)
    raw = episodes[0].read_bytes()
    calls = []

    def dies_on_second_batch(frames, *args):
        calls.append(len(frames))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros(frames.shape[:3], np.float32)

    monkeypatch.setattr(dt, "predict_depth", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        dt.add_depth_targets(episodes[0], model, processor, cfg)
    assert episodes[0].read_bytes() == raw and not list(episodes[0].parent.glob("*.tmp"))

    monkeypatch.setattr(dt, "predict_depth", lambda frames, *a: np.full(frames.shape[:3], np.nan, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        dt.add_depth_targets(episodes[0], model, processor, cfg)
    assert episodes[0].read_bytes() == raw and not list(episodes[0].parent.glob("*.tmp"))


def test_gem_reference_file_with_jpeg_frames(model_dir, tmp_path):
    """GEM's own HDF5 (no format attr; frames as |S<len> JPEG bytes): cameras in file order, frames decoded."""
    import cv2

    path = tmp_path / "task" / "episode_0.hdf5"
    path.parent.mkdir()
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.create_dataset("action", data=rng.normal(size=(4, 14)).astype(np.float32))
        f.create_dataset("observations/state", data=rng.normal(size=(4, 14)).astype(np.float32))
        jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))[1].tobytes() for _ in range(4)]
        f.create_dataset("observations/images/left_stereo", data=np.array(jpegs, dtype=f"S{max(map(len, jpegs))}"))
    before = snapshot(path)
    cfg = dt.DepthTargetConfig(model_path=str(model_dir), batch_size=3)
    result = dt.add_depth_targets(path, *dt.load_depth_model(cfg), cfg)
    assert result.written == ["left_stereo"] and result.frames == 4
    assert read_targets(path)["left_stereo"].shape == (4, 30, 40)
    assert_same(before, snapshot(path))


def test_clear_errors(model_dir, episodes, tmp_path, capsys):
    data = str(episodes[0].parent)
    assert dt.main(["--model", str(tmp_path / "nowhere"), "--data", data]) == 2
    assert "is not a folder" in capsys.readouterr().err
    not_depth = tmp_path / "bert"
    not_depth.mkdir()
    (not_depth / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (not_depth / "preprocessor_config.json").write_text("{}")
    assert dt.main(["--model", str(not_depth), "--data", data]) == 2
    assert "not a depth-estimation model" in capsys.readouterr().err
    assert dt.main(["--model", str(model_dir), "--data", data, "--cameras", "left_stereo"]) == 1
    err = capsys.readouterr().err
    assert "no camera(s) ['left_stereo']" in err and "episode_0.hdf5" in err
    for path in episodes:                                            # nothing was written anywhere
        with h5py.File(path, "r") as f:
            assert dt.TARGET_GROUP not in f
    with pytest.raises(ValueError, match="batch_size"):
        dt.DepthTargetConfig(model_path=str(model_dir), batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        dt.DepthTargetConfig(model_path=str(model_dir), dtype="int8")


def test_target_kind_follows_the_model_config():
    from transformers import DepthAnythingConfig, DPTConfig

    assert dt.target_kind(DepthAnythingConfig()) == "disparity"
    assert dt.target_kind(DepthAnythingConfig(depth_estimation_type="metric", max_depth=20)) == "metric"
    assert dt.target_kind(DPTConfig()) == "disparity"
    assert dt.target_kind(DPTConfig(), "metric") == "metric"


# The dataset turns stored disparity (larger = nearer) into the same colormap target as metric depth.
def test_chunk_dataset_reads_estimated_disparity(model_dir, episodes):
    from gem_train.data.dataset import ChunkDataset, ChunkDatasetConfig
    from gem_train.data.depth import depth_target

    assert dt.main(["--model", str(model_dir), "--data", str(episodes[0].parent)]) == 0
    disparity = read_targets(episodes[0])
    ds = ChunkDataset([episodes[0]], ChunkDatasetConfig(list(CAMS), chunk_len=4, image_size=(16, 16), depth_size=16))
    sample = ds[2]
    assert sample["depth_valid"].tolist() == [True, True]
    for i, cam in enumerate(CAMS):
        d = disparity[cam][2]
        near0 = (d.max() - d) / (d.max() - d.min())          # larger disparity = nearer -> 0 = nearest
        expected, ok = depth_target(np.round(near0 * 65535).astype(np.uint16), 16)
        assert ok
        np.testing.assert_allclose(sample["depth"][i], expected, atol=0.05)
