"""Named moves (gem_ros.core.named_moves + ExecutionController.move_to_named) on the Panda with the panda YAML's
table: the plan respects velocity and acceleration limits, a straight path into the table or through the arm is
refused naming the pair (nothing moves), a move runs tick by tick to the named state, named states are validated at
configure, and gem_executor's ~/move_to_named works in-process."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from gem_ros.core.executor_setup import PARAMETERS, build_controller
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.kinematics.srdf import load_srdf
from gem_ros.core.named_moves import MoveRefused, plan_joint_move, srdf_named_states
from gem_ros.sim.arm_wiring import read_sections

REPO = Path(__file__).resolve().parents[1]
URDF = REPO / "urdf" / "panda" / "panda.urdf"
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
JOINTS = ARM + ("panda_finger_joint1", "panda_finger_joint2")
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04]
AWAY = np.array([0.8, -0.2, -0.5, -1.8, 0.4, 1.9, 0.2, 0.04, 0.04])
INTO_TABLE = [0.0, 1.2, 0.0, -1.0, 0.0, 1.571, 0.785, 0.04, 0.04]   # hand forward and down, through the top
# Collision-free states whose straight joint-space path from HOME is not (found by sampling): the fingers sweep
# through the table on the way / link5 passes through link1.
ACROSS_TABLE = [1.631, 1.61, -1.459, -2.641, 1.403, 2.524, -0.307, 0.04, 0.04]
ACROSS_ITSELF = [2.746, 0.146, -2.224, -3.027, -2.206, 3.272, -1.151, 0.04, 0.04]
PAIR = re.compile(r"'(panda_\w+)' and (scene object )?'(\w+)'")
TICK = 0.02
LIMITS = load_urdf_limits(URDF)


def values(**overrides) -> dict:
    """The panda YAML's executor parameters (collision checking and the table on) plus three named states."""
    return {**PARAMETERS, **read_sections(REPO / "gem_bringup/config/panda/gem.yaml")["gem_executor"],
            "urdf_path": str(URDF), "named_state_names": ["home", "table", "folded"],
            "named_state_positions": HOME + ACROSS_TABLE + ACROSS_ITSELF, **overrides}


def controller_at(positions, **overrides):
    ctrl = build_controller(values(**overrides))
    ctrl.on_joint_state(JOINTS, positions, np.zeros(9), 0.0)
    return ctrl


def test_plan_keeps_every_joint_under_its_velocity_and_acceleration_limits():
    velocity, acceleration = np.full(9, 1.0), np.full(9, 4.0)
    goal = AWAY + np.array([1.5, 0, 0, 0, 0, 0, 0, 0, 0])
    times, points = plan_joint_move(AWAY, goal, velocity, acceleration, 50.0)
    path = np.vstack([AWAY, points])
    speeds = np.abs(np.diff(path, axis=0)) / np.diff(np.concatenate([[0.0], times]))[:, None]
    assert np.allclose(points[-1], goal) and speeds.max() <= 1.0 + 1e-9
    assert times[-1] >= 1.5 / 1.0   # slower than the limit allows, never faster
    accel = np.abs(np.diff(np.vstack([np.zeros(9), speeds]), axis=0)) * 50.0
    assert accel[:-1].max() <= 4.0 * 1.05   # the last (shorter) step excepted: its dt is below one tick
    assert np.all(np.diff(times) > 0) and times[0] > 0


def test_a_move_runs_tick_by_tick_to_the_named_state_inside_the_limits():
    ctrl = controller_at(AWAY)
    message = ctrl.move_to_named("home", 0.0)
    assert "s planned" in message
    arm, t, sent = AWAY.copy(), 0.0, 0
    for _ in range(2000):
        t += TICK
        command = ctrl.tick(t)
        if command.kind == "idle":
            break
        assert command.kind == "trajectory", command.reason
        assert not command.trajectory.interventions   # the plan is under the filter's limits: nothing clamped
        sent += 1
        arm = np.array(command.trajectory.positions[0])   # a following robot
        ctrl.on_joint_state(JOINTS, arm, np.zeros(9), t)
    assert command.reason.endswith("done") and sent > 10
    assert np.allclose(arm, HOME, atol=0.05)
    final = np.array(command.trajectory.positions[-1]) if command.trajectory else arm
    assert np.allclose(final, HOME, atol=0.05)


