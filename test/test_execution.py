"""ExecutionController (ROS-free): refusals, watchdogs, e-stop latch, stop, safety rejection, limits on every output."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_ros.core.chunking import ActionMapper, ActionSpaceConfig, ChunkScheduler, ChunkSchedulerConfig
from gem_ros.core.execution import Command, ExecutionConfig, ExecutionController, default_channel_names
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.safety import SafetyConfig, SafetyFilter

URDF = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
LIMITS = load_urdf_limits(URDF)
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGERS = ("panda_finger_joint1", "panda_finger_joint2")
JOINTS = ARM + FINGERS
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.02, 0.02])   # fingers: 0.04 m width
CHANNELS = ARM + ("gripper",)
DT = 0.1       # chunk dt [s]
TICK = 0.02    # 50 Hz


def make_controller(kind="absolute_joint", gripper=FINGERS, exec_kw=None, safety_kw=None, sched_kw=None,
                    channels=None) -> ExecutionController:
    action = ActionSpaceConfig(kind=kind, joint_names=ARM, gripper_joint_names=gripper, gripper_scale=0.5,
                               action_dim=len(ARM) + (1 if gripper else 0))
    scheduler = ChunkScheduler(ChunkSchedulerConfig(chunk_dt_s=DT, control_rate_hz=50.0, **(sched_kw or {})))
    safety = SafetyFilter(LIMITS, SafetyConfig(**{"max_step_delta_rad": 0.05, **(safety_kw or {})}))
    cfg = ExecutionConfig(joint_names=JOINTS, **(exec_kw or {}))
    return ExecutionController(cfg, ActionMapper(action), scheduler, safety, channels)


def ramp(goal_offset: np.ndarray, points: int = 10) -> np.ndarray:
    """(points, 8) absolute actions moving the arm from HOME by `goal_offset` (7,), gripper width 0.04 m."""
    arm = HOME[:7] + np.outer(np.arange(1, points + 1) / points, goal_offset)
    return np.hstack([arm, np.full((points, 1), 0.04)])


def feed_state(ctrl, t, positions=HOME, velocities=None):
    ctrl.on_joint_state(JOINTS, positions, np.zeros(len(JOINTS)) if velocities is None else velocities, t)


def run(ctrl, t0, t1, follow=True):
    """Tick from t0 to t1; a perfect robot reaches each trajectory's first point by the next tick."""
    commands, t = [], t0
    while t <= t1 + 1e-9:
        command = ctrl.tick(t)
        commands.append((t, command))
        if follow and command.kind == "trajectory":
            traj = command.trajectory
            feed_state(ctrl, t + TICK, traj.positions[0], traj.velocities[0])
        elif follow:
            feed_state(ctrl, t + TICK, ctrl_positions(ctrl))
        t = round(t + TICK, 9)
    return commands


def ctrl_positions(ctrl) -> np.ndarray:
    return np.array([ctrl._positions[n] for n in JOINTS])


def assert_within_limits(command: Command):
    traj = command.trajectory
    assert traj.joint_names == JOINTS
    assert np.all(np.isfinite(traj.positions)) and np.all(np.isfinite(traj.velocities))
    for j, name in enumerate(JOINTS):
        limit = LIMITS[name]
        assert np.all(traj.positions[:, j] >= limit.lower) and np.all(traj.positions[:, j] <= limit.upper)
        assert np.all(np.abs(traj.velocities[:, j]) <= limit.max_velocity + 1e-9)


# ---- configuration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("control_rate_hz", 0.0), ("control_rate_hz", math.nan), ("lookahead_s", -0.1), ("lookahead_s", 0.001),
    ("joint_state_timeout_s", math.inf), ("chunk_timeout_s", 0), ("tracking_tolerance_rad", 0.0),
    ("tracking_tolerance_m", math.nan), ("joint_names", ()), ("joint_names", "panda_joint1"),
    ("joint_names", ("a", "a")),
])
def test_config_refuses_bad_values_naming_the_field(field, value):
    kwargs = {"joint_names": JOINTS, field: value}
    with pytest.raises(ValueError, match=field):
        ExecutionConfig(**kwargs)


