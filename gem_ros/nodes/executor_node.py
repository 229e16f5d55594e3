"""gem_executor: action chunks in, safety-filtered JointTrajectory out, at the control rate. One node per arm.

In:  gem/action_chunk (gem_msgs/ActionChunk; num_points == 0 = stop and hold), gem/policy_status (gem_policy's
     50 Hz heartbeat: once seen, its silence for policy_timeout_s holds a running plan), joint_states
     (sensor_msgs/JointState, by name, partial messages merged), gem/estop (std_msgs/Bool; true latches the
     e-stop, false does nothing: only ~/reset_estop releases it). Services ~/estop, ~/reset_estop (Trigger).
Out: <controller_name>/joint_trajectory (topic backend) or <controller_name>/follow_joint_trajectory (action
     backend, needs control_msgs), /diagnostics at 1 Hz. With gripper_backend trajectory / gripper_command the
     gripper joints go to <gripper_controller_name>/joint_trajectory or .../gripper_cmd instead (a hold stops the
     arm and leaves the gripper's last command standing).
Relative names resolve to /gem/action_chunk, /joint_states, /arm_controller/... in the root namespace and
follow the node's namespace for multi-arm setups. All logic lives in gem_ros.core.execution.
With replan_on_chunk (default), an accepted chunk (or the hold an empty one asks for) is sent at once, between
ticks: it reaches the controller up to one control period (20 ms at 50 Hz) earlier than at the next tick.
"""
from __future__ import annotations

import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from gem_msgs.msg import ActionChunk, PolicyStatus
from gem_ros.core.executor_setup import PARAMETERS, build_controller
from gem_ros.nodes.backends import make_backends
from gem_ros.nodes.params import spin_node
from gem_ros.nodes.conversions import diagnostic_status, stamp_to_s

NODE_NAME = "gem_executor"
_LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2}


