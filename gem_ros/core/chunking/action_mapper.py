"""Policy action vectors -> absolute joint targets, by joint name.

The policy speaks in its action space (ActionSpaceConfig.kind); controllers and the safety filter speak in
absolute joint positions. This is the only place that knows the difference:
- "absolute_joint": action dims are joint positions [rad/m] in `joint_names` order.
- "delta_joint": offsets from the joint state at observation time. "cumulative": q_k = q_obs + sum_{i<=k} a_i
  (each action moves on from the previous one); "observation": q_k = q_obs + a_k (openpi-style DeltaActions).
- "ee_delta": [dx dy dz (m), droll dpitch dyaw (rad)] moves of `ee_link`, in the base or current EE frame,
  chained along the chunk the same way, then solved to joints by damped-least-squares IK (warm-started).
The gripper channel, when present, is the last action dim and is absolute in every kind.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gem_ros.core.chunking.config import ActionSpaceConfig
from gem_ros.core.chunking.interpolation import clip
from gem_ros.core.kinematics.robot_model import RobotModel
from gem_ros.core.kinematics.transforms import rpy_to_matrix


class ActionMappingError(ValueError):
    """An action chunk that cannot be turned into joint targets (bad shape, NaN, missing state, IK failure)."""


class ActionMapper:
    def __init__(self, cfg: ActionSpaceConfig, robot_model: RobotModel | None = None,
                 gripper_range: tuple[float, float] | None = None):
        """`gripper_range` (lower, upper) of the gripper joints [m]: a finite gripper command saturates at the
        gripper's travel, as gripper drivers do (a width of 0.0801 m on a 0.08 m gripper means "fully open").
        Arm joints are never saturated here: out-of-range arm targets reach the safety filter and are refused."""
        if not isinstance(cfg, ActionSpaceConfig):
            raise ValueError(f"cfg must be an ActionSpaceConfig, got {type(cfg).__name__}")
        if gripper_range is not None and not (np.all(np.isfinite(gripper_range)) and gripper_range[0] < gripper_range[1]):
            raise ValueError(f"gripper_range must be finite (lower, upper) with lower < upper, got {gripper_range}")
        self.cfg, self.robot_model, self.gripper_range = cfg, robot_model, gripper_range
        if cfg.kind == "ee_delta":
            if robot_model is None:
                raise ValueError("kind 'ee_delta' needs a robot_model for IK")
            if cfg.ee_link not in robot_model.link_names:
                raise ValueError(f"ee_link '{cfg.ee_link}' is not a link of the robot model")
            unknown = [n for n in cfg.joint_names if n not in robot_model.joint_names]
            if unknown:
                raise ValueError(f"joint_names {unknown} are not actuated joints of the robot model")

    @property
    def output_joint_names(self) -> tuple[str, ...]:
        """Names of the columns `map_chunk` returns: arm joints, then gripper joints."""
        return self.cfg.joint_names + self.cfg.gripper_joint_names

    def map_chunk(self, actions, state_at_obs: Mapping[str, float] | None = None) -> np.ndarray:
        """(T, action_dim) policy actions -> (T, len(output_joint_names)) absolute joint targets.

        `state_at_obs`: joint positions by name at observation time; required for the delta kinds.
        """
        cfg = self.cfg
        actions = np.array(actions, dtype=float)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] != cfg.action_dim:
            raise ActionMappingError(f"actions must have shape (T, {cfg.action_dim}), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            i, j = (int(v) for v in np.argwhere(~np.isfinite(actions))[0])
            raise ActionMappingError(f"action {i} dim {j} is {actions[i, j]}")
        arm_dim = 6 if cfg.kind == "ee_delta" else len(cfg.joint_names)
        arm = actions[:, :arm_dim]
        if cfg.kind == "absolute_joint":
            arm_targets = arm
        elif cfg.kind == "delta_joint":
            q_obs = self._state_vector(state_at_obs, cfg.joint_names)
            offsets = np.cumsum(arm, axis=0) if cfg.delta_reference == "cumulative" else arm
            arm_targets = q_obs + offsets
        else:
            arm_targets = self._ee_delta_to_joints(arm, state_at_obs)
        out = np.empty((len(actions), len(self.output_joint_names)))
        out[:, :len(cfg.joint_names)] = arm_targets
        if cfg.gripper_joint_names:
            gripper = cfg.gripper_offset + cfg.gripper_scale * actions[:, -1]
            if self.gripper_range is not None:
                gripper = clip(gripper, *self.gripper_range)   # finite here: NaN was refused above
            out[:, len(cfg.joint_names):] = gripper[:, None]
        return out

    @staticmethod
    def _state_vector(state: Mapping[str, float] | None, names: tuple[str, ...]) -> np.ndarray:
        missing = [n for n in names if state is None or n not in state]
        if missing:
            raise ActionMappingError(f"state at observation time lacks joints {missing}")
        values = np.array([float(state[n]) for n in names])
        if not np.all(np.isfinite(values)):
            raise ActionMappingError(f"state at observation time is not finite: {dict(zip(names, values))}")
        return values

    def _ee_delta_to_joints(self, deltas: np.ndarray, state: Mapping[str, float] | None) -> np.ndarray:
        cfg, model = self.cfg, self.robot_model
        needed = tuple(dict.fromkeys(model.chain_joint_names(cfg.ee_link) + cfg.joint_names))
        positions = dict(zip(needed, self._state_vector(state, needed)))
        observed_pose = model.forward_kinematics(positions, cfg.ee_link)
        reference = observed_pose
        targets = []
        for k, delta in enumerate(deltas):
            rotation = rpy_to_matrix(delta[3:])
            goal = np.eye(4)
            if cfg.ee_frame == "base":
                goal[:3, 3] = reference[:3, 3] + delta[:3]
                goal[:3, :3] = rotation @ reference[:3, :3]
            else:
                goal[:3, 3] = reference[:3, 3] + reference[:3, :3] @ delta[:3]
                goal[:3, :3] = reference[:3, :3] @ rotation
            result = model.solve_ik(cfg.ee_link, goal, positions, cfg.joint_names,
                                    max_iterations=cfg.ik_max_iterations)
            if not result.success:
                raise ActionMappingError(f"action {k}: {result.message}")
            positions = result.positions  # warm start for the next step
            targets.append([positions[n] for n in cfg.joint_names])
            reference = goal if cfg.delta_reference == "cumulative" else observed_pose
        return np.array(targets)
