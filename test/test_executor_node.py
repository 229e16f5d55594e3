"""gem_executor in-process: chunk -> limited JointTrajectory by name, NaN -> holds only, e-stop latch, diagnostics.

A test node plays the robot: it publishes /joint_states at 50 Hz and "tracks" each received trajectory by moving
to its first point. Everything waits on conditions with deadlines; nothing sleeps a fixed time.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from gem_msgs.msg import ActionChunk  # noqa: E402
from gem_ros.core.kinematics import load_urdf_limits  # noqa: E402
from gem_ros.nodes.backends import BackendUnavailable  # noqa: E402
from gem_ros.nodes.conversions import s_to_stamp, stamp_to_s  # noqa: E402
from gem_ros.core.executor_setup import PARAMETERS, build_controller  # noqa: E402
from gem_ros.nodes.executor_node import make_executor_node  # noqa: E402
from gem_ros.nodes.spinning import make_executor  # noqa: E402

pytestmark = pytest.mark.ros

URDF = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
LIMITS = load_urdf_limits(URDF)
ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
JOINTS = ARM + FINGERS
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.02, 0.02]
CHANNELS = ARM + ["gripper"]
PARAMS = dict(joint_names=JOINTS, gripper_joint_names=FINGERS, gripper_scale=0.5, urdf_path=str(URDF),
              joint_state_timeout_s=0.5)   # the CI machine is busy: a late /joint_states must not flake a test


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    """Poll `condition` until true or the deadline passes (the executor thread does the spinning)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class FakeRobot(Node):
    """Publishes joint states and follows each trajectory to its first point (perfect, one tick late)."""

    def __init__(self, context):
        super().__init__("fake_robot", context=context)
        self.positions = list(HOME)
        self.trajectories: list[JointTrajectory] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.chunk_pub = self.create_publisher(ActionChunk, "/gem/action_chunk", 10)
        self.estop_pub = self.create_publisher(Bool, "/gem/estop", 10)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_trajectory, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.create_timer(0.02, self._publish_state)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.trajectories.append(msg)
        by_name = dict(zip(msg.joint_names, msg.points[0].positions))
        self.positions = [by_name.get(n, p) for n, p in zip(JOINTS, self.positions)]

    def _publish_state(self) -> None:
        msg = JointState(name=JOINTS, position=self.positions, velocity=[0.0] * len(JOINTS))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    def send_chunk(self, actions, names=CHANNELS) -> None:
        actions = np.asarray(actions, dtype=float)
        msg = ActionChunk(joint_names=list(names), dt=0.1, action_space="absolute_joint",
                          num_points=actions.shape[0], num_joints=actions.shape[1],
                          positions=actions.ravel().tolist())
        msg.header.stamp = s_to_stamp(self.get_clock().now().nanoseconds * 1e-9)
        self.chunk_pub.publish(msg)


def ramp(offset: float, points: int = 10) -> np.ndarray:
    """Slow absolute-joint chunk: every arm joint moves `offset` rad over points * 0.1 s; gripper width 0.04 m."""
    arm = np.array(HOME[:7]) + np.outer(np.arange(1, points + 1) / points, np.full(7, offset))
    return np.hstack([arm, np.full((points, 1), 0.04)])


@pytest.fixture
def harness():
    """factory(**params) -> (executor node, fake robot); contexts, nodes and the spin thread are torn down."""
    made = []

    def factory(start=True, **params):
        context = Context()
        rclpy.init(context=context)
        executor_node = make_executor_node(context=context, start=start, **{**PARAMS, **params})
        robot = FakeRobot(context)
        executor = make_executor("auto", context)   # as gem_executor's main: events where rclpy has it
        executor.add_node(executor_node)
        executor.add_node(robot)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        made.append((context, executor, thread, (executor_node, robot)))
        if start:
            wait_until_running(executor_node, robot)
        return executor_node, robot

    threads_before = threading.active_count()
    yield factory
    for context, executor, thread, nodes in made:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        assert not thread.is_alive(), "executor thread did not stop"
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert wait_for(lambda: threading.active_count() <= threads_before, 5.0), threading.enumerate()