def test_controller_refuses_mapping_to_joints_the_controller_lacks():
    action = ActionSpaceConfig(kind="absolute_joint", joint_names=ARM, gripper_joint_names=FINGERS, action_dim=8)
    scheduler = ChunkScheduler(ChunkSchedulerConfig(chunk_dt_s=DT))
    safety = SafetyFilter(LIMITS, SafetyConfig(max_step_delta_rad=0.05))
    with pytest.raises(ValueError, match="panda_finger_joint1"):
        ExecutionController(ExecutionConfig(joint_names=ARM), ActionMapper(action), scheduler, safety)
    with pytest.raises(ValueError, match="expected_channels"):
        ExecutionController(ExecutionConfig(joint_names=JOINTS), ActionMapper(action), scheduler, safety, ["a"])


# ---- refusals: nothing planned, nothing sent ----------------------------------------------------------------------
def test_nan_chunk_is_refused_and_nothing_is_planned():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    actions = ramp(np.full(7, 0.05))
    actions[4, 2] = math.nan
    reason = ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0)
    assert reason is not None and "nan" in reason.lower() and "panda_joint3" in reason
    assert ctrl.tick(0.0).kind == "idle" and ctrl.scheduler.remaining_s(0.0) == 0.0
    actions[4, 2] = math.inf
    assert "inf" in ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0).lower()
    assert ctrl.stats["chunks_refused"] == 2 and ctrl.stats["chunks_accepted"] == 0


def test_a_chunk_with_one_point_beyond_a_limit_is_refused_whole_before_any_of_it_runs():
    """Whole-chunk validation: the bad point is the last of 10 (1 s ahead): nothing of the chunk is planned, and a
    plan that was running stops with a hold at the next tick, counted as a safety rejection."""
    ctrl = make_controller(safety_kw={"on_violation": "clamp"})
    feed_state(ctrl, 0.0)
    beyond = ramp(np.full(7, 0.02))
    beyond[9, 0] = LIMITS["panda_joint1"].upper + 0.01
    reason = ctrl.on_chunk(CHANNELS, DT, beyond, "absolute_joint", 0.0, 0.0)
    assert reason and "panda_joint1" in reason and "index 9" in reason and "outside" in reason
    assert ctrl.scheduler.remaining_s(0.0) == 0.0 and ctrl.tick(0.0).kind == "idle"   # nothing planned or sent
    # with a plan running: refused whole, and the next tick holds (a problem: WARN on /diagnostics)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.02)), "absolute_joint", 0.0, 0.0) is None
    assert [c.kind for _, c in run(ctrl, 0.0, 0.1)] == ["trajectory"] * 6
    assert ctrl.on_chunk(CHANNELS, DT, beyond, "absolute_joint", 0.1, 0.12)
    hold = ctrl.tick(0.12)
    assert hold.kind == "hold" and "chunk rejected" in hold.reason and "panda_joint1" in hold.reason
    assert not np.any(np.abs(hold.trajectory.positions[0, :7] - ctrl_positions(ctrl)[:7]) > 1e-12)
    assert ctrl.tick(0.14).kind == "idle" and ctrl.scheduler.remaining_s(0.14) == 0.0
    assert ctrl.stats["safety_rejections"] == 2 and ctrl.health()[0] == "WARN"
    # a NaN chunk while a plan runs holds the same way
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.02)), "absolute_joint", 0.2, 0.2) is None
    assert ctrl.tick(0.2).kind == "trajectory"
    poisoned = ramp(np.full(7, 0.02))
    poisoned[7, 3] = math.nan
    assert "NaN/Inf" in ctrl.on_chunk(CHANNELS, DT, poisoned, "absolute_joint", 0.2, 0.22)
    assert ctrl.tick(0.22).kind == "hold" and ctrl.stats["safety_rejections"] == 3


