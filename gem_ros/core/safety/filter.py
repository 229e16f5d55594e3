"""The last gate before a controller: validate a whole trajectory, then pass it, limit it, or reject it.

Timeline: `times_s` are seconds from now (a JointTrajectory's time_from_start), strictly increasing and > 0;
the robot is at `current_positions` at t = 0, so the segment current -> first point is checked like the others.

Refused outright (ChunkRejected, nothing returned), in either mode: unknown or duplicate joints, joints without a
usable URDF velocity limit, NaN/Inf anywhere (never clamped: a NaN has no "nearest safe value"), non-monotonic
times, points beyond the URDF limits minus the margin, the workspace link leaving its box.
Finite step/velocity/acceleration excess: "reject" refuses the chunk; "clamp" runs a rate limiter that keeps the
timestamps (the chunk scheduler owns the timeline, re-timing would desynchronise it) and moves each point only as
far toward its target as every limit allows. The result is verified again, so no output ever exceeds a limit.

Derivatives are finite differences of the piecewise-linear path: segment velocity (p[i] - p[i-1]) / dt[i];
acceleration at point i (v[i+1] - v[i]) / ((dt[i] + dt[i+1]) / 2), plus the jump from `current_velocities`
over dt[0] / 2 when the caller supplies them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gem_ros.core.kinematics.robot_model import RobotModel
from gem_ros.core.kinematics.urdf import JointLimits
from gem_ros.core.safety.config import SafetyConfig

if TYPE_CHECKING:   # pinocchio is imported only where collision checking is configured
    from gem_ros.core.safety.collision import CollisionChecker

MIN_TIME_STEP_S = 1e-4      # points closer than this are a bug upstream, and divide round-off by ~0
_VERIFY_REL_TOL = 1e-9      # float round-off allowed when verifying our own output
_CLAMP_SHRINK = 1.0 - 1e-6  # the rate limiter aims this far inside limits so round-off cannot cross them


class ChunkRejected(ValueError):
    """A trajectory that must not be executed; `reason` names the joint, point index and value."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class SafeTrajectory:
    """A trajectory that satisfies every configured limit. Arrays are read-only; shapes (N,) and (N, J)."""

    joint_names: tuple[str, ...]
    times_s: np.ndarray        # time_from_start [s]
    positions: np.ndarray      # rad / m
    velocities: np.ndarray     # rad/s / m/s: mean of adjacent segments, 0 at the last point (ends at rest)
    interventions: list[str] = field(default_factory=list)
    clamped_joints: tuple[str, ...] = ()   # joints the rate limiter moved off their targets (clamp mode)