def wait_until_running(executor_node, robot) -> None:
    """Active and wired: the robot hears trajectories, the executor hears chunks and joint states."""
    assert wait_for(lambda: robot.chunk_pub.get_subscription_count() > 0
                    and robot.estop_pub.get_subscription_count() > 0
                    and executor_node.count_publishers("/arm_controller/joint_trajectory") > 0
                    and robot.count_subscribers("/joint_states") > 0)
    assert wait_for(lambda: math.isfinite(executor_node.controller.stats["joint_state_age_s"]))


def arm_motion(msg: JointTrajectory) -> bool:
    return len(msg.points) > 1


def test_chunk_becomes_a_limited_joint_trajectory_by_name_and_diagnostics_are_published(harness):
    node, robot = harness()
    target = ramp(0.05)
    robot.send_chunk(target)
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories)), node.controller.stats
    assert wait_for(lambda: abs(robot.positions[0] - target[-1, 0]) < 1e-6), (robot.positions, node.controller.stats)
    moving = [m for m in robot.trajectories if arm_motion(m)]
    for msg in moving:
        assert list(msg.joint_names) == JOINTS
        assert stamp_to_s(msg.header.stamp) == 0.0                     # JTC: start on receipt
        times = [stamp_to_s(p.time_from_start) for p in msg.points]
        # 1e-6: times are float seconds since the epoch (~0.2 us resolution) in the scheduler
        assert all(b > a for a, b in zip(times, times[1:])) and times[-1] <= 0.2 + 1e-6
        # positions only: JTC joins them linearly, so the speeds it commands are the steps between points
        assert all(len(p.positions) == len(JOINTS) and len(p.velocities) == 0 for p in msg.points)
        positions = np.array([list(p.positions) for p in msg.points])
        speeds = np.abs(np.diff(positions, axis=0)) / np.diff(times)[:, None]
        for j, name in enumerate(msg.joint_names):
            limit = LIMITS[name]
            assert np.all(positions[:, j] >= limit.lower) and np.all(positions[:, j] <= limit.upper)
            assert np.all(speeds[:, j] <= limit.max_velocity * (1 + 1e-6)), (name, speeds[:, j])
    assert robot.positions[7] == pytest.approx(0.02)                  # width 0.04 m -> 0.02 m per finger
    assert wait_for(lambda: robot.diagnostics, 5.0)
    status = robot.diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "gem_executor: execution" and status.hardware_id == "arm_controller"
    assert status.level in (DiagnosticStatus.OK, DiagnosticStatus.WARN)
    assert int(values["chunks_accepted"]) == 1 and "tick_jitter_max_s" in values


def test_an_accepted_chunk_is_sent_at_once_not_at_the_next_tick(harness):
    # 0.2 Hz ticks: a tick every 5 s, so a moving trajectory within 3 s of the chunk can only come from replanning.
    node, robot = harness(control_rate_hz=0.2, lookahead_s=5.0, chunk_timeout_s=10.0)
    ticks = node.controller.stats["ticks"]
    assert wait_for(lambda: node.controller.stats["ticks"] > ticks, 7.0)   # just after a tick
    ticks = node.controller.stats["ticks"]
    robot.send_chunk(ramp(0.02))
    assert wait_for(lambda: any(arm_motion(m) or len(m.points) == 1 and m.points[0].positions[0] != HOME[0]
                                for m in robot.trajectories), 3.0), node.controller.stats
    assert node.controller.stats["ticks"] == ticks and node.controller.stats["trajectories"] == 1
    # An empty chunk (the policy's stop) is held at once as well.
    sent = len(robot.trajectories)
    robot.send_chunk(np.zeros((0, len(CHANNELS))))
    assert wait_for(lambda: node.controller.stats["holds"] == 1, 3.0), node.controller.stats
    assert wait_for(lambda: len(robot.trajectories) == sent + 1, 3.0)
    assert len(robot.trajectories[-1].points) == 1 and node.controller.stats["ticks"] == ticks