def test_a_stale_chunk_is_refused_but_the_running_plan_goes_on():
    """Timing refusals are routine in asynchronous inference: they are not safety rejections and do not hold."""
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.02)), "absolute_joint", 0.0, 0.0) is None
    assert ctrl.tick(0.0).kind == "trajectory"
    assert "stale" in ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.02)), "absolute_joint", -5.0, 0.02)
    assert ctrl.tick(0.02).kind == "trajectory" and ctrl.stats["safety_rejections"] == 0


def test_a_urdf_velocity_limit_that_is_zero_negative_or_infinite_fails_at_configure(tmp_path):
    from gem_ros.core.kinematics import load_urdf_limits as load

    for bad in ("0", "-1", "inf"):
        text = URDF.read_text().replace('velocity="2.1750"', f'velocity="{bad}"', 1)
        assert text != URDF.read_text()
        (tmp_path / "bad.urdf").write_text(text)
        limits = load(tmp_path / "bad.urdf")
        action = ActionSpaceConfig(kind="absolute_joint", joint_names=ARM, gripper_joint_names=FINGERS,
                                   gripper_scale=0.5, action_dim=8)
        safety = SafetyFilter(limits, SafetyConfig(max_step_delta_rad=0.05))
        with pytest.raises(ValueError, match="velocity limit"):
            ExecutionController(ExecutionConfig(joint_names=JOINTS), ActionMapper(action),
                                ChunkScheduler(ChunkSchedulerConfig(chunk_dt_s=DT)), safety)


CHUNK_KINDS = ("normal", "nan", "beyond_limit", "jump")


@settings(max_examples=250, deadline=None)   # >= 4 chunks each: >= 1,000 random chunks through the executor
@given(st.lists(st.tuples(st.sampled_from(CHUNK_KINDS), st.floats(-0.4, 0.4), st.integers(0, 9),
                          st.sampled_from([0.1, 0.16, 0.3])), min_size=4, max_size=6),
       st.sampled_from(["clamp", "reject"]))
def test_no_command_of_the_executor_ever_leaves_the_urdf_limits(chunks, on_violation):
    """Random chunks (drifting, poisoned with NaN, with a point beyond a joint limit, or jumping far in one step),
    planned, blended and sent tick by tick to a robot that follows: every point of every command is finite,
    inside the URDF limits, and no step between consecutive setpoints (from the robot's state to the first point,
    then point to point) exceeds the step and velocity limits."""
    ctrl = make_controller(safety_kw={"on_violation": on_violation})
    feed_state(ctrl, 0.0)
    step_limit = np.array([0.05] * 7 + [ctrl.safety.cfg.max_step_delta_m] * 2)
    speed_limit = np.array([LIMITS[n].max_velocity for n in JOINTS])
    t = 0.0
    for kind, offset, row, gap in chunks:
        actions = ramp(np.full(7, offset))
        if kind == "nan":
            actions[row, row % 8] = math.nan
        elif kind == "beyond_limit":
            actions[row, row % 7] = LIMITS[JOINTS[row % 7]].upper + 0.05
        elif kind == "jump":
            actions[row:, row % 7] += 1.0
        ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", t, t)
        end = round(t + gap, 9)
        while t < end:
            state = ctrl_positions(ctrl)
            command = ctrl.tick(t)
            if command.kind != "idle":
                traj = command.trajectory
                assert_within_limits(command)
                path = np.vstack([state, traj.positions])
                dt = np.diff(np.concatenate([[0.0], traj.times_s]))
                steps = np.abs(np.diff(path, axis=0))
                assert np.all(steps <= step_limit + 1e-9), (kind, steps.max(axis=0))
                assert np.all(steps / dt[:, None] <= speed_limit * (1 + 1e-9) + 1e-9), kind
                feed_state(ctrl, round(t + TICK, 9), traj.positions[0])
            else:
                feed_state(ctrl, round(t + TICK, 9), state)
            t = round(t + TICK, 9)


