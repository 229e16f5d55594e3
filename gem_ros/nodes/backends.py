"""Where validated trajectories go: the ros2_control JointTrajectoryController, by topic or by action.

Every backend receives only SafeTrajectory objects (the safety filter's output), so no backend can send a
point that was not checked. Times are time_from_start; the header stamp is zero, which JTC reads as "start
on receipt": the executor plans each trajectory from the measured state at the tick that sends it.
Points carry positions only, so JTC's spline interpolator joins them linearly: the arm is commanded exactly the
path the filter checked (20 ms apart). With velocities JTC would fit cubic segments through them, which overshoot
a point approached at speed and then held (a joint limit) and run up to 1.5x the checked segment speed.
A hold is the exception: its one point (the measured position) carries velocity 0, so JTC brings the arm to rest
along a cubic from its current motion instead of reversing the setpoint's velocity in one step.
A backend whose controller answers (follow_joint_trajectory) calls its `on_fault(reason)` when the controller
rejects, aborts or cancels our motion (gem_ros.nodes.trajectory_goals); the executor node sets it and holds.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from gem_ros.core.safety import SafeTrajectory
from gem_ros.nodes.conversions import build_joint_trajectory
from gem_ros.nodes.trajectory_goals import Tolerances, TrajectoryGoalSender, tolerances_from_parameters

BACKENDS = ("topic", "follow_joint_trajectory", "moveit")   # moveit: gem_ros.nodes.moveit_adapter (moveit_py)
# Where the gripper joints go: with the arm's joints in one trajectory (gem_sim), to a JointTrajectoryController
# of their own, or to a GripperActionController (control_msgs/action/GripperCommand) - what real arms mostly have.
GRIPPER_BACKENDS = ("arm", "trajectory", "gripper_command", "parallel_gripper_command")
# control_msgs action per gripper backend: GripperCommand (position + max_effort, one joint; GripperActionController)
# or ParallelGripperCommand (a sensor_msgs/JointState command; parallel_gripper_action_controller on Jazzy+), both
# in ros-controls/control_msgs control_msgs/action/.
GRIPPER_ACTIONS = {"gripper_command": "GripperCommand", "parallel_gripper_command": "ParallelGripperCommand"}


class BackendUnavailable(RuntimeError):
    """The selected backend needs a ROS package that is not installed."""


class TrajectoryBackend(Protocol):
    # Set by the executor node: called with the controller's reason when it rejects, aborts or cancels our motion
    # (on the node's executor thread, never inside send/hold). Backends without answers (topic) never call it.
    on_fault: Callable[[str], None] | None

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        """Replace whatever the controller is executing with `trajectory` (stamp None = start now)."""

    def hold(self, trajectory: SafeTrajectory) -> None:
        """Stop where the arm is: `trajectory` is SafetyFilter.hold's single point at the measured position."""

    def close(self) -> None:
        """Release publishers/clients (the node is being destroyed)."""


def to_joint_trajectory(trajectory: SafeTrajectory, stamp=None, reuse=None,
                        velocities: bool = False) -> JointTrajectory:
    """SafeTrajectory -> trajectory_msgs/JointTrajectory, positions per point (without `velocities` JTC interpolates
    linearly, see the module docstring; holds send theirs, 0). The safety filter validated every number (and
    SafeTrajectory's arrays are read-only), so it is not checked a second time. `reuse`: see build_joint_trajectory."""
    return build_joint_trajectory(list(trajectory.joint_names), trajectory.times_s, trajectory.positions,
                                  trajectory.velocities if velocities else None, stamp, reuse)


class JointTrajectoryTopicBackend:
    """Publishes on `<controller_name>/joint_trajectory` (JTC's fire-and-forget interface).

    One message is refilled for every send (publish serialises it at once). Not thread-safe: the executor node
    sends under its send lock."""

    on_fault = None   # a topic has no answer: JTC's refusals are only in its log

    def __init__(self, node: Node, controller_name: str):
        self._node = node
        self.topic = f"{controller_name}/joint_trajectory"
        self._publisher = node.create_publisher(JointTrajectory, self.topic, 10)
        self._reuse: tuple[JointTrajectory, list] = (JointTrajectory(), [])

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        self._publisher.publish(to_joint_trajectory(trajectory, stamp, reuse=self._reuse))

    def hold(self, trajectory: SafeTrajectory) -> None:
        self._publisher.publish(to_joint_trajectory(trajectory, reuse=self._reuse, velocities=True))

    def close(self) -> None:
        self._node.destroy_publisher(self._publisher)