def test_nan_chunk_is_refused_and_nothing_but_holds_is_sent(harness):
    node, robot = harness()
    poisoned = ramp(0.05)
    poisoned[3, 1] = math.nan
    robot.send_chunk(poisoned)
    assert wait_for(lambda: node.controller.stats["chunks_refused"] == 1)
    ticks = node.controller.stats["ticks"]
    assert wait_for(lambda: node.controller.stats["ticks"] >= ticks + 10)
    assert not any(arm_motion(m) for m in robot.trajectories)
    assert all(list(m.points[0].positions) == pytest.approx(HOME) for m in robot.trajectories)
    assert "nan" in node.controller.stats["last_refusal"].lower()


def test_a_policy_whose_heartbeat_stops_holds_the_arm(harness):
    """gem_policy's PolicyStatus is the heartbeat: while it comes the plan runs; when it stops (the policy process
    died) the running plan is abandoned with a hold, long before the 2 s chunk timeout or the plan's end."""
    from gem_msgs.msg import PolicyStatus

    node, robot = harness(policy_timeout_s=0.3)   # 0.1 by default; a loaded CI machine delays timers
    beating = threading.Event()
    beating.set()
    status_pub = robot.create_publisher(PolicyStatus, "/gem/policy_status", 10)
    robot.create_timer(0.05, lambda: beating.is_set() and status_pub.publish(PolicyStatus()))
    assert wait_for(lambda: node.controller._policy_alive_s is not None), "no heartbeat arrived"
    robot.send_chunk(ramp(0.1, points=30))   # a 3 s plan
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories))
    stopped_at = time.monotonic()
    beating.clear()
    assert wait_for(lambda: node.controller.stats["holds"] >= 1, 3.0), node.controller.stats
    assert time.monotonic() - stopped_at < 1.5   # the plan had 2.5+ s left
    assert "no policy heartbeat" in node.controller.stats["last_reason"]
    assert wait_for(lambda: not arm_motion(robot.trajectories[-1]), 2.0)   # the last command is the hold


def test_gripper_joints_can_go_to_their_own_controller(harness):
    """A real arm's JTC does not own the fingers: with gripper_backend 'trajectory' the arm controller gets the 7
    arm joints and the gripper controller the fingers, both from the same checked plan; a hold stops the arm and
    leaves the gripper's last command standing (a grasp stays closed)."""
    node, robot = harness(gripper_backend="trajectory", gripper_controller_name="gripper_controller")
    gripper = []
    robot.create_subscription(JointTrajectory, "/gripper_controller/joint_trajectory", gripper.append, 10)
    assert wait_for(lambda: node.count_subscribers("/gripper_controller/joint_trajectory") > 0)
    robot.send_chunk(ramp(0.05))
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories) and gripper)
    assert all(list(m.joint_names) == JOINTS[:7] for m in robot.trajectories)
    assert all(list(m.joint_names) == FINGERS for m in gripper)
    assert gripper[-1].points[0].positions[0] == pytest.approx(0.02)   # width 0.04 m -> 0.02 m per finger
    robot.send_chunk(np.zeros((0, len(CHANNELS))))                     # stop: the arm holds, the gripper keeps
    assert wait_for(lambda: node.controller.stats["holds"] == 1)
    assert wait_for(lambda: not arm_motion(robot.trajectories[-1]))
    sent_to_gripper = len(gripper)
    time.sleep(0.2)
    assert len(gripper) == sent_to_gripper