def test_wrong_channel_names_are_refused_with_a_clear_reason_and_order_is_by_name():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    actions = ramp(np.full(7, 0.05))
    wrong = [f"action_{i}" for i in range(8)]
    reason = ctrl.on_chunk(wrong, DT, actions, "absolute_joint", 0.0, 0.0)
    assert "action_0" in reason and "panda_joint1" in reason and "action_channel_names" in reason
    assert "action_space" in ctrl.on_chunk(CHANNELS, DT, actions, "delta_joint", 0.0, 0.0)
    assert "dt" in ctrl.on_chunk(CHANNELS, 0.05, actions, "absolute_joint", 0.0, 0.0)
    # The same chunk with its columns permuted (and named accordingly) plans the same targets.
    order = np.random.default_rng(0).permutation(8)
    assert ctrl.on_chunk([CHANNELS[i] for i in order], DT, actions[:, order], "absolute_joint", 0.0, 0.0) is None
    expected = np.concatenate([actions[4, :7], [0.02, 0.02]])
    np.testing.assert_allclose(ctrl.scheduler.sample(0.5), expected)


# ---- executing ----------------------------------------------------------------------------------------------------
def test_accepted_chunk_becomes_limited_trajectories_that_reach_the_targets_then_exactly_one_hold():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    offset = np.array([0.2, 0.1, -0.1, 0.15, 0.0, -0.1, 0.2])
    actions = ramp(offset)
    assert ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0) is None
    commands = run(ctrl, 0.0, 1.5)
    kinds = [c.kind for _, c in commands]
    trajectories = [c for _, c in commands if c.kind == "trajectory"]
    assert len(trajectories) >= 45
    for command in trajectories:
        assert_within_limits(command)
        assert command.trajectory.times_s[-1] <= 0.2 + 1e-9
    np.testing.assert_allclose(ctrl_positions(ctrl)[:7], HOME[:7] + offset, atol=1e-9)
    # Starvation after running: exactly one hold at the measured position, then idle.
    assert kinds.count("hold") == 1
    hold = next(c for c in (c for _, c in commands) if c.kind == "hold")
    assert "starved" in hold.reason and hold.new_episode
    np.testing.assert_allclose(hold.trajectory.positions[0][:7], HOME[:7] + offset, atol=1e-9)
    assert kinds[kinds.index("hold") + 1:] == ["idle"] * (len(kinds) - kinds.index("hold") - 1)
    assert ctrl.stats["holds"] == 1 and ctrl.stats["tick_period_mean_s"] == pytest.approx(TICK)


def test_replan_sends_a_new_chunk_between_ticks_with_every_check_and_without_tick_statistics():
    ctrl = make_controller()
    offset = np.full(7, 0.1)
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(offset), "absolute_joint", 0.0, 0.0) is None
    commands = run(ctrl, 0.0, 0.4)
    ticks, period = ctrl.stats["ticks"], ctrl.stats["tick_period_mean_s"]
    now = 0.41   # between the ticks at 0.40 and 0.42
    feed_state(ctrl, now, commands[-1][1].trajectory.positions[0])
    assert ctrl.on_chunk(CHANNELS, DT, ramp(-offset), "absolute_joint", now - 0.05, now) is None
    twin = make_controller()   # the same history, asked by a tick instead
    feed_state(twin, 0.0)
    twin.on_chunk(CHANNELS, DT, ramp(offset), "absolute_joint", 0.0, 0.0)
    run(twin, 0.0, 0.4)
    feed_state(twin, now, commands[-1][1].trajectory.positions[0])
    twin.on_chunk(CHANNELS, DT, ramp(-offset), "absolute_joint", now - 0.05, now)
    replanned, ticked = ctrl.replan(now), twin.tick(now)
    assert replanned.kind == ticked.kind == "trajectory"
    np.testing.assert_array_equal(replanned.trajectory.positions, ticked.trajectory.positions)
    np.testing.assert_array_equal(replanned.trajectory.times_s, ticked.trajectory.times_s)
    assert_within_limits(replanned)
    assert (ctrl.stats["ticks"], ctrl.stats["tick_period_mean_s"]) == (ticks, period)   # not a tick
    assert ctrl.stats["trajectories"] == ticks + 1
    # The watchdogs apply to a replan too: with /joint_states stale it holds instead.
    assert ctrl.replan(now + 1.0).kind == "hold"
    with pytest.raises(ValueError, match="replan_on_chunk"):
        ExecutionConfig(joint_names=JOINTS, replan_on_chunk="yes")


