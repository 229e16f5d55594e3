"""Action / state statistics: computed over every step of every episode, stored as GEM's `action_stats.json`.

The file keeps GEM's flat keys (`action_min`, `action_max`, `action_mean`, `action_std`, `action_count`, which
GEM's loader reads) and adds the same for `state_*`. std is the population std, as in GEM's generate_hdf5.py.
`normalizers_from_stats` turns them into the `MinMaxNormalizer`s stored with a checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gem_train.data.episodes import EpisodeData, read_episode

STATS_FILE = "action_stats.json"
KEYS = ("action", "state")
FIELDS = ("min", "max", "mean", "std", "count")


def _summary(rows: np.ndarray) -> dict[str, Any]:
    rows = np.asarray(rows, dtype=np.float64)
    return {"min": rows.min(axis=0), "max": rows.max(axis=0), "mean": rows.mean(axis=0),
            "std": rows.std(axis=0), "count": int(rows.shape[0])}


def _low_dim(source) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    if hasattr(source, "episode_arrays"):          # a ChunkDataset: already holds actions/states
        yield from source.episode_arrays()
        return
    for item in source:
        if isinstance(item, EpisodeData):
            yield item.actions, item.states
        else:
            with read_episode(item) as episode:
                yield episode.actions, episode.states


def compute_stats(source) -> dict[str, dict[str, Any]]:
    """{"action": {min, max, mean, std (arrays, float64), count}, "state": {...}} from a ChunkDataset or an
    iterable of episode paths / EpisodeData."""
    actions, states = [], []
    for a, s in _low_dim(source):
        actions.append(a)
        states.append(s)
    if not actions:
        raise ValueError("compute_stats needs at least one episode")
    return {"action": _summary(np.concatenate(actions)), "state": _summary(np.concatenate(states))}


def write_action_stats(path: Path | str, stats: dict[str, dict[str, Any]]) -> Path:
    """Write (atomically) `action_stats.json`; `path` may be the file or the dataset root."""
    path = Path(path)
    if path.is_dir():
        path = path / STATS_FILE
    flat = {}
    for key in KEYS:
        if key in stats:
            for name in FIELDS:
                value = stats[key][name]
                flat[f"{key}_{name}"] = int(value) if name == "count" else np.asarray(value, np.float64).tolist()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(flat, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_action_stats(path: Path | str) -> dict[str, dict[str, Any]]:
    """Inverse of `write_action_stats`; GEM's own files (action_* only) give just the "action" entry."""
    path = Path(path)
    if path.is_dir():
        path = path / STATS_FILE
    flat = json.loads(path.read_text(encoding="utf-8"))
    stats: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        if f"{key}_min" in flat:
            stats[key] = {name: (int(flat[f"{key}_{name}"]) if name == "count" else np.asarray(flat[f"{key}_{name}"]))
                          for name in FIELDS if f"{key}_{name}" in flat}
    if "action" not in stats:
        raise ValueError(f"{path} has no action_min/action_max")
    return stats


def normalizers_from_stats(stats: dict[str, dict[str, Any]]) -> dict:
    """{"action": MinMaxNormalizer, "state": MinMaxNormalizer} (state only when present)."""
    from gem_ros.core.policy.normalizer import MinMaxNormalizer

    return {key: MinMaxNormalizer(stats[key]["min"], stats[key]["max"]) for key in KEYS if key in stats}