@pytest.mark.parametrize("name, body", [("table", "table"), ("folded", "panda_link")])
def test_a_straight_path_that_collides_is_refused_naming_the_pair_and_nothing_moves(name, body):
    ctrl = controller_at(HOME)
    with pytest.raises(MoveRefused) as refused:
        ctrl.move_to_named(name, 0.0)
    match = PAIR.search(str(refused.value))
    assert match and body in str(refused.value), refused.value
    assert ctrl.tick(TICK).kind == "idle"


def test_unknown_name_estop_and_a_chunk_end_or_refuse_a_move():
    ctrl = controller_at(AWAY)
    with pytest.raises(MoveRefused, match="no named state 'nowhere'.*home"):
        ctrl.move_to_named("nowhere", 0.0)
    ctrl.move_to_named("home", 0.0)
    assert ctrl.tick(TICK).kind == "trajectory"
    ctrl.engage_estop("test")
    assert ctrl.tick(2 * TICK).kind == "hold"
    with pytest.raises(MoveRefused, match="e-stop"):
        ctrl.move_to_named("home", 2 * TICK)
    ctrl.reset_estop()
    ctrl.move_to_named("home", 3 * TICK)
    assert ctrl.tick(4 * TICK).kind == "trajectory" and ctrl.stats["named_move"] == "move to 'home'"
    ctrl.stop("operator")
    ctrl.on_joint_state(JOINTS, AWAY, np.zeros(9), 5 * TICK)
    assert ctrl.tick(5 * TICK).kind == "hold" and ctrl.tick(6 * TICK).kind == "idle"
    ctrl.on_joint_state(JOINTS, AWAY, np.zeros(9), 6 * TICK)
    ctrl.move_to_named("home", 6 * TICK)
    assert ctrl.tick(7 * TICK).kind == "trajectory"
    chunk = np.tile(np.append(AWAY[:7], 0.08), (8, 1))   # the policy takes over: its chunk ends the move
    assert ctrl.on_chunk(list(ARM) + ["gripper"], 0.1, chunk, "absolute_joint", 7 * TICK, 7 * TICK) is None
    assert ctrl.stats["named_move"] == ""


@pytest.mark.parametrize("override, message", [
    ({"named_state_positions": HOME[:-1]}, "named_state_positions must hold 9 values"),
    ({"named_state_names": ["home", "home"], "named_state_positions": HOME * 2}, "unique"),
    ({"named_state_names": ["far"], "named_state_positions": [4.0] + HOME[1:]}, "named state 'far'.*panda_joint1"),
    ({"named_state_names": ["down"], "named_state_positions": INTO_TABLE}, "named state 'down'.*table"),
])
def test_bad_named_states_refuse_to_configure_naming_them(override, message):
    with pytest.raises(ValueError, match=message):
        build_controller(values(**override))


def test_srdf_group_states_become_named_states(tmp_path):
    srdf = tmp_path / "panda.srdf"
    joints = "".join(f'<joint name="{n}" value="{v}"/>' for n, v in zip(ARM, HOME))
    srdf.write_text(f'<robot name="panda"><group name="panda_arm"><chain base_link="panda_link0" '
                    f'tip_link="panda_link8"/></group><group_state name="ready" group="panda_arm">{joints}'
                    f'</group_state><group_state name="odd" group="panda_arm"><joint name="nope" value="0"/>'
                    f'</group_state></robot>')
    states, notes = srdf_named_states(load_srdf(srdf), JOINTS)
    assert states == {"ready": dict(zip(ARM, HOME))} and "odd" in notes[0]
    ctrl = controller_at(AWAY, srdf_path=str(srdf), collision_check=False)
    assert "ready" in ctrl.named_states and "ready" in ctrl.move_to_named("ready", 0.0)
    with pytest.raises(ValueError, match=r"named_state_names \['ready'\] are also group_states"):
        build_controller(values(srdf_path=str(srdf), collision_check=False, named_state_names=["ready"],
                                named_state_positions=HOME))