def test_a_plan_from_rest_approaches_its_first_point_instead_of_jumping_to_it():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    actions = ramp(np.full(7, 0.06), points=1).repeat(5, axis=0)  # first point 0.06 rad away, 0.1 s ahead
    assert ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0) is None
    command = ctrl.tick(0.0)                                        # a jump would step 0.06 > 0.05 rad in 0.02 s
    assert command.kind == "trajectory"
    np.testing.assert_allclose(command.trajectory.positions[:5, 0], 0.06 * np.arange(1, 6) / 5)
    np.testing.assert_allclose(command.trajectory.positions[5:, 0], 0.06)


def lagging_run(ctrl, lag_s: float, t1: float):
    """A position-controlled arm that trails its setpoint by `lag_s` (first-order, like a PD loop at speed)."""
    commands, t, q = [], 0.0, HOME.copy()
    while t <= t1 + 1e-9:
        command = ctrl.tick(t)
        commands.append(command)
        if command.kind == "trajectory":
            traj = command.trajectory
            q = q + (traj.positions[0] - q) * (TICK / (lag_s + TICK))
        t = round(t + TICK, 9)
        feed_state(ctrl, t, q)
    return commands, q


def test_a_lagging_arm_is_not_slowed_by_limits_charged_with_its_own_tracking_lag():
    """A feasible 1.25 rad/s ramp (0.025 rad per tick, under the 0.05 step limit) must be commanded as planned
    while the measured arm trails it by ~0.04 rad: the limits bound the setpoint path, not setpoint minus lag."""
    ctrl = make_controller(safety_kw={"on_violation": "clamp"})   # as gem.yaml: clamp would hide a slowed arm
    feed_state(ctrl, 0.0)
    offset = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])     # joint 2: 1.0 rad in 0.8 s
    assert ctrl.on_chunk(CHANNELS, DT, ramp(offset, points=8), "absolute_joint", 0.0, 0.0) is None
    commands, q = lagging_run(ctrl, lag_s=0.04, t1=0.8)
    trajectories = [c for c in commands if c.kind == "trajectory"]
    assert all(not c.trajectory.interventions for c in trajectories), trajectories[-1].trajectory.interventions
    assert trajectories[-1].trajectory.positions[-1, 1] == pytest.approx(HOME[1] + 1.0)
    # Anchored at the measurement instead, every tick was clamped and the arm fell ever further behind.
    ctrl = make_controller(exec_kw={"tracking_tolerance_rad": 1e-6}, safety_kw={"on_violation": "clamp"})
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(offset, points=8), "absolute_joint", 0.0, 0.0) is None
    commands, q_measured_anchor = lagging_run(ctrl, lag_s=0.04, t1=0.8)
    assert sum(bool(c.trajectory.interventions) for c in commands if c.kind == "trajectory") > 10
    assert q_measured_anchor[1] < q[1] - 0.05