def test_without_a_urdf_parameter_the_limits_come_from_the_latched_robot_description_topic():
    """As ros2_control (Jazzy+) reads it: robot_state_publisher latches the URDF on /robot_description."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String

    context = Context()
    rclpy.init(context=context)
    try:
        publisher_node = Node("robot_state_publisher_stand_in", context=context)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        publisher_node.create_publisher(String, "/robot_description", latched).publish(String(data=URDF.read_text()))
        node = make_executor_node(context=context, **{**PARAMS, "urdf_path": ""})   # published before it started
        assert node.controller.safety.limits["panda_joint1"].upper == pytest.approx(2.9671)   # the URDF's
        node.destroy_node()
        publisher_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_a_gripper_backend_that_cannot_work_here_fails_at_construction(monkeypatch):
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match="gripper_backend"):
            make_executor_node(context=context, **PARAMS, gripper_backend="magnet")
        with pytest.raises(ValueError, match="gripper_joint_names"):
            make_executor_node(context=context, **{**PARAMS, "gripper_joint_names": [""]},
                               action_joint_names=JOINTS, gripper_backend="trajectory")
        monkeypatch.setitem(sys.modules, "control_msgs", None)   # as on this machine, even where it is installed
        with pytest.raises(BackendUnavailable, match="control_msgs"):   # at construction, not at the first tick
            make_executor_node(context=context, **PARAMS, gripper_backend="gripper_command")
    finally:
        rclpy.try_shutdown(context=context)


def test_estop_holds_refuses_chunks_until_reset_service(harness):
    node, robot = harness(robot_description=URDF.read_text(), urdf_path="")
    robot.send_chunk(ramp(0.1, points=20))
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories))
    robot.estop_pub.publish(Bool(data=True))
    assert wait_for(lambda: node.controller.estop_engaged and not arm_motion(robot.trajectories[-1]))
    hold = robot.trajectories[-1]
    assert len(hold.points) == 1 and list(hold.points[0].velocities) == [0.0] * len(JOINTS)   # comes to rest
    count = len(robot.trajectories)
    refused = node.controller.stats["chunks_refused"]
    robot.send_chunk(ramp(0.1))
    assert wait_for(lambda: node.controller.stats["chunks_refused"] == refused + 1)
    ticks = node.controller.stats["ticks"]
    assert wait_for(lambda: node.controller.stats["ticks"] >= ticks + 10)
    assert len(robot.trajectories) == count                           # one hold per episode, nothing else
    assert node.controller.health()[0] == "ERROR"

    client = robot.create_client(Trigger, "/gem_executor/reset_estop")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done) and future.result().success
    assert "released" in future.result().message and not node.controller.estop_engaged
    robot.send_chunk(np.tile([*robot.positions[:7], 0.04], (10, 1)))   # stay where the e-stop left the arm
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories[count:]))

    estop = robot.create_client(Trigger, "/gem_executor/estop")
    assert estop.wait_for_service(timeout_sec=10.0)
    future = estop.call_async(Trigger.Request())
    assert wait_for(future.done) and future.result().success and node.controller.estop_engaged


def test_parameters_fail_clearly(monkeypatch):
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match="urdf_path or robot_description parameter, and no URDF on "
                                             "/robot_description within 0.3 s"):
            make_executor_node(context=context, **{**PARAMS, "urdf_path": ""}, robot_description_timeout_s=0.3)
        with pytest.raises(ValueError, match="unknown executor parameters"):
            make_executor_node(context=context, **PARAMS, contol_rate_hz=10)
        monkeypatch.setitem(sys.modules, "control_msgs", None)   # as on this machine, even where it is installed
        with pytest.raises(BackendUnavailable, match="control_msgs"):
            make_executor_node(context=context, **PARAMS, backend="follow_joint_trajectory")
        with pytest.raises(ValueError, match="backend"):
            make_executor_node(context=context, **PARAMS, backend="teleport")
        with pytest.raises(BackendUnavailable, match="moveit_py"):   # a real option, absent here: said at configure
            make_executor_node(context=context, **PARAMS, backend="moveit")
        node = make_executor_node(context=context, **PARAMS, control_rate_hz=25)   # int for a float parameter
        assert node.controller.cfg.control_rate_hz == 25.0
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_parameters_build_each_action_space_by_name():
    base = {**PARAMETERS, **PARAMS}
    ee = build_controller({**base, "action_space": "ee_delta", "ee_link": "panda_hand"})
    assert ee.expected_channels == ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    named = [f"action_{i}" for i in range(8)]
    delta = build_controller({**base, "action_space": "delta_joint", "action_channel_names": named})
    assert delta.expected_channels == tuple(named) and delta.mapper.cfg.joint_names == tuple(ARM)
    with pytest.raises(ValueError, match="max_step_delta_rad"):
        build_controller({**base, "max_step_delta_rad": -1.0})
    with pytest.raises(ValueError, match="max_acceleration"):
        build_controller({**base, "max_acceleration": -1.0})


def test_a_workspace_box_from_parameters_refuses_a_chunk_that_leaves_it():
    """Forward kinematics of the URDF on every chunk point: a chunk that would lower the hand below the table
    plane is refused whole before any of it runs."""
    base = {**PARAMETERS, **PARAMS}
    box = {"workspace_link": "panda_hand", "workspace_min_xyz_m": [0.1, -0.6, 0.25],
           "workspace_max_xyz_m": [0.8, 0.6, 1.0]}
    controller = build_controller({**base, **box})
    controller.on_joint_state(JOINTS, HOME, [0.0] * 9, 0.0)
    inside = ramp(0.05)                      # small joint moves around HOME: the hand stays near (0.31, 0, 0.59)
    assert controller.on_chunk(controller.expected_channels, 0.1, inside, "absolute_joint", 0.0, 0.0) is None
    down = ramp(0.05)
    down[-1, 1], down[-1, 3] = 1.2, -1.0     # shoulder forward, elbow open at the last point: the hand drops low
    reason = controller.on_chunk(controller.expected_channels, 0.1, down, "absolute_joint", 0.0, 0.01)
    assert reason and "leaves the workspace box" in reason and "panda_hand" in reason
    assert controller.stats["safety_rejections"] == 1
    for bad in ({"workspace_link": "no_such_link"}, {"workspace_max_xyz_m": [0.8, 0.6]},
                {"workspace_min_xyz_m": [0.9, -0.6, 0.25]}):
        with pytest.raises(ValueError, match="workspace_box"):
            build_controller({**base, **box, **bad})


# ---- gem_executor is a managed node (issue 17.7) --------------------------------------------------------------------
def change_state(robot: Node, transition: int, node: str = "/gem_executor") -> bool:
    """What `ros2 lifecycle set <node> <transition>` does: the node's change_state service."""
    from lifecycle_msgs.srv import ChangeState

    client = robot.create_client(ChangeState, f"{node}/change_state")
    assert client.wait_for_service(timeout_sec=10.0)
    request = ChangeState.Request()
    request.transition.id = transition
    future = client.call_async(request)
    assert wait_for(future.done, 30.0)
    robot.destroy_client(client)
    return future.result().success


