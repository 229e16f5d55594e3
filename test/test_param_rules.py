"""ParameterRules on a plain rclpy Node: a `ros2 param set` is refused with the reason, or takes effect."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402

from gem_ros.nodes.param_rules import ParameterRules, Rule, live_rule, number_check, read_only_rule  # noqa: E402


class Tool(Node):
    """A node shaped like gem_executor: limits fixed at start, a scale that may change only while idle, a rate
    that takes effect at once."""

    def __init__(self, **kwargs):
        super().__init__("param_rules_tool", **kwargs)
        self.busy, self.applied = False, []
        rules = ParameterRules(self)
        self.joints = rules.declare("joint_names", ["a", "b"], read_only_rule(), "controller joint order")
        rules.declare("velocity_scale", 1.0, Rule(when=lambda: "a plan is executing: change it when idle"
                                                  if self.busy else "", check=number_check(0.0, 1.0, low_open=True)),
                      dynamic_typing=True)
        rules.declare("rate_hz", 50.0, live_rule(number_check(0.0, low_open=True), self.applied.append))


def set_one(node, name, value):
    return node.set_parameters([Parameter(name, value=value)])[0]


def test_read_only_is_refused_with_the_reason_and_construction_values_still_apply(ros):
    tool = ros.add(Tool(context=ros.context, parameter_overrides=[Parameter("joint_names", value=["x", "y"])]))
    assert tool.joints == ["x", "y"]                       # the YAML / override value at start
    result = set_one(tool, "joint_names", ["z"])
    assert not result.successful and "read-only" in result.reason and "joint_names" in result.reason
    assert tool.get_parameter("joint_names").value == ["x", "y"]
    assert tool.describe_parameter("joint_names").read_only


def test_a_conditional_parameter_changes_only_when_allowed_and_a_bad_value_is_refused(ros):
    tool = ros.add(Tool(context=ros.context))
    tool.busy = True
    result = set_one(tool, "velocity_scale", 0.5)
    assert not result.successful and result.reason == "velocity_scale: a plan is executing: change it when idle"
    assert tool.get_parameter("velocity_scale").value == 1.0
    tool.busy = False
    assert set_one(tool, "velocity_scale", 0.5).successful
    assert tool.get_parameter("velocity_scale").value == 0.5
    for bad in (float("nan"), 0.0, 2.0, "fast", True):     # dynamic typing lets any type through rclpy
        result = set_one(tool, "velocity_scale", bad)
        assert not result.successful and "velocity_scale: must be" in result.reason, (bad, result.reason)
    assert tool.get_parameter("velocity_scale").value == 0.5


def test_a_live_parameter_is_applied_once_set_and_refused_values_are_not(ros):
    tool = ros.add(Tool(context=ros.context))
    assert tool.applied == []                              # declaring does not apply
    assert set_one(tool, "rate_hz", 25.0).successful
    assert tool.applied == [25.0]
    assert not set_one(tool, "rate_hz", -1.0).successful
    atomically = tool.set_parameters_atomically([Parameter("rate_hz", value=10.0),
                                                 Parameter("joint_names", value=["q"])])
    assert not atomically.successful and tool.applied == [25.0]   # all or nothing: the read-only one fails it
    assert tool.get_parameter("use_sim_time").value is False and set_one(tool, "use_sim_time", False).successful


def test_the_reason_reaches_a_remote_client_as_ros2_param_set_sees_it(ros):
    tool = ros.add(Tool(context=ros.context))
    tool.busy = True
    client_node = ros.add(Node("param_rules_client", context=ros.context))
    client = AsyncParameterClient(client_node, "param_rules_tool")
    assert client.wait_for_services(10.0)
    future = client.set_parameters([Parameter("velocity_scale", value=0.5)])
    ros.wait_for(future.done, 10, "the set_parameters answer")
    (result,) = future.result().results
    assert not result.successful and "change it when idle" in result.reason
