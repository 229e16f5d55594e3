"""Safety filter: fail-closed config, every rejection reason, clamp mode, and the output invariant (hypothesis)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gem_ros.core.kinematics import RobotModel, load_urdf_limits
from gem_ros.core.safety import ChunkRejected, SafetyConfig, SafetyFilter, WorkspaceBox

ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
BOX = WorkspaceBox(link="panda_hand", min_xyz_m=(0.1, -0.6, 0.05), max_xyz_m=(0.8, 0.6, 1.0))


def panda_urdf_path() -> Path:
    ours = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
    if ours.is_file():
        return ours
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


LIMITS = load_urdf_limits(panda_urdf_path())
MODEL = RobotModel.from_urdf(panda_urdf_path())


def make_filter(**overrides) -> SafetyFilter:
    return SafetyFilter(LIMITS, SafetyConfig(**{"max_step_delta_rad": 0.1, **overrides}), MODEL)


def line_to(goal: np.ndarray, n: int = 10, dt: float = 0.1, start: np.ndarray = HOME):
    """n evenly timed points from `start` (exclusive) to `goal` (inclusive)."""
    times = dt * np.arange(1, n + 1)
    return times, start + np.outer(np.arange(1, n + 1) / n, goal - start)


# ---- fail-closed configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("max_step_delta_rad", math.nan), ("max_step_delta_rad", 0.0), ("max_step_delta_rad", -0.1),
    ("max_step_delta_rad", math.inf), ("max_step_delta_m", 0.0), ("velocity_scale", math.nan),
    ("velocity_scale", 0.0), ("velocity_scale", -1.0), ("velocity_scale", 1.5), ("max_acceleration", math.nan),
    ("max_acceleration", 0.0), ("max_acceleration", -2.0), ("max_acceleration", {"panda_joint1": math.nan}),
    ("max_acceleration", {"panda_joint1": 0.0}), ("max_acceleration", {}), ("position_margin_rad", math.nan),
    ("position_margin_rad", -0.01), ("position_margin_m", -0.001), ("hold_duration_s", 0.0),
    ("on_violation", "warn"), ("max_step_delta_rad", True), ("max_step_delta_rad", "0.1"),
])
def test_config_refuses_unsafe_values_naming_the_field(field, value):
    kwargs = {"max_step_delta_rad": 0.1, field: value}
    with pytest.raises(ValueError, match=field):
        SafetyConfig(**kwargs)


def test_validated_config_cannot_be_loosened_afterwards():
    """A limit set after validation would bypass it (e.g. NaN), and the filter caches its bounds per joint order."""
    cfg = SafetyConfig(max_step_delta_rad=0.1, max_acceleration={"panda_joint1": 5.0})
    with pytest.raises(AttributeError):
        cfg.velocity_scale = math.nan
    with pytest.raises(TypeError):
        cfg.max_acceleration["panda_joint1"] = math.inf
    assert cfg.max_acceleration["panda_joint1"] == 5.0


@pytest.mark.parametrize("box, field", [
    (dict(link="panda_hand", min_xyz_m=(0, 0, 0), max_xyz_m=(1, 1, 0)), "z"),
    (dict(link="panda_hand", min_xyz_m=(0, math.nan, 0), max_xyz_m=(1, 1, 1)), "min_xyz_m"),
    (dict(link="panda_hand", min_xyz_m=(0, 0), max_xyz_m=(1, 1, 1)), "min_xyz_m"),
    (dict(link="", min_xyz_m=(0, 0, 0), max_xyz_m=(1, 1, 1)), "link"),
])
def test_workspace_box_is_validated(box, field):
    with pytest.raises(ValueError, match=field):
        SafetyConfig(max_step_delta_rad=0.1, workspace_box=box)


def test_filter_construction_checks_cross_references():
    with pytest.raises(ValueError, match="robot_model"):
        SafetyFilter(LIMITS, SafetyConfig(max_step_delta_rad=0.1, workspace_box=BOX), None)
    with pytest.raises(ValueError, match="no_link"):
        SafetyFilter(LIMITS, SafetyConfig(max_step_delta_rad=0.1, workspace_box=WorkspaceBox(
            link="no_link", min_xyz_m=(0, 0, 0), max_xyz_m=(1, 1, 1))), MODEL)
    with pytest.raises(ValueError, match="typo_joint"):
        make_filter(max_acceleration={"typo_joint": 5.0})


# ---- each rejection reason ---------------------------------------------------------------------------------------
def test_a_valid_chunk_passes_unchanged():
    times, positions = line_to(HOME + 0.05)
    out = make_filter(workspace_box=BOX, max_acceleration=50.0).filter_trajectory(ARM, times, positions, HOME)
    np.testing.assert_array_equal(out.positions, positions)
    np.testing.assert_array_equal(out.times_s, times)
    assert out.interventions == [] and out.joint_names == ARM
    assert np.all(out.velocities[-1] == 0.0)  # the trajectory ends at rest
    np.testing.assert_allclose(out.velocities[0], 0.05 / 1.0)  # 0.005 rad per 0.1 s


@pytest.mark.parametrize("mode", ["reject", "clamp"])
@pytest.mark.parametrize("bad, pattern", [
    (math.nan, r"joint 'panda_joint3' at index 4 is nan"),
    (math.inf, r"joint 'panda_joint3' at index 4 is inf"),
    (-math.inf, r"joint 'panda_joint3' at index 4 is -inf"),
    (1e30, r"joint 'panda_joint3' at index 4: position 1e\+30 rad is outside"),
])
def test_non_finite_and_huge_values_are_rejected_in_every_mode(mode, bad, pattern):
    times, positions = line_to(HOME + 0.05)
    positions[4, 2] = bad
    with pytest.raises(ChunkRejected, match=pattern) as info:
        make_filter(on_violation=mode).filter_trajectory(ARM, times, positions, HOME)
    assert isinstance(info.value, ValueError) and info.value.reason == str(info.value)


@pytest.mark.parametrize("mode", ["reject", "clamp"])
def test_position_beyond_limit_or_margin_is_rejected_in_every_mode(mode):
    start = HOME.copy()
    start[3] = -0.2
    goal = start.copy()
    goal[3] = -0.03  # panda_joint4 upper limit is 0.0: inside it, but not 0.05 inside
    times, positions = line_to(goal, start=start)
    make_filter(on_violation=mode).filter_trajectory(ARM, times, positions, start)
    with pytest.raises(ChunkRejected, match=r"joint 'panda_joint4' at index 8: position -0.047 rad is outside"):
        make_filter(on_violation=mode, position_margin_rad=0.05).filter_trajectory(ARM, times, positions, start)


@pytest.mark.parametrize("names, pattern", [
    (ARM[:6] + ("elbow_typo",), r"unknown joints \['elbow_typo'\]"),
    (ARM[:6] + ("panda_joint1",), r"duplicate joint names \['panda_joint1'\]"),
])
def test_unknown_or_duplicate_joints_are_rejected(names, pattern):
    times, positions = line_to(HOME)
    with pytest.raises(ChunkRejected, match=pattern):
        make_filter().filter_trajectory(names, times, positions, HOME)


@pytest.mark.parametrize("times, pattern", [
    ([0.1, 0.2, 0.2], r"not strictly increasing at index 2"),
    ([0.1, 0.3, 0.2], r"not strictly increasing at index 2"),
    ([0.0, 0.1, 0.2], r"times_s\[0\] = 0.0"),
    ([0.1, math.nan, 0.3], r"times_s\[1\] = nan"),
])
def test_bad_timing_is_rejected(times, pattern):
    positions = np.tile(HOME, (3, 1))
    with pytest.raises(ChunkRejected, match=pattern):
        make_filter(on_violation="clamp").filter_trajectory(ARM, times, positions, HOME)


def test_shape_mismatch_and_non_finite_current_state_are_rejected():
    times, positions = line_to(HOME)
    with pytest.raises(ChunkRejected, match="shape"):
        make_filter().filter_trajectory(ARM, times, positions[:, :6], HOME)
    current = HOME.copy()
    current[1] = math.nan
    with pytest.raises(ChunkRejected, match="current position of joint 'panda_joint2' is nan"):
        make_filter().filter_trajectory(ARM, times, positions, current)


@pytest.mark.parametrize("mode", ["reject", "clamp"])
def test_leaving_the_workspace_box_is_rejected(mode):
    goal = HOME.copy()
    goal[1] = 1.5  # shoulder forward: the hand dives below z = 0.05 m
    times, positions = line_to(goal, n=40, dt=0.1)
    with pytest.raises(ChunkRejected, match=r"link 'panda_hand' at index \d+ leaves the workspace box"):
        make_filter(workspace_box=BOX, on_violation=mode).filter_trajectory(ARM, times, positions, HOME)


@pytest.mark.parametrize("overrides, goal_offset, dt, pattern", [
    ({}, 0.5, 0.1, r"joint 'panda_joint1' at index 0: step 0.5 rad .* exceeds max step delta 0.1 rad"),
    ({"max_step_delta_rad": 1.0}, 0.5, 0.1, r"joint 'panda_joint1' at index 0: velocity 5 rad/s exceeds limit 2.175"),
    ({"velocity_scale": 0.5, "max_step_delta_rad": 1.0}, 0.15, 0.1, r"velocity 1.5 rad/s exceeds limit 1.0875 rad/s"),
    ({"max_acceleration": 2.0}, 0.05, 0.1, r"joint 'panda_joint1' at index 0: acceleration -5 rad/s\^2 exceeds limit 2"),
])
def test_reject_mode_refuses_motion_limit_excess(overrides, goal_offset, dt, pattern):
    goal = HOME.copy()
    goal[0] += goal_offset
    times = np.array([dt, 2 * dt])
    positions = np.array([goal, goal])  # jump, then stand still
    with pytest.raises(ChunkRejected, match=pattern):
        make_filter(**overrides).filter_trajectory(ARM, times, positions, HOME)


def test_acceleration_from_current_velocity_is_checked_when_given():
    times, positions = line_to(HOME + 0.01, n=5)  # 0.02 rad/s steady
    filt = make_filter(max_acceleration=1.0)
    filt.filter_trajectory(ARM, times, positions, HOME, current_velocities=np.full(7, 0.02))
    with pytest.raises(ChunkRejected, match="index start: acceleration"):
        filt.filter_trajectory(ARM, times, positions, HOME, current_velocities=np.full(7, 1.0))


# ---- clamp mode --------------------------------------------------------------------------------------------------
def test_clamp_mode_rate_limits_and_records_interventions():
    goal = HOME.copy()
    goal[0] += 0.5
    times = 0.1 * np.arange(1, 11)
    positions = np.tile(goal, (10, 1))  # ask for a 0.5 rad jump at once
    out = make_filter(on_violation="clamp").filter_trajectory(ARM, times, positions, HOME)
    # 0.1 rad per point (step limit; velocity would allow 0.2175): 0.1, 0.2, ... reaching the goal at index 4.
    np.testing.assert_allclose(out.positions[:, 0] - HOME[0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
                               atol=1e-6)
    np.testing.assert_array_equal(out.positions[:, 1:], positions[:, 1:])
    np.testing.assert_array_equal(out.times_s, times)  # timing is never changed
    # Index 4 is counted too: the limiter aims 1e-6 inside each limit, so it lands 5e-7 rad short of the goal.
    assert len(out.interventions) == 1 and "clamped joint 'panda_joint1' at 5 of 10 points" in out.interventions[0]


def test_clamp_mode_respects_velocity_and_acceleration():
    goal = HOME.copy()
    goal[4] += 1.0
    times = 0.02 * np.arange(1, 33)
    positions = np.tile(goal, (32, 1))
    out = make_filter(on_violation="clamp", max_step_delta_rad=1.0, max_acceleration={"panda_joint5": 10.0},
                      velocity_scale=0.5).filter_trajectory(ARM, times, positions, HOME, np.zeros(7))
    velocity = np.diff(np.concatenate([[HOME[4]], out.positions[:, 4]])) / 0.02
    assert np.max(np.abs(velocity)) <= 2.61 * 0.5 + 1e-9
    assert np.max(np.abs(np.diff(velocity) / 0.02)) <= 10.0 + 1e-6
    assert velocity[0] == pytest.approx(0.1, rel=1e-5)  # from rest: a * dt / 2 = 10 * 0.01 rad/s
    assert velocity[1] == pytest.approx(0.3, rel=1e-5)  # then + a * dt per segment
    assert "panda_joint5" in out.interventions[0] and "acceleration 10" in out.interventions[0]


def test_hold_is_one_point_at_rest():
    out = make_filter(hold_duration_s=0.2).hold(dict(zip(ARM, HOME)))
    assert out.joint_names == ARM and out.times_s.tolist() == [0.2]
    np.testing.assert_array_equal(out.positions, HOME[None, :])
    np.testing.assert_array_equal(out.velocities, np.zeros((1, 7)))
    with pytest.raises(ChunkRejected, match="panda_joint1"):
        make_filter().hold({"panda_joint1": math.nan})


# ---- the output invariant ----------------------------------------------------------------------------------------
NAMES = ARM + ("panda_finger_joint1",)
LOWER = np.array([LIMITS[n].lower for n in NAMES])
UPPER = np.array([LIMITS[n].upper for n in NAMES])
VMAX = np.array([LIMITS[n].max_velocity for n in NAMES])
PRISMATIC = np.array([LIMITS[n].is_prismatic for n in NAMES])
TOL = 1e-9


@st.composite
def scenarios(draw):
    cfg = dict(
        max_step_delta_rad=draw(st.sampled_from([0.02, 0.1, 0.5])),
        max_step_delta_m=draw(st.sampled_from([0.002, 0.01])),
        velocity_scale=draw(st.sampled_from([0.25, 1.0])),
        max_acceleration=draw(st.sampled_from([None, 5.0, {"panda_joint2": 2.0, "panda_joint6": 30.0}])),
        position_margin_rad=draw(st.sampled_from([0.0, 0.05])),
        position_margin_m=draw(st.sampled_from([0.0, 0.002])),
        workspace_box=draw(st.sampled_from([None, BOX])),
        on_violation=draw(st.sampled_from(["reject", "clamp"])),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    order = rng.permutation(len(NAMES))  # joint order must not matter: names carry the meaning
    n = draw(st.integers(1, 40))
    dt = np.full(n, draw(st.sampled_from([0.002, 0.02, 0.1])))
    if draw(st.booleans()):
        dt = rng.uniform(1e-4, 0.3, n)  # random timing
    dt[rng.integers(n)] = draw(st.sampled_from([dt[0]] * 7 + [0.0, -0.05, 1e-5]))  # sometimes broken
    current = HOME.tolist() + [0.02]
    current = np.array(current) + rng.normal(0, draw(st.sampled_from([0.0, 0.3])), len(NAMES)) * ~PRISMATIC
    scale = draw(st.sampled_from([1e-3, 0.01, 0.05, 0.3]))
    positions = current + np.cumsum(rng.normal(0, scale, (n, len(NAMES))), axis=0) * np.where(PRISMATIC, 0.05, 1)
    poison = draw(st.sampled_from([None] * 8 + [math.nan, math.inf, -math.inf, 1e300, -1e12]))
    if poison is not None:
        positions[rng.integers(n), rng.integers(len(NAMES))] = poison
    current_velocities = draw(st.sampled_from([None, "zeros", "random"]))
    if current_velocities is not None:
        current_velocities = np.zeros(len(NAMES)) if current_velocities == "zeros" else rng.normal(0, 0.3, len(NAMES))
    return cfg, order, np.cumsum(dt), positions, current, current_velocities


def assert_within_limits(cfg: SafetyConfig, names, out, current, current_velocities):
    index = [NAMES.index(n) for n in names]
    prismatic, vmax = PRISMATIC[index], VMAX[index] * cfg.velocity_scale
    margin = np.where(prismatic, cfg.position_margin_m, cfg.position_margin_rad)
    step = np.where(prismatic, cfg.max_step_delta_m, cfg.max_step_delta_rad)
    p, t = out.positions, out.times_s
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(out.velocities))
    assert np.all(p >= LOWER[index] + margin) and np.all(p <= UPPER[index] - margin)
    assert t[0] > 0 and np.all(np.diff(t) > 0)
    dt = np.diff(t, prepend=0.0)[:, None]
    deltas = np.diff(np.vstack([current, p]), axis=0)
    assert np.all(np.abs(deltas) <= step * (1 + TOL) + 1e-12)
    velocity = deltas / dt
    assert np.all(np.abs(velocity) <= vmax * (1 + TOL) + 1e-12)
    assert np.all(np.abs(out.velocities) <= vmax * (1 + TOL) + 1e-12)
    if cfg.max_acceleration is not None:
        amax = np.array([cfg.max_acceleration if isinstance(cfg.max_acceleration, float)
                         else cfg.max_acceleration.get(n, math.inf) for n in names])
        acceleration = np.diff(velocity, axis=0) / ((dt[:-1] + dt[1:]) / 2)
        if current_velocities is not None:
            acceleration = np.vstack([(velocity[0] - current_velocities) / (dt[0] / 2), acceleration])
        assert np.all(np.abs(acceleration) <= amax * (1 + TOL) + 1e-12)
    if cfg.workspace_box is not None:
        box = cfg.workspace_box
        for row in p:
            xyz = MODEL.forward_kinematics(dict(zip(names, row)), box.link)[:3, 3]
            assert np.all(xyz >= box.min_xyz_m) and np.all(xyz <= box.max_xyz_m)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_output_never_exceeds_a_limit_and_nan_never_passes(scenario):
    cfg_kwargs, order, times, positions, current, current_velocities = scenario
    cfg = SafetyConfig(**cfg_kwargs)
    names = tuple(NAMES[i] for i in order)
    args = (names, times, positions[:, order], current[order])
    velocities = None if current_velocities is None else current_velocities[order]
    filt = SafetyFilter(LIMITS, cfg, MODEL)
    try:
        out = filt.filter_trajectory(*args, current_velocities=velocities)
    except ChunkRejected as rejection:
        kinds = ("times", "not finite", "outside", "clamp impossible", "step", "velocity", "acceleration", "workspace")
        event(f"rejected ({cfg.on_violation}): {next((k for k in kinds if k in rejection.reason), 'other')}")
        if not np.all(np.isfinite(positions)):
            assert "not finite" in rejection.reason or "outside" in rejection.reason or "times" in rejection.reason
        return
    event(f"accepted ({cfg.on_violation}, {'clamped' if out.interventions else 'unchanged'})")
    assert np.all(np.isfinite(positions)), "a non-finite value passed the filter"
    assert out.joint_names == names
    np.testing.assert_array_equal(out.times_s, times)
    assert_within_limits(cfg, names, out, current[order], velocities)
    if cfg.on_violation == "reject" or not out.interventions:
        np.testing.assert_array_equal(out.positions, positions[:, order])
