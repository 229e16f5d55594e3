"""gem_train.data: our episode format, GEM reference HDF5 and LeRobot v3 readers, chunk dataset, stats."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from gem_train.data import (ChunkDataset, ChunkDatasetConfig, EpisodeData, EpisodeWriter, collate_batch,
                            compute_stats, depth_target, find_episodes, normalizers_from_stats, read_action_stats,
                            read_episode, split_episodes, write_action_stats, write_episode)

ROOT = Path(__file__).resolve().parents[1]


def make_episode(n=6, cams=("scene", "wrist"), size=(24, 32), seed=0, depth=True, instruction="pick up the red cube"):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (n, *size, 3), dtype=np.uint8) for c in cams}
    depth_m = {c: rng.uniform(0.2, 1.5, (n, *size)).astype(np.float32) for c in cams} if depth else None
    meta = {"control_rate_hz": 10.0, "state_names": [f"s{i}" for i in range(9)],
            "action_names": [f"a{i}" for i in range(8)], "action_space": "absolute_joint", "seed": seed}
    return EpisodeData(actions=rng.normal(size=(n, 8)).astype(np.float32),
                       states=rng.normal(size=(n, 9)).astype(np.float32),
                       images=images, instructions=[instruction], depth=depth_m, meta=meta)


# ---------------------------------------------------------------------------------------------- our format
@pytest.mark.parametrize("lazy", [True, False])
def test_our_format_round_trip(tmp_path, lazy):
    episode = make_episode()
    path = write_episode(tmp_path / "episode_000000.hdf5", episode)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    with read_episode(path, lazy=lazy) as back:
        np.testing.assert_array_equal(back.actions, episode.actions)
        np.testing.assert_array_equal(back.states, episode.states)
        assert back.camera_names == ["scene", "wrist"] and back.instructions == ["pick up the red cube"]
        for cam in episode.images:
            np.testing.assert_array_equal(np.asarray(back.images[cam]), episode.images[cam])
            np.testing.assert_array_equal(back.images[cam][3], episode.images[cam][3])
            np.testing.assert_array_equal(np.asarray(back.depth[cam]), episode.depth[cam])
        assert back.meta["control_rate_hz"] == 10.0 and back.meta["seed"] == 0
        assert back.meta["state_names"] == episode.meta["state_names"]
        assert back.meta["action_names"] == episode.meta["action_names"]
    with h5py.File(path) as f:   # GEM's loader reads the same dataset names
        assert f["action"].shape == (6, 8) and f["observations/state"].shape == (6, 9)
        assert f["observations/images/scene"].chunks == (1, 24, 32, 3)
        assert f["observations/images/scene"].compression == "gzip"


def test_writer_never_overwrites_and_rejects_inconsistent_steps(tmp_path):
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode(n=2))
    with pytest.raises(ValueError, match="never overwritten"):
        write_episode(path, make_episode(n=2))
    writer = EpisodeWriter(tmp_path / "episode_1.hdf5", instructions="x", control_rate_hz=10, camera_names=["scene"])
    with pytest.raises(ValueError, match="uint8"):
        writer.add_step({"scene": np.zeros((8, 8, 3), np.float32)}, np.zeros(2), np.zeros(2))
    writer.add_step({"scene": np.zeros((8, 8, 3), np.uint8)}, np.zeros(2), np.zeros(2), {"scene": np.ones((8, 8))})
    writer.add_step({"scene": np.zeros((8, 8, 3), np.uint8)}, np.zeros(2), np.zeros(2))   # depth missing here
    with pytest.raises(ValueError, match="every one"):
        writer.close()
    assert not (tmp_path / "episode_1.hdf5").exists() and not list(tmp_path.glob("*.tmp"))


def test_exception_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with EpisodeWriter(tmp_path / "episode_0.hdf5", instructions="x", control_rate_hz=10,
                           camera_names=["scene"]) as writer:
            writer.add_step({"scene": np.zeros((8, 8, 3), np.uint8)}, np.zeros(2), np.zeros(2))
            raise RuntimeError("robot e-stop")
    assert list(tmp_path.iterdir()) == []


def test_hard_crash_leaves_only_a_tmp_that_readers_ignore(tmp_path):
    write_episode(tmp_path / "episode_0.hdf5", make_episode(n=2))
    script = textwrap.dedent(f"""
        import os, numpy as np
        from gem_train.data.episodes import EpisodeWriter
        w = EpisodeWriter({str(tmp_path / "episode_1.hdf5")!r}, instructions="x", control_rate_hz=10,
                          camera_names=["c"])
        for _ in range(3):
            w.add_step({{"c": np.zeros((8, 8, 3), np.uint8)}}, np.zeros(2), np.zeros(2))
        os._exit(1)   # killed mid-episode: no close, no cleanup
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False, timeout=60)
    assert (tmp_path / "episode_1.hdf5.tmp").exists() and not (tmp_path / "episode_1.hdf5").exists()
    assert find_episodes(tmp_path) == [tmp_path / "episode_0.hdf5"]
    with pytest.raises(ValueError, match="unfinished"):
        read_episode(tmp_path / "episode_1.hdf5.tmp")