def test_a_joint_off_its_setpoint_beyond_tolerance_is_limited_from_where_it_is():
    """Blocked (or a gripper closed on an object): the next step is checked from the measured position."""
    ctrl = make_controller(safety_kw={"on_violation": "clamp"})
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.zeros(7), points=10), "absolute_joint", 0.0, 0.0) is None
    assert ctrl.tick(0.0).kind == "trajectory"
    stuck = HOME.copy()
    stuck[0] -= 0.3                                   # joint 1 pushed 0.3 rad off its setpoint
    feed_state(ctrl, 0.02, stuck)
    command = ctrl.tick(0.02)
    assert command.kind == "trajectory"
    first = command.trajectory.positions[0]
    assert abs(first[0] - stuck[0]) <= 0.05 + 1e-9   # one step from the measurement, not a jump to the plan
    assert any("panda_joint1" in m for m in command.trajectory.interventions)
    assert command.trajectory.clamped_joints == ("panda_joint1",)
    stats = ctrl.stats
    assert (stats["safety_interventions"], stats["safety_interventions_arm"], stats["safety_interventions_gripper"]) \
        == (1, 1, 0)


def test_a_gripper_closing_faster_than_its_urdf_speed_counts_as_a_gripper_intervention():
    """Policies step the gripper open -> closed; the filter limits the fingers to their URDF speed every tick."""
    ctrl = make_controller(safety_kw={"on_violation": "clamp"})
    feed_state(ctrl, 0.0)
    actions = ramp(np.zeros(7))
    actions[:5, 7], actions[5:, 7] = 0.08, 0.0   # open, then shut: 0.04 m per finger in 0.1 s, twice the URDF speed
    assert ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0) is None
    commands = [c for _, c in run(ctrl, 0.0, 1.0) if c.kind == "trajectory"]
    assert commands and all(set(c.trajectory.clamped_joints) <= set(FINGERS) for c in commands)
    stats = ctrl.stats
    assert stats["safety_interventions_gripper"] == stats["safety_interventions"] > 0
    assert stats["safety_interventions_arm"] == 0


def test_joints_the_policy_does_not_drive_are_kept_where_they_were():
    ctrl = make_controller(gripper=())
    feed_state(ctrl, 0.0)
    actions = ramp(np.full(7, 0.1))[:, :7]
    assert ctrl.on_chunk(ARM, DT, actions, "absolute_joint", 0.0, 0.0) is None
    traj = ctrl.tick(0.0).trajectory
    np.testing.assert_allclose(traj.positions[:, 7:], 0.02)
    # Fingers measured 1e-7 m past their stop (sim/hardware noise) are kept at the stop, so the plan still passes.
    ctrl = make_controller(gripper=())
    feed_state(ctrl, 0.0, np.concatenate([HOME[:7], [0.04 + 1e-7, 0.04 + 1e-7]]))
    assert ctrl.on_chunk(ARM, DT, actions, "absolute_joint", 0.0, 0.0) is None
    traj = ctrl.tick(0.0).trajectory
    np.testing.assert_allclose(traj.positions[:, 7:], 0.04)


def test_delta_chunks_use_the_joint_state_nearest_the_observation_time():
    ctrl = make_controller(kind="delta_joint")
    moved = HOME + np.array([0.03, 0, 0, 0, 0, 0, 0, 0, 0])
    for t in np.arange(0.0, 0.31, 0.02):
        feed_state(ctrl, round(t, 9), HOME if t < 0.1 else moved)
    zeros = np.hstack([np.zeros((10, 7)), np.full((10, 1), 0.04)])
    assert ctrl.on_chunk(CHANNELS, DT, zeros, "delta_joint", 0.04, 0.3) is None
    np.testing.assert_allclose(ctrl.scheduler.sample(0.5)[:7], HOME[:7])   # relative to the state at 0.04 s


