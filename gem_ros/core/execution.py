"""Execution: accepted action chunks -> short, validated joint trajectories, one control tick at a time.

Per arm, the executor node feeds three inputs in (joint states, action chunks, e-stop) and asks `tick(now)` at
the control rate what to send to the controller:
- "trajectory": the plan for [now, now + lookahead_s], validated as a whole by the SafetyFilter against the
  measured positions/velocities. Each tick replaces the previous trajectory (JTC semantics), so a short
  lookahead keeps the arm at most lookahead_s away from stopping if the executor dies.
- "hold": one point at the measured position. Persistent conditions (e-stop, stale /joint_states) return a hold
  on every tick; `Command.new_episode` is True only on the first one, so the node sends each episode once.
  One-shot conditions (plan starved, stop, dead policy, safety rejection) return one hold, then "idle".
A dead policy is noticed two ways: no chunk for `chunk_timeout_s`, or, once the policy has sent a heartbeat
(`on_policy_alive`: gem_policy's PolicyStatus, 50 Hz), none for `policy_timeout_s` (default 0.05 s) at two
consecutive ticks while a plan runs (the second look lets a heartbeat queued behind an overdue tick count): the
arm does not finish a plan whose policy process died or stalled. `policy_heartbeat_gap_max_s` in `stats` shows
how late heartbeats come on a given machine.
- "idle": nothing to send (no plan, or no joint state yet to hold at).
Times are seconds on one clock (the node's, sim time included); joints are matched by name everywhere (the joint
state intake: gem_ros.core.execution_state).
A chunk that starts a plan from rest gets an approach: from the measured position at arrival, linearly to the
chunk's first point, instead of the scheduler's hold of that first point (a jump of up to one chunk dt of
motion within one tick, which the safety filter would rightly reject).
Each trajectory is checked from the setpoint the controller is tracking (the previous trajectory at `now`), not
from the measured position: a position controller always lags a moving setpoint, and charging that lag to the
next step made the rate limits slow the arm below the speed it was commanded at, the lag grew, and every tick
was clamped (what the executor commands is the setpoint path, so that is what the limits bound). A joint whose
measured position is more than `tracking_tolerance_rad` / `_m` away from its setpoint (blocked, a gripper
closed on an object, just after a hold) is checked from its measured position instead, as before.
A named move (`move_to_named` / `start_move`, gem_ros.core.execution_moves: home, reset between episodes) runs
through the same tick loop: its planned path replaces the chunk plan, each tick's piece is validated like any
trajectory, and a chunk, a stop or an e-stop ends it; the policy watchdogs do not apply to it (the policy is not
driving).
Joints of the controller that the action space does not drive (e.g. fingers of an arm-only policy) are kept at
their measured position at chunk arrival: JTC rejects goals that omit joints unless allow_partial_joints_goal.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from gem_ros.core.chunking import ActionMapper, ActionMappingError, ActionSpaceConfig, ChunkScheduler, mix
from gem_ros.core.chunking.interpolation import clip
from gem_ros.core.execution_moves import NamedMoves
from gem_ros.core.execution_state import JointStates
from gem_ros.core.named_moves import check_named_states
from gem_ros.core.safety import ChunkRejected, SafeTrajectory, SafetyFilter

EE_DELTA_CHANNELS = ("x", "y", "z", "roll", "pitch", "yaw")   # ActionChunk.msg names for "ee_delta"
GRIPPER_CHANNEL = "gripper"
_DT_REL_TOL = 1e-6          # chunk dt vs configured chunk_dt_s: float32/64 round trips only
_MIN_HISTORY_S = 1.0        # joint-state history kept for delta kinds; at least max_latency_s is kept
# Upper bounds of the timing fields: beyond them a watchdog guards nothing in practice (a 1e6 s stale timeout)
# or the tick cannot run (ros2_control itself updates at <= 1 kHz on common hardware).
_MAX_CONTROL_RATE_HZ = 1000.0
_MAX_SECONDS = {"lookahead_s": 5.0, "joint_state_timeout_s": 1.0, "chunk_timeout_s": 60.0, "policy_timeout_s": 5.0}
_WARN_WINDOW_S = 2.0        # health() stays WARN this long after a problem: longer than the 1 Hz diagnostics period


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(kw_only=True)
class ExecutionConfig:
    """Executor timing and the controller's joints. Times in s, rates in Hz."""

    joint_names: tuple[str, ...]         # controller joint order, e.g. 7 arm joints + 2 fingers
    control_rate_hz: float = 50.0        # tick rate; one trajectory per tick
    lookahead_s: float = 0.2             # each trajectory covers this much of the plan
    joint_state_timeout_s: float = 0.1   # older /joint_states -> hold (we cannot validate blind)
    chunk_timeout_s: float = 2.0         # no accepted chunk for this long while running -> hold (dead policy)
    policy_timeout_s: float = 0.05       # no policy heartbeat for this long while running -> hold; 0 = off
    tracking_tolerance_rad: float = 0.1  # |measured - setpoint| beyond this: check the next step from measured
    tracking_tolerance_m: float = 0.01   # the same for prismatic joints (gripper fingers)
    replan_on_chunk: bool = True         # send the new plan when a chunk is accepted, not at the next tick

    def __post_init__(self) -> None:
        if isinstance(self.joint_names, str):   # a bare string would iterate into letters
            raise ValueError(f"joint_names must be a list of joint names, got the string {self.joint_names!r}")
        self.joint_names = tuple(self.joint_names)
        if not self.joint_names or not all(isinstance(n, str) and n for n in self.joint_names):
            raise ValueError(f"joint_names must be non-empty joint-name strings, got {self.joint_names!r}")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names must be unique, got {self.joint_names!r}")
        if isinstance(self.policy_timeout_s, bool) or not isinstance(self.policy_timeout_s, (int, float)) \
                or not math.isfinite(self.policy_timeout_s) or self.policy_timeout_s < 0:
            raise ValueError(f"policy_timeout_s must be a finite number >= 0 (0 = off), got {self.policy_timeout_s!r}")
        self.policy_timeout_s = float(self.policy_timeout_s)
        if not isinstance(self.replan_on_chunk, bool):
            raise ValueError(f"replan_on_chunk must be true or false, got {self.replan_on_chunk!r}")
        for name in ("control_rate_hz", "lookahead_s", "joint_state_timeout_s", "chunk_timeout_s",
                     "tracking_tolerance_rad", "tracking_tolerance_m"):
            setattr(self, name, _positive(name, getattr(self, name)))
        if self.control_rate_hz > _MAX_CONTROL_RATE_HZ:
            raise ValueError(f"control_rate_hz must be <= {_MAX_CONTROL_RATE_HZ:g}, got {self.control_rate_hz!r}")
        for name, most in _MAX_SECONDS.items():
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be <= {most} s, got {getattr(self, name)!r}")
        if self.lookahead_s * self.control_rate_hz < 1.0 - 1e-9:
            raise ValueError(f"lookahead_s {self.lookahead_s} must cover at least one tick (1 / control_rate_hz = "
                             f"{1.0 / self.control_rate_hz:.4g} s), or the arm stops between ticks")


