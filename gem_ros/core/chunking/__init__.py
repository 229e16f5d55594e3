"""Chunking: action-space mapping by joint name, chunk alignment to latency, blending/ensembling, interpolation."""
from gem_ros.core.chunking.action_mapper import ActionMapper, ActionMappingError
from gem_ros.core.chunking.config import ActionSpaceConfig, ChunkSchedulerConfig
from gem_ros.core.chunking.interpolation import crossfade_weight, interpolate_linear, mix
from gem_ros.core.chunking.scheduler import ChunkAdmission, ChunkScheduler, ChunkStats

__all__ = [
    "ActionMapper", "ActionMappingError", "ActionSpaceConfig", "ChunkAdmission", "ChunkScheduler",
    "ChunkSchedulerConfig", "ChunkStats", "crossfade_weight", "interpolate_linear", "mix",
]