def lifecycle_state(robot: Node, node: str = "/gem_executor") -> str:
    from lifecycle_msgs.srv import GetState

    client = robot.create_client(GetState, f"{node}/get_state")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(GetState.Request())
    assert wait_for(future.done, 10.0)
    robot.destroy_client(client)
    return future.result().current_state.label


def test_the_lifecycle_from_the_cli_configures_activates_and_deactivation_holds_once_and_stays(harness):
    """Unconfigured and inactive it commands nothing; activate starts the tick; deactivate mid-plan sends one hold
    and then nothing, and ignores chunks, until activated again; cleanup frees the controller."""
    from lifecycle_msgs.msg import Transition

    node, robot = harness(start=False)
    assert lifecycle_state(robot) == "unconfigured" and node.controller is None
    robot.send_chunk(ramp(0.05))
    assert not wait_for(lambda: robot.trajectories, 0.3)
    assert change_state(robot, Transition.TRANSITION_CONFIGURE) and lifecycle_state(robot) == "inactive"
    assert wait_for(lambda: math.isfinite(node.controller.stats["joint_state_age_s"]))   # it reads the arm
    robot.send_chunk(ramp(0.05))
    assert not wait_for(lambda: robot.trajectories, 0.3) and node.controller.stats["ticks"] == 0
    assert change_state(robot, Transition.TRANSITION_ACTIVATE) and lifecycle_state(robot) == "active"
    wait_until_running(node, robot)
    robot.send_chunk(ramp(0.1, points=30))   # a 3 s plan
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories)), node.controller.stats
    assert change_state(robot, Transition.TRANSITION_DEACTIVATE) and lifecycle_state(robot) == "inactive"
    assert wait_for(lambda: not arm_motion(robot.trajectories[-1]), 2.0)   # the hold is the last command
    sent, ticks = len(robot.trajectories), node.controller.stats["ticks"]
    robot.send_chunk(ramp(0.1))
    time.sleep(0.5)   # 25 control periods: any tick, replan or chunk would have sent something by now
    assert len(robot.trajectories) == sent and node.controller.stats["ticks"] == ticks
    assert sum(1 for m in robot.trajectories if not arm_motion(m)) == 1
    assert lifecycle_state(robot) == "inactive"   # nothing re-activated it
    assert change_state(robot, Transition.TRANSITION_ACTIVATE)
    robot.send_chunk(np.tile([*robot.positions[:7], 0.04], (10, 1)))
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories[sent:]))
    assert change_state(robot, Transition.TRANSITION_DEACTIVATE)
    assert change_state(robot, Transition.TRANSITION_CLEANUP) and lifecycle_state(robot) == "unconfigured"
    assert node.controller is None and node.count_publishers("/arm_controller/joint_trajectory") == 0