@pytest.mark.ros
def test_move_to_named_service_on_the_executor_node_moves_a_following_robot():
    """gem_executor in-process with test_executor_node's following robot: refused while inactive, then home."""
    rclpy = pytest.importorskip("rclpy")
    from gem_msgs.srv import MoveToNamed
    from test_executor_node import HOME as NODE_HOME, PARAMS, FakeRobot, wait_for, wait_until_running

    from gem_ros.nodes.executor_node import make_executor_node, start_executor
    from gem_ros.nodes.spinning import make_executor

    context = rclpy.context.Context()
    rclpy.init(context=context)
    start = [0.5, -0.5, 0.3, -2.0, 0.2, 1.8, 0.5, 0.02, 0.02]
    node = make_executor_node(context=context, start=False, **{
        **PARAMS, "named_state_names": ["home", "across"], "named_state_positions": NODE_HOME + ACROSS_TABLE[:7]
        + [0.02, 0.02], "collision_check": True, "scene_object_names": ["table"], "scene_object_shapes": ["box"],
        "scene_object_sizes_m": [1.5, 1.0, 0.05], "scene_object_poses": [0.5, 0.0, -0.025, 0.0, 0.0, 0.0],
        "collision_package_paths": ["meshes=python://pybullet_data/franka_panda/meshes"]})
    robot = FakeRobot(context)
    robot.positions = list(start)
    executor = make_executor("auto", context)
    executor.add_node(node)
    executor.add_node(robot)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        client = robot.create_client(MoveToNamed, "/gem_executor/move_to_named")
        assert client.wait_for_service(timeout_sec=10.0)

        def call(name):
            future = client.call_async(MoveToNamed.Request(name=name))
            assert wait_for(future.done)
            return future.result()

        assert not call("home").success and "not active" in call("home").message
        start_executor(node)
        wait_until_running(node, robot)
        refused = call("across")
        assert not refused.success and "table" in refused.message, refused.message
        reply = call("home")
        assert reply.success and "s planned" in reply.message, reply.message
        assert wait_for(lambda: np.allclose(robot.positions, NODE_HOME, atol=1e-3), 20.0), robot.positions
        velocity = {n: LIMITS[n].max_velocity for n in JOINTS}
        for msg in robot.trajectories:   # every piece sent stays under the URDF velocities
            for point in msg.points:
                assert all(abs(v) <= velocity[n] + 1e-6 for n, v in zip(msg.joint_names, point.velocities))
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        robot.destroy_node()
        rclpy.try_shutdown(context=context)


def test_a_move_replanned_at_any_instant_never_sends_two_points_closer_than_the_filter_allows():
    """Replans between ticks (a chunk's replan_on_chunk, a service call) land anywhere relative to the control
    grid: the move's last point falling just after a grid point must not make a too-short final step."""
    ctrl = controller_at(AWAY)
    ctrl.move_to_named("home", 0.0)
    end = ctrl._move[0][-1]   # the move's end (absolute s)
    for t in (end - 0.1 - 6.5e-5, end - 0.1 + 6.5e-5, end - 0.02 - 1e-5):   # the last point just after a grid point
        ctrl.on_joint_state(JOINTS, AWAY, np.zeros(9), t)
        command = ctrl.replan(t)
        assert command.kind == "trajectory", command.reason
        assert np.diff(np.concatenate([[0.0], command.trajectory.times_s])).min() >= 1e-3
