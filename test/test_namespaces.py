"""Two arms side by side (issue 17.4): two chains, each under the namespace the launch file gives it (namespace:=),
in one process, on one ROS graph. A goal, a chunk or an e-stop for one arm never reaches the other."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from gem_msgs.msg import ActionChunk  # noqa: E402
from gem_ros.commander import GemCommander  # noqa: E402
from robot_stand_in import HOME, RobotStandIn  # noqa: E402
from test_wall_clock import sim_checkpoint, start_chain  # noqa: E402, F401 - the module's checkpoint fixture

pytestmark = pytest.mark.ros
ARMS = ("left", "right")
ROS_WIDE = {"/diagnostics", "/rosout", "/parameter_events"}


def endpoints(node) -> set[str]:
    name, namespace = node.get_name(), node.get_namespace()
    return {topic for topic, _ in node.get_publisher_names_and_types_by_node(name, namespace)} | \
        {topic for topic, _ in node.get_subscriber_names_and_types_by_node(name, namespace)}


def test_two_namespaced_chains_run_side_by_side_without_hearing_each_other(ros, sim_checkpoint):  # noqa: F811
    robots = {arm: RobotStandIn(ros.add(Node("robot", namespace=arm, context=ros.context))) for arm in ARMS}
    chains = {arm: start_chain(ros, sim_checkpoint, namespace=arm) for arm in ARMS}
    probe = ros.add(Node("namespace_probe", context=ros.context))
    root_traffic = []   # anything of either chain in the root namespace
    probe.create_subscription(ActionChunk, "/gem/action_chunk", root_traffic.append, 10)
    probe.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", root_traffic.append, 10)
    diagnostics = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 100)
    for arm, (policy, executor) in chains.items():
        ros.wait_for(lambda: executor.controller.stats["joint_state_age_s"] < 0.5, 30, f"{arm} joint states")
        for node in (policy, executor):
            outside = {t for t in endpoints(node) if not t.startswith(f"/{arm}/")} - ROS_WIDE
            assert not outside, (node.get_fully_qualified_name(), outside)

    commander = GemCommander(node=probe, namespace="left")
    task = commander.run_instruction("pick up the red cube", timeout=120.0)
    left, right = chains["left"][1], chains["right"][1]
    ros.wait_for(lambda: left.controller.stats["chunks_accepted"] >= 2, 60, "two chunks planned for the left arm")
    ros.wait_for(lambda: sum(len(t.points) > 1 for t in robots["left"].trajectories) >= 3, 30, "the left arm moving")
    # The right executor may hold (a joint-state gap on a loaded machine is a hold at the last measurement), but
    # it never moves: every trajectory it sent is one point, at home.
    assert right.controller.stats["chunks_accepted"] == 0
    assert all(len(t.points) == 1 for t in robots["right"].trajectories), robots["right"].trajectories
    np.testing.assert_allclose(robots["right"].positions, HOME, atol=1e-9)
    assert chains["right"][0].worker.snapshot().chunks == 0   # the right policy was never asked

    # An e-stop for the right arm stops the right arm only.
    estop = probe.create_publisher(Bool, "/right/gem/estop", 10)
    ros.wait_for(lambda: estop.get_subscription_count() == 1, 10, "the right executor's e-stop")
    estop.publish(Bool(data=True))
    ros.wait_for(lambda: right.controller.estop_engaged, 10, "the right e-stop")
    assert not left.controller.estop_engaged
    moving = sum(len(t.points) > 1 for t in robots["left"].trajectories)
    ros.wait_for(lambda: sum(len(t.points) > 1 for t in robots["left"].trajectories) > moving, 30,
                 "the left arm still moving")
    task.cancel()
    assert task.wait(30).outcome_name == "CANCELED"
    assert not root_traffic
    assert all(len(t.points) == 1 for t in robots["right"].trajectories)
    np.testing.assert_allclose(robots["right"].positions, HOME, atol=1e-9)
    # /diagnostics is ROS-wide: each executor's status carries its namespace, so the two stay apart there
    def statuses(name: str) -> list:
        return [s.level for d in diagnostics for s in d.status if s.name == name]

    ros.wait_for(lambda: DiagnosticStatus.ERROR in statuses("right/gem_executor: execution"), 5, "the right ERROR")
    ros.wait_for(lambda: statuses("left/gem_executor: execution"), 5, "the left status")
    assert DiagnosticStatus.ERROR not in statuses("left/gem_executor: execution")   # the e-stopped one only
    ros.wait_for(lambda: statuses("left/gem_policy: policy") and statuses("right/gem_policy: policy"), 5,
                 "both policies' statuses, each under its namespace")
    commander.close()
    for policy, _ in chains.values():
        policy.worker.shutdown()
