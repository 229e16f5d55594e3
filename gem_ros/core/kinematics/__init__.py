"""Kinematics: URDF joint limits by name, forward kinematics, damped-least-squares IK (pure numpy)."""
from gem_ros.core.kinematics.robot_model import IkResult, RobotModel
from gem_ros.core.kinematics.transforms import (
    make_transform,
    matrix_to_rotation_vector,
    matrix_to_rpy,
    pose_error,
    rotation_vector_to_matrix,
    rpy_to_matrix,
)
from gem_ros.core.kinematics.urdf import JointLimit, JointLimits, UrdfDescription, load_urdf_limits, parse_urdf

__all__ = [
    "IkResult", "JointLimit", "JointLimits", "RobotModel", "UrdfDescription", "load_urdf_limits", "make_transform",
    "matrix_to_rotation_vector", "matrix_to_rpy", "parse_urdf", "pose_error", "rotation_vector_to_matrix",
    "rpy_to_matrix",
]
