"""Trajectory following with the semantics of the ros2_control JointTrajectoryController (JTC).

- A new trajectory *replaces* the one in progress (JTC's default; no queueing or splicing of old points).
- It starts at its header stamp; a zero stamp means "now". Points are at start + time_from_start.
- From the *commanded* state at the moment of replacement the target moves to the first point, then between
  points, by linear interpolation of positions (JTC with position-only points, which is what gem_executor sends).
  After the last point it holds. Starting from the commanded, not the measured, state is JTC with
  `interpolate_from_desired_state: true` (Jazzy+; `open_loop_control` before): set it on a real arm's controller,
  since gem_executor plans each trajectory from that setpoint (gem_ros.core.execution). JTC's default starts from
  the measured state, and the controller's tracking lag then lands in the first 20 ms segment.
- Points already in the past when the trajectory arrives are skipped, as JTC does; a stamped trajectory that
  ends in the past is rejected, as JTC does (the target is kept); an unstamped one whose points are all at
  time_from_start 0 is a jump to its last point.
- Joints absent from the message keep their current targets (JTC accepts a subset of its joints).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TrajectoryFollower:
    def __init__(self, joint_names: Sequence[str], initial_positions: np.ndarray):
        self.joint_names = list(joint_names)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self._hold = np.asarray(initial_positions, dtype=float).copy()
        self._times: np.ndarray | None = None       # absolute times of the knots, first knot = replacement state
        self._knots: np.ndarray | None = None       # (K, J)
        self.trajectories_received = 0

    def reset(self, positions: np.ndarray) -> None:
        self._hold = np.asarray(positions, dtype=float).copy()
        self._times = self._knots = None

    def set_trajectory(self, names: Sequence[str], start_s: float, times_from_start_s: Sequence[float],
                       positions: np.ndarray, now_s: float) -> None:
        """`positions` (N, len(names)); raises ValueError on unknown joints, NaN, or non-increasing times."""
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ValueError(f"trajectory names unknown joints {unknown}; this controller has {self.joint_names}")
        positions = np.asarray(positions, dtype=float).reshape(len(times_from_start_s), len(names))
        times = np.asarray(times_from_start_s, dtype=float)
        if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(times))):
            raise ValueError("trajectory contains NaN or Inf")
        if np.any(np.diff(times) <= 0):
            raise ValueError("trajectory time_from_start must be strictly increasing")
        current = self.target(now_s)
        if len(times) == 0:   # an empty trajectory stops motion: hold where we are
            self.reset(current)
            return
        start = now_s if start_s == 0 else start_s
        absolute = start + times
        future = absolute > now_s
        if not np.any(future):
            if start_s != 0:   # JTC: "Received trajectory with non-zero start time ... that ends in the past"
                raise ValueError(f"trajectory starting at {start:.3f} s ends in the past ({absolute[-1]:.3f} s <= "
                                 f"now {now_s:.3f} s)")
            absolute, future = np.array([now_s + 1e-9]), np.array([True])   # "now" with time_from_start 0: go there
            positions = positions[-1:]
        columns = [self._index[n] for n in names]
        knots = np.repeat(current[None, :], int(np.count_nonzero(future)) + 1, axis=0)
        knots[1:, columns] = positions[future]
        self._times = np.concatenate([[now_s], absolute[future]])
        self._knots = knots
        self._hold = knots[-1].copy()
        self.trajectories_received += 1

    def target(self, now_s: float) -> np.ndarray:
        """Commanded positions of every joint at `now_s`."""
        if self._times is None or now_s >= self._times[-1]:
            return self._hold.copy()
        return np.array([np.interp(now_s, self._times, self._knots[:, j]) for j in range(len(self.joint_names))])

    def active(self, now_s: float) -> bool:
        return self._times is not None and now_s < self._times[-1]
