"""Collect gem_doctor's Facts from the live ROS graph in a few seconds: one node, its own context, no side effects.

Subscribes to what the configuration names (joint states, cameras, /clock, the latched robot_description) for
`sample_s`, then reads the graph (who publishes, who subscribes, which services exist) and asks gem_policy and
gem_executor their lifecycle state and a few parameters. Actions are found by their services: control_msgs is
not needed, an action `A` serves `A/_action/send_goal` (ros2/rcl rcl_action/src/rcl_action/names.c).
"""
from __future__ import annotations

import math
import os
import time

import rclpy
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from gem_ros.doctor.facts import (CameraFacts, EndpointFacts, Facts, JointStateFacts, NodeFacts, Setup,
                                  UrdfFacts)

NODE_PARAMETERS = ("use_sim_time", "checkpoint", "urdf_path", "robot_description")
SERVICE_TIMEOUT_S = 1.5
MIN_MESSAGES = 4   # per stream, for a rate worth judging
# Longest extra wait for what is missing: DDS participants re-announce themselves periodically (Fast DDS every 3 s,
# leaseDuration_announcementperiod; docs.ros.org fastdds DiscoverySettings), after 5 initial announcements 0.1 s apart.
DISCOVERY_S = 3.5


def _stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class _Sampler:
    """The subscriptions' callbacks: append what each message shows to its facts."""

    def __init__(self, node: Node, setup: Setup, facts: Facts):
        self.facts = facts
        for topic in setup.joint_state_topics:
            js = facts.joint_states[topic] = JointStateFacts(topic)
            node.create_subscription(JointState, topic, lambda m, js=js: self.joint_state(js, m),
                                     qos_profile_sensor_data)
        for name, topic, transport in setup.cameras:
            cam = facts.cameras[name] = CameraFacts(topic, name=name, transport=transport)
            msg_type = CompressedImage if transport == "compressed" else Image
            node.create_subscription(msg_type, topic, lambda m, cam=cam: self.image(cam, m), qos_profile_sensor_data)
        node.create_subscription(Clock, "/clock", self.clock, qos_profile_sensor_data)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(String, setup.topic("robot_description"), self.description, latched)

    @staticmethod
    def _arrived(topic_facts, msg) -> None:
        topic_facts.arrivals_s.append(time.time())
        topic_facts.stamps_s.append(_stamp_s(msg))

    def joint_state(self, js: JointStateFacts, msg: JointState) -> None:
        self._arrived(js, msg)
        seen = set()
        for name in msg.name:
            if name in seen and name not in js.duplicated:
                js.duplicated.append(name)
            seen.add(name)
            if name not in js.names_seen:
                js.names_seen.append(name)
        if len(msg.position) != len(msg.name):
            js.malformed = f"{len(msg.name)} names but {len(msg.position)} positions"
        for name, position in zip(msg.name, msg.position):
            if not math.isfinite(position) and name not in js.non_finite:
                js.non_finite.append(name)

    def image(self, cam: CameraFacts, msg) -> None:
        self._arrived(cam, msg)
        if isinstance(msg, CompressedImage):
            cam.frame = {"format": msg.format, "data": bytes(msg.data)}
        else:
            cam.frame = {"encoding": msg.encoding, "height": msg.height, "width": msg.width, "step": msg.step,
                         "nbytes": len(msg.data)}

    def clock(self, msg: Clock) -> None:
        self.facts.clock.arrivals_s.append(time.time())
        self.facts.clock.stamps_s.append(msg.clock.sec + msg.clock.nanosec * 1e-9)

    def description(self, msg: String) -> None:
        self.facts.robot_description = msg.data


def _incomplete(node: Node, setup: Setup, facts: Facts) -> bool:
    """Worth waiting longer: a stream, controller or gem node is not in the graph yet (a participant whose start-up
    announcements were missed is seen at its next periodic one), or a stream has too few messages for a rate (a
    slow simulator's sim time, a 1 Hz camera)."""
    streams = [*facts.joint_states.values(), *facts.cameras.values()]
    if any(not node.count_publishers(f.topic) or len(f.arrivals_s) < MIN_MESSAGES for f in streams):
        return True
    for endpoint in setup.endpoints:
        if not (node.count_subscribers(endpoint.name) if endpoint.kind == "topic"
                else node.count_services(f"{endpoint.name}/_action/send_goal")):
            return True
    running = {f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()}
    return not {setup.node("gem_policy"), setup.node("gem_executor")} <= running


