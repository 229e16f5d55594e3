"""Episode data for GEM-VLA training: our HDF5 format, readers (GEM reference HDF5, LeRobot v3), chunk dataset.

    find_episodes(dir)  -> paths (or LeRobot EpisodeData)     read_episode(path) -> EpisodeData
    ChunkDataset(episodes, ChunkDatasetConfig(...)) + collate_batch -> gem_vla.TrainingBatch
    compute_stats(...) -> write_action_stats(root, stats) / normalizers_from_stats(stats)

Names resolve lazily (PEP 562) so that light users (the sim collector, its worker processes) do not import
torch through the dataset module.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EpisodeData": "episodes", "EpisodeWriter": "episodes", "write_episode": "episodes", "read_episode": "episodes",
    "find_episodes": "episodes", "convert_episodes": "episodes",
    "read_gem_episode": "gem_hdf5", "read_lerobot_dataset": "lerobot", "depth_target": "depth",
    "compute_stats": "stats", "write_action_stats": "stats", "read_action_stats": "stats",
    "normalizers_from_stats": "stats",
    "ChunkDataset": "dataset", "ChunkDatasetConfig": "dataset", "collate_batch": "dataset", "split_episodes": "dataset",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
