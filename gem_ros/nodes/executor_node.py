"""gem_executor: action chunks in, safety-filtered JointTrajectory out, at the control rate. One node per arm.

A managed (lifecycle) node: configure builds the controller from the parameters and the URDF (a bad value fails the
transition, logged with its reason) and starts reading joint states; activate starts the control tick and takes
chunks; deactivate sends one hold (when a plan was running) and commands nothing more; cleanup frees it all.
`gem_executor` configures and activates itself unless started `--managed` (the launch file then drives it).

In:  gem/action_chunk (gem_msgs/ActionChunk; num_points == 0 = stop and hold), gem/policy_status (gem_policy's
     50 Hz heartbeat: once seen, its silence for policy_timeout_s holds a running plan), joint_states
     (sensor_msgs/JointState, by name, partial messages merged), gem/estop (std_msgs/Bool; true latches the
     e-stop, false does nothing: only ~/reset_estop releases it). Services ~/estop, ~/reset_estop (Trigger).
     The e-stop is heard in every lifecycle state and stays latched across cleanup and configure.
     ~/move_to_named (gem_msgs/MoveToNamed, while active): home / reset moves to a named joint state (the SRDF's
     group_states, named_state_names), planned in joint space at limited speed and refused, naming the colliding
     pair or joint, when the straight path is unsafe; a chunk, a stop or an e-stop ends it.
Out: <controller_name>/joint_trajectory (topic backend) or <controller_name>/follow_joint_trajectory (action
     backend, needs control_msgs; the controller's rejections and aborts hold the arm, logged with its
     reason), /diagnostics at 1 Hz, gem/executor_status (diagnostic_msgs/DiagnosticStatus: each chunk's verdict and
     each fault hold, with the reason; gem_policy's goal reads it: gem_ros.nodes.executor_events). With gripper_backend trajectory / gripper_command the
     gripper joints go to <gripper_controller_name>/joint_trajectory or .../gripper_cmd instead (a hold stops the
     arm and leaves the gripper's last command standing).
Relative names resolve to /gem/action_chunk, /joint_states, /arm_controller/... in the root namespace and
follow the node's namespace for multi-arm setups. All logic lives in gem_ros.core.execution.
With replan_on_chunk (default), an accepted chunk (or the hold an empty one asks for) is sent at once, between
ticks: it reaches the controller up to one control period (20 ms at 50 Hz) earlier than at the next tick.
"""
from __future__ import annotations

import threading
import traceback

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import qos_profile_sensor_data
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from gem_msgs.msg import ActionChunk, PolicyStatus
from gem_msgs.srv import MoveToNamed
from gem_ros.core.executor_setup import PARAMETERS, build_controller
from gem_ros.core.named_moves import MoveRefused
from gem_ros.nodes.backends import BackendUnavailable, make_backends
from gem_ros.nodes.executor_events import EXECUTOR_STATUS_TOPIC, ExecutorEvent, to_status
from gem_ros.nodes.lifecycle import GraphLeavingLifecycleNode
from gem_ros.nodes.param_rules import ParameterRules, Rule
from gem_ros.nodes.params import spin_node
from gem_ros.nodes.trajectory_goals import TOLERANCE_PARAMETERS
from gem_ros.nodes.conversions import diagnostic_status, stamp_to_s

NODE_NAME = "gem_executor"
_LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2}
_EXPECTED_ERRORS = (ValueError, OSError, BackendUnavailable)   # bad parameters, files, missing packages