class ExecutorNode(Node):
    def __init__(self, **kwargs):
        """kwargs go to rclpy Node (context, parameter_overrides, namespace, ...)."""
        super().__init__(NODE_NAME, **kwargs)
        try:
            for name, default in PARAMETERS.items():
                # Numbers accept int or float ("rate: 50" in YAML); the config dataclasses validate them.
                descriptor = ParameterDescriptor(dynamic_typing=isinstance(default, float))
                self.declare_parameter(name, default, descriptor)
            self.declare_parameter("subscribe_chunks", True)   # False: chunks come by deliver_chunk (composed)
            values = {name: self.get_parameter(name).value for name in PARAMETERS}
            if not values["robot_description"] and not values["urdf_path"]:
                values["robot_description"] = self._robot_description_from_topic(
                    values["robot_description_timeout_s"])
            if values["robot_description"] and values["urdf_path"]:
                self.get_logger().warning("both robot_description and urdf_path are set; "
                                          "limits come from robot_description")
            self.controller = build_controller(values)
            self.controller_name = values["controller_name"]
            self.backend = make_backends(values, self, self.controller.cfg.joint_names)
        except Exception:
            super().destroy_node()   # do not leak a half-built node into the caller's context
            raise
        # A trajectory is computed and sent under one lock: with chunks delivered on the policy's thread, a tick
        # computed before a replan must not reach the controller after it.
        self._send_lock = threading.Lock()
        if self.get_parameter("subscribe_chunks").value:
            self.create_subscription(ActionChunk, "gem/action_chunk", self._on_chunk, 10)
        self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data)
        self.create_subscription(PolicyStatus, "gem/policy_status", self._on_policy_status, 10)
        self.create_subscription(Bool, "gem/estop", self._on_estop_topic, 10)
        self.create_service(Trigger, "~/estop", self._on_estop_service)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_service)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / values["control_rate_hz"], self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _robot_description_from_topic(self, timeout_s: float) -> str:
        """The URDF that robot_state_publisher latches on `robot_description` (transient local; ros2_control reads
        it there too), for robots whose description is not a file here. Blocks up to `timeout_s`."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.wait_for_message import wait_for_message
        from std_msgs.msg import String

        topic = self.resolve_topic_name("robot_description")
        self.get_logger().info(f"no urdf_path / robot_description parameter: waiting for {topic} ({timeout_s} s)")
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        received, msg = wait_for_message(String, self, "robot_description", qos_profile=latched,
                                         time_to_wait=timeout_s)
        if not received or not msg.data.strip():
            raise ValueError(f"no urdf_path or robot_description parameter, and no URDF on {topic} within "
                             f"{timeout_s} s (is robot_state_publisher running?): joint limits come from it")
        return msg.data

    def _on_joint_state(self, msg: JointState) -> None:
        now = self._now()
        stamp = stamp_to_s(msg.header.stamp) or now   # unstamped publishers: receipt time
        reason = self.controller.on_joint_state(msg.name, msg.position, msg.velocity, now, stamp)
        if reason:
            self.get_logger().warning(reason, throttle_duration_sec=1.0)

    def _on_policy_status(self, msg: PolicyStatus) -> None:
        self.controller.on_policy_alive(self._now())

    def deliver_chunk(self, msg: ActionChunk) -> None:
        """In-process delivery of a chunk (any thread), for a policy composed into this process; the node should
        then be built with subscribe_chunks false so the topic copy is not planned twice."""
        self._on_chunk(msg)

    def _on_chunk(self, msg: ActionChunk) -> None:
        if msg.num_points == 0:
            self.controller.stop("empty action chunk from the policy")
            self._replan_now()   # the hold goes out now too, not at the next tick
            return
        actions = np.asarray(msg.positions, dtype=float)
        if actions.size != msg.num_points * msg.num_joints:
            reason = self.controller.refuse(f"{actions.size} values for {msg.num_points} x {msg.num_joints} positions")
        else:
            reason = self.controller.on_chunk(
                list(msg.joint_names), msg.dt, actions.reshape(msg.num_points, msg.num_joints), msg.action_space,
                stamp_to_s(msg.header.stamp), self._now())
        if reason:
            self.get_logger().warning(f"action chunk {msg.chunk_index} refused: {reason}", throttle_duration_sec=1.0)
        self._replan_now()   # the new plan, or the hold an unsafe chunk asks for, goes out now

    def _engage_estop(self, source: str) -> None:
        self.controller.engage_estop(source)
        self.get_logger().error(f"e-stop engaged by {source}; call ~/reset_estop to release")

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self._engage_estop("gem/estop topic")

    def _on_estop_service(self, request, response):
        self._engage_estop("~/estop service")
        response.success, response.message = True, "e-stop engaged"
        return response

    def _on_reset_service(self, request, response):
        was_engaged = self.controller.reset_estop()
        response.success = True
        response.message = "e-stop released" if was_engaged else "e-stop was not engaged"
        self.get_logger().info(response.message)
        return response

    def _replan_now(self) -> None:
        if self.controller.cfg.replan_on_chunk:
            with self._send_lock:
                self._send(self.controller.replan(self._now()))

    def _on_tick(self) -> None:
        with self._send_lock:
            self._send(self.controller.tick(self._now()))

    def _send(self, command) -> None:
        if command.kind == "trajectory":
            self.backend.send(command.trajectory)
        elif command.kind == "hold" and command.new_episode:
            self.backend.hold(command.trajectory)
            self.get_logger().warning(f"hold: {command.reason}", throttle_duration_sec=2.0)

    def _publish_diagnostics(self) -> None:
        level, message = self.controller.health()
        status = diagnostic_status(f"{NODE_NAME}: execution", _LEVELS[level], message, self.controller.stats,
                                   hardware_id=self.controller_name)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def destroy_node(self) -> None:
        self.backend.close()
        super().destroy_node()


def make_executor_node(context=None, **overrides) -> ExecutorNode:
    """An ExecutorNode with parameter overrides by name, e.g. make_executor_node(ctx, joint_names=[...])."""
    unknown = sorted(set(overrides) - set(PARAMETERS) - {"use_sim_time", "subscribe_chunks"})
    if unknown:
        raise ValueError(f"unknown executor parameters {unknown}; known: {sorted(PARAMETERS)}")
    parameters = [Parameter(name, value=list(value) if isinstance(value, tuple) else value)
                  for name, value in overrides.items()]
    return ExecutorNode(context=context, parameter_overrides=parameters)


def main(args=None) -> None:
    spin_node(ExecutorNode, args, allow_realtime=True)

