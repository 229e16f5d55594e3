"""Named joint states (home, ready, ...) and the joint-space moves that reach them (ROS-free).

A named state comes from the SRDF's `<group_state>` (what a MoveIt configuration already has) or from the
executor's YAML (`named_state_names` + `named_state_positions`, flat, in joint_names order). A move is the straight
line in joint space from the measured state, timed with a smoothstep-like trapezoid so that every joint stays under
the safety filter's velocity (velocity_scale x URDF), per-point step and acceleration bounds, sampled at the control
rate. The whole path is checked by the SafetyFilter (limits, workspace box, collisions with the checker's fine
interpolation) before anything moves: a path that collides is refused naming the pair, never clipped.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from gem_ros.core.safety import ChunkRejected, SafetyFilter

_SPEED_FRACTION = 0.9   # plan under the filter's bounds, so that round-off never makes it rate-limit the move
_MIN_DURATION_S = 0.2   # a move shorter than this is still at least a few ticks (and never a zero division)


class MoveRefused(ValueError):
    """A named move that cannot run; the message says why (unknown name, a joint, a colliding pair)."""


def named_states_from_lists(names: Sequence[str], positions: Sequence[float],
                            joint_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """YAML named states: `positions` holds len(joint_names) values per name, flat, in joint_names order.
    ValueError names the parameter."""
    names = [n for n in names if n]
    values = [] if list(positions) in ([], [0.0]) and not names else list(positions)
    if len(set(names)) != len(names):
        raise ValueError(f"named_state_names must be unique, got {names}")
    if len(values) != len(names) * len(joint_names):
        raise ValueError(f"named_state_positions must hold {len(joint_names)} values (joint_names order) per name in "
                         f"named_state_names {names}: expected {len(names) * len(joint_names)}, got {len(values)}")
    table = np.asarray(values, dtype=float).reshape(len(names), len(joint_names))
    if not np.all(np.isfinite(table)):
        raise ValueError(f"named_state_positions has a value that is not finite: {values}")
    return {name: dict(zip(joint_names, map(float, row))) for name, row in zip(names, table)}


def srdf_named_states(srdf, joint_names: Sequence[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The SRDF's group states whose joints the executor drives (all of them, single-DOF); and notes on the ones
    skipped. A name defined by two groups is kept as "group/name" only."""
    states: dict[str, dict[str, float]] = {}
    notes, owners = [], {}
    for group, named in srdf.named_states.items():
        for name in named:
            owners.setdefault(name, []).append(group)
    for name, groups in owners.items():
        for group in groups:
            try:
                values = srdf.named_state(name, group or None)
            except ValueError as error:
                notes.append(f"SRDF named state {group}/{name} skipped: {error}")
                continue
            foreign = sorted(set(values) - set(joint_names))
            if foreign:
                notes.append(f"SRDF named state {group}/{name} skipped: joints {foreign} are not in joint_names")
                continue
            states[name if len(groups) == 1 else f"{group}/{name}"] = values
    return states, notes


def check_named_states(states: Mapping[str, Mapping[str, float]], safety: SafetyFilter,
                       joint_names: Sequence[str]) -> None:
    """Configure-time validation: every joint known and every value inside the limits (minus the margin).
    ValueError names the state and the joint."""
    for name, values in states.items():
        unknown = sorted(set(values) - set(joint_names))
        if unknown:
            raise ValueError(f"named state {name!r}: joints {unknown} are not in joint_names {list(joint_names)}")
        names = list(values)
        try:
            safety.check_points(names, np.array([[values[n] for n in names]]))
        except ChunkRejected as error:
            raise ValueError(f"named state {name!r} is unsafe: {error.reason}") from None


def plan_joint_move(start: np.ndarray, goal: np.ndarray, max_velocity: np.ndarray, max_acceleration: np.ndarray,
                    rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Straight line start -> goal (J,), trapezoidal in the path parameter, timed by its slowest joint.

    Returns (times (N,) s from now, > 0, the last exactly the duration; positions (N, J)), N >= 1, the last point
    the goal. max_velocity / max_acceleration (J,) per joint (inf acceleration: the velocity ramps over 20 % of the
    move, so the arm never starts with a step in speed)."""
    start, goal = np.asarray(start, dtype=float), np.asarray(goal, dtype=float)
    distance = np.abs(goal - start)
    moving = distance > 0
    # Path parameter s in [0, 1]: joint j moves distance_j * s, so the limits on s' and s'' are the tightest ratios.
    v_max = np.min(max_velocity[moving] * _SPEED_FRACTION / distance[moving], initial=math.inf)
    a_max = np.min(max_acceleration[moving] * _SPEED_FRACTION / distance[moving], initial=math.inf)
    if not math.isfinite(v_max):   # already there
        return np.array([_MIN_DURATION_S]), goal[None, :]
    ramp_s = 0.2 / v_max if not math.isfinite(a_max) else v_max / a_max   # time to reach v_max
    if v_max * ramp_s >= 1.0:   # never reaches v_max: triangle profile
        ramp_s = math.sqrt(1.0 / (v_max / ramp_s))
        v_max = 1.0 / ramp_s
    duration = 1.0 / v_max + ramp_s
    if duration < _MIN_DURATION_S:   # a tiny move: the same profile, slowed down
        v_max, ramp_s = v_max * duration / _MIN_DURATION_S, ramp_s * _MIN_DURATION_S / duration
        duration = _MIN_DURATION_S
    accel = v_max / ramp_s
    times = np.arange(1, math.ceil(duration * rate_hz - 1e-9) + 1) / rate_hz
    times[-1] = duration
    cruise_end = duration - ramp_s
    s = np.where(times < ramp_s, 0.5 * accel * times ** 2,
                 np.where(times <= cruise_end, 0.5 * accel * ramp_s ** 2 + v_max * (times - ramp_s),
                          1.0 - 0.5 * accel * (duration - times) ** 2))
    s = np.clip(s, 0.0, 1.0)
    s[-1] = 1.0
    return times, start[None, :] + s[:, None] * (goal - start)[None, :]


def joint_speed_bounds(safety: SafetyFilter, joint_names: Sequence[str],
                       rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(velocity, acceleration) per joint that the filter enforces on a trajectory sampled at `rate_hz`."""
    cfg, velocity, acceleration = safety.cfg, [], []
    for name in joint_names:
        limit = safety.limits[name]
        step = cfg.max_step_delta_m if limit.is_prismatic else cfg.max_step_delta_rad
        velocity.append(min(limit.max_velocity * cfg.velocity_scale, step * rate_hz))
        configured = cfg.max_acceleration
        if isinstance(configured, Mapping):
            configured = configured.get(name)
        acceleration.append(min(math.inf if configured is None else configured, limit.max_acceleration))
    return np.array(velocity), np.array(acceleration)


def check_move(safety: SafetyFilter, joint_names: Sequence[str], start: np.ndarray, positions: np.ndarray) -> None:
    """The whole path from `start` through `positions`: limits and workspace at every point, collisions along the
    finely interpolated line. MoveRefused names the joint or the colliding pair."""
    try:
        safety.check_points(joint_names, positions)
        if safety.collision is not None:   # the leg leaving `start` too (check_points starts at the first point)
            hit = safety.collision.check(joint_names, positions, start)
            if hit is not None:
                raise ChunkRejected(hit.describe())
    except ChunkRejected as error:
        raise MoveRefused(f"the straight joint-space path is unsafe: {error.reason}") from None
