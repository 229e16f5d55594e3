"""A destroyed gem node leaves the ROS graph even while something still references it (a failed test's traceback,
a tool holding the node): otherwise the next node of that name shares the graph with a ghost."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from gem_ros.demo import make_random_sim_checkpoint  # noqa: E402
from gem_ros.nodes.executor_node import ExecutorNode, start_executor  # noqa: E402
from gem_ros.nodes.params import bringup_config, node_parameters  # noqa: E402
from gem_ros.nodes.policy_node import PolicyNode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_destroyed_policy_and_executor_leave_the_graph_while_still_referenced(ros, tmp_path):
    config = bringup_config("panda")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    policy = PolicyNode(context=context, namespace="/leaving", parameter_overrides=node_parameters(
        config, "gem_policy", checkpoint=str(make_random_sim_checkpoint(tmp_path)), device="cpu"))
    executor = start_executor(ExecutorNode(context=context, namespace="/leaving", parameter_overrides=node_parameters(
        config, "gem_executor", urdf_path=str(REPO / "urdf/panda/panda.urdf"))))
    policy.trigger_configure()   # its action server (a waitable) exists from here on
    looker = ros.add(rclpy.node.Node("looker", context=ros.context))

    def ours():
        return {name for name, namespace in looker.get_node_names_and_namespaces() if namespace == "/leaving"}

    ros.wait_for(lambda: ours() == {"gem_policy", "gem_executor"}, 10, "both nodes in the graph")
    policy.destroy_node()
    executor.destroy_node()
    rclpy.shutdown(context=context)   # as a process's clean exit does; `policy` and `executor` stay referenced
    ros.wait_for(lambda: not ours(), 10, "both nodes gone from the graph")
    assert policy and executor