def _graph(node: Node, setup: Setup, facts: Facts) -> None:
    """Publishers, controller endpoints and nodes, as the graph shows them now."""
    me = node.get_fully_qualified_name()
    for topic_facts in [*facts.joint_states.values(), *facts.cameras.values()]:
        topic_facts.publisher_types = [i.topic_type for i in node.get_publishers_info_by_topic(topic_facts.topic)]
    facts.clock.publishers = node.count_publishers("/clock")
    services = dict(node.get_service_names_and_types())
    for endpoint in setup.endpoints:
        seen = EndpointFacts(endpoint)
        if endpoint.kind == "topic":
            infos = [i for i in node.get_subscriptions_info_by_topic(endpoint.name)
                     if f"{i.node_namespace.rstrip('/')}/{i.node_name}" != me]
            seen.nodes = [f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in infos]
            seen.types = [i.topic_type for i in infos]
        else:
            send_goal = f"{endpoint.name}/_action/send_goal"
            if node.count_services(send_goal):
                seen.types = list(services.get(send_goal, []))
                seen.nodes = [f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()
                              if send_goal in dict(node.get_service_names_and_types_by_node(n, ns))]
        facts.endpoints.append(seen)
    running = [f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()]
    for short in ("gem_policy", "gem_executor"):
        name = setup.node(short)
        facts.nodes[short] = NodeFacts(name, count=running.count(name), lifecycle=f"{name}/get_state" in services)


def _ask_nodes(node: Node, executor, facts: Facts) -> None:
    """GetState and GetParameters of the gem nodes, all at once, each bounded by SERVICE_TIMEOUT_S."""
    pending = []
    for facts_node in facts.nodes.values():
        if not facts_node.count:
            continue
        if facts_node.lifecycle:
            pending.append((facts_node, "state", node.create_client(GetState, f"{facts_node.name}/get_state")))
        pending.append((facts_node, "parameters",
                        node.create_client(GetParameters, f"{facts_node.name}/get_parameters")))
    deadline = time.monotonic() + SERVICE_TIMEOUT_S
    futures = []
    for facts_node, what, client in pending:
        if not client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            facts_node.error = f"{client.srv_name} unavailable"
            continue
        request = GetState.Request() if what == "state" else GetParameters.Request(names=list(NODE_PARAMETERS))
        futures.append((facts_node, what, client.call_async(request)))
    while any(not f.done() for _, _, f in futures) and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    for facts_node, what, future in futures:
        if not future.done():
            facts_node.error = f"no answer within {SERVICE_TIMEOUT_S} s"
        elif what == "state":
            facts_node.state = future.result().current_state.label
        else:   # an undeclared parameter comes back as PARAMETER_NOT_SET (None)
            values = [parameter_value_to_python(v) for v in future.result().values]
            facts_node.parameters = {k: v for k, v in zip(NODE_PARAMETERS, values) if v is not None}


def _urdf(setup: Setup, facts: Facts) -> UrdfFacts:
    """The URDF gem_executor reads: its robot_description, then urdf_path parameter (running node first, then the
    configuration / --urdf), else the latched topic."""
    live = facts.nodes.get("gem_executor")
    live = live.parameters if live else {}
    executor = setup.node("gem_executor")
    candidates = [(live.get("robot_description"), f"{executor} robot_description parameter"),
                  (live.get("urdf_path"), f"{executor} urdf_path {live.get('urdf_path')}"),
                  (setup.urdf, setup.urdf),
                  (setup.executor.get("robot_description"), f"{setup.config} robot_description"),
                  (setup.executor.get("urdf_path"), f"{setup.config} urdf_path {setup.executor.get('urdf_path')}"),
                  (facts.robot_description, f"topic {setup.topic('robot_description')} (latched)")]
    text, source = next(((t, s) for t, s in candidates if t), ("", ""))
    if text and not text.lstrip().startswith("<") and not os.path.isfile(text):
        return UrdfFacts(source, "", f"{source}: {text} is not a file")
    return UrdfFacts(source, text)


def collect(setup: Setup, sample_s: float = 1.5, context=None) -> Facts:
    """Facts about the graph `setup` expects, observed for `sample_s` (+ up to DISCOVERY_S while something is missing,
    + up to SERVICE_TIMEOUT_S for the nodes' services).
    `context`: an initialised rclpy context to use (default: a fresh one, shut down afterwards)."""
    own = context is None
    if own:
        context = rclpy.context.Context()
        rclpy.init(context=context)
    node = Node(f"gem_doctor_{os.getpid()}", context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    facts = Facts(window_s=sample_s)
    try:
        _Sampler(node, setup, facts)
        start = time.monotonic()
        while True:   # sample_s, then up to DISCOVERY_S more while something expected is missing
            elapsed = time.monotonic() - start
            if elapsed >= sample_s + DISCOVERY_S or (elapsed >= sample_s and not _incomplete(node, setup, facts)):
                break
            executor.spin_once(timeout_sec=0.05)
        facts.window_s = time.monotonic() - start
        _graph(node, setup, facts)
        _ask_nodes(node, executor, facts)
        facts.urdf = _urdf(setup, facts)
    finally:
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        if own:
            rclpy.shutdown(context=context)
    return facts
