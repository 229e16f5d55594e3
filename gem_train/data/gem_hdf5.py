"""Reader for GEM reference HDF5 task dirs (gem_reference §9, GEM-VLA data/generate_hdf5.py, train/dataset.py).

    <root>/action_stats.json               (action_min, action_max, action_mean, action_std, action_count)
    <root>/<task>/instructions.json        list of strings, shared by every episode of the task
    <root>/<task>/episode_<k>.hdf5
        action                              (N, A) float32, absolute next-step targets
        observations/state                  (N, S) float32, raw (never normalised)
        observations/images/<cam>           (N, H, W, 3) uint8 RGB, or (N,) |S<len> JPEG bytes
        observations/depth_images/<cam>     optional, (N, H, W, 3) uint8 Depth-Anything-3 output (or bytes)

Assumptions: JPEG bytes were made with cv2.imencode from RGB arrays, so (as in GEM's loader) they are decoded
with cv2.imdecode and no channel swap; pass jpeg_swap_rb=True for files encoded from BGR. GEM files carry no
control rate, joint names or camera order: meta gets control_rate_hz=None and cameras in file order.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py

from gem_train.data.episodes import EpisodeData, find_episodes, read_depth_groups, read_episode
from gem_train.data.frames import H5Frames

INSTRUCTIONS_FILE = "instructions.json"


def read_instructions(task_dir: Path) -> list[str]:
    path = Path(task_dir) / INSTRUCTIONS_FILE
    if not path.is_file():
        raise ValueError(f"GEM episode dir {task_dir} has no {INSTRUCTIONS_FILE}")
    value = json.loads(path.read_text(encoding="utf-8"))
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{path} must hold a non-empty list of strings")
    return value


def episode_from_gem_file(f: h5py.File, path: Path, jpeg_swap_rb: bool = False) -> EpisodeData:
    """EpisodeData over an open GEM reference file (frames stay lazy; the caller owns the handle)."""
    for key in ("action", "observations/state", "observations/images"):
        if key not in f:
            raise ValueError(f"{path}: not a GEM episode (no '{key}') and not in our format")
    images = {cam: H5Frames(ds, color=True, swap_rb=jpeg_swap_rb) for cam, ds in f["observations/images"].items()}
    # GEM's own Depth-Anything-3 uint8 images first, then float targets added by gem_depth_targets.
    depth, depth_kind = read_depth_groups(f, list(images), ("observations/depth_images", "observations/depth_estimated"),
                                          swap_rb=jpeg_swap_rb)
    meta = {"control_rate_hz": None, "state_names": [], "action_names": [], "action_space": "absolute_joint",
            "camera_names": list(images), "source": str(path), "source_format": "gem_reference"}
    return EpisodeData(actions=f["action"][()], states=f["observations/state"][()], images=images,
                       instructions=read_instructions(path.parent), depth=depth or None, meta=meta,
                       depth_kind=depth_kind)


def read_gem_episode(path: Path | str, lazy: bool = True, jpeg_swap_rb: bool = False) -> EpisodeData:
    """One GEM reference episode file (instructions.json must sit beside it)."""
    return read_episode(path, lazy=lazy, jpeg_swap_rb=jpeg_swap_rb)


def gem_episode_paths(root: Path | str) -> list[Path]:
    """Every episode of every task under a GEM root, as GEM's loader finds them (recursive *.hdf5)."""
    return list(find_episodes(root))