# -------------------------------------------------------------------------------------- GEM reference HDF5
def smooth_image(h, w, k):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4 + k * 20) % 256, (y * 4 + k * 10) % 256, np.full_like(x, 60 + k * 5)], -1).astype(np.uint8)


def write_gem_task(task_dir: Path, n=5, jpeg=False, with_depth=False):
    """A GEM reference task dir as GEM's data/generate_hdf5.py writes it (JPEG variant: |S<len> bytes per frame)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "instructions.json").write_text(json.dumps(["fold the towel", "fold it"]))
    rng = np.random.default_rng(1)
    frames = {cam: np.stack([smooth_image(48, 64, k + i) for k in range(n)]) for i, cam in enumerate(["left_stereo",
                                                                                                     "right_stereo"])}
    with h5py.File(task_dir / f"episode_{int(jpeg)}.hdf5", "w") as f:
        f.create_dataset("action", data=rng.normal(size=(n, 14)).astype(np.float32))
        f.create_dataset("observations/state", data=rng.normal(size=(n, 14)).astype(np.float32))
        for cam, imgs in frames.items():
            if jpeg:
                encoded = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for im in imgs]
                fixed = np.array(encoded, dtype=f"S{max(map(len, encoded))}")    # GEM: |S<len>, NUL-padded
                f.create_dataset(f"observations/images/{cam}", data=fixed)
            else:
                f.create_dataset(f"observations/images/{cam}", data=imgs)
            if with_depth:
                f.create_dataset(f"observations/depth_images/{cam}", data=np.repeat(imgs[..., :1], 3, axis=-1))
    return frames


def test_gem_reference_hdf5_raw_and_jpeg(tmp_path):
    raw_frames = write_gem_task(tmp_path / "fold", with_depth=True)
    jpeg_frames = write_gem_task(tmp_path / "fold", jpeg=True)
    paths = find_episodes(tmp_path)
    assert [p.name for p in paths] == ["episode_0.hdf5", "episode_1.hdf5"]
    with read_episode(paths[0]) as raw, read_episode(paths[1]) as jpg:
        for episode, frames in ((raw, raw_frames), (jpg, jpeg_frames)):
            assert episode.actions.shape == (5, 14) and episode.states.shape == (5, 14)
            assert episode.instructions == ["fold the towel", "fold it"]
            assert episode.camera_names == ["left_stereo", "right_stereo"]
            assert episode.meta["source_format"] == "gem_reference"
            for cam in frames:
                image = episode.images[cam][2]
                assert image.shape == (48, 64, 3) and image.dtype == np.uint8
                assert np.abs(image.astype(int) - frames[cam][2]).mean() < 3.0   # JPEG: near, RGB order kept
        assert raw.depth["left_stereo"][0].shape == (48, 64, 3) and jpg.depth is None
    ds = ChunkDataset(paths, ChunkDatasetConfig(["left_stereo", "right_stereo"], chunk_len=4, image_size=(32, 32),
                                                depth_size=16))
    sample = ds[0]
    assert sample["depth_valid"].tolist() == [True, True] and ds[5]["depth_valid"].tolist() == [False, False]


# ----------------------------------------------------------------------------------------------- LeRobot v3
def frame_color(cam_idx, j):
    return np.array([(j * 40 + 20) % 256, (cam_idx * 120 + 30) % 256, (200 - j * 25) % 256], np.uint8)


def write_lerobot_v3(root: Path, lengths=(7, 5), fps=10, size=(32, 48)):
    """Minimal LeRobot v3.0 layout: one data file and one mp4 per camera holding all episodes back to back."""
    import pandas as pd

    cams = ["observation.images.top", "observation.images.wrist"]
    tasks = ["pick the cube", "place the cube"]
    features = {
        "action": {"dtype": "float32", "shape": [3], "names": ["x", "y", "gripper"]},
        "observation.state": {"dtype": "float32", "shape": [4], "names": {"motors": ["j1", "j2", "j3", "j4"]}},
        **{k: {"dtype": "video", "shape": [*size, 3], "names": ["height", "width", "channels"],
               "info": {"video.fps": fps, "video.codec": "mp4v"}} for k in cams},
        "observation.images.side": {"dtype": "image", "shape": [*size, 3], "names": ["height", "width", "channels"]},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("episode_index", "frame_index", "index",
                                                                         "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v3.0", "robot_type": "test_arm", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(tasks), "chunks_size": 1000, "fps": fps,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
        root / "meta" / "tasks.parquet")
    rows, episode_rows, start = [], [], 0
    for e, n in enumerate(lengths):
        for t in range(n):
            rows.append({"action": [float(e), float(t), 0.5], "observation.state": [float(e), float(t), 1.0, 2.0],
                         "timestamp": t / fps, "frame_index": t, "episode_index": e, "index": start + t,
                         "task_index": e,
                         # `image` features live in the parquet as HF Image structs (PNG of an RGB array via PIL)
                         "observation.images.side": {"bytes": cv2.imencode(".png", cv2.cvtColor(np.full(
                             (*size, 3), frame_color(2, start + t), np.uint8), cv2.COLOR_RGB2BGR))[1].tobytes(),
                             "path": None}})
        episode_rows.append({"episode_index": e, "length": n, "tasks": [tasks[e]], "data/chunk_index": 0,
                             "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + n,
                             **{f"videos/{k}/{field}": value for k in cams for field, value in
                                (("chunk_index", 0), ("file_index", 0), ("from_timestamp", start / fps),
                                 ("to_timestamp", (start + n) / fps))}})
        start += n
    pd.DataFrame(rows).to_parquet(root / "data" / "chunk-000" / "file-000.parquet")
    pd.DataFrame(episode_rows).to_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    for c, key in enumerate(cams):
        folder = root / "videos" / key / "chunk-000"
        folder.mkdir(parents=True)
        writer = cv2.VideoWriter(str(folder / "file-000.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size[::-1])
        for j in range(start):
            writer.write(cv2.cvtColor(np.full((*size, 3), frame_color(c, j), np.uint8), cv2.COLOR_RGB2BGR))
        writer.release()


def test_lerobot_v3_reader(tmp_path):
    write_lerobot_v3(tmp_path)
    episodes = find_episodes(tmp_path)
    assert len(episodes) == 2
    first, second = episodes
    assert first.instructions == ["pick the cube"] and second.instructions == ["place the cube"]
    assert first.actions.shape == (7, 3) and second.states.shape == (5, 4)
    np.testing.assert_array_equal(second.actions[:, 1], np.arange(5))
    assert first.meta["control_rate_hz"] == 10 and first.meta["state_names"] == ["j1", "j2", "j3", "j4"]
    assert first.meta["action_names"] == ["x", "y", "gripper"] and first.camera_names == ["top", "wrist", "side"]
    np.testing.assert_array_equal(second.images["side"][4][0, 0], frame_color(2, 11))     # PNG: exact
    for c, cam in enumerate(["top", "wrist"]):
        for episode, offset in ((first, 0), (second, 7)):
            for t in (0, len(episode.actions) - 1):
                image = episode.images[cam][t]
                assert image.shape == (32, 48, 3)
                assert np.abs(image.reshape(-1, 3).mean(0) - frame_color(c, offset + t)).max() < 12
    ds = ChunkDataset(episodes, ChunkDatasetConfig(["wrist", "top"], chunk_len=4, image_size=(16, 24)))
    assert len(ds) == 12 and ds[7]["instruction"] == "place the cube" and ds[7]["images"][0].shape == (16, 24, 3)


# ------------------------------------------------------------------------------------------- chunk dataset
def test_chunk_dataset_sampling(tmp_path):
    a = make_episode(n=6, seed=1)
    b = make_episode(n=4, seed=2, depth=False, instruction="pick up the blue cube")
    b.images["scene"][:] = 10          # constant colours identify the camera after resizing
    b.images["wrist"][:] = 200
    path = write_episode(tmp_path / "episode_1.hdf5", b)
    cfg = ChunkDatasetConfig(["wrist", "scene"], chunk_len=5, image_size=(12, 16), depth_size=16,
                             state_names=a.meta["state_names"])
    ds = ChunkDataset([a, path], cfg)
    assert len(ds) == 10 and ds.locate(6) == (1, 0)
    s = ds[4]                                        # episode a, t = 4: two real actions then padding
    np.testing.assert_array_equal(s["actions"][:2], a.actions[4:6])
    np.testing.assert_array_equal(s["actions"][2:], np.repeat(a.actions[-1:], 3, axis=0))
    np.testing.assert_array_equal(s["state"], a.states[4])
    assert s["state"].dtype == np.float32 and s["actions"].shape == (5, 8)
    expected = cv2.resize(a.images["wrist"][4], (16, 12), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(s["images"][0], expected)
    last = ds[9]                                     # episode b, last step: all padding
    np.testing.assert_array_equal(last["actions"], np.repeat(b.actions[-1:], 5, axis=0))
    np.testing.assert_array_equal(last["state"], b.states[3])
    assert [img.shape for img in last["images"]] == [(12, 16, 3), (12, 16, 3)]
    assert last["images"][0].mean() == 200 and last["images"][1].mean() == 10     # camera order = cfg order
    assert last["instruction"] == "pick up the blue cube"
    assert s["depth"].shape == (2, 3, 16, 16) and s["depth_valid"].tolist() == [True, True]
    assert last["depth_valid"].tolist() == [False, False] and not last["depth"].any()
    with pytest.raises(ValueError, match="state_names"):
        ChunkDataset([a], ChunkDatasetConfig(["scene"], state_names=["other"] * 9))
    with pytest.raises(ValueError, match="cameras"):
        ChunkDataset([a], ChunkDatasetConfig(["left_stereo"]))
    with pytest.raises(ValueError, match="chunk_len"):
        ChunkDatasetConfig(["scene"], chunk_len=0)


def test_frame_cache_gives_the_same_samples_and_reads_each_episode_once(tmp_path):
    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=5, seed=k)) for k in range(2)]
    kwargs = dict(chunk_len=3, image_size=(12, 16), color_jitter=True, random_shift_px=2, seed=4)
    plain = ChunkDataset(paths, ChunkDatasetConfig(["scene", "wrist"], **kwargs))
    cached = ChunkDataset(paths, ChunkDatasetConfig(["scene", "wrist"], cache_frames=True, **kwargs))
    order = [7, 0, 3, 9, 7, 1]
    for index in order:
        a, b = plain[index], cached[index]
        for x, y in zip(a["images"], b["images"]):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a["actions"], b["actions"])
    assert sorted(cached._frames) == [(k, cam) for k in range(2) for cam in ("scene", "wrist")]
    # Once cached, the files are no longer needed: closing every handle must not matter.
    for episode in cached._open.values():
        episode.close()
    np.testing.assert_array_equal(cached[8]["images"][1], plain[8]["images"][1])


def test_cached_episodes_are_not_reopened_per_sample(tmp_path, monkeypatch):
    # With more episodes than max_open_files, reopening the HDF5 file per sample cost more than the sample.
    import gem_train.data.dataset as dataset_module

    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=5, seed=k)) for k in range(3)]
    cached = ChunkDataset(paths, ChunkDatasetConfig(["scene", "wrist"], chunk_len=3, image_size=(12, 16),
                                                    cache_frames=True, max_open_files=1))
    opened = []
    real_read = dataset_module.read_episode
    monkeypatch.setattr(dataset_module, "read_episode", lambda path: opened.append(path) or real_read(path))
    for _ in range(3):
        for index in range(len(cached)):
            cached[index]
    assert sorted(map(str, opened)) == sorted(map(str, paths))   # once each, to fill the cache


def test_state_noise_perturbs_only_the_state_the_policy_sees():
    a = make_episode(n=40, seed=3)
    clean = ChunkDataset([a], ChunkDatasetConfig(["scene"], chunk_len=4, image_size=(12, 16)))
    noisy = ChunkDataset([a], ChunkDatasetConfig(["scene"], chunk_len=4, image_size=(12, 16), state_noise_std=0.05,
                                                 seed=1))
    offsets = np.stack([noisy[t]["state"] - clean[t]["state"] for t in range(40)])
    assert 0.035 < offsets.std() < 0.065 and abs(offsets.mean()) < 0.02
    for t in (0, 17):
        np.testing.assert_array_equal(noisy[t]["actions"], clean[t]["actions"])
    with pytest.raises(ValueError, match="state_noise_std"):
        ChunkDatasetConfig(["scene"], state_noise_std=float("nan"))


def test_random_shift_translates_with_replicated_edges():
    from gem_train.data.augment import random_shift

    image = np.zeros((12, 16, 3), np.uint8)
    image[5, 7] = 255                                      # one bright pixel
    moved = [np.argwhere(random_shift(image, 3, np.random.default_rng(seed))[..., 0] == 255)
             for seed in range(40)]
    assert all(len(m) == 1 for m in moved)                 # translated, not blurred or lost
    offsets = {tuple(m[0] - [5, 7]) for m in moved}
    assert len(offsets) > 10 and all(max(abs(dy), abs(dx)) <= 3 for dy, dx in offsets)
    edge = np.arange(16, dtype=np.uint8)[None, :, None].repeat(12, 0).repeat(3, 2)
    shifted = random_shift(edge, 3, np.random.default_rng(1))
    assert shifted.shape == edge.shape and set(np.unique(shifted)) <= set(range(16))   # edges replicated, no black
    with pytest.raises(ValueError, match="random_shift_px"):
        ChunkDatasetConfig(["scene"], random_shift_px=-1)


def test_random_shift_moves_the_depth_target_with_the_image():
    n, size = 6, 32
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, 10:15, 12:17] = 255
    depth = np.full((n, size, size), 1.5, np.float32)
    depth[:, 10:15, 12:17] = 0.5
    episode = EpisodeData(actions=np.zeros((n, 8), np.float32), states=np.zeros((n, 9), np.float32),
                          images={"scene": images}, instructions=["x"], depth={"scene": depth}, meta={})
    ds = ChunkDataset([episode], ChunkDatasetConfig(["scene"], chunk_len=2, image_size=(size, size),
                                                    depth_size=size, random_shift_px=4, seed=3))
    moved = set()
    for t in range(n):
        sample = ds[t]
        bright = np.argwhere(sample["images"][0][..., 0] == 255).mean(0)
        target = sample["depth"][0]
        near = np.argwhere(np.abs(target - target[:, :1, :1]).sum(0) > 0.1).mean(0)
        np.testing.assert_allclose(near, bright, atol=0.5)          # same place in both
        moved.add(tuple(np.round(bright).astype(int)))
    assert len(moved) > 1                                            # and it did move
    from gem_train.data.augment import scale_offset
    assert scale_offset((4, -2), (128, 128), (64, 32)) == (2, 0)     # a depth map stored at another size


def test_depth_target_recipe():
    depth = np.full((20, 30), 2.0, np.float32)
    depth[5:10, 5:10] = 0.5                           # near block
    depth[0, :] = 5.0                                 # background (renderer far plane)
    target, valid = depth_target(depth, 16, max_depth_m=4.0)
    assert valid and target.shape == (3, 16, 16) and target.dtype == np.float32
    assert target.min() >= -1.0 and target.max() <= 1.0 and target.max() > 0.9 and target.min() < -0.9
    assert target[:, 5, 4].mean() > target[:, 12, 12].mean()      # near is bright (inverted INFERNO)
    inv = np.clip((1.0 - np.ones((4, 4))) * 255, 0, 255).astype(np.uint8)   # farthest value -> INFERNO(0)
    far_rgb = cv2.cvtColor(cv2.applyColorMap(inv, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)[0, 0] / 127.5 - 1
    np.testing.assert_allclose(target[:, 0, 8], far_rgb, atol=1e-6)
    uint8_target, ok = depth_target(np.zeros((8, 8, 3), np.uint8), 8)     # DA3 PNG: 0 -> near after inversion
    assert ok and uint8_target.mean() > 0.5
    assert depth_target(np.full((8, 8), np.nan, np.float32), 8)[1] is False


def test_augmentation_drops(tmp_path):
    episode = make_episode(n=40)
    cfg = ChunkDatasetConfig(["scene", "wrist"], chunk_len=2, image_size=(24, 32), image_drop_prob=0.5,
                             instruction_drop_prob=0.5, color_jitter=True, depth_size=8, seed=3)
    samples = [s for s in ChunkDataset([episode], cfg)]
    blank = [[not img.any() for img in s["images"]] for s in samples]
    assert 10 < sum(map(sum, blank)) < 70 and 5 < sum(s["instruction"] == "" for s in samples) < 35
    for s, flags in zip(samples, blank):
        assert [not v for v in s["depth_valid"]] == flags       # no depth target for a blanked camera
    kept = [s["images"][0] for s, flags in zip(samples, blank) if not flags[0]]
    assert any(not np.array_equal(img, episode.images["scene"][0]) for img in kept)


def _same_sample(a: dict, b: dict) -> bool:
    return (a["instruction"] == b["instruction"]
            and all(np.array_equal(x, y) for x, y in zip(a["images"], b["images"]))
            and all(np.array_equal(a[key], b[key]) for key in ("state", "actions", "depth", "depth_valid")))


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    """No generator state: a fresh process (a resumed run, another worker) draws what the first one drew."""
    import dataclasses
    import pickle

    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=6, seed=k)) for k in range(2)]
    cfg = ChunkDatasetConfig(["scene", "wrist"], chunk_len=2, image_size=(24, 32), image_drop_prob=0.3,
                             instruction_drop_prob=0.3, color_jitter=True, random_shift_px=3, state_noise_std=0.1,
                             depth_size=8, seed=5)
    keys = [(i, epoch) for epoch in range(3) for i in range(12)]
    dataset = ChunkDataset(paths, cfg)
    first = [dataset[key] for key in keys]
    other = pickle.loads(pickle.dumps(ChunkDataset(paths, cfg)))       # as a DataLoader worker receives it
    assert all(_same_sample(other[key], s) for key, s in reversed(list(zip(keys, first))))
    epochs = [first[i::12] for i in range(12)]                          # the 3 epochs of each sample
    assert sum(not _same_sample(e[0], e[1]) for e in epochs) >= 10      # fresh draws every epoch
    assert all(_same_sample(ChunkDataset(paths, cfg)[i], first[i]) for i in range(12))   # plain index = epoch 0
    reseeded = ChunkDataset(paths, dataclasses.replace(cfg, seed=6))
    assert sum(not _same_sample(reseeded[key], s) for key, s in zip(keys, first)) >= 30


def test_loader_batches_do_not_depend_on_workers_or_where_an_epoch_starts(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from gem_train.checkpointing import EpochBatchSampler

    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=6, seed=k)) for k in range(2)]
    ds = ChunkDataset(paths, ChunkDatasetConfig(["scene", "wrist"], chunk_len=2, image_size=(24, 32),
                                                image_drop_prob=0.3, instruction_drop_prob=0.3, color_jitter=True,
                                                random_shift_px=3))

    def batches(workers: int, epoch: int, start: int) -> list:
        sampler = EpochBatchSampler(len(ds), 3, seed=0, with_epoch=ds.draws_by_epoch)
        sampler.set_position(epoch, start)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch, num_workers=workers,
                            generator=torch.Generator().manual_seed(workers + start))   # any worker seeds
        return [(b.instructions, np.stack([np.stack(i) for i in b.images]), b.state) for b in loader]

    def same(a, b) -> bool:
        return len(a) == len(b) and all(x[0] == y[0] and np.array_equal(x[1], y[1]) and torch.equal(x[2], y[2])
                                        for x, y in zip(a, b))

    epoch_1 = batches(0, 1, 0)
    assert len(epoch_1) == 4 and same(batches(2, 1, 0), epoch_1)
    assert same(batches(0, 1, 2), epoch_1[2:])          # a run resumed mid-epoch
    assert not same(batches(0, 2, 0), epoch_1)

# -------------------------------------------------------------------------------------- stats, collate, split
def test_stats_match_numpy_and_build_normalizers(tmp_path):
    episodes = [make_episode(n=5, seed=1), make_episode(n=7, seed=2)]
    ds = ChunkDataset(episodes, ChunkDatasetConfig(["scene"], chunk_len=3, image_size=(24, 32)))
    stats = compute_stats(ds)
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float64)
    states = np.concatenate([e.states for e in episodes]).astype(np.float64)
    for key, rows in (("action", actions), ("state", states)):
        np.testing.assert_allclose(stats[key]["min"], rows.min(0))
        np.testing.assert_allclose(stats[key]["max"], rows.max(0))
        np.testing.assert_allclose(stats[key]["mean"], rows.mean(0))
        np.testing.assert_allclose(stats[key]["std"], rows.std(0))
        assert stats[key]["count"] == 12
    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", e) for k, e in enumerate(episodes)]
    np.testing.assert_allclose(compute_stats(paths)["action"]["mean"], actions.mean(0), rtol=1e-6)
    file = write_action_stats(tmp_path, stats)
    flat = json.loads(file.read_text())
    assert {"action_min", "action_max", "action_mean", "action_std", "action_count", "state_min"} <= set(flat)
    back = read_action_stats(tmp_path)
    np.testing.assert_allclose(back["action"]["max"], stats["action"]["max"])
    normalizers = normalizers_from_stats(back)
    assert normalizers["action"].dim == 8 and normalizers["state"].dim == 9
    normalized = normalizers["action"].normalize(actions.astype(np.float32))
    assert normalized.min() == pytest.approx(-1.0, abs=1e-5) and normalized.max() == pytest.approx(1.0, abs=1e-5)


def test_collate_gives_training_batch_and_loader_workers(tmp_path):
    import torch

    from gem_ros.core.policy.gem_vla import TrainingBatch

    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=5, seed=k)) for k in range(3)]
    cfg = ChunkDatasetConfig(["wrist", "scene"], chunk_len=4, image_size=(16, 16), depth_size=8)
    ds = ChunkDataset(paths, cfg)
    batch = collate_batch([ds[i] for i in (0, 6, 14)])
    assert isinstance(batch, TrainingBatch)
    assert batch.state.shape == (3, 9) and batch.actions.shape == (3, 4, 8) and batch.actions.dtype == torch.float32
    assert len(batch.images) == 3 and all(len(cams) == 2 for cams in batch.images)
    assert batch.images[0][0].shape == (16, 16, 3) and batch.images[0][0].dtype == np.uint8
    assert batch.depth.shape == (3, 2, 3, 8, 8) and batch.depth_valid.dtype == torch.bool
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_batch)
    assert sum(b.actions.shape[0] for b in loader) == 15     # h5py files opened per worker, not pickled


def test_config_from_io_schema():
    from gem_ros.core.policy.config import CameraSpec, IOSchema

    io = IOSchema(cameras=[CameraSpec("scene", 96, 128), CameraSpec("wrist", 64, 64)], state_dim=9, action_dim=8,
                  chunk_len=16)
    cfg = ChunkDatasetConfig.from_io_schema(io, depth_size=32)
    assert cfg.camera_names == ["scene", "wrist"] and cfg.chunk_len == 16 and cfg.depth_size == 32
    assert cfg.image_size == {"scene": (96, 128), "wrist": (64, 64)}


def test_split_episodes_is_deterministic_and_disjoint():
    paths = [f"episode_{k}.hdf5" for k in range(10)]
    train, val = split_episodes(paths, 0.2, seed=4)
    assert (train, val) == split_episodes(paths, 0.2, seed=4)
    assert len(val) == 2 and sorted(train + val) == sorted(paths) and not set(train) & set(val)
    assert len(split_episodes(paths[:2], 0.1)[1]) == 1 and split_episodes(paths, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(paths, 1.0)


def test_delta_joint_schema_gives_actions_relative_to_the_observed_state(tmp_path):
    """A delta_joint policy learns target - state(obs) for joints named in the state; the gripper stays absolute."""
    from gem_ros.core.policy.config import CameraSpec, IOSchema
    from gem_train.data.dataset import ChunkDataset, ChunkDatasetConfig
    from gem_train.data.episodes import EpisodeWriter
    from gem_train.data.stats import compute_stats

    rng = np.random.default_rng(0)
    writer = EpisodeWriter(tmp_path / "ep.hdf5", instructions="go", control_rate_hz=10.0, camera_names=["cam"],
                           state_names=["a", "b"], action_names=["a", "gripper"])
    states, actions = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    for t in range(6):
        writer.add_step({"cam": np.zeros((8, 8, 3), np.uint8)}, states[t], actions[t])
    writer.close()
    io = IOSchema(cameras=[CameraSpec("cam", 8, 8)], state_dim=2, action_dim=2, state_names=["a", "b"],
                  action_names=["a", "gripper"], action_space="delta_joint", chunk_len=3)
    dataset = ChunkDataset([tmp_path / "ep.hdf5"], ChunkDatasetConfig.from_io_schema(io))
    sample = dataset[2]
    np.testing.assert_allclose(sample["actions"][:, 0], actions[2:5, 0] - states[2, 0], rtol=1e-6)
    np.testing.assert_allclose(sample["actions"][:, 1], actions[2:5, 1], rtol=1e-6)   # gripper: absolute
    stats = compute_stats(dataset)
    deltas = [actions[min(t + i, 5), 0] - states[t, 0] for t in range(6) for i in range(3)]
    assert stats["action"]["min"][0] == pytest.approx(min(deltas), rel=1e-5)
    assert stats["action"]["count"] == 18
