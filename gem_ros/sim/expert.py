"""Scripted pick expert for `TabletopSim`: demonstrations for imitation learning and a known-good test driver.

The plan is a fixed sequence of top-down end-effector waypoints (pre-grasp above the target cube, descend,
close, lift, hold), followed with minimum-jerk interpolation and turned into absolute joint targets with
the sim's IK at the control rate. Every action has 9 values ordered like `sim.joint_names`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pybullet as p

from gem_ros.sim.scene import FINGER_OPEN_M, TabletopSim


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ExpertConfig:
    control_hz: float = 10.0
    pregrasp_height_m: float = 0.10     # above the grasp point
    grasp_depth_m: float = 0.005        # grasp point below the cube centre, so the pads cover more of the cube
    lift_m: float = 0.16                # grasp point rise after closing (> lift_height_m + margin)
    # Phase durations (s); at 10 Hz the whole episode is 60 control steps.
    approach_s: float = 2.0
    descend_s: float = 1.2
    close_s: float = 0.8
    lift_s: float = 1.4
    hold_s: float = 0.6
    finger_closed_m: float = 0.0        # commanded finger position when gripping; the cube stops the fingers

    def __post_init__(self) -> None:
        _require(self.control_hz > 0, "control_hz must be > 0")
        for key in ("approach_s", "descend_s", "close_s", "lift_s", "hold_s"):
            _require(getattr(self, key) > 0, f"{key} must be > 0")
        _require(self.pregrasp_height_m > 0 and self.lift_m > 0, "pregrasp_height_m and lift_m must be > 0")
        _require(0.0 <= self.finger_closed_m < FINGER_OPEN_M, f"finger_closed_m must be in [0, {FINGER_OPEN_M})")

    @property
    def episode_s(self) -> float:
        return self.approach_s + self.descend_s + self.close_s + self.lift_s + self.hold_s


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s ** 3 * (10.0 - 15.0 * s + 6.0 * s * s)


class ScriptedPickExpert:
    """Plans from the state at construction (call after `sim.reset`); `act()` gives the next 9-value target."""

    def __init__(self, sim: TabletopSim, cfg: ExpertConfig | None = None) -> None:
        self.sim = sim
        self.cfg = cfg or ExpertConfig()
        cube_pos, cube_quat = sim.object_pose(sim.target_object)
        cube_yaw = p.getEulerFromQuaternion(cube_quat.tolist())[2]
        # A cube looks the same every 90 deg: pick the gripper yaw closest to the hand's home yaw (0).
        yaw = (cube_yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
        self._quat = np.array(p.getQuaternionFromEuler([math.pi, 0.0, yaw]))   # fingers pointing down
        c = self.cfg
        start, _ = sim.ee_pose()
        grasp = cube_pos - [0.0, 0.0, c.grasp_depth_m]
        pre, lifted = grasp + [0.0, 0.0, c.pregrasp_height_m], grasp + [0.0, 0.0, c.lift_m]
        open_m, closed_m = FINGER_OPEN_M, c.finger_closed_m
        segments = [(c.approach_s, start, pre, open_m), (c.descend_s, pre, grasp, open_m),
                    (c.close_s, grasp, grasp, closed_m), (c.lift_s, grasp, lifted, closed_m),
                    (c.hold_s, lifted, lifted, closed_m)]
        # (end time s, start position m, end position m, finger position m) per phase
        ends = np.cumsum([seg[0] for seg in segments])
        self._phases = [(float(end), a, b, finger) for end, (_, a, b, finger) in zip(ends, segments)]
        self.num_steps = int(round(c.episode_s * c.control_hz))
        self._step = 0

    def target_at(self, t_s: float) -> tuple[np.ndarray, float]:
        """Planned grasp-point position (m) and finger position (m) at plan time t_s."""
        t_start = 0.0
        for t_end, a, b, finger in self._phases:
            if t_s <= t_end + 1e-9:
                return a + (b - a) * _min_jerk((t_s - t_start) / (t_end - t_start)), finger
            t_start = t_end
        _, _, b, finger = self._phases[-1]
        return b, finger

    def act(self) -> np.ndarray | None:
        """Next absolute joint target (rad, rad, ..., m, m) in sim.joint_names order; None when the plan is done."""
        if self._step >= self.num_steps:
            return None
        self._step += 1
        position, finger = self.target_at(self._step / self.cfg.control_hz)
        arm = self.sim.ik(position, self._quat)
        return np.concatenate([arm, [finger, finger]])

    def __iter__(self) -> Iterator[np.ndarray]:
        while (action := self.act()) is not None:
            yield action


def run_expert_episode(sim: TabletopSim, seed: int | None = None, cfg: ExpertConfig | None = None) -> bool:
    """Reset with `seed`, execute the expert at its control rate, return task_success() at the end."""
    sim.reset(seed)
    expert = ScriptedPickExpert(sim, cfg)
    for action in expert:
        sim.set_joint_targets(sim.joint_names, action)
        sim.step(1.0 / expert.cfg.control_hz)
    return sim.task_success()