@dataclass(frozen=True)
class Command:
    """What one tick asks the backend to do."""

    kind: str                          # "trajectory" | "hold" | "idle"
    trajectory: SafeTrajectory | None  # None only for "idle"
    reason: str
    new_episode: bool = True           # False on the 2nd.. tick of one hold episode: already sent
    problem: bool = False              # a hold for a fault (not a requested stop): gem_executor reports it


def default_channel_names(action_cfg: ActionSpaceConfig) -> tuple[str, ...]:
    """ActionChunk column names the mapping expects when none are configured (see ActionChunk.msg)."""
    arm = EE_DELTA_CHANNELS if action_cfg.kind == "ee_delta" else action_cfg.joint_names
    return tuple(arm) + ((GRIPPER_CHANNEL,) if action_cfg.gripper_joint_names else ())


class ExecutionController(JointStates, NamedMoves):
    """Thread-safe (one lock; the mapping, IK included, runs outside it). One per arm."""

    def __init__(self, cfg: ExecutionConfig, action_mapper: ActionMapper, scheduler: ChunkScheduler,
                 safety: SafetyFilter, expected_channels: list[str] | None = None,
                 named_states: dict[str, dict[str, float]] | None = None):
        """`named_states`: name -> {joint: rad / m} for move_to_named; validated here (ValueError names it)."""
        if not isinstance(cfg, ExecutionConfig):
            raise ValueError(f"cfg must be an ExecutionConfig, got {type(cfg).__name__}")
        self.cfg, self.mapper, self.scheduler, self.safety = cfg, action_mapper, scheduler, safety
        undriven = [n for n in action_mapper.output_joint_names if n not in cfg.joint_names]
        if undriven:
            raise ValueError(f"action mapping drives joints {undriven} that are not in joint_names {cfg.joint_names}")
        unlimited = [n for n in cfg.joint_names if n not in safety.limits]
        if unlimited:
            raise ValueError(f"joint_names {unlimited} have no URDF limits: the safety filter cannot check them")
        safety.check_joints(cfg.joint_names)   # a zero / negative / infinite URDF velocity fails here, not at a tick
        channels = default_channel_names(action_mapper.cfg) if expected_channels is None else tuple(expected_channels)
        if len(channels) != action_mapper.cfg.action_dim or len(set(channels)) != len(channels) \
                or not all(isinstance(c, str) and c for c in channels):
            raise ValueError(f"expected_channels must be {action_mapper.cfg.action_dim} unique names, got {channels!r}")
        self.expected_channels = channels
        self.named_states = dict(named_states or {})
        self.named_state_notes: list[str] = []   # why SRDF states were skipped (executor_setup fills it; logged)
        check_named_states(self.named_states, safety, cfg.joint_names)
        self._columns = [cfg.joint_names.index(n) for n in action_mapper.output_joint_names]
        self._joint_set = frozenset(cfg.joint_names)
        self._lower, self._upper = self._position_bounds()
        self._tracking_tolerance = np.array([cfg.tracking_tolerance_m if safety.limits[n].is_prismatic
                                             else cfg.tracking_tolerance_rad for n in cfg.joint_names])
        self._history_s = max(_MIN_HISTORY_S, scheduler.cfg.max_latency_s + cfg.joint_state_timeout_s)
        self._lock = threading.RLock()
        self._positions: dict[str, float] = {}
        self._velocities: dict[str, float] = {}
        self._updated_s: dict[str, float] = {}
        self._history: deque[tuple[float, np.ndarray]] = deque()   # (stamp, positions in joint_names order)
        self._estop: str | None = None
        self._running = False                 # the last command sent was (part of) a plan
        self._pending_stop: str | None = None
        self._pending_stop_is_problem = False   # the pending hold is a safety rejection, not a requested stop
        self._last_chunk_s: float | None = None
        self._policy_alive_s: float | None = None   # last heartbeat or chunk; None until the first heartbeat
        self._policy_silent_ticks = 0                # consecutive ticks that found the heartbeat overdue
        self._heartbeat_gap_max_s = 0.0
        self._approach: tuple[float, np.ndarray, float, np.ndarray] | None = None   # (t0, q0, t1, q1)
        self._move: tuple[np.ndarray, np.ndarray, str] | None = None   # (absolute times, positions from start, why)
        self._commanded: tuple[float, np.ndarray, SafeTrajectory] | None = None   # (sent at, anchor, trajectory)
        self._last_kind = "idle"
        # Interventions split by what was limited: the gripper closing faster than its URDF speed is routine
        # (policies command open/close steps); the arm being limited means the policy asked for unsafe motion.
        self._gripper_joints = frozenset(action_mapper.cfg.gripper_joint_names)
        self._counts = dict(chunks_accepted=0, chunks_refused=0, safety_interventions=0,
                            safety_interventions_arm=0, safety_interventions_gripper=0, safety_rejections=0,
                            joint_states_refused=0, holds=0, trajectories=0, ticks=0)
        self._last_reason = self._last_refusal = self._last_intervention = ""
        self._last_safety_rejection = ""   # kept until the next one: a collision's pair stays on /diagnostics
        self._warning: tuple[float, str] | None = None   # (tick time, message) of the last problem
        self._last_joint_state_refusal: tuple[float, str] | None = None   # (receipt time, reason)
        self._last_tick_s: float | None = None
        self._periods = [0, 0.0, 0.0, 0.0, 0.0]   # count, sum, sum of squares, max period, max |period - nominal|

    # ---- inputs -------------------------------------------------------------------------------------------------
    def on_policy_alive(self, now_s: float) -> None:
        """A heartbeat of the policy (receipt time). The first one arms the `policy_timeout_s` watchdog."""
        with self._lock:
            if self._policy_alive_s is not None and now_s >= self._policy_alive_s:   # not across a clock reset
                self._heartbeat_gap_max_s = max(self._heartbeat_gap_max_s, now_s - self._policy_alive_s)
            self._policy_alive_s = now_s   # a clock that jumped back (sim reset) restarts the count from here

    def on_chunk(self, channel_names, dt_s: float, actions, action_space: str, obs_stamp_s: float,
                 now_s: float) -> str | None:
        """Plan a policy chunk. Returns None when accepted, else why it was refused (nothing planned then).

        actions (T, A) in the order of `channel_names`; T == 0 means stop (hold and forget the plan).
        An unsafe chunk (a NaN/Inf, a target outside the URDF limits or the workspace box, with a collision checker a
        collision at or between any of its points) is refused whole before any of it is planned, and the arm holds:
        the plan it would have continued came from the same policy. Refusals for timing or format (stale, out of
        order, wrong names) leave the current plan running.
        """
        with self._lock:   # any chunk shows the policy is alive
            if self._policy_alive_s is not None:
                self._policy_alive_s = now_s
        try:
            actions = np.array(actions, dtype=float)
        except (TypeError, ValueError) as error:
            return self.refuse(f"actions are not numeric: {error}")
        if actions.size == 0:
            self.stop("empty action chunk")
            return None
        channels = list(channel_names)
        reason = self._check_chunk(channels, dt_s, actions, action_space, obs_stamp_s)
        if reason:
            return self.refuse(reason)
        bad = np.argwhere(~np.isfinite(actions))
        if bad.size:
            i, j = (int(v) for v in bad[0])
            return self._reject_unsafe(f"action {i} channel '{channels[j]}' is {actions[i, j]} "
                                       f"(NaN/Inf never executed)")
        actions = actions[:, [channels.index(c) for c in self.expected_channels]]   # reorder by name
        with self._lock:
            if self._estop is not None:
                return self.refuse(f"e-stop engaged ({self._estop}); reset it first")
            current = self._current_vector()
            if current is None:
                return self.refuse(f"no joint state yet for {self._missing_joints()}")
            if self._state_age(now_s) > self.cfg.joint_state_timeout_s:
                return self.refuse(self._stale_reason(now_s))
            state_at_obs = None
            if self.mapper.cfg.kind != "absolute_joint":
                stamp, state = self._state_near(obs_stamp_s)
                if abs(stamp - obs_stamp_s) > self.cfg.joint_state_timeout_s:
                    return self.refuse(f"no joint state within {self.cfg.joint_state_timeout_s} s of the "
                                        f"observation at {obs_stamp_s:.3f} s (nearest {stamp:.3f} s)")
                state_at_obs = dict(zip(self.cfg.joint_names, state))
        try:
            mapped = self.mapper.map_chunk(actions, state_at_obs)
        except ActionMappingError as error:
            return self.refuse(f"action mapping failed: {error}")
        # Plan from the measured state clipped into the limits: a gripper measured 1e-7 m beyond its stop would
        # otherwise make every trajectory that keeps it there fail the safety filter's position check.
        current = clip(current, self._lower, self._upper)
        targets = np.repeat(current[None, :], len(mapped), axis=0)
        targets[:, self._columns] = mapped
        try:
            self.safety.check_points(self.cfg.joint_names, targets)
        except ChunkRejected as error:
            return self._reject_unsafe(f"unsafe chunk: {error.reason}")
        with self._lock:
            if self._estop is not None:   # engaged while we were mapping
                return self.refuse(f"e-stop engaged ({self._estop}); reset it first")
            starting = self.scheduler.remaining_s(now_s) <= 1e-9   # the scheduler starts a new plan
            try:
                admission = self.scheduler.add_chunk(targets, obs_stamp_s, now_s)
            except ValueError as error:
                return self.refuse(f"scheduler refused the chunk: {error}")
            if not admission.accepted:
                return self.refuse(admission.reason)
            if starting:
                first_s = obs_stamp_s + self.scheduler.cfg.chunk_dt_s * (admission.dropped_points + 1)
                self._approach = (now_s, current, first_s, self.scheduler.sample(first_s))
            self._counts["chunks_accepted"] += 1
            self._last_chunk_s, self._pending_stop, self._move = now_s, None, None
            return None

    def _reject_unsafe(self, reason: str) -> str:
        """Refuse an unsafe chunk whole and, if a plan is running, hold at the next tick (or replan)."""
        with self._lock:
            self._counts["safety_rejections"] += 1
            self._last_safety_rejection = f"chunk rejected: {reason}"
            was_running = self._running
            self._abandon_plan()
            if was_running:
                self._pending_stop, self._pending_stop_is_problem = f"chunk rejected: {reason}", True
        return self.refuse(reason)

    def refuse(self, reason: str) -> str:
        """Count a chunk refused for `reason` (also for callers that found it malformed) and return the reason."""
        with self._lock:
            self._counts["chunks_refused"] += 1
            self._last_refusal, self._last_reason = reason, f"chunk refused: {reason}"
            self._warning = (self._last_tick_s or 0.0, self._last_reason)
        return reason

    def stop(self, reason: str) -> None:
        """Forget the plan; if the arm was executing one, the next tick sends one hold."""
        with self._lock:
            self.scheduler.clear()
            self._last_chunk_s, self._approach, self._move = None, None, None
            if self._running:
                self._pending_stop, self._pending_stop_is_problem = reason, False
            self._running = False
            self._last_reason = f"stopped: {reason}"

    def engage_estop(self, reason: str) -> None:
        """Latched: until reset_estop(), ticks only hold and chunks are refused."""
        with self._lock:
            self._estop = reason or "e-stop"
            self.scheduler.clear()
            self._running, self._pending_stop, self._last_chunk_s, self._approach = False, None, None, None
            self._move = None
            self._last_reason = f"e-stop engaged: {self._estop}"

    def reset_estop(self) -> bool:
        """Release the e-stop; the arm stays put until a new chunk arrives. Returns whether it was engaged."""
        with self._lock:
            was_engaged, self._estop = self._estop is not None, None
            if was_engaged:
                self._last_reason = "e-stop reset"
            return was_engaged

    @property
    def safety_rejections(self) -> int:
        """Chunks and plans refused as unsafe so far (a change tells a caller that its chunk or tick was one)."""
        with self._lock:
            return self._counts["safety_rejections"]

    @property
    def estop_engaged(self) -> bool:
        with self._lock:
            return self._estop is not None

    # ---- control tick -------------------------------------------------------------------------------------------
    def tick(self, now_s: float) -> Command:
        """The control-rate call: what to send now (see the module docstring)."""
        with self._lock:
            self._note_tick(now_s)
            return self._command(now_s)

    def replan(self, now_s: float) -> Command:
        """What `tick` would send now, outside the tick grid and its period statistics: the executor calls it
        right after accepting a chunk (with replan_on_chunk), so the new plan reaches the controller at once
        instead of up to one control period later. Every check of a tick applies."""
        with self._lock:
            return self._command(now_s)

    def _command(self, now_s: float) -> Command:
        """tick/replan without the tick bookkeeping; the lock is held by the caller."""
        current = self._current_vector()
        if self._estop is not None:
            return self._hold(current, f"e-stop engaged: {self._estop}")
        if current is None:
            return self._idle(f"waiting for joint states of {self._missing_joints()}")
        if self._state_age(now_s) > self.cfg.joint_state_timeout_s:
            self._abandon_plan()
            return self._hold(current, self._stale_reason(now_s))
        if self._pending_stop is not None:
            reason, self._pending_stop = self._pending_stop, None
            if self._pending_stop_is_problem:
                return self._hold(current, reason)
            return self._hold(current, f"stopped: {reason}", problem=False)
        if self._running and self._last_chunk_s is not None \
                and now_s - self._last_chunk_s > self.cfg.chunk_timeout_s:
            silence = now_s - self._last_chunk_s
            self._abandon_plan()
            return self._hold(current, f"no action chunk for {silence:.3f} s "
                                       f"(chunk_timeout_s {self.cfg.chunk_timeout_s} s): policy dead?")
        if self._running and self._move is None and self._policy_alive_s is not None and self.cfg.policy_timeout_s > 0 \
                and now_s - self._policy_alive_s > self.cfg.policy_timeout_s:
            self._policy_silent_ticks += 1
            if self._policy_silent_ticks >= 2:
                silence = now_s - self._policy_alive_s
                self._abandon_plan()
                return self._hold(current, f"no policy heartbeat for {silence:.3f} s "
                                           f"(policy_timeout_s {self.cfg.policy_timeout_s} s): policy dead?")
        else:
            self._policy_silent_ticks = 0
        if self._move is not None:
            if now_s >= self._move[0][-1] - 1e-3:   # the last trajectory ended at the goal, where the controller stays
                reason, self._move, self._running = self._move[2], None, False
                self._last_reason = f"{reason}: done"
                return self._idle(self._last_reason)
            times, positions = self._move_segment(now_s)
        else:
            times, positions = self.scheduler.segment(now_s, self.cfg.lookahead_s)
        if self._approach is not None:
            positions = self._approach_positions(now_s, times, positions)
        if times.size == 0:
            if self._running:
                self._running = False
                return self._hold(current, "plan starved: no new chunk before the plan ran out")
            return self._idle("no plan")
        anchor, anchor_velocities = self._anchor(now_s, current)
        try:
            trajectory = self.safety.filter_trajectory(
                self.cfg.joint_names, times, positions, anchor, anchor_velocities)
        except ChunkRejected as error:
            self._counts["safety_rejections"] += 1
            self._abandon_plan()
            self._last_safety_rejection = f"safety filter rejected the plan: {error.reason}"
            return self._hold(current, self._last_safety_rejection)
        if trajectory.interventions:
            self._counts["safety_interventions"] += 1
            clamped = set(trajectory.clamped_joints)
            self._counts["safety_interventions_arm"] += bool(clamped - self._gripper_joints)
            self._counts["safety_interventions_gripper"] += bool(clamped & self._gripper_joints)
            self._last_intervention = "; ".join(trajectory.interventions)
        self._running = True
        self._commanded = (now_s, anchor, trajectory)
        self._counts["trajectories"] += 1
        self._last_kind = "trajectory"
        return Command("trajectory", trajectory, "executing plan")

    # ---- status ---------------------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            count, total, squares, max_period, max_jitter = self._periods
            mean = total / count if count else math.nan
            std = math.sqrt(max(0.0, squares / count - mean * mean)) if count else math.nan
            sched = self.scheduler.stats
            return {**self._counts, "state": self._last_kind, "estop_engaged": self._estop is not None,
                    "last_reason": self._last_reason, "last_refusal": self._last_refusal,
                    "last_intervention": self._last_intervention,
                    "last_safety_rejection": self._last_safety_rejection,
                    "named_move": self._move[2] if self._move is not None else "",
                    "plan_remaining_s": self.scheduler.remaining_s(self._last_tick_s or 0.0),
                    "joint_state_age_s": self.joint_state_age_s(self._last_tick_s or 0.0),
                    "last_latency_s": sched.last_latency_s, "dropped_points_total": sched.total_dropped_points,
                    "policy_heartbeat_gap_max_s": self._heartbeat_gap_max_s,
                    "tick_period_mean_s": mean, "tick_period_std_s": std, "tick_period_max_s": max_period,
                    "tick_jitter_max_s": max_jitter}

    def health(self) -> tuple[str, str]:
        """("OK" | "WARN" | "ERROR", message) for /diagnostics."""
        with self._lock:
            if self._estop is not None:
                return "ERROR", f"e-stop engaged: {self._estop}"
            # persistent holds refresh the warning every tick, so they stay WARN for as long as they last
            if self._warning is not None and (self._last_tick_s or 0.0) - self._warning[0] <= _WARN_WINDOW_S:
                return "WARN", self._warning[1]
            return "OK", "executing plan" if self._last_kind == "trajectory" else (self._last_reason or "idle")

    # ---- internals (lock held) ------------------------------------------------------------------------------------
    def _check_chunk(self, channels, dt_s, actions, action_space, obs_stamp_s) -> str:
        if action_space != self.mapper.cfg.kind:
            return f"action_space {action_space!r} does not match the configured {self.mapper.cfg.kind!r}"
        if sorted(channels) != sorted(self.expected_channels) or len(set(channels)) != len(channels):
            return (f"channel names {channels} do not match the expected {list(self.expected_channels)} "
                    f"(set action_channel_names or the checkpoint's io.action_names)")
        if actions.ndim != 2 or actions.shape[1] != len(channels):
            return f"actions have shape {actions.shape}, expected (T, {len(channels)})"
        chunk_dt = self.scheduler.cfg.chunk_dt_s
        if not abs(float(dt_s) - chunk_dt) <= _DT_REL_TOL * chunk_dt:   # NaN fails too
            return f"chunk dt {dt_s!r} s differs from the configured chunk_dt_s {chunk_dt} s"
        if not math.isfinite(obs_stamp_s):
            return f"observation stamp {obs_stamp_s!r} is not finite"
        return ""

    def _hold(self, current: np.ndarray | None, reason: str, problem: bool = True) -> Command:
        """A hold at `current`; `problem` holds (all but a requested stop) make health() WARN."""
        if current is None:   # never saw the arm: there is no position to hold at, so command nothing
            return self._idle(f"{reason} (no joint state yet: nothing commanded)")
        self._commanded = None
        new_episode = self._last_kind != "hold"
        if new_episode:
            self._counts["holds"] += 1
        self._last_kind, self._last_reason = "hold", reason
        if problem:
            self._warning = (self._last_tick_s or 0.0, reason)
        trajectory = self.safety.hold(dict(zip(self.cfg.joint_names, current)))
        if trajectory.interventions:   # a measurement past a limit: held at the limit, and that is a fault
            reason = f"{reason}; {'; '.join(trajectory.interventions)}"
            self._last_reason = reason
            self._warning = (self._last_tick_s or 0.0, reason)
        return Command("hold", trajectory, reason, new_episode, problem)

    def _idle(self, reason: str) -> Command:
        self._commanded = None
        self._last_kind = "idle"
        return Command("idle", None, reason)

    def _abandon_plan(self) -> None:
        self._policy_silent_ticks = 0
        self.scheduler.clear()
        self._running, self._pending_stop, self._last_chunk_s, self._approach = False, None, None, None
        self._move = None

    def _anchor(self, now_s: float, current: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Where each joint's next trajectory starts: its setpoint now (the last trajectory, linear between its
        points, from its own anchor) when the measurement tracks it within tolerance, else the measurement."""
        measured_velocities = self._current_velocities()
        if self._commanded is None:
            return current, measured_velocities
        sent_s, start, sent = self._commanded
        elapsed = now_s - sent_s
        times = np.concatenate([[0.0], sent.times_s])
        if not 0.0 <= elapsed <= times[-1]:
            return current, measured_velocities
        points = np.vstack([start, sent.positions])
        k = min(int(np.searchsorted(times, elapsed, side="right")), len(times) - 1)   # segment k-1 -> k
        alpha = (elapsed - times[k - 1]) / (times[k] - times[k - 1])
        setpoint = mix(points[k - 1], points[k], alpha)
        setpoint_velocity = (points[k] - points[k - 1]) / (times[k] - times[k - 1])
        tracked = np.abs(current - setpoint) <= self._tracking_tolerance
        anchor = np.where(tracked, setpoint, current)
        if measured_velocities is None:
            return anchor, None
        return anchor, np.where(tracked, setpoint_velocity, measured_velocities)

    def _approach_positions(self, now_s: float, times: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Replace the plan before its first point by the line from the state at arrival to that point."""
        start_s, start_q, first_s, first_q = self._approach
        if now_s >= first_s:
            self._approach = None
            return positions
        before = now_s + times < first_s
        alpha = (now_s + times[before] - start_s) / (first_s - start_s)
        positions = positions.copy()
        positions[before] = mix(start_q, first_q, alpha[:, None])
        return positions

    def _position_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """URDF limits minus the safety margins (the bounds the filter checks), in joint_names order."""
        cfg, limits = self.safety.cfg, [self.safety.limits[n] for n in self.cfg.joint_names]
        margins = [cfg.position_margin_m if lim.is_prismatic else cfg.position_margin_rad for lim in limits]
        return (np.array([lim.lower + m for lim, m in zip(limits, margins)]),
                np.array([lim.upper - m for lim, m in zip(limits, margins)]))

    def _note_tick(self, now_s: float) -> None:
        self._counts["ticks"] += 1
        if self._last_tick_s is not None and now_s > self._last_tick_s:
            period = now_s - self._last_tick_s
            count, total, squares, longest, jitter = self._periods
            self._periods = [count + 1, total + period, squares + period * period, max(longest, period),
                             max(jitter, abs(period - 1.0 / self.cfg.control_rate_hz))]
        self._last_tick_s = now_s