def test_a_bad_parameter_fails_configure_with_the_reason_and_the_node_stays_unconfigured(harness):
    from lifecycle_msgs.msg import Transition

    node, robot = harness(start=False, gripper_backend="magnet")
    assert not change_state(robot, Transition.TRANSITION_CONFIGURE)
    assert lifecycle_state(robot) == "unconfigured" and node.controller is None
    assert isinstance(node.configure_error, ValueError) and "gripper_backend" in str(node.configure_error)
    assert node.count_publishers("/arm_controller/joint_trajectory") == 0   # nothing half-built left behind


def test_an_estop_heard_before_configure_stays_latched_through_cleanup_and_configure(harness):
    from lifecycle_msgs.msg import Transition

    node, robot = harness(start=False)
    assert wait_for(lambda: robot.estop_pub.get_subscription_count() > 0)
    robot.estop_pub.publish(Bool(data=True))
    assert wait_for(lambda: node._estop is not None)
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert change_state(robot, transition)
    assert node.controller.estop_engaged
    wait_until_running(node, robot)
    refused = node.controller.stats["chunks_refused"]
    robot.send_chunk(ramp(0.1))
    assert wait_for(lambda: node.controller.stats["chunks_refused"] == refused + 1)
    assert not any(arm_motion(m) for m in robot.trajectories)


def test_configure_from_the_cli_reads_the_latched_robot_description_while_the_node_spins(harness):
    """The launch file configures gem_executor through its change_state service, i.e. inside the node's own
    (events) executor: the URDF on /robot_description must still be read there."""
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String

    node, robot = harness(start=False, urdf_path="", robot_description_timeout_s=5.0)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    robot.create_publisher(String, "/robot_description", latched).publish(String(data=URDF.read_text()))
    assert change_state(robot, Transition.TRANSITION_CONFIGURE), node.configure_error
    assert node.controller.safety.limits["panda_joint1"].upper == pytest.approx(2.9671)
    assert change_state(robot, Transition.TRANSITION_ACTIVATE)
    wait_until_running(node, robot)
    robot.send_chunk(ramp(0.05))
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories))