def test_stale_joint_state_holds_within_the_timeout():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    assert ctrl.tick(0.05).kind == "trajectory"
    first, second = ctrl.tick(0.11), ctrl.tick(0.13)
    assert first.kind == second.kind == "hold" and "stale" in first.reason
    assert first.new_episode and not second.new_episode          # the node sends one hold per episode
    np.testing.assert_allclose(first.trajectory.positions[0], HOME)
    assert ctrl.health()[0] == "WARN"
    assert "stale" in ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.1, 0.13)
    feed_state(ctrl, 0.14)
    assert ctrl.tick(0.14).kind == "idle"                          # the plan was dropped, not resumed


def test_estop_latches_until_reset():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    assert ctrl.tick(0.0).kind == "trajectory"
    ctrl.engage_estop("operator")
    commands = run(ctrl, 0.02, 0.3)
    assert {c.kind for _, c in commands} == {"hold"} and sum(c.new_episode for _, c in commands) == 1
    assert "e-stop" in ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.3, 0.3)
    assert ctrl.health() == ("ERROR", "e-stop engaged: operator")
    assert ctrl.reset_estop() and not ctrl.estop_engaged
    assert ctrl.tick(0.32).kind == "idle"                          # reset alone never moves the arm
    feed_state(ctrl, 0.34)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.34, 0.34) is None
    assert ctrl.tick(0.34).kind == "trajectory"


def test_empty_chunk_stops_holds_once_and_forgets_the_plan():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    assert ctrl.tick(0.0).kind == "trajectory"
    assert ctrl.on_chunk([], DT, np.zeros((0, 0)), "", 0.01, 0.01) is None
    assert ctrl.scheduler.remaining_s(0.02) == 0.0
    stop = ctrl.tick(0.02)
    assert stop.kind == "hold" and "stopped" in stop.reason
    assert [ctrl.tick(t).kind for t in (0.04, 0.06)] == ["idle", "idle"]
    assert ctrl.health()[0] == "OK"                                # a requested stop is not a problem


def test_dead_policy_holds_after_chunk_timeout():
    ctrl = make_controller(exec_kw={"chunk_timeout_s": 0.3})
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.1)), "absolute_joint", 0.0, 0.0) is None
    commands = run(ctrl, 0.0, 0.4)
    holds = [(t, c) for t, c in commands if c.kind == "hold"]
    assert len(holds) == 1 and holds[0][0] > 0.3 and "no action chunk" in holds[0][1].reason


def test_a_silent_policy_holds_within_policy_timeout_once_its_heartbeat_was_seen():
    ctrl = make_controller(exec_kw={"policy_timeout_s": 0.1})   # beats 60 ms apart: inside 0.1 s
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    assert all(c.kind == "trajectory" for _, c in run(ctrl, 0.0, 0.3))   # no heartbeat yet: not armed
    t = 0.32
    for _ in range(10):                 # heartbeats 60 ms apart: the plan runs
        ctrl.on_policy_alive(t)
        assert run(ctrl, t, t + 0.04)[-1][1].kind == "trajectory"
        t = round(t + 0.06, 9)
    last_beat = t - 0.06
    commands = run(ctrl, t, t + 0.2)    # the heartbeat stops (policy process died)
    holds = [(when, c) for when, c in commands if c.kind == "hold"]
    assert len(holds) == 1 and "no policy heartbeat" in holds[0][1].reason
    # the second overdue tick holds: a heartbeat queued behind the first (an overdue timer runs first) still counts
    assert last_beat + 0.1 + TICK - 1e-9 <= holds[0][0] <= last_beat + 0.1 + 2 * TICK + 1e-9
    assert ctrl.stats["policy_heartbeat_gap_max_s"] == pytest.approx(0.06)
    assert ctrl.scheduler.remaining_s(holds[0][0]) == 0.0 and ctrl.health()[0] == "WARN"
    # a chunk shows it is alive again and the arm moves on
    now = round(t + 0.22, 9)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", now, now) is None
    assert ctrl.tick(now).kind == "trajectory"
    with pytest.raises(ValueError, match="policy_timeout_s"):
        ExecutionConfig(joint_names=JOINTS, policy_timeout_s=-0.1)


