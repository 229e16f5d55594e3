"""Forward and inverse kinematics over a URDF joint tree, in numpy.

Why not yourdfpy/pinocchio: yourdfpy pulls trimesh[easy] (scipy, shapely, networkx, ...) and pinocchio is
~380 MB; we only need serial-chain FK for a workspace check and a damped-least-squares IK for end-effector
delta actions, which is ~100 lines here and is tested against pybullet as an independent oracle.

Poses are (4, 4) matrices of a link frame in the root link frame (positions m, angles rad). Joint positions are
passed by NAME (a mapping); extra names (e.g. the whole /joint_states) are ignored, missing ones are an error.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gem_ros.core.kinematics.transforms import axis_angle_to_matrix, pose_error
from gem_ros.core.kinematics.urdf import MOVING_1DOF_TYPES, UrdfDescription, UrdfJoint, parse_urdf


@dataclass(frozen=True)
class IkResult:
    """Outcome of `RobotModel.solve_ik`; `positions` holds the last iterate even when `success` is False."""

    success: bool
    positions: dict[str, float]
    iterations: int
    position_error_m: float
    rotation_error_rad: float
    message: str = field(default="")


class RobotModel:
    """Kinematic tree of one robot. Build with `RobotModel.from_urdf(path_or_xml)`."""

    def __init__(self, description: UrdfDescription):
        self.description = description
        self._joints = {j.name: j for j in description.joints}
        parent_joint = {j.child: j for j in description.joints}
        # Root-to-link joint chain for every link, computed once (trees are small).
        self._chains: dict[str, tuple[UrdfJoint, ...]] = {}
        for link in description.links:
            chain, current = [], link
            while current in parent_joint:
                chain.append(parent_joint[current])
                current = parent_joint[current].parent
            self._chains[link] = tuple(reversed(chain))
        for joint in description.joints:
            if joint.mimic_joint is not None and joint.mimic_joint not in self._joints:
                raise ValueError(f"joint '{joint.name}' mimics unknown joint '{joint.mimic_joint}'")

    @classmethod
    def from_urdf(cls, source: str | os.PathLike) -> RobotModel:
        return cls(parse_urdf(source))

    @property
    def root_link(self) -> str:
        return self.description.root_link

    @property
    def link_names(self) -> tuple[str, ...]:
        return self.description.links

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Independently actuated 1-DoF joints (mimic joints follow their source and are not listed)."""
        return tuple(j.name for j in self.description.joints
                     if j.joint_type in MOVING_1DOF_TYPES and j.mimic_joint is None)

    def _chain(self, link: str) -> tuple[UrdfJoint, ...]:
        if link not in self._chains:
            raise ValueError(f"unknown link '{link}'; known links: {list(self._chains)}")
        return self._chains[link]

    def chain_joint_names(self, link: str) -> tuple[str, ...]:
        """Actuated joints whose positions move `link` (a mimic joint contributes its source joint)."""
        names = []
        for joint in self._chain(link):
            if joint.joint_type in MOVING_1DOF_TYPES:
                source = joint.mimic_joint or joint.name
                if source not in names:
                    names.append(source)
        return tuple(names)

    def forward_kinematics(self, joint_positions: Mapping[str, float], link: str) -> np.ndarray:
        """(4, 4) pose of `link` in the root link frame."""
        pose = np.eye(4)
        for joint in self._chain(link):
            pose = pose @ joint.origin
            if joint.joint_type not in MOVING_1DOF_TYPES:
                if joint.joint_type != "fixed":
                    raise ValueError(f"joint '{joint.name}' of type {joint.joint_type} is not supported by FK")
                continue
            source = joint.mimic_joint or joint.name
            if source not in joint_positions:
                raise ValueError(f"forward kinematics of '{link}' needs the position of joint '{source}'")
            q = float(joint_positions[source])
            if joint.mimic_joint is not None:
                q = joint.mimic_multiplier * q + joint.mimic_offset
            motion = np.eye(4)
            if joint.joint_type == "prismatic":
                motion[:3, 3] = joint.axis * q
            else:
                motion[:3, :3] = axis_angle_to_matrix(joint.axis, q)
            pose = pose @ motion
        return pose

    def jacobian(self, joint_positions: Mapping[str, float], link: str, joint_names: Sequence[str],
                 step: float = 1e-6) -> np.ndarray:
        """(6, n) numeric Jacobian (central differences) of [position m, rotation vector rad] in the root frame."""
        base = dict(joint_positions)
        reference = self.forward_kinematics(base, link)
        columns = []
        for name in joint_names:
            plus, minus = dict(base), dict(base)
            plus[name] = base[name] + step
            minus[name] = base[name] - step
            # Differences taken relative to the reference pose keep the rotation part well conditioned.
            delta = (pose_error(reference, self.forward_kinematics(plus, link))
                     - pose_error(reference, self.forward_kinematics(minus, link)))
            columns.append(delta / (2.0 * step))
        return np.stack(columns, axis=1)

    def solve_ik(self, link: str, target_pose: np.ndarray, initial_positions: Mapping[str, float],
                 joint_names: Sequence[str] | None = None, *, max_iterations: int = 100,
                 position_tolerance_m: float = 1e-4, rotation_tolerance_rad: float = 1e-3,
                 damping: float = 0.05, max_step_rad: float = 0.3) -> IkResult:
        """Damped least squares on the numeric Jacobian, from `initial_positions` (warm start).

        Only `joint_names` (default: the chain of `link`) move; the rest keep their initial value. Iterates are
        clipped to URDF position limits. Never raises on non-convergence: read `success` and `message`.
        """
        names = tuple(joint_names) if joint_names is not None else self.chain_joint_names(link)
        missing = [n for n in names if n not in initial_positions]
        if missing:
            raise ValueError(f"IK initial_positions lacks joints {missing}")
        target = np.asarray(target_pose, dtype=float)
        if target.shape != (4, 4) or not np.all(np.isfinite(target)):
            raise ValueError("IK target_pose must be a finite (4, 4) matrix")
        lower = np.array([self._joints[n].lower if self._joints[n].lower is not None else -math.inf for n in names])
        upper = np.array([self._joints[n].upper if self._joints[n].upper is not None else math.inf for n in names])
        continuous = np.array([self._joints[n].joint_type == "continuous" for n in names])
        lower, upper = np.where(continuous, -math.inf, lower), np.where(continuous, math.inf, upper)
        positions = {k: float(v) for k, v in initial_positions.items()}
        q = np.array([positions[n] for n in names])
        for iteration in range(max_iterations + 1):
            positions.update(zip(names, q.tolist()))
            error = pose_error(self.forward_kinematics(positions, link), target)
            position_error, rotation_error = float(np.linalg.norm(error[:3])), float(np.linalg.norm(error[3:]))
            if position_error <= position_tolerance_m and rotation_error <= rotation_tolerance_rad:
                return IkResult(True, positions, iteration, position_error, rotation_error, "converged")
            if iteration == max_iterations:
                break
            jac = self.jacobian(positions, link, names)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), error)
            largest = float(np.max(np.abs(dq)))
            if largest > max_step_rad:  # trust region: linearisation is only valid nearby
                dq *= max_step_rad / largest
            q = np.clip(q + dq, lower, upper)
        return IkResult(False, positions, max_iterations, position_error, rotation_error,
                        f"IK for '{link}' did not converge in {max_iterations} iterations: position error "
                        f"{position_error:.4g} m, rotation error {rotation_error:.4g} rad")
