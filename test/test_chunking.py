"""Chunk scheduling (latency alignment, replace/blend/ensemble, interpolation, requests) and action mapping."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from gem_ros.core.chunking import (
    ActionMapper,
    ActionMappingError,
    ActionSpaceConfig,
    ChunkScheduler,
    ChunkSchedulerConfig,
    crossfade_weight,
    interpolate_linear,
)
from gem_ros.core.kinematics import RobotModel, load_urdf_limits, matrix_to_rotation_vector
from gem_ros.core.safety import SafetyConfig, SafetyFilter

ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
HOME = dict(zip(ARM, (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)), panda_finger_joint1=0.04)


def panda_urdf_path() -> Path:
    ours = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
    if ours.is_file():
        return ours
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


@pytest.fixture(scope="module")
def panda() -> RobotModel:
    return RobotModel.from_urdf(panda_urdf_path())


def scheduler(**overrides) -> ChunkScheduler:
    return ChunkScheduler(ChunkSchedulerConfig(**{"chunk_dt_s": 0.1, "control_rate_hz": 50.0, **overrides}))


def column(values) -> np.ndarray:
    """A one-joint chunk, (T, 1)."""
    return np.asarray(values, dtype=float)[:, None]


# ---- configuration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("chunk_dt_s", 0.0), ("chunk_dt_s", math.nan), ("control_rate_hz", -50.0), ("mode", "average"),
    ("blend_duration_s", -0.1), ("blend_shape", "cubic"), ("ensemble_decay", math.inf),
    ("request_threshold_s", math.nan), ("max_latency_s", 0.0),
])
def test_scheduler_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        ChunkSchedulerConfig(**{"chunk_dt_s": 0.1, field: value})


@pytest.mark.parametrize("overrides, field", [
    (dict(action_dim=7), "action_dim"),                              # forgot the gripper channel
    (dict(kind="ee_delta", action_dim=7), "ee_link"),
    (dict(gripper_joint_names=("panda_joint1",)), "unique"),
    (dict(gripper_scale=0.0), "gripper_scale"),
    (dict(delta_reference="previous"), "delta_reference"),
    (dict(kind="joint_velocity"), "kind"),
])
def test_action_space_config_is_validated(overrides, field):
    kwargs = dict(kind="absolute_joint", joint_names=ARM, gripper_joint_names=("panda_finger_joint1",), action_dim=8)
    with pytest.raises(ValueError, match=field):
        ActionSpaceConfig(**{**kwargs, **overrides})


# ---- interpolation -----------------------------------------------------------------------------------------------
def test_linear_interpolation_values_and_end_holding():
    times, positions = np.array([0.0, 1.0, 3.0]), np.array([[0.0, 1.0], [10.0, 1.0], [30.0, -1.0]])
    np.testing.assert_allclose(interpolate_linear(times, positions, 0.25), [2.5, 1.0])
    np.testing.assert_allclose(interpolate_linear(times, positions, 2.0), [20.0, 0.0])
    np.testing.assert_allclose(interpolate_linear(times, positions, [-1.0, 5.0]), [[0.0, 1.0], [30.0, -1.0]])
    np.testing.assert_allclose(crossfade_weight([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]), [0, 0, 0.25, 0.5, 1, 1])
    np.testing.assert_allclose(crossfade_weight([0.25, 0.5], "smoothstep"), [0.15625, 0.5])


# ---- alignment to the execution cursor ---------------------------------------------------------------------------
def test_latency_drops_the_points_already_in_the_past():
    sched = scheduler()
    # Observed at 10.0 s, points due at 10.1, 10.2, ..., 11.0; it lands at 10.25 s: 10.1 and 10.2 are late.
    admission = sched.add_chunk(column(np.arange(10)), obs_time_s=10.0, now_s=10.25)
    assert admission.accepted and admission.dropped_points == 2
    assert admission.latency_s == pytest.approx(0.25)
    assert sched.sample(10.3) == pytest.approx([2.0])           # first kept point is action 2
    assert sched.sample(10.35) == pytest.approx([2.5])          # linear in between
    assert sched.sample(10.25) == pytest.approx([2.0])          # before the first point: hold it
    assert sched.sample(11.0) == pytest.approx([9.0])
    assert sched.sample(11.01) is None                          # plan over: starved
    assert sched.remaining_s(10.25) == pytest.approx(0.75)
    stats = sched.stats
    assert (stats.chunks_accepted, stats.last_dropped_points, stats.starved_samples) == (1, 2, 1)


def test_a_point_due_exactly_now_counts_as_late():
    admission = scheduler().add_chunk(column(np.arange(10)), obs_time_s=10.0, now_s=10.2)
    assert admission.dropped_points == 2


@pytest.mark.parametrize("obs, now, reason", [
    (10.0, 11.5, "stale"),          # latency 1.5 s > max_latency_s 1.0 s
    (9.0, 9.95, "out of order"),    # older observation than the plan's
])
def test_stale_and_out_of_order_chunks_are_refused(obs, now, reason):
    sched = scheduler(max_latency_s=1.0)
    sched.add_chunk(column(np.zeros(10)), obs_time_s=9.5, now_s=9.55)
    admission = sched.add_chunk(column(np.ones(10)), obs_time_s=obs, now_s=now)
    assert not admission.accepted and reason in admission.reason
    assert sched.stats.chunks_refused == 1
    assert sched.sample(9.7) == pytest.approx([0.0])  # the plan is untouched


def test_all_points_in_the_past_refuses_the_chunk():
    admission = scheduler(chunk_dt_s=0.02).add_chunk(column(np.zeros(5)), obs_time_s=0.0, now_s=0.5)
    assert not admission.accepted and admission.dropped_points == 5


def test_bad_chunks_raise_and_leave_the_plan_alone():
    sched = scheduler()
    sched.add_chunk(np.zeros((10, 2)), obs_time_s=0.0, now_s=0.0)
    with pytest.raises(ValueError, match="NaN"):
        sched.add_chunk(np.full((10, 2), np.nan), obs_time_s=0.1, now_s=0.1)
    with pytest.raises(ValueError, match="3 joints"):
        sched.add_chunk(np.zeros((10, 3)), obs_time_s=0.1, now_s=0.1)
    np.testing.assert_allclose(sched.sample(0.5), [0.0, 0.0])


# ---- how a new chunk meets the current plan ----------------------------------------------------------------------
def test_replace_switches_at_the_new_chunks_first_point():
    sched = scheduler(mode="replace")
    sched.add_chunk(column(np.zeros(10)), obs_time_s=0.0, now_s=0.0)       # 0 at 0.1 .. 1.0
    sched.add_chunk(column(np.ones(10)), obs_time_s=0.3, now_s=0.35)       # 1 from 0.4 on
    assert sched.sample(0.3) == pytest.approx([0.0])                       # old plan until the switch
    assert sched.sample(0.35) == pytest.approx([0.5])                      # linear from old 0.3 to new 0.4
    assert sched.sample(0.4) == pytest.approx([1.0])
    assert sched.remaining_s(0.35) == pytest.approx(1.3 - 0.35)


@pytest.mark.parametrize("shape, quarter_weight", [("linear", 0.25), ("smoothstep", 0.15625)])
def test_blend_is_continuous_at_the_switch_and_ends_on_the_new_chunk(shape, quarter_weight):
    sched = scheduler(mode="blend", blend_duration_s=0.4, blend_shape=shape)
    old = np.arange(1, 11) * 0.1                                           # old target = t at t = 0.1 .. 1.0
    sched.add_chunk(column(old), obs_time_s=0.0, now_s=0.0)
    sched.add_chunk(column(np.full(10, 5.0)), obs_time_s=0.3, now_s=0.35)  # new target 5 from 0.4 s
    # At the switch (0.4 s) the weight of the new chunk is 0: exactly the old plan, no jump.
    assert sched.sample(0.4) == pytest.approx([0.4])
    # A quarter through the window (0.5 s): (1 - w) * 0.5 + w * 5.
    assert sched.sample(0.5) == pytest.approx([(1 - quarter_weight) * 0.5 + quarter_weight * 5.0])
    assert sched.sample(0.8) == pytest.approx([5.0])                       # window over: the new chunk alone
    assert sched.sample(1.3) == pytest.approx([5.0])


def test_blend_after_starvation_does_not_blend_in_a_stale_plan():
    sched = scheduler(mode="blend", blend_duration_s=0.4)
    sched.add_chunk(column(np.zeros(3)), obs_time_s=0.0, now_s=0.0)        # ends at 0.3 s
    assert sched.sample(0.5) is None
    sched.add_chunk(column(np.full(10, 2.0)), obs_time_s=0.45, now_s=0.5)
    assert sched.sample(0.55) == pytest.approx([2.0])


def test_temporal_ensemble_uses_act_weights_oldest_first():
    m = 0.5
    sched = scheduler(mode="temporal_ensemble", ensemble_decay=m)
    sched.add_chunk(column(np.zeros(10)), obs_time_s=0.0, now_s=0.0)       # covers 0.1 .. 1.0
    sched.add_chunk(column(np.ones(10)), obs_time_s=0.2, now_s=0.2)        # covers 0.3 .. 1.2
    sched.add_chunk(column(np.full(10, 4.0)), obs_time_s=0.4, now_s=0.4)   # covers 0.5 .. 1.4
    w = np.exp(-m * np.arange(3))                                          # oldest chunk weighs 1
    assert sched.sample(0.6) == pytest.approx([(w[0] * 0 + w[1] * 1 + w[2] * 4) / w.sum()])
    # After the first chunk ends (1.0 s) the other two re-index: weights 1, e^-m.
    assert sched.sample(1.1) == pytest.approx([(w[0] * 1 + w[1] * 4) / w[:2].sum()])
    assert sched.sample(1.3) == pytest.approx([4.0])
    assert sched.sample(0.4) == pytest.approx([w[1] / w[:2].sum()])        # before the newest: the earlier plan


# ---- controller-rate segments and requests -----------------------------------------------------------------------
def test_segment_samples_at_control_rate_from_now():
    sched = scheduler(chunk_dt_s=0.1, control_rate_hz=50.0)
    sched.add_chunk(column(np.arange(1, 11) * 1.0), obs_time_s=0.0, now_s=0.0)  # value = 10 t
    times, positions = sched.segment(0.5, 0.1)
    np.testing.assert_allclose(times, [0.02, 0.04, 0.06, 0.08, 0.10])            # time_from_start, now excluded
    np.testing.assert_allclose(positions[:, 0], [5.2, 5.4, 5.6, 5.8, 6.0])
    times, positions = sched.segment(0.95, 0.2)                                  # cut at the plan end (1.0 s)
    np.testing.assert_allclose(times, [0.02, 0.04, 0.05])                        # ... whose point is appended
    np.testing.assert_allclose(positions[:, 0], [9.7, 9.9, 10.0])
    empty_t, empty_p = sched.segment(1.5, 0.2)
    assert empty_t.shape == (0,) and empty_p.shape == (0, 1)


def test_needs_new_chunk_below_threshold_and_not_while_a_request_is_in_flight():
    sched = scheduler(request_threshold_s=0.3, max_latency_s=1.0)
    assert sched.needs_new_chunk(0.0)                          # nothing planned
    sched.add_chunk(column(np.zeros(10)), obs_time_s=0.0, now_s=0.0)   # plan ends at 1.0 s
    assert not sched.needs_new_chunk(0.69)                     # 0.31 s left
    assert sched.needs_new_chunk(0.71)                         # 0.29 s left
    sched.note_request(0.71)
    assert not sched.needs_new_chunk(0.8)                      # in flight
    assert sched.needs_new_chunk(1.72)                         # request presumed lost after max_latency_s
    sched.clear()
    assert sched.remaining_s(0.8) == 0.0 and sched.sample(0.8) is None


def test_producer_and_consumer_threads_do_not_corrupt_the_plan():
    sched = scheduler(mode="blend", chunk_dt_s=0.02)
    sched.add_chunk(np.zeros((32, 7)), obs_time_s=0.0, now_s=0.0)
    errors = []

    def produce():
        for k in range(200):
            sched.add_chunk(np.full((32, 7), float(k % 3)), obs_time_s=0.001 * k, now_s=0.001 * k)

    def consume():
        for k in range(2000):
            value = sched.sample(0.0001 * k)
            if value is None or value.shape != (7,) or not np.all((value >= 0) & (value <= 2)):
                errors.append(value)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- action mapping ----------------------------------------------------------------------------------------------
def panda_absolute(**overrides) -> ActionMapper:
    return ActionMapper(ActionSpaceConfig(**{
        "kind": "absolute_joint", "joint_names": ARM, "gripper_joint_names": ("panda_finger_joint1",
                                                                                "panda_finger_joint2"),
        "gripper_scale": 0.5, "action_dim": 8, **overrides}))


def test_absolute_joint_with_panda_gripper_width():
    mapper = panda_absolute()
    assert mapper.output_joint_names == ARM + ("panda_finger_joint1", "panda_finger_joint2")
    actions = np.array([[0.1, 0.2, 0.3, -1.0, 0.5, 1.0, 0.7, 0.08], [0, 0, 0, -1, 0, 1, 0, 0.02]])
    targets = mapper.map_chunk(actions)
    np.testing.assert_allclose(targets[:, :7], actions[:, :7])
    np.testing.assert_allclose(targets[:, 7:], [[0.04, 0.04], [0.01, 0.01]])  # width / 2 per finger
    poisoned = actions.copy()
    poisoned[1, 3] = np.nan
    with pytest.raises(ActionMappingError, match="action 1 dim 3 is nan"):
        mapper.map_chunk(poisoned)
    with pytest.raises(ActionMappingError, match="shape"):
        mapper.map_chunk(actions[:, :7])


@pytest.mark.parametrize("reference, expected", [
    ("cumulative", [[0.1, -0.785], [0.2, -0.685], [0.3, -0.585]]),     # q_obs + running sum
    ("observation", [[0.1, -0.785], [0.1, -0.685], [0.1, -0.685]]),    # q_obs + a_k
])
def test_delta_joint_from_the_state_at_observation_time(reference, expected):
    mapper = ActionMapper(ActionSpaceConfig(kind="delta_joint", joint_names=ARM[:2], action_dim=2,
                                            delta_reference=reference))
    targets = mapper.map_chunk([[0.1, 0.0], [0.1, 0.1], [0.1, 0.1]], state_at_obs=HOME)
    np.testing.assert_allclose(targets, expected)
    with pytest.raises(ActionMappingError, match="panda_joint2"):
        mapper.map_chunk([[0.1, 0.0]], state_at_obs={"panda_joint1": 0.0})


@pytest.mark.parametrize("frame", ["base", "ee"])
def test_ee_delta_moves_the_end_effector_by_the_requested_amount(panda, frame):
    cfg = ActionSpaceConfig(kind="ee_delta", joint_names=ARM, gripper_joint_names=("panda_finger_joint1",),
                            action_dim=7, ee_link="panda_grasptarget", ee_frame=frame)
    mapper = ActionMapper(cfg, panda)
    step = np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.02, 0.03])  # +1 cm along z, +0.02 rad yaw per action
    targets = mapper.map_chunk(np.tile(step, (5, 1)), state_at_obs=HOME)
    start = panda.forward_kinematics(HOME, "panda_grasptarget")
    end = panda.forward_kinematics(dict(HOME, **dict(zip(ARM, targets[-1, :7]))), "panda_grasptarget")
    axis = np.array([0, 0, 1.0]) if frame == "base" else start[:3, 2]     # the hand points down at HOME
    np.testing.assert_allclose(end[:3, 3] - start[:3, 3], 0.05 * axis, atol=2e-4)
    rotation = matrix_to_rotation_vector(end[:3, :3] @ start[:3, :3].T)
    np.testing.assert_allclose(rotation, 0.10 * axis, atol=2e-3)
    np.testing.assert_allclose(targets[:, 7], 0.03)


def test_ee_delta_reports_ik_failure(panda):
    cfg = ActionSpaceConfig(kind="ee_delta", joint_names=ARM, action_dim=6, ee_link="panda_grasptarget",
                            ik_max_iterations=20)
    with pytest.raises(ActionMappingError, match="action 0: IK .* did not converge"):
        ActionMapper(cfg, panda).map_chunk([[2.0, 0, 0, 0, 0, 0]], state_at_obs=HOME)
    with pytest.raises(ValueError, match="robot_model"):
        ActionMapper(cfg)


# ---- the pipeline end to end -------------------------------------------------------------------------------------
def test_policy_chunk_to_a_safe_controller_trajectory():
    mapper = panda_absolute()
    home = np.array([HOME[n] for n in ARM])
    actions = np.hstack([home + np.linspace(0, 0.3, 32)[:, None], np.full((32, 1), 0.08)])
    sched = scheduler(chunk_dt_s=0.1, mode="blend")
    sched.add_chunk(mapper.map_chunk(actions), obs_time_s=0.0, now_s=0.15)
    times, positions = sched.segment(0.15, 0.5)
    limits = load_urdf_limits(panda_urdf_path())
    safety = SafetyFilter(limits, SafetyConfig(max_step_delta_rad=0.05, on_violation="reject"))
    current = np.append(home, [0.04, 0.04])  # the robot is still at home, gripper open
    trajectory = safety.filter_trajectory(mapper.output_joint_names, times, positions, current)
    assert len(trajectory.times_s) == 25 and trajectory.interventions == []


def test_gripper_commands_saturate_at_the_gripper_travel_but_arm_targets_do_not():
    cfg = ActionSpaceConfig(kind="absolute_joint", joint_names=("a",), action_dim=2,
                            gripper_joint_names=("f1", "f2"), gripper_scale=0.5)
    mapper = ActionMapper(cfg, gripper_range=(0.0, 0.04))
    out = mapper.map_chunk(np.array([[9.0, 0.0803], [0.1, -0.001]]))
    np.testing.assert_allclose(out, [[9.0, 0.04, 0.04], [0.1, 0.0, 0.0]])   # arm 9.0 left for the safety filter
    with pytest.raises(ValueError, match="gripper_range"):
        ActionMapper(cfg, gripper_range=(0.04, 0.0))