def test_gem_executor_main_configures_itself_unless_managed():
    """`ros2 run gem_ros gem_executor` comes up active as before; the launch file's `--managed` leaves it
    unconfigured for its lifecycle events; a configure error ends the process with the reason."""
    import subprocess

    code = "import sys; from gem_ros.nodes.executor_node import main; main(sys.argv)"
    common = [sys.executable, "-c", code]
    params = ["--ros-args", "-p", f"urdf_path:={URDF}", "-p", f"joint_names:={JOINTS}",
              "-r", "__ns:=/gem_main_test"]
    context = Context()
    rclpy.init(context=context)
    probe = Node("main_probe", context=context)
    executor = make_executor("single", context)
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        for extra, expected in (([], "active"), (["--managed"], "unconfigured")):
            proc = subprocess.Popen([*common, *extra, *params], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            try:
                assert lifecycle_state(probe, "/gem_main_test/gem_executor") == expected
            finally:
                proc.terminate()
                proc.communicate(timeout=30)
        bad = subprocess.run([*common, *params, "-p", "gripper_backend:=magnet"], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode != 0 and "gripper_backend" in bad.stderr, bad.stderr[-2000:]
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(5.0)
        probe.destroy_node()
        rclpy.try_shutdown(context=context)


def test_a_controller_fault_holds_the_arm_with_the_controllers_reason(harness):
    """The follow_joint_trajectory backend reports the controller's rejections and aborts through on_fault (its
    own tests drive that from the action results); the node holds at once, and nothing of the plan is sent after."""
    node, robot = harness()
    assert node.backend.on_fault is not None   # wired at configure, for every backend
    robot.send_chunk(ramp(0.1, points=30))   # a 3 s plan
    assert wait_for(lambda: any(arm_motion(m) for m in robot.trajectories))
    node.backend.on_fault("aborted the trajectory: PATH_TOLERANCE_VIOLATED (panda_joint2 off by 0.3 rad)")
    assert wait_for(lambda: not arm_motion(robot.trajectories[-1]), 2.0)
    assert "PATH_TOLERANCE_VIOLATED" in node.controller.stats["last_reason"]
    sent = len(robot.trajectories)
    time.sleep(0.3)   # 15 control periods: the rest of the plan is not sent
    assert len(robot.trajectories) == sent


def test_trajectory_tolerances_are_executor_parameters_checked_at_configure():
    context = Context()
    rclpy.init(context=context)
    try:
        node = make_executor_node(context=context, **PARAMS, path_tolerance=[0.05], goal_time_tolerance_s=1)
        assert node.get_parameter("path_tolerance").value == [0.05]
        node.destroy_node()
        with pytest.raises(ValueError, match="goal_time_tolerance_s"):
            make_executor_node(context=context, **PARAMS, goal_time_tolerance_s=-1.0)
    finally:
        rclpy.try_shutdown(context=context)


def test_a_parameter_set_is_refused_while_configured_and_takes_effect_at_the_next_configure(harness):
    """`ros2 param set` used to be accepted and ignored (values are read at configure): now it says why not."""
    from lifecycle_msgs.msg import Transition

    node, robot = harness(start=False)
    assert change_state(robot, Transition.TRANSITION_CONFIGURE)
    [result] = node.set_parameters([Parameter("velocity_scale", value=0.3)])
    assert not result.successful and "configure" in result.reason and "velocity_scale" in result.reason
    assert node.get_parameter("velocity_scale").value == 1.0 and node.controller.safety.cfg.velocity_scale == 1.0
    assert change_state(robot, Transition.TRANSITION_CLEANUP)
    [result] = node.set_parameters([Parameter("velocity_scale", value=0.3)])
    assert result.successful
    assert change_state(robot, Transition.TRANSITION_CONFIGURE)
    assert node.controller.safety.cfg.velocity_scale == 0.3
