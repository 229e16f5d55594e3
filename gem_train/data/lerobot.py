"""Reader for LeRobot v3.0 datasets (codebase_version "v3.x"), with pandas/pyarrow and cv2 only.

Layout assumed (LeRobotDataset v3.0, written from memory of lerobot >= 0.4 and checked against public datasets):

    meta/info.json        fps, features{key: {dtype, shape, names, info}}, data_path, video_path templates
                          ("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                           "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    meta/tasks.parquet    one row per task: task string as the index (or a `task` column) + `task_index`
                          (older exports: meta/tasks.jsonl with {"task_index", "task"} lines)
    meta/episodes/chunk-*/file-*.parquet
                          one row per episode: episode_index, length, tasks, videos/<key>/chunk_index,
                          videos/<key>/file_index, videos/<key>/from_timestamp (s into the file)
    data/chunk-*/file-*.parquet
                          one row per frame, many episodes per file: episode_index, frame_index, task_index,
                          action (list[float]), observation.state (list[float]), ...
    videos/<key>/chunk-*/file-*.mp4   several episodes concatenated; an episode starts at from_timestamp

Cameras are features of dtype "video" (decoded with cv2.VideoCapture per episode segment, cached) or "image"
(PNG/JPEG bytes in the data parquet, kept compressed in RAM). Camera name = key without "observation.images.".
Random access into long-GOP video is slow: for training, `convert_episodes` the dataset to our HDF5 once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gem_train.data.episodes import EpisodeData
from gem_train.data.frames import EncodedFrames, SegmentCache, VideoFrames

CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def _flat_names(names: Any) -> list[str]:
    """features[k]['names'] is a list, a dict of lists ({"motors": [...]}) or None."""
    if names is None:
        return []
    if isinstance(names, dict):
        names = [n for value in names.values() for n in (value if isinstance(value, list) else [value])]
    flat = []
    for n in names:
        flat.extend(_flat_names(n) if isinstance(n, (list, dict)) else [str(n)])
    return flat


def read_tasks(root: Path) -> dict[int, str]:
    import pandas as pd

    parquet, jsonl = root / "meta" / "tasks.parquet", root / "meta" / "tasks.jsonl"
    if parquet.is_file():
        frame = pd.read_parquet(parquet)
        strings = frame["task"] if "task" in frame.columns else frame.index
        return {int(i): str(s) for i, s in zip(frame["task_index"], strings)}
    if jsonl.is_file():
        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {int(r["task_index"]): str(r["task"]) for r in rows}
    raise ValueError(f"{root}: no meta/tasks.parquet or meta/tasks.jsonl")


def _read_parquets(folder: Path, columns: list[str] | None = None):
    import pandas as pd

    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise ValueError(f"no parquet files under {folder}")
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


def read_lerobot_dataset(root: Path | str, state_key: str = STATE_KEY, action_key: str = ACTION_KEY,
                         video_cache_segments: int = 8) -> list[EpisodeData]:
    """All episodes of a LeRobot v3 dataset, in episode_index order, with lazily decoded camera frames."""
    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text(encoding="utf-8"))
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{root}: codebase_version {version!r} is not v3.x (v2 layouts are not supported)")
    features, fps = info["features"], float(info["fps"])
    for key in (state_key, action_key):
        if key not in features:
            raise ValueError(f"{root}: feature '{key}' not in meta/info.json (has {sorted(features)})")
    cameras = {key: key.removeprefix(CAMERA_PREFIX) for key, spec in features.items()
               if spec.get("dtype") in ("video", "image")}
    image_keys = [k for k in cameras if features[k]["dtype"] == "image"]
    tasks = read_tasks(root)
    episodes_meta = {int(row["episode_index"]): row
                     for row in _read_parquets(root / "meta" / "episodes").to_dict("records")}
    columns = ["episode_index", "frame_index", state_key, action_key, *image_keys]
    columns += ["task_index"] if "task_index" in features else []
    data = _read_parquets(root / "data", columns=columns)   # low-dim (+ encoded image) columns only
    data = data.sort_values(["episode_index", "frame_index"], kind="stable")
    cache = SegmentCache(video_cache_segments)
    episodes = []
    for episode_index, rows in data.groupby("episode_index", sort=True):
        episode_index = int(episode_index)
        n = len(rows)
        meta_row = episodes_meta.get(episode_index, {})
        images: dict[str, Any] = {}
        for key, cam in cameras.items():
            if features[key]["dtype"] == "image":
                images[cam] = EncodedFrames([_image_bytes(v) for v in rows[key]], color=True, swap_rb=True)
                continue
            if f"videos/{key}/from_timestamp" not in meta_row:
                raise ValueError(f"{root}: episode {episode_index} has no video metadata for '{key}' in meta/episodes")
            path = root / info["video_path"].format(video_key=key,
                                                    chunk_index=int(meta_row[f"videos/{key}/chunk_index"]),
                                                    file_index=int(meta_row[f"videos/{key}/file_index"]))
            video_fps = float(features[key].get("info", {}).get("video.fps", fps))
            start = int(round(float(meta_row[f"videos/{key}/from_timestamp"]) * video_fps))
            images[cam] = VideoFrames(path, start, n, cache)
        instructions = [str(t) for t in _as_list(meta_row.get("tasks"))]
        if not instructions and "task_index" in rows:
            instructions = [tasks[int(i)] for i in dict.fromkeys(rows["task_index"].tolist())]
        meta = {"control_rate_hz": fps, "state_names": _flat_names(features[state_key].get("names")),
                "action_names": _flat_names(features[action_key].get("names")), "camera_names": list(images),
                "robot_type": info.get("robot_type"), "episode_index": episode_index,
                "source": str(root), "source_format": "lerobot_v3"}
        episodes.append(EpisodeData(actions=np.stack(rows[action_key].to_numpy()).astype(np.float32),
                                    states=np.stack(rows[state_key].to_numpy()).astype(np.float32),
                                    images=images, instructions=instructions or [""], meta=meta))
    return episodes


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _image_bytes(value: Any) -> bytes:
    # HF datasets `Image` feature in parquet: {"bytes": b"...", "path": ...}
    if isinstance(value, dict):
        if value.get("bytes") is None:
            raise ValueError(f"image cell has no embedded bytes (path={value.get('path')!r})")
        return bytes(value["bytes"])
    return bytes(value)
