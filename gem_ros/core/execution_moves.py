"""Named moves of the ExecutionController: home and reset moves run through its control tick.

`move_to_named` plans the straight joint-space move from the measured state to a named joint state (the SRDF's
group_states or the YAML's) at limited speed (gem_ros.core.named_moves), `start_move` checks a whole planned path
(limits, workspace, collisions from where the arm is) and makes it the running plan: each tick then sends its
piece (`_move_segment`), validated like any trajectory. A chunk, a stop or an e-stop ends it. A mixin, so the
controller keeps one lock and one state; the attributes it uses are the controller's (see ExecutionController).
"""
from __future__ import annotations

import math

import numpy as np

from gem_ros.core.chunking.interpolation import clip, interpolate_linear
from gem_ros.core.named_moves import MoveRefused, check_move, joint_speed_bounds, plan_joint_move


class NamedMoves:
    """Mixed into ExecutionController: uses its cfg, safety, scheduler, named_states, _lock and joint-state
    bookkeeping, and owns `_move`: (absolute times (N+1,) s, positions (N+1, J) from the start, reason) or None."""

    def move_to_named(self, name: str, now_s: float) -> str:
        """Plan the straight joint-space move from the measured state to named state `name` and start it. Returns
        a message with the planned duration; MoveRefused says why not (unknown name, e-stop, unsafe path)."""
        if name not in self.named_states:
            raise MoveRefused(f"no named state {name!r} (known: {sorted(self.named_states)})")
        with self._lock:
            current = self._usable_state(now_s)
            goal = current.copy()
            for joint, value in self.named_states[name].items():
                goal[self.cfg.joint_names.index(joint)] = value
            rate = self.cfg.control_rate_hz
            velocity, acceleration = joint_speed_bounds(self.safety, self.cfg.joint_names, rate)
            times, positions = plan_joint_move(current, goal, velocity, acceleration, rate)
            self.start_move(times, positions, now_s, f"move to {name!r}")
            return f"moving to {name!r}: {times[-1]:.2f} s planned ({len(times)} points)"

    def start_move(self, times_s, positions, now_s: float, reason: str) -> None:
        """Run a planned path (times_s (N,) s from now, increasing, > 0; positions (N, J) in joint_names order)
        from the measured state, replacing any plan. The whole path is checked first (limits, workspace,
        collisions from where the arm is); MoveRefused names the problem and nothing changes."""
        times, points = np.asarray(times_s, dtype=float), np.asarray(positions, dtype=float)
        if times.ndim != 1 or not len(times) or points.shape != (len(times), len(self.cfg.joint_names)) \
                or not np.all(np.isfinite(times)) or times[0] <= 0 or np.any(np.diff(times) <= 0):
            raise MoveRefused(f"a move needs increasing times > 0 (N,) and positions (N, {len(self.cfg.joint_names)}),"
                              f" got {times.shape} and {points.shape}")
        with self._lock:
            current = self._usable_state(now_s)
            check_move(self.safety, self.cfg.joint_names, current, points)
            self.scheduler.clear()
            self._approach, self._last_chunk_s, self._pending_stop = None, None, None
            self._move = (np.concatenate([[now_s], now_s + times]), np.vstack([current, points]), reason)
            self._last_reason = reason

    def _usable_state(self, now_s: float) -> np.ndarray:
        """The measured state, clipped into the limits (as a chunk plans from it); MoveRefused when there is none
        to trust or an e-stop is engaged. Lock held."""
        if self._estop is not None:
            raise MoveRefused(f"e-stop engaged ({self._estop}); reset it first")
        current = self._current_vector()
        if current is None:
            raise MoveRefused(f"no joint state yet for {self._missing_joints()}")
        if self._state_age(now_s) > self.cfg.joint_state_timeout_s:
            raise MoveRefused(self._stale_reason(now_s))
        return clip(current, self._lower, self._upper)

    def _move_segment(self, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The running move's points at the control rate over the lookahead, cut at its end (as segment())."""
        times, points, _ = self._move
        rate = self.cfg.control_rate_hz
        grid = now_s + np.arange(1, int(math.floor(self.cfg.lookahead_s * rate + 1e-9)) + 1) / rate
        end = min(times[-1], now_s + self.cfg.lookahead_s)
        grid = grid[grid <= end + 1e-9]
        if grid.size and grid[-1] > end - 0.25 / rate:   # the move's end just after a grid point: end there instead
            grid[-1] = end                                 # (a sliver of a step would fail the filter's time check)
        elif end > now_s:
            grid = np.append(grid, end)
        return grid - now_s, interpolate_linear(times, points, grid)
