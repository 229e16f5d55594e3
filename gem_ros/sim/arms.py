"""Arm models the embedded simulator can load, and where their URDFs come from (no ROS, no network).

The Panda ships inside pybullet (`pybullet_data`); UR5, UR10 and xArm7 come from the `example-robot-data` wheel
(PyPI, BSD), read at run time. Their joint names are the vendor drivers' (UR: Universal_Robots_ROS2_Driver with
an empty tf_prefix; xArm: xarm_ros2), so an arm's gem_bringup configuration drives its model unchanged. A model
stands in for the real arm: what differs is said in `note`. FR3 and Kinova Gen3 have no model in a registry
package, so they have none here (their configurations are checked by structure only).
"""
from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pybullet_data

ERD = "example-robot-data"   # the PyPI distribution (a cmeel wheel: its files live under cmeel.prefix/share)
_UR_HOME = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)   # tool pointing down over the table
_UR_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint")


@dataclass(frozen=True)
class SimArm:
    """One loadable arm. Positions rad (arm) and m per finger (gripper)."""

    name: str
    package: str                        # "pybullet_data" or ERD
    urdf: str                           # path inside the package's data folder
    arm_joints: tuple[str, ...]
    finger_joints: tuple[str, ...]      # () = no gripper: the pick task cannot run, only a dry run
    home_rad: tuple[float, ...]         # arm joints at episode start (tool over the table, pointing down)
    ee_link: str
    wrist_link: str                     # the wrist camera's mount
    note: str = ""                      # how the model differs from the real arm of the same name

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.arm_joints + self.finger_joints

    @property
    def has_gripper(self) -> bool:
        return bool(self.finger_joints)


SIM_ARMS = {
    "panda": SimArm(
        "panda", "pybullet_data", "franka_panda/panda.urdf",
        tuple(f"panda_joint{i}" for i in range(1, 8)), ("panda_finger_joint1", "panda_finger_joint2"),
        (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4),   # Franka "ready" pose
        "panda_grasptarget", "panda_hand"),
    "ur5e": SimArm(
        "ur5e", ERD, "ur_description/urdf/ur5_robot.urdf", _UR_JOINTS, (), _UR_HOME, "tool0", "tool0",
        note="the CB-series UR5 model stands in: same joint names and position limits as a UR5e (+-2 pi, elbow "
             "+-pi), velocity limits 3.15-3.2 rad/s against the UR5e's pi, link lengths a few cm apart; no gripper"),
    "ur10e": SimArm(
        "ur10e", ERD, "ur_description/urdf/ur10_robot.urdf", _UR_JOINTS, (), _UR_HOME, "tool0", "tool0",
        note="the CB-series UR10 model stands in: same joint names and position limits as a UR10e, velocity "
             "limits 2.16-3.2 rad/s against the UR10e's 2.09-3.14, link lengths a few cm apart; no gripper"),
    "xarm7": SimArm(
        "xarm7", ERD, "xarm_description/urdf/xarm7.urdf", tuple(f"joint{i}" for i in range(1, 8)), (),
        (0.0, -0.2, 0.0, 0.9, 0.0, 1.1, 0.0), "link_eef", "link_eef",
        note="the xArm7 arm without its gripper (example-robot-data ships none): the gripper's drive_joint is "
             "left out of the dry run"),
}


def sim_arm(name: str) -> SimArm:
    """The model of `name` (a key of SIM_ARMS); ValueError names the known ones."""
    if name not in SIM_ARMS:
        raise ValueError(f"no simulation model for arm {name!r}: the embedded simulator loads {sorted(SIM_ARMS)} "
                         f"(models from pybullet_data and example-robot-data; FR3 and Kinova Gen3 ship in no "
                         f"registry package)")
    return SIM_ARMS[name]


def package_root(package: str) -> Path:
    """The data folder URDF paths are relative to; ValueError says how to install a missing package."""
    if package == "pybullet_data":
        return Path(pybullet_data.getDataPath())
    if package == ERD:
        try:
            root = Path(importlib.metadata.distribution(ERD).locate_file(f"cmeel.prefix/share/{ERD}/robots"))
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(f"the arm models of {ERD} are not installed: pip install {ERD} "
                             f"(or pip install -e '.[arms]')") from None
        if not root.is_dir():
            raise ValueError(f"{ERD} is installed but {root} is missing: reinstall it (pip install --force-reinstall "
                             f"{ERD})")
        return root
    raise ValueError(f"unknown model package {package!r}")


def urdf_path(arm: SimArm) -> Path:
    path = package_root(arm.package) / arm.urdf
    if not path.is_file():
        raise ValueError(f"URDF of arm {arm.name!r} not found at {path}")
    return path


def resolved_urdf_text(arm: SimArm) -> str:
    """The URDF with `package://` mesh references made absolute, so pybullet finds every mesh wherever the
    package is installed (example-robot-data writes package://example-robot-data/robots/..., pybullet_data's
    Panda package://meshes/... relative to its own folder)."""
    path = urdf_path(arm)
    text = path.read_text(encoding="utf-8")
    if arm.package == ERD:
        return text.replace(f"package://{ERD}/robots/", f"{package_root(ERD)}{os.sep}")
    return text.replace("package://", f"{path.parent}{os.sep}")