def test_the_heartbeat_watchdog_survives_a_clock_that_jumps_back_and_one_late_beat():
    ctrl = make_controller()
    feed_state(ctrl, 100.0)
    ctrl.on_policy_alive(100.0)
    for t in (0.0, 0.02):   # gem_sim restarted: sim time starts again at 0
        feed_state(ctrl, t)
    ctrl.on_policy_alive(0.02)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.02, 0.02) is None
    commands = run(ctrl, 0.02, 0.5)   # no heartbeat after the reset: the watchdog still fires
    assert any(c.kind == "hold" and "no policy heartbeat" in c.reason for _, c in commands)
    # one overdue tick alone (the beat was queued behind it) does not hold
    ctrl = make_controller(exec_kw={"policy_timeout_s": 0.1})
    feed_state(ctrl, 0.0)
    ctrl.on_policy_alive(0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    assert [c.kind for _, c in run(ctrl, 0.0, 0.1)] == ["trajectory"] * 6
    feed_state(ctrl, 0.12)
    assert ctrl.tick(0.12).kind == "trajectory"   # 0.12 s silent: first strike
    ctrl.on_policy_alive(0.125)                   # the heartbeat that waited behind that tick
    feed_state(ctrl, 0.14)
    assert ctrl.tick(0.14).kind == "trajectory"


def test_safety_rejection_mid_plan_clears_it_and_holds():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    actions = ramp(np.full(7, 0.05))
    actions[6:, 0] += 0.5                                          # 0.5 rad in 0.1 s: 5 rad/s > 2.175 rad/s
    assert ctrl.on_chunk(CHANNELS, DT, actions, "absolute_joint", 0.0, 0.0) is None
    commands = run(ctrl, 0.0, 1.0)
    kinds = [c.kind for _, c in commands]
    assert kinds[0] == "trajectory" and "hold" in kinds
    hold = commands[kinds.index("hold")][1]
    assert "safety filter rejected" in hold.reason and "panda_joint1" in hold.reason
    assert set(kinds[kinds.index("hold") + 1:]) == {"idle"}
    assert ctrl.stats["safety_rejections"] == 1 and ctrl.scheduler.remaining_s(0.5) == 0.0
    assert ctrl.health() == ("WARN", hold.reason)                  # outlives the one-tick hold for /diagnostics
    ctrl.tick(3.5)
    assert ctrl.health()[0] == "WARN" and "stale" in ctrl.health()[1]


def test_no_joint_state_means_nothing_is_commanded():
    ctrl = make_controller()
    assert "no joint state" in ctrl.on_chunk(CHANNELS, DT, ramp(np.zeros(7)), "absolute_joint", 0.0, 0.0)
    ctrl.engage_estop("test")
    assert ctrl.tick(0.0).kind == "idle" and ctrl.tick(0.0).trajectory is None


def test_concurrent_inputs_and_ticks_do_not_break_the_controller():
    ctrl = make_controller(safety_kw={"on_violation": "clamp"})
    feed_state(ctrl, 0.0)
    errors = []

    def producer():
        try:
            for k in range(100):
                t = k * TICK
                feed_state(ctrl, t)
                if k % 5 == 0:
                    ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.02)), "absolute_joint", t, t)
        except Exception as error:  # noqa: BLE001 - surfaced by the assert below
            errors.append(error)

    thread = threading.Thread(target=producer)
    thread.start()
    for k in range(100):
        command = ctrl.tick(k * TICK)
        if command.kind != "idle":
            assert_within_limits(command)
    thread.join(timeout=10)
    assert not errors and not thread.is_alive()


def test_default_channel_names_follow_the_message_convention():
    ee = ActionSpaceConfig(kind="ee_delta", joint_names=ARM, gripper_joint_names=FINGERS, action_dim=7,
                           ee_link="panda_hand")
    assert default_channel_names(ee) == ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