class FollowJointTrajectoryBackend:
    """Goals to `<controller_name>/follow_joint_trajectory` (control_msgs/action/FollowJointTrajectory), one per send:
    each pre-empts the previous one in JTC, as a new topic message would. The goals carry the configured tolerances;
    the controller's rejections, aborts (a tolerance violated) and cancels of our latest goal reach `on_fault`, the
    expected ends of replaced goals do not (gem_ros.nodes.trajectory_goals)."""

    def __init__(self, node: Node, controller_name: str, tolerances: Tolerances | None = None):
        try:
            from control_msgs.action import FollowJointTrajectory
            from control_msgs.msg import JointTolerance
        except ImportError as error:
            raise BackendUnavailable(
                "backend 'follow_joint_trajectory' needs the ROS package control_msgs "
                "(control_msgs.action.FollowJointTrajectory), which is not importable here "
                f"({error}); install control_msgs (e.g. apt ros-$ROS_DISTRO-control-msgs) or use backend 'topic'"
            ) from error
        from gem_ros.nodes.action_client import SpinSafeActionClient

        self.action_name = f"{controller_name}/follow_joint_trajectory"
        self._client = SpinSafeActionClient(node, FollowJointTrajectory, self.action_name)
        self.goals = TrajectoryGoalSender(self._client, FollowJointTrajectory.Goal, JointTolerance,
                                          node.resolve_topic_name(self.action_name), tolerances or Tolerances(),
                                          node.get_logger())

    @property
    def on_fault(self) -> Callable[[str], None] | None:
        return self.goals.on_fault

    @on_fault.setter
    def on_fault(self, callback: Callable[[str], None] | None) -> None:
        self.goals.on_fault = callback

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        self.goals.send(to_joint_trajectory(trajectory, stamp))

    def hold(self, trajectory: SafeTrajectory) -> None:
        self.goals.send(to_joint_trajectory(trajectory, velocities=True), hold=True)

    def close(self) -> None:
        self._client.destroy()


def subset(trajectory: SafeTrajectory, names: Sequence[str]) -> SafeTrajectory:
    """The same validated trajectory for some of its joints (a column subset stays within every limit)."""
    columns = [trajectory.joint_names.index(n) for n in names]
    positions, velocities = trajectory.positions[:, columns], trajectory.velocities[:, columns]
    for array in (positions, velocities):
        array.setflags(write=False)
    return SafeTrajectory(tuple(names), trajectory.times_s, positions, velocities, list(trajectory.interventions),
                          tuple(n for n in trajectory.clamped_joints if n in names))


def gripper_goal(goal_type, kind: str, joint_name: str, position: float, max_effort: float):
    """A GripperCommand or ParallelGripperCommand goal (`kind` as gripper_backend) for one joint's position."""
    goal = goal_type.Goal()
    if kind == "parallel_gripper_command":   # command: sensor_msgs/JointState, name/position/effort per joint
        goal.command.name, goal.command.position, goal.command.effort = [joint_name], [position], [max_effort]
    else:                                    # command: control_msgs/GripperCommand
        goal.command.position, goal.command.max_effort = position, max_effort
    return goal


class GripperCommandBackend:
    """The gripper's target to a gripper action server (`action_name`, default `<controller>/gripper_cmd` as
    ros2_controllers' gripper controllers; vendor nodes differ, e.g. franka_gripper's `gripper_action`): the position
    the plan reaches at the end of each trajectory, sent only when it moves by more than `deadband_m` (a goal per
    50 Hz tick would restart the gripper's own motion every 20 ms). Its results are not followed (on_fault unused):
    a gripper that stalls on an object ends its goal that way by design."""

    on_fault = None

    def __init__(self, node: Node, controller_name: str, joint_name: str, max_effort: float,
                 deadband_m: float = 5e-4, kind: str = "gripper_command", action_name: str = ""):
        action_type = GRIPPER_ACTIONS[kind]
        try:
            goal_type = getattr(importlib.import_module("control_msgs.action"), action_type)
        except (ImportError, AttributeError) as error:
            raise BackendUnavailable(
                f"gripper_backend {kind!r} needs the ROS package control_msgs (control_msgs.action.{action_type}), "
                f"which is not importable here ({error}); install control_msgs or use gripper_backend "
                "'trajectory' / 'arm'") from error
        from gem_ros.nodes.action_client import SpinSafeActionClient

        self._node, self._goal_type, self.kind, self.joint_name = node, goal_type, kind, joint_name
        self.max_effort, self.deadband_m = max_effort, deadband_m
        self._last: float | None = None   # the last target sent
        self.action_name = action_name or f"{controller_name}/gripper_cmd"
        self._client = SpinSafeActionClient(node, goal_type, self.action_name)

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        target = float(trajectory.positions[-1, trajectory.joint_names.index(self.joint_name)])
        if self._last is not None and abs(target - self._last) <= self.deadband_m:
            return
        if not self._client.server_is_ready():
            self._node.get_logger().warning(f"action server {self.action_name} not available; gripper goal dropped",
                                            throttle_duration_sec=1.0)
            return
        self._client.send_goal_async(gripper_goal(self._goal_type, self.kind, self.joint_name, target,
                                                  self.max_effort))
        self._last = target

    def hold(self, trajectory: SafeTrajectory) -> None:
        """Nothing: the gripper keeps its last goal (a hold must not open a grasp)."""

    def close(self) -> None:
        self._client.destroy()


