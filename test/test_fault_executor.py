"""Fault injection against the executor core (issue 16): bad joint states, measurements past a limit, infinite
limits, absurd rates. Every command, holds included, stays inside the URDF limits and every refusal says why."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_ros.core.execution import ExecutionConfig
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.safety import SafetyConfig, SafetyFilter
from test_execution import CHANNELS, DT, HOME, JOINTS, LIMITS, TICK, URDF, assert_within_limits, feed_state, \
    make_controller, ramp

J1 = JOINTS.index("panda_joint1")


def test_a_joint_state_listing_a_joint_twice_is_refused_whole_with_the_reason():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    names = JOINTS + ("panda_joint1",)
    positions = np.append(HOME, HOME[J1] + 1.0)
    reason = ctrl.on_joint_state(names, positions, np.zeros(len(names)), 0.01)
    assert reason and "panda_joint1" in reason and "twice" in reason
    assert ctrl._positions["panda_joint1"] == HOME[J1]            # nothing of the message was merged
    assert ctrl.stats["joint_states_refused"] == 1


def test_the_duplicate_name_feedback_loop_of_issue_16_never_commands_past_the_limit():
    """The attack: a publisher repeats panda_joint1 with +1 rad; a robot that follows the command reads +1 rad
    again. Before, each hold/plan moved the arm 1 rad further until it held at 3.93 rad (upper 2.97)."""
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    assert ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, 0.05)), "absolute_joint", 0.0, 0.0) is None
    robot, t = HOME.copy(), 0.0
    for _ in range(60):
        t = round(t + TICK, 9)
        spoofed = np.append(robot, robot[J1] + 1.0)
        ctrl.on_joint_state(JOINTS + ("panda_joint1",), spoofed, np.zeros(len(JOINTS) + 1), t)
        command = ctrl.tick(t)
        if command.kind != "idle":
            assert_within_limits(command)
            robot = np.array(command.trajectory.positions[0])
    assert abs(robot[J1] - HOME[J1]) < 0.2                        # the arm never followed the spoofed value
    level, message = ctrl.health()
    assert level == "WARN" and "twice" in message


def test_a_hold_at_a_measurement_past_a_limit_holds_at_the_limit_and_reports_it():
    ctrl = make_controller()
    measured = HOME.copy()
    measured[J1] = 3.93                                           # URDF upper 2.9671
    feed_state(ctrl, 0.0, measured)
    ctrl.engage_estop("test")
    command = ctrl.tick(0.01)
    assert command.kind == "hold"
    assert_within_limits(command)
    assert command.trajectory.positions[0][J1] == pytest.approx(LIMITS["panda_joint1"].upper)
    assert "panda_joint1" in command.reason and "outside" in command.reason
    # the other joints hold exactly where they are
    others = [j for j in range(len(JOINTS)) if j != J1]
    np.testing.assert_array_equal(command.trajectory.positions[0][others], measured[others])


def test_a_stale_hold_past_a_limit_is_clamped_too():
    ctrl = make_controller()
    measured = HOME.copy()
    measured[J1] = -4.0
    feed_state(ctrl, 0.0, measured)
    command = ctrl.tick(1.0)                                      # stale: the hold goes out at the measurement
    assert command.kind == "hold" and "stale" in command.reason
    assert_within_limits(command)
    assert command.trajectory.positions[0][J1] == pytest.approx(LIMITS["panda_joint1"].lower)


def test_safety_filter_hold_never_returns_a_point_past_a_limit():
    safety = SafetyFilter(LIMITS, SafetyConfig(max_step_delta_rad=0.05))
    hold = safety.hold({"panda_joint1": 1e9, "panda_finger_joint1": -1.0})
    assert hold.positions[0].tolist() == [LIMITS["panda_joint1"].upper, LIMITS["panda_finger_joint1"].lower]
    assert hold.clamped_joints == ("panda_joint1", "panda_finger_joint1")
    assert any("panda_joint1" in note and "outside" in note for note in hold.interventions)


@pytest.mark.parametrize("attack, expected", [
    ("nan", "panda_joint3 is nan"),
    ("short", "9 names but 8 positions"),
    ("velocities", "9 names but 3 velocities"),
    ("inf", "panda_joint3 is inf"),
])
def test_a_malformed_joint_state_is_refused_and_the_stale_hold_says_what_was_wrong(attack, expected):
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    names, positions, velocities = list(JOINTS), HOME.copy(), np.zeros(len(JOINTS))
    k = JOINTS.index("panda_joint3")
    if attack == "nan":
        positions[k] = math.nan
    elif attack == "inf":
        positions[k] = math.inf
    elif attack == "short":
        positions = positions[:-1]
    else:
        velocities = velocities[:3]
    for step in range(1, 10):
        assert expected in ctrl.on_joint_state(names, positions, velocities, step * TICK)
    command = ctrl.tick(0.2)
    assert command.kind == "hold" and "stale" in command.reason and expected in command.reason


def test_a_joint_missing_from_every_message_is_named_in_the_stale_reason():
    ctrl = make_controller()
    feed_state(ctrl, 0.0)
    partial = [n for n in JOINTS if n != "panda_joint5"]
    for step in range(1, 10):
        assert ctrl.on_joint_state(partial, [HOME[JOINTS.index(n)] for n in partial], [], step * TICK) is None
    command = ctrl.tick(0.2)
    assert command.kind == "hold" and "panda_joint5" in command.reason


@pytest.mark.parametrize("attribute, value", [("lower", "-inf"), ("upper", "1e309"), ("upper", "inf"),
                                              ("lower", "nan"), ("upper", "two")])
def test_an_infinite_or_garbage_position_limit_in_the_urdf_is_refused(tmp_path, attribute, value):
    text = URDF.read_text()
    original = 'lower="-2.9671"' if attribute == "lower" else 'upper="2.9671"'
    assert original in text
    broken = tmp_path / "panda.urdf"
    broken.write_text(text.replace(original, f'{attribute}="{value}"', 1))
    with pytest.raises(ValueError, match="panda_joint1") as error:
        load_urdf_limits(broken)
    assert attribute in str(error.value)


@pytest.mark.parametrize("field, value", [("control_rate_hz", 1e9), ("control_rate_hz", 5000.0),
                                          ("joint_state_timeout_s", 1e6), ("lookahead_s", 1e6),
                                          ("chunk_timeout_s", 1e9), ("policy_timeout_s", 1e9)])
def test_absurd_rates_and_timeouts_are_refused_at_configure(field, value):
    with pytest.raises(ValueError, match=field):
        ExecutionConfig(joint_names=JOINTS, **{field: value})


JOINT_STATE_ATTACKS = ("good", "duplicate", "past_limit", "nan", "short", "huge", "partial", "silent")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(JOINT_STATE_ATTACKS), st.integers(0, 8), st.floats(-5.0, 5.0)),
                min_size=20, max_size=60),
       st.sampled_from(["clamp", "reject"]))
def test_no_joint_state_attack_makes_the_executor_command_past_a_limit(attacks, on_violation):
    """Every tick a joint_states message: honest, or one joint duplicated / moved past its limit / NaN / 1e300,
    arrays cut short, joints missing, or nothing at all; a chunk every 5 ticks; a robot that follows the command.
    Every command, holds included, stays finite and inside the URDF limits."""
    ctrl = make_controller(safety_kw={"on_violation": on_violation})
    feed_state(ctrl, 0.0)
    robot, t = HOME.copy(), 0.0
    for k, (attack, joint, value) in enumerate(attacks):
        t = round(t + TICK, 9)
        names, positions = list(JOINTS), robot.copy()
        if attack == "duplicate":
            names.append(JOINTS[joint])
            positions = np.append(positions, positions[joint] + value)
        elif attack == "past_limit":
            positions[joint] = LIMITS[JOINTS[joint]].upper + abs(value) + 1e-3
        elif attack == "nan":
            positions[joint] = math.nan
        elif attack == "short":
            positions = positions[:joint]
        elif attack == "huge":
            positions[joint] = math.copysign(1e300, value)
        elif attack == "partial":
            del names[joint]
            positions = np.delete(positions, joint)
        if attack != "silent":
            ctrl.on_joint_state(names, positions, [], t)
        if k % 5 == 0:
            ctrl.on_chunk(CHANNELS, DT, ramp(np.full(7, value / 20)), "absolute_joint", t, t)
        command = ctrl.tick(t)
        if command.kind != "idle":
            assert_within_limits(command)
            robot = np.array(command.trajectory.positions[0])


# ---- the executor's action space comes from the checkpoint the policy serves (issue 16.8) --------------------------
def _bringup_executor_values(**extra):
    import yaml

    from gem_ros.core.executor_setup import PARAMETERS

    repo = URDF.parents[2]
    bringup = yaml.safe_load((repo / "gem_bringup" / "config" / "panda" / "gem.yaml").read_text())
    return {**PARAMETERS, **bringup["gem_executor"]["ros__parameters"], "urdf_path": str(URDF),
            "checkpoint": str(repo / "checkpoints" / "sim_pick_tiny"), **extra}


def test_the_bringup_yaml_with_the_shipped_checkpoint_accepts_the_chunks_that_checkpoint_sends():
    import json

    from gem_ros.core.executor_setup import build_controller

    values = _bringup_executor_values()
    io = json.loads((URDF.parents[2] / "checkpoints" / "sim_pick_tiny" / "config.json").read_text())["io"]
    ctrl = build_controller(values)
    assert ctrl.mapper.cfg.kind == io["action_space"]
    feed_state(ctrl, 0.0)
    deltas = np.zeros((io["chunk_len"], io["action_dim"]))
    deltas[:, -1] = 0.04
    assert ctrl.on_chunk(io["action_names"], 1.0 / io["control_rate_hz"], deltas, io["action_space"], 0.0, 0.0) \
        is None


@pytest.mark.parametrize("key, value, message", [("action_space", "absolute_joint", "remove action_space"),
                                                 ("chunk_dt_s", 0.05, "remove chunk_dt_s")])
def test_an_executor_setting_that_disagrees_with_the_checkpoint_fails_at_configure_saying_what_to_change(
        key, value, message):
    from gem_ros.core.executor_setup import build_controller

    with pytest.raises(ValueError, match=message):
        build_controller(_bringup_executor_values(**{key: value}))


def test_an_unreadable_checkpoint_config_fails_at_configure_naming_the_file(tmp_path):
    from gem_ros.core.executor_setup import build_controller

    (tmp_path / "config.json").write_text('{"io": {"action_space": "delta_joint"}}')
    with pytest.raises(ValueError, match="config.json.*control_rate_hz"):
        build_controller(_bringup_executor_values(checkpoint=str(tmp_path)))


def test_soft_limits_bound_chunks_and_holds_stay_inside_the_hard_limits():
    """prefer_soft_limits: the Panda URDF's <safety_controller> range (+-2.8973 rad on joint 1, hard +-2.9671)
    bounds what the policy may ask; an arm resting between soft and hard is held where it is, never pulled."""
    from gem_ros.core.executor_setup import build_controller

    ctrl = build_controller(_bringup_executor_values(prefer_soft_limits=True, on_violation="reject"))
    names = list(ctrl.cfg.joint_names)
    home = HOME.copy()
    feed = lambda t, q: ctrl.on_joint_state(names, q, np.zeros(len(names)), t)  # noqa: E731
    feed(0.0, home)
    deltas = np.zeros((16, 8))
    deltas[:, 0] = 2.93 - home[J1]                              # delta_joint checkpoint: relative to the state
    deltas[:, -1] = 0.04
    reason = ctrl.on_chunk(list(CHANNELS), 0.1, deltas, "delta_joint", 0.0, 0.0)
    assert reason and "panda_joint1" in reason and "2.8973" in reason
    between = home.copy()
    between[J1] = 2.93                                          # inside hard, outside soft
    feed(0.02, between)
    ctrl.engage_estop("test")
    hold = ctrl.tick(0.03)
    assert hold.kind == "hold" and hold.trajectory.positions[0][J1] == 2.93 and "outside" not in hold.reason
    beyond = home.copy()
    beyond[J1] = 3.5
    feed(0.04, beyond)
    ctrl.reset_estop()
    ctrl.engage_estop("again")
    hold = ctrl.tick(0.05)
    assert hold.trajectory.positions[0][J1] == pytest.approx(LIMITS["panda_joint1"].upper)
