"""Embedded tabletop simulator (pybullet, CPU only, no ROS): Panda + table + coloured cubes, RGB-D cameras,
and a scripted pick expert. The ROS node that speaks ros2_control-style topics wraps `TabletopSim`."""
from gem_ros.sim.camera import CameraConfig, Intrinsics
from gem_ros.sim.expert import ExpertConfig, ScriptedPickExpert, run_expert_episode
from gem_ros.sim.scene import ARM_JOINTS, CUBE_COLORS_RGBA, FINGER_JOINTS, JointLimit, SimConfig, TabletopSim

__all__ = [
    "ARM_JOINTS", "CUBE_COLORS_RGBA", "CameraConfig", "ExpertConfig", "FINGER_JOINTS", "Intrinsics", "JointLimit",
    "ScriptedPickExpert", "SimConfig", "TabletopSim", "run_expert_episode",
]