class ExecutorNode(GraphLeavingLifecycleNode):
    def __init__(self, **kwargs):
        """kwargs go to rclpy's LifecycleNode (context, parameter_overrides, namespace, ...). Unconfigured: nothing
        is read or commanded until configure (see start_executor)."""
        super().__init__(NODE_NAME, **kwargs)
        self.controller = self.backend = None
        # Every parameter is read at configure, so `ros2 param set` is refused while configured (with the reason)
        # instead of being accepted and ignored; numbers accept int or float ("rate: 50" in YAML).
        rules, while_unconfigured = ParameterRules(self), Rule(when=self._unconfigured)
        for name, default in {**PARAMETERS, **TOLERANCE_PARAMETERS}.items():
            rules.declare(name, default, while_unconfigured, dynamic_typing=isinstance(default, float))
        # False: chunks come by deliver_chunk (composed)
        rules.declare("subscribe_chunks", True, while_unconfigured)
        self.configure_error: Exception | None = None   # why the last configure failed (start_executor raises it)
        self._estop: str | None = None                   # latched e-stop source, whatever the lifecycle state
        self._active = False                             # read and written under _send_lock
        self._configured, self._activated = [], []       # handles that cleanup / deactivate destroy
        # A trajectory is computed and sent under one lock: with chunks delivered on the policy's thread, a tick
        # computed before a replan must not reach the controller after it, nor anything after deactivate's hold.
        self._send_lock = threading.Lock()
        self.create_subscription(Bool, "gem/estop", self._on_estop_topic, 10)
        self.create_service(Trigger, "~/estop", self._on_estop_service)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_service)
        self.create_service(MoveToNamed, "~/move_to_named", self._on_move_to_named)

    def _unconfigured(self) -> str:
        """'' while the node is unconfigured; else why a parameter may not change now."""
        return "" if self.controller is None else (
            "gem_executor reads its parameters at configure: deactivate and clean it up, set, then configure again")

    # ------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.configure_error = None
        try:
            values = {name: self.get_parameter(name).value for name in {**PARAMETERS, **TOLERANCE_PARAMETERS}}
            if not values["robot_description"] and not values["urdf_path"]:
                values["robot_description"] = self._robot_description_from_topic(
                    values["robot_description_timeout_s"])
            if values["robot_description"] and values["urdf_path"]:
                self.get_logger().warning("both robot_description and urdf_path are set; "
                                          "limits come from robot_description")
            self.controller = build_controller(values)
            self.backend = make_backends(values, self, self.controller.cfg.joint_names)
            self.backend.on_fault = self._on_controller_fault
        except Exception as error:  # noqa: BLE001 - rclpy would swallow it (transition ERROR, no log): say why
            self.configure_error = error
            expected = isinstance(error, _EXPECTED_ERRORS)   # anything else is a bug: keep its traceback
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}"
                                    + ("" if expected else f"\n{traceback.format_exc()}"))
            self._release()
            return TransitionCallbackReturn.FAILURE
        if self._estop is not None:
            self.controller.engage_estop(self._estop)
        collision = self.controller.safety.collision
        for note in (collision.notes if collision is not None else []) + self.controller.named_state_notes:
            self.get_logger().info(note)
        if self.controller.named_states:
            self.get_logger().info(f"named states for ~/move_to_named: {sorted(self.controller.named_states)}")
        self.controller_name, self._control_period_s = values["controller_name"], 1.0 / values["control_rate_hz"]
        # Joint states from configure on (nothing is commanded with them before activate): the first active tick
        # then starts from where the arm is, not from where it was before a deactivate.
        self._configured = [
            self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data),
            self.create_publisher(DiagnosticArray, "/diagnostics", 10),
            self.create_timer(1.0, self._publish_diagnostics),
            self.create_publisher(DiagnosticStatus, EXECUTOR_STATUS_TOPIC, 50)]
        self.diagnostics_pub, self._events_pub = self._configured[1], self._configured[3]
        self._plan_chunk_index = 0   # the chunk whose plan runs: a tick's rejection or hold is reported against it
        self._rejections_reported = 0   # controller.safety_rejections when the last event went out
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        if self.get_parameter("subscribe_chunks").value:
            self._activated.append(self.create_subscription(ActionChunk, "gem/action_chunk", self._on_chunk, 10))
        self._activated += [self.create_subscription(PolicyStatus, "gem/policy_status", self._on_policy_status, 10),
                            self.create_timer(self._control_period_s, self._on_tick)]
        with self._send_lock:
            self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_commanding("gem_executor deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_commanding("gem_executor shut down")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_commanding(self, reason: str) -> None:
        """A running plan ends in one hold; then nothing more is sent until activate."""
        self._destroy(self._activated)
        with self._send_lock:
            if self._active:
                self._active = False
                self.controller.stop(reason)
                self._send(self.controller.replan(self._now()))

    def _release(self) -> None:
        self._destroy(self._activated)
        self._destroy(self._configured)
        if self.backend is not None:
            self.backend.close()
        self.controller = self.backend = None

    def _destroy(self, handles: list) -> None:
        """Through the node, so that its executor forgets them too."""
        destroyers = ((Subscription, self.destroy_subscription), (Publisher, self.destroy_publisher),
                      (Timer, self.destroy_timer))
        for handle in handles:
            next(destroy for kind, destroy in destroyers if isinstance(handle, kind))(handle)
        handles.clear()

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()

    # ------------------------------------------------------------------------------ callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _robot_description_from_topic(self, timeout_s: float) -> str:
        """The URDF that robot_state_publisher latches on `robot_description` (transient local; ros2_control reads
        it there too), for robots whose description is not a file here. Blocks up to `timeout_s`. Read by a node
        of its own that no executor spins: configure may run inside this node's executor (a lifecycle service
        call), which must not take the one latched message first."""
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.wait_for_message import wait_for_message
        from std_msgs.msg import String

        topic = self.resolve_topic_name("robot_description")   # with this node's namespace and remappings
        self.get_logger().info(f"no urdf_path / robot_description parameter: waiting for {topic} ({timeout_s} s)")
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        reader = rclpy.create_node(f"{self.get_name()}_urdf_reader", namespace=self.get_namespace(),
                                   context=self.context, use_global_arguments=False,
                                   start_parameter_services=False, enable_rosout=False)
        try:
            received, msg = wait_for_message(String, reader, topic, qos_profile=latched, time_to_wait=timeout_s)
        finally:
            reader.destroy_node()
        if not received or not msg.data.strip():
            raise ValueError(f"no urdf_path or robot_description parameter, and no URDF on {topic} within "
                             f"{timeout_s} s (is robot_state_publisher running?): joint limits come from it")
        return msg.data

    def _on_joint_state(self, msg: JointState) -> None:
        controller = self.controller   # None after cleanup: a message already taken by another executor thread
        if controller is None:
            return
        now = self._now()
        stamp = stamp_to_s(msg.header.stamp) or now   # unstamped publishers: receipt time
        reason = controller.on_joint_state(msg.name, msg.position, msg.velocity, now, stamp)
        if reason:
            self.get_logger().warning(reason, throttle_duration_sec=1.0)

    def _on_policy_status(self, msg: PolicyStatus) -> None:
        controller = self.controller
        if controller is not None:
            controller.on_policy_alive(self._now())

    def deliver_chunk(self, msg: ActionChunk) -> None:
        """In-process delivery of a chunk (any thread), for a policy composed into this process; the node should
        then be built with subscribe_chunks false so the topic copy is not planned twice. Dropped unless active."""
        self._on_chunk(msg)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self._send_lock:
            if not self._active:   # a composed policy hands chunks over whatever this node's state
                self.get_logger().warning("action chunk ignored: gem_executor is not active",
                                          throttle_duration_sec=2.0)
                return
            if msg.num_points == 0:
                self.controller.stop("empty action chunk from the policy")
                self._replan_now()   # the hold goes out now too, not at the next tick
                return
            actions = np.asarray(msg.positions, dtype=float)
            if actions.size != msg.num_points * msg.num_joints:
                reason = self.controller.refuse(
                    f"{actions.size} values for {msg.num_points} x {msg.num_joints} positions")
            else:
                reason = self.controller.on_chunk(
                    list(msg.joint_names), msg.dt, actions.reshape(msg.num_points, msg.num_joints),
                    msg.action_space, stamp_to_s(msg.header.stamp), self._now())
            if reason:
                self.get_logger().warning(f"action chunk {msg.chunk_index} refused: {reason}",
                                          throttle_duration_sec=1.0)
                unsafe = self.controller.safety_rejections > self._rejections_reported
                self._report("rejected" if unsafe else "refused", msg.chunk_index, reason)
            else:
                self._plan_chunk_index = msg.chunk_index
                self._report("accepted", msg.chunk_index, "chunk accepted")
            self._replan_now()   # the new plan, or the hold an unsafe chunk asks for, goes out now

    def _on_controller_fault(self, reason: str) -> None:
        """The controller rejected, aborted or cancelled our motion (follow_joint_trajectory backend): hold, and
        say why; the next chunk plans afresh."""
        self.get_logger().error(f"controller {self.controller_name}: {reason}")
        with self._send_lock:
            if self._active:
                self.controller.stop(f"controller fault: {reason}")
                self._send(self.controller.replan(self._now()))
                self._report("hold", self._plan_chunk_index, f"controller {self.controller_name}: {reason}")

    def _engage_estop(self, source: str) -> None:
        self._estop = source
        controller = self.controller
        if controller is not None:
            controller.engage_estop(source)
        self.get_logger().error(f"e-stop engaged by {source}; call ~/reset_estop to release")

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self._engage_estop("gem/estop topic")

    def _on_estop_service(self, request, response):
        self._engage_estop("~/estop service")
        response.success, response.message = True, "e-stop engaged"
        return response

    def _on_reset_service(self, request, response):
        was_engaged, self._estop = self._estop is not None, None
        controller = self.controller
        if controller is not None:
            was_engaged = controller.reset_estop() or was_engaged
        response.success = True
        response.message = "e-stop released" if was_engaged else "e-stop was not engaged"
        self.get_logger().info(response.message)
        return response

    def _on_move_to_named(self, request, response):
        with self._send_lock:
            try:
                if not self._active:
                    raise MoveRefused("gem_executor is not active")
                response.message = self.controller.move_to_named(request.name, self._now())
                response.success = True
                self._send(self.controller.replan(self._now()))   # the first piece goes out now
            except MoveRefused as refused:
                response.success, response.message = False, f"move to {request.name!r} refused: {refused}"
        if response.success:
            self.get_logger().info(response.message)
        else:
            self.get_logger().warning(response.message)
        return response

    def _replan_now(self) -> None:
        """Under _send_lock, while active."""
        if self.controller.cfg.replan_on_chunk:
            self._send(self.controller.replan(self._now()))

    def _on_tick(self) -> None:
        with self._send_lock:
            if self._active:
                self._send(self.controller.tick(self._now()))

    def _send(self, command) -> None:
        if command.kind == "trajectory":
            self.backend.send(command.trajectory)
        elif command.kind == "hold" and command.new_episode:
            self.backend.hold(command.trajectory)
            self.get_logger().warning(f"hold: {command.reason}", throttle_duration_sec=2.0)
            if command.problem:   # a requested stop (the policy's empty chunk) is no news to the goal
                unsafe = self.controller.safety_rejections > self._rejections_reported   # the plan failed the filter
                self._report("rejected" if unsafe else "hold", self._plan_chunk_index, command.reason)

    def _report(self, event: str, chunk_index: int, reason: str) -> None:
        """Under _send_lock: one verdict on gem/executor_status (gem_ros.nodes.executor_events)."""
        self._rejections_reported = self.controller.safety_rejections
        self._events_pub.publish(to_status(ExecutorEvent(event, chunk_index, reason, self.get_name())))

    def _publish_diagnostics(self) -> None:
        level, message = self.controller.health()
        values = {"lifecycle": "active" if self._active else "inactive", **self.controller.stats}
        # named by node (left/gem_executor under namespace left): two arms' statuses stay apart on /diagnostics
        status = diagnostic_status(f"{self.get_fully_qualified_name().lstrip('/')}: execution", _LEVELS[level],
                                   message, values,
                                   hardware_id=self.controller_name)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)


