"""Safety: fail-closed limits from the URDF, NaN rejection, per-step/velocity/acceleration limits, workspace box."""
from gem_ros.core.safety.config import SafetyConfig, WorkspaceBox
from gem_ros.core.safety.filter import ChunkRejected, SafeTrajectory, SafetyFilter

__all__ = ["ChunkRejected", "SafeTrajectory", "SafetyConfig", "SafetyFilter", "WorkspaceBox"]