class SplitGripperBackend:
    """The arm's joints to the arm's backend, the gripper's joints to the gripper's (each gets a subset of the same
    validated trajectory). A hold stops the arm; the gripper keeps its last command, so a grasped object stays
    grasped (a gripper controller holds its own position)."""

    def __init__(self, arm: TrajectoryBackend, gripper: TrajectoryBackend, arm_names: Sequence[str],
                 gripper_names: Sequence[str]):
        self.arm, self.gripper = arm, gripper
        self.arm_names, self.gripper_names = tuple(arm_names), tuple(gripper_names)

    @property
    def on_fault(self) -> Callable[[str], None] | None:
        return self.arm.on_fault

    @on_fault.setter
    def on_fault(self, callback: Callable[[str], None] | None) -> None:
        self.arm.on_fault = self.gripper.on_fault = callback   # kept, never called, by those without answers

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        self.arm.send(subset(trajectory, self.arm_names), stamp)
        self.gripper.send(subset(trajectory, self.gripper_names), stamp)

    def hold(self, trajectory: SafeTrajectory) -> None:
        self.arm.hold(subset(trajectory, self.arm_names))

    def close(self) -> None:
        self.arm.close()
        self.gripper.close()


def make_backends(values: Mapping[str, Any], node: Node, joint_names: Sequence[str]) -> TrajectoryBackend:
    """The executor's output from its parameters (`backend`, `controller_name`, `gripper_backend`,
    `gripper_controller_name`, `gripper_action_name`, `gripper_joint_names`, `gripper_max_effort`, and for follow_joint_trajectory
    trajectory_goals.TOLERANCE_PARAMETERS, defaults where absent); ValueError / BackendUnavailable name the problem."""
    tolerances = tolerances_from_parameters(values, joint_names)   # checked whatever the backend: a typo fails now
    if values["backend"] == "moveit":   # imported here: moveit_adapter imports this module
        from gem_ros.nodes.moveit_adapter import make_moveit_backend

        arm = make_moveit_backend(values, node, joint_names)
    else:
        arm = make_backend(values["backend"], node, values["controller_name"], tolerances)
    kind = values["gripper_backend"]
    if kind == "arm":
        return arm
    try:
        gripper_names = [n for n in values["gripper_joint_names"] if n]
        if kind not in GRIPPER_BACKENDS:
            raise ValueError(f"gripper_backend must be one of {GRIPPER_BACKENDS}, got {kind!r}")
        if not gripper_names:
            raise ValueError(f"gripper_backend {kind!r} needs gripper_joint_names")
        controller = values["gripper_controller_name"]
        if kind == "trajectory":
            gripper = JointTrajectoryTopicBackend(node, controller)
        else:
            gripper = GripperCommandBackend(node, controller, gripper_names[0], float(values["gripper_max_effort"]),
                                            kind=kind, action_name=values.get("gripper_action_name", ""))
    except Exception:
        arm.close()
        raise
    return SplitGripperBackend(arm, gripper, [n for n in joint_names if n not in gripper_names], gripper_names)


def make_backend(kind: str, node: Node, controller_name: str,
                 tolerances: Tolerances | None = None) -> TrajectoryBackend:
    """`kind` is the executor's `backend` parameter; raises ValueError / BackendUnavailable with the reason."""
    if kind == "topic":
        return JointTrajectoryTopicBackend(node, controller_name)
    if kind == "follow_joint_trajectory":
        return FollowJointTrajectoryBackend(node, controller_name, tolerances)
    raise ValueError(f"backend must be one of {BACKENDS}, got {kind!r}")