@dataclass(frozen=True)
class _Bounds:
    """Per-joint limits for the joints of one call, aligned with its joint_names."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    step: np.ndarray
    acceleration: np.ndarray   # inf where not configured
    units: tuple[str, ...]     # "rad" or "m"

    def __post_init__(self) -> None:
        # What verification compares against (round-off slack included), computed once per joint order.
        slack = lambda limit: limit * (1.0 + _VERIFY_REL_TOL) + 1e-12  # noqa: E731
        object.__setattr__(self, "step_check", slack(self.step))
        object.__setattr__(self, "velocity_check", slack(self.velocity))
        object.__setattr__(self, "acceleration_check", slack(self.acceleration))
        object.__setattr__(self, "any_acceleration_limit", bool(np.isfinite(self.acceleration).any()))


class SafetyFilter:
    """Stateless per call; safe to share between threads."""

    def __init__(self, limits: JointLimits, cfg: SafetyConfig, robot_model: RobotModel | None = None,
                 hold_limits: JointLimits | None = None, collision: CollisionChecker | None = None):
        """`hold_limits` (default `limits`): the range a hold is kept inside. With soft limits as `limits`, pass the
        URDF's hard ones here: an arm resting between the two is held where it is, not pulled to the soft limit.
        `collision`: refuse chunks and trajectories whose path collides (holds are never collision-checked: the arm
        is already where a hold keeps it)."""
        if not isinstance(cfg, SafetyConfig):
            raise ValueError(f"cfg must be a SafetyConfig, got {type(cfg).__name__}")
        if collision is not None:
            from gem_ros.core.safety.collision import CollisionChecker   # noqa: F811 - pinocchio only when used
            if not isinstance(collision, CollisionChecker):
                raise ValueError(f"collision must be a CollisionChecker or None, got {type(collision).__name__}")
        self.limits, self.cfg, self.robot_model, self.collision = limits, cfg, robot_model, collision
        self.hold_limits = limits if hold_limits is None else hold_limits
        if isinstance(cfg.max_acceleration, Mapping):
            unknown = sorted(set(cfg.max_acceleration) - set(limits))
            if unknown:
                raise ValueError(f"max_acceleration names joints not in the URDF limits: {unknown}")
        self._box_chain: tuple[str, ...] = ()
        # Limits and config are immutable, so the validated bounds of a joint order are computed once: the
        # executor filters a trajectory with the same joint order every control tick.
        self._bounds_cache: dict[tuple[str, ...], _Bounds] = {}
        if cfg.workspace_box is not None:
            if robot_model is None:
                raise ValueError("workspace_box is configured but no robot_model was given to compute link poses")
            if cfg.workspace_box.link not in robot_model.link_names:
                raise ValueError(f"workspace_box.link '{cfg.workspace_box.link}' is not a link of the robot model")
            self._box_chain = robot_model.chain_joint_names(cfg.workspace_box.link)

    # ---- public API ---------------------------------------------------------------------------------------------
    def filter_trajectory(self, joint_names: Sequence[str], times_s, positions, current_positions,
                          current_velocities=None) -> SafeTrajectory:
        """Validate the whole trajectory, then return it (possibly rate-limited) or raise ChunkRejected.

        times_s (N,) s from now; positions (N, J) and current_positions (J,) in `joint_names` order (rad / m).
        current_velocities (J,), optional, from /joint_states: without them the first segment's acceleration
        is unconstrained (the robot's speed at t = 0 is unknown), so executors should pass them.
        """
        names = self._check_names(joint_names)
        times = self._array("times_s", times_s, (None,))
        target = self._array("positions", positions, (len(times), len(names)))
        current = self._array("current_positions", current_positions, (len(names),))
        current_vel = None if current_velocities is None else self._array(
            "current_velocities", current_velocities, (len(names),))
        self._check_finite(names, times, target, current, current_vel)
        self._check_times(times)
        bounds = self._cached_bounds(names)
        self._check_positions(names, target, bounds)
        self._check_workspace(names, target)

        interventions: list[str] = []
        if self.cfg.on_violation == "reject":
            self._check_motion(names, times, target, current, current_vel, bounds)
            output = target
        else:
            try:
                self._check_motion(names, times, target, current, current_vel, bounds)
                output = target
            except ChunkRejected:
                output, interventions = self._rate_limit(names, times, target, current, current_vel, bounds)
                # Belt and braces: the limited path is verified exactly like an incoming one.
                self._check_positions(names, output, bounds)
                self._check_workspace(names, output)
                self._check_motion(names, times, output, current, current_vel, bounds)
        self._check_collisions(names, output, current)   # the path as sent, from where the controller is
        clamped = () if output is target else tuple(
            n for n, moved in zip(names, (np.abs(output - target) > 1e-12).any(axis=0)) if moved)
        return self._trajectory(names, times, output, current, interventions, clamped)

    def check_points(self, joint_names: Sequence[str], positions) -> None:
        """Whole-chunk validation, before any of a chunk is planned or sent: every point (N, J) finite, inside the
        URDF limits minus margins and, when configured, with its link inside the workspace box. Raises
        ChunkRejected. Motion limits are checked (and in clamp mode enforced) by `filter_trajectory` on the path
        each trajectory actually commands: blending and the latency cut change the steps between points.
        Collisions are checked at the points and on the path between them; the way in from the arm's position is
        checked by `filter_trajectory`."""
        names = self._check_names(joint_names)
        target = self._array("positions", positions, (None, len(names)))
        _reject_non_finite_points(names, target)
        self._check_positions(names, target, self._cached_bounds(names))
        self._check_workspace(names, target)
        self._check_collisions(names, target, None)

    def check_joints(self, joint_names: Sequence[str]) -> None:
        """Fail closed at configure time: raises ValueError if any joint lacks a usable limit (an unknown joint, a
        zero, negative or infinite URDF velocity, a margin that leaves no room) instead of at the first tick."""
        try:
            self._cached_bounds(self._check_names(joint_names))
        except ChunkRejected as error:
            raise ValueError(f"safety limits unusable: {error.reason}") from None
        if self.collision is not None:
            self.collision.check_joints(joint_names)

    def hold(self, current_positions: Mapping[str, float]) -> SafeTrajectory:
        """One point at the current positions, `hold_duration_s` from now, zero velocity.

        A position past a URDF limit (a miscalibrated or spoofed measurement, a joint that slipped) is held at
        that limit instead: a hold is a command like any other and never leaves the limits. Such joints are
        listed in `clamped_joints` and described in `interventions` so the caller can report the fault.
        """
        names = self._check_names(list(current_positions))
        current = self._array("current_positions", list(current_positions.values()), (len(names),))
        self._check_finite(names, np.array([self.cfg.hold_duration_s]), current[None, :], current, None)
        lower = np.array([self.hold_limits[n].lower for n in names])
        upper = np.array([self.hold_limits[n].upper for n in names])
        held = np.clip(current, lower, upper)
        outside = np.flatnonzero(held != current)
        notes = [f"measured {names[j]} = {current[j]:.6g} is outside its URDF limits [{lower[j]:.6g}, "
                 f"{upper[j]:.6g}]: held at {held[j]:.6g}" for j in outside]
        return self._trajectory(names, np.array([self.cfg.hold_duration_s]), held[None, :], held, notes,
                                tuple(names[j] for j in outside))

    # ---- validation ---------------------------------------------------------------------------------------------
    def _check_names(self, joint_names: Sequence[str]) -> tuple[str, ...]:
        names = tuple(joint_names)
        if names in self._bounds_cache:   # checked before
            return names
        if not names:
            raise ChunkRejected("no joint names given")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ChunkRejected(f"duplicate joint names {duplicates}")
        unknown = [n for n in names if n not in self.limits]
        if unknown:
            raise ChunkRejected(f"unknown joints {unknown}: not in the URDF limits")
        return names

    @staticmethod
    def _array(what: str, value, shape: tuple) -> np.ndarray:
        try:
            array = np.array(value, dtype=float)
        except (TypeError, ValueError) as error:
            raise ChunkRejected(f"{what} is not a numeric array: {error}") from None
        if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
            raise ChunkRejected(f"{what} has shape {array.shape}, expected {tuple('N' if s is None else s for s in shape)}")
        if array.size == 0:
            raise ChunkRejected(f"{what} is empty")
        return array

    @staticmethod
    def _check_finite(names, times, target, current, current_vel) -> None:
        if np.isfinite(times).all() and np.isfinite(target).all() and np.isfinite(current).all() \
                and (current_vel is None or np.isfinite(current_vel).all()):
            return   # the common case; below finds the first bad value to name it
        bad_t = np.flatnonzero(~np.isfinite(times))
        if bad_t.size:
            raise ChunkRejected(f"times_s[{bad_t[0]}] = {times[bad_t[0]]} is not finite")
        for what, values in (("current position", current), ("current velocity", current_vel)):
            if values is not None and not np.all(np.isfinite(values)):
                j = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ChunkRejected(f"{what} of joint '{names[j]}' is {values[j]}")
        _reject_non_finite_points(names, target)

    @staticmethod
    def _check_times(times: np.ndarray) -> None:
        if times[0] < MIN_TIME_STEP_S:
            raise ChunkRejected(f"times_s[0] = {times[0]} s: the first point must lie >= {MIN_TIME_STEP_S} s after now")
        steps = times[1:] - times[:-1]
        if (steps < MIN_TIME_STEP_S).any():
            bad = np.flatnonzero(steps < MIN_TIME_STEP_S)
            i = int(bad[0]) + 1
            raise ChunkRejected(f"times_s not strictly increasing at index {i}: {times[i - 1]} s then {times[i]} s "
                                f"(minimum step {MIN_TIME_STEP_S} s)")

    def _cached_bounds(self, names: tuple[str, ...]) -> _Bounds:
        bounds = self._bounds_cache.get(names)
        if bounds is None:
            bounds = self._bounds_cache[names] = self._bounds(names)   # raises (and caches nothing) if unusable
        return bounds

    def _bounds(self, names: tuple[str, ...]) -> _Bounds:
        cfg, rows = self.cfg, []
        for name in names:
            limit = self.limits[name]
            if not (math.isfinite(limit.max_velocity) and limit.max_velocity > 0):
                raise ChunkRejected(f"joint '{name}' has no usable URDF velocity limit ({limit.max_velocity})")
            prismatic = limit.is_prismatic
            margin = cfg.position_margin_m if prismatic else cfg.position_margin_rad
            lower, upper = limit.lower + margin, limit.upper - margin
            if lower > upper:
                raise ChunkRejected(f"joint '{name}': position margin {margin} leaves no room inside "
                                    f"[{limit.lower}, {limit.upper}]")
            if isinstance(cfg.max_acceleration, Mapping):
                acceleration = cfg.max_acceleration.get(name, math.inf)
            else:
                acceleration = math.inf if cfg.max_acceleration is None else cfg.max_acceleration
            rows.append((lower, upper, limit.max_velocity * cfg.velocity_scale,
                         cfg.max_step_delta_m if prismatic else cfg.max_step_delta_rad,
                         min(acceleration, limit.max_acceleration), "m" if prismatic else "rad"))
        columns = list(zip(*rows))
        return _Bounds(*(np.array(c, dtype=float) for c in columns[:5]), units=tuple(columns[5]))

    @staticmethod
    def _check_positions(names, positions: np.ndarray, b: _Bounds) -> None:
        outside = (positions < b.lower) | (positions > b.upper)
        if outside.any():
            outside = np.argwhere(outside)
            i, j = (int(v) for v in outside[0])
            raise ChunkRejected(f"joint '{names[j]}' at index {i}: position {positions[i, j]:.6g} {b.units[j]} is "
                                f"outside [{b.lower[j]:.6g}, {b.upper[j]:.6g}] (URDF limits minus margin)")

    def _check_workspace(self, names, positions: np.ndarray) -> None:
        box = self.cfg.workspace_box
        if box is None:
            return
        missing = [n for n in self._box_chain if n not in names]
        if missing:
            raise ChunkRejected(f"workspace check of '{box.link}' needs joints {missing}, absent from the trajectory")
        low, high = np.array(box.min_xyz_m), np.array(box.max_xyz_m)
        for i, row in enumerate(positions):
            xyz = self.robot_model.forward_kinematics(dict(zip(names, row)), box.link)[:3, 3]
            if np.any(xyz < low) or np.any(xyz > high):
                raise ChunkRejected(f"link '{box.link}' at index {i} leaves the workspace box: xyz = "
                                    f"{np.round(xyz, 4).tolist()} m, box {list(box.min_xyz_m)} .. {list(box.max_xyz_m)}")

    def _check_collisions(self, names, positions: np.ndarray, start: np.ndarray | None) -> None:
        if self.collision is not None:
            hit = self.collision.check(names, positions, start)
            if hit is not None:
                raise ChunkRejected(hit.describe())

    @staticmethod
    def _check_motion(names, times, positions, current, current_vel, b: _Bounds) -> None:
        dt, deltas = _steps(times, positions, current)
        velocities = deltas / dt[:, None]

        def first_excess(values: np.ndarray, checked: np.ndarray):
            excess = np.abs(values) > checked
            return tuple(int(v) for v in np.argwhere(excess)[0]) if excess.any() else None

        if (hit := first_excess(deltas, b.step_check)) is not None:
            i, j = hit
            raise ChunkRejected(f"joint '{names[j]}' at index {i}: step {deltas[i, j]:.6g} {b.units[j]} from the "
                                f"previous point exceeds max step delta {b.step[j]:.6g} {b.units[j]}")
        if (hit := first_excess(velocities, b.velocity_check)) is not None:
            i, j = hit
            raise ChunkRejected(f"joint '{names[j]}' at index {i}: velocity {velocities[i, j]:.6g} {b.units[j]}/s "
                                f"exceeds limit {b.velocity[j]:.6g} {b.units[j]}/s")
        if not b.any_acceleration_limit:
            return
        accelerations = (np.diff(velocities, axis=0) / ((dt[:-1] + dt[1:]) / 2.0)[:, None])
        offset = 0
        if current_vel is not None:
            start = (velocities[0] - current_vel) / (dt[0] / 2.0)
            accelerations, offset = np.vstack([start, accelerations]), 1
        if (hit := first_excess(accelerations, b.acceleration_check)) is not None:
            i, j = hit
            raise ChunkRejected(f"joint '{names[j]}' at index {i - offset if i >= offset else 'start'}: acceleration "
                                f"{accelerations[i, j]:.6g} {b.units[j]}/s^2 exceeds limit "
                                f"{b.acceleration[j]:.6g} {b.units[j]}/s^2")

    # ---- clamp mode ---------------------------------------------------------------------------------------------
    @staticmethod
    def _rate_limit(names, times, target, current, current_vel, b: _Bounds) -> tuple[np.ndarray, list[str]]:
        """Move each point toward its target as far as step, velocity, acceleration and position bounds allow."""
        output = np.empty_like(target)
        p_prev, v_prev, dt_prev = current, current_vel, None
        velocity_cap = b.velocity * _CLAMP_SHRINK
        acceleration_cap = b.acceleration * _CLAMP_SHRINK
        for i, t in enumerate(times):
            dt = t - (times[i - 1] if i else 0.0)
            low = -np.minimum(b.step * _CLAMP_SHRINK / dt, velocity_cap)
            high = -low
            if v_prev is not None:  # acceleration window around the previous segment's velocity
                half = dt / 2.0 if dt_prev is None else (dt_prev + dt) / 2.0
                low = np.maximum(low, v_prev - acceleration_cap * half)
                high = np.minimum(high, v_prev + acceleration_cap * half)
            low = np.maximum(low, (b.lower - p_prev) / dt)
            high = np.minimum(high, (b.upper - p_prev) / dt)
            infeasible = np.flatnonzero(low > high)
            if infeasible.size:
                j = int(infeasible[0])
                raise ChunkRejected(f"joint '{names[j]}' at index {i}: no position satisfies step, velocity, "
                                    f"acceleration and position limits at once (clamp impossible)")
            velocity = np.clip((target[i] - p_prev) / dt, low, high)
            point = np.clip(p_prev + velocity * dt, b.lower, b.upper)
            output[i] = point
            p_prev, v_prev, dt_prev = point, (point - p_prev) / dt, dt
        return output, SafetyFilter._describe_interventions(names, target, output, b)

    @staticmethod
    def _describe_interventions(names, target, output, b: _Bounds) -> list[str]:
        deviation = np.abs(output - target)
        messages = []
        for j, name in enumerate(names):
            moved = np.flatnonzero(deviation[:, j] > 1e-12)
            if moved.size:
                accel = "" if np.isinf(b.acceleration[j]) else f", acceleration {b.acceleration[j]:.4g} {b.units[j]}/s^2"
                messages.append(
                    f"clamped joint '{name}' at {moved.size} of {len(target)} points (first index {moved[0]}, "
                    f"largest correction {deviation[:, j].max():.4g} {b.units[j]}; limits: step {b.step[j]:.4g} "
                    f"{b.units[j]}, velocity {b.velocity[j]:.4g} {b.units[j]}/s{accel})")
        return messages

    @staticmethod
    def _trajectory(names, times, positions, current, interventions, clamped=()) -> SafeTrajectory:
        """`times` and `positions` are this filter's own float arrays (never the caller's): frozen, not copied."""
        dt, deltas = _steps(times, positions, current)
        segment = deltas / dt[:, None]
        velocities = np.zeros_like(positions)
        velocities[:-1] = (segment[:-1] + segment[1:]) / 2.0  # bounded by the two segment speeds
        for a in (times, positions, velocities):
            a.setflags(write=False)
        return SafeTrajectory(names, times, positions, velocities, interventions=list(interventions),
                              clamped_joints=tuple(clamped))


def _reject_non_finite_points(names, target: np.ndarray) -> None:
    """ChunkRejected naming the first NaN/Inf of `target` (N, J), if any."""
    bad = np.argwhere(~np.isfinite(target))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ChunkRejected(f"joint '{names[j]}' at index {i} is {target[i, j]} (not finite; never clamped)")


def _steps(times: np.ndarray, positions: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point: time since the previous point (the first from t = 0) and position change (the first from
    `current`)."""
    dt = np.empty_like(times)
    dt[0], dt[1:] = times[0], times[1:] - times[:-1]
    deltas = np.empty_like(positions)
    deltas[0], deltas[1:] = positions[0] - current, positions[1:] - positions[:-1]
    return dt, deltas