def start_executor(node: ExecutorNode) -> ExecutorNode:
    """Configure and activate `node` (what the launch file's lifecycle events do); if configure fails the node is
    destroyed and its error raised (ValueError / BackendUnavailable naming the parameter)."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        error = node.configure_error or RuntimeError("gem_executor configure failed (see its log)")
        node.destroy_node()
        raise error
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.destroy_node()
        raise RuntimeError("gem_executor activate failed (see its log)")
    return node


def make_executor_node(context=None, start: bool = True, **overrides) -> ExecutorNode:
    """An ExecutorNode with parameter overrides by name, e.g. make_executor_node(ctx, joint_names=[...]),
    configured and activated unless `start` is false."""
    unknown = sorted(set(overrides) - set(PARAMETERS) - set(TOLERANCE_PARAMETERS) - {"use_sim_time",
                                                                                      "subscribe_chunks"})
    if unknown:
        raise ValueError(f"unknown executor parameters {unknown}; known: {sorted(PARAMETERS)}")
    parameters = [Parameter(name, value=list(value) if isinstance(value, tuple) else value)
                  for name, value in overrides.items()]
    node = ExecutorNode(context=context, parameter_overrides=parameters)
    return start_executor(node) if start else node


def main(args=None) -> None:
    spin_node(ExecutorNode, args, allow_realtime=True, start=start_executor)
