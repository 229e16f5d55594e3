"""Where validated trajectories go: the ros2_control JointTrajectoryController, by topic or by action.

Every backend receives only SafeTrajectory objects (the safety filter's output), so no backend can send a
point that was not checked. Times are time_from_start; the header stamp is zero, which JTC reads as "start
on receipt": the executor plans each trajectory from the measured state at the tick that sends it.
Points carry positions only, so JTC's spline interpolator joins them linearly: the arm is commanded exactly the
path the filter checked (20 ms apart). With velocities JTC would fit cubic segments through them, which overshoot
a point approached at speed and then held (a joint limit) and run up to 1.5x the checked segment speed.
A hold is the exception: its one point (the measured position) carries velocity 0, so JTC brings the arm to rest
along a cubic from its current motion instead of reversing the setpoint's velocity in one step.
"""
from __future__ import annotations

from typing import Protocol

from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from gem_ros.core.safety import SafeTrajectory
from gem_ros.nodes.conversions import build_joint_trajectory

BACKENDS = ("topic", "follow_joint_trajectory")


class BackendUnavailable(RuntimeError):
    """The selected backend needs a ROS package that is not installed."""


class TrajectoryBackend(Protocol):
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
    """Sends goals to `<controller_name>/follow_joint_trajectory` (control_msgs/action/FollowJointTrajectory).

    Each goal preempts the previous one in JTC, as a new topic message would. Goals are fire-and-forget:
    results are not awaited, because the next tick's goal supersedes them anyway.
    """

    def __init__(self, node: Node, controller_name: str):
        try:
            from control_msgs.action import FollowJointTrajectory
        except ImportError as error:
            raise BackendUnavailable(
                "backend 'follow_joint_trajectory' needs the ROS package control_msgs "
                "(control_msgs.action.FollowJointTrajectory), which is not importable here "
                f"({error}); install control_msgs (e.g. apt ros-$ROS_DISTRO-control-msgs) or use backend 'topic'"
            ) from error
        from rclpy.action import ActionClient

        self._node, self._goal_type = node, FollowJointTrajectory
        self.action_name = f"{controller_name}/follow_joint_trajectory"
        self._client = ActionClient(node, FollowJointTrajectory, self.action_name)

    def send(self, trajectory: SafeTrajectory, stamp=None, velocities: bool = False) -> None:
        if not self._client.server_is_ready():
            self._node.get_logger().warning(f"action server {self.action_name} not available; trajectory dropped",
                                         throttle_duration_sec=1.0)
            return
        goal = self._goal_type.Goal(trajectory=to_joint_trajectory(trajectory, stamp, velocities=velocities))
        self._client.send_goal_async(goal)

    def hold(self, trajectory: SafeTrajectory) -> None:
        self.send(trajectory, velocities=True)

    def close(self) -> None:
        self._client.destroy()


def make_backend(kind: str, node: Node, controller_name: str) -> TrajectoryBackend:
    """`kind` is the executor's `backend` parameter; raises ValueError / BackendUnavailable with the reason."""
    if kind == "topic":
        return JointTrajectoryTopicBackend(node, controller_name)
    if kind == "follow_joint_trajectory":
        return FollowJointTrajectoryBackend(node, controller_name)
    raise ValueError(f"backend must be one of {BACKENDS}, got {kind!r}")
