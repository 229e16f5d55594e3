"""gem_policy on a real arm: names under a namespace, how a goal ends (timeout, operator, success topic) and which
parameters a `ros2 param set` may change (issue 17 items 4, 5, 6)."""
from __future__ import annotations

import math

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from gem_msgs.msg import ActionChunk, PolicyStatus  # noqa: E402
from gem_ros.commander import GemCommander  # noqa: E402
from gem_ros.nodes.policy_node import PolicyNode  # noqa: E402
from test_policy_node import JOINTS, FakeRobot  # noqa: E402


def make_policy(ros, checkpoint, namespace="", **overrides):
    values = {"checkpoint": str(checkpoint), "device": "cpu", "state_joint_names": JOINTS,
              "max_observation_age_s": 0.3, **overrides}
    policy = ros.add(PolicyNode(context=ros.context, namespace=namespace,
                                parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))
    return policy


def bring_up(policy):
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS, policy.configure_error
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS


def call(ros, node, service_name):
    client = node.create_client(Trigger, service_name)
    assert client.wait_for_service(timeout_sec=10), service_name
    future = client.call_async(Trigger.Request())
    ros.wait_for(future.done, 10, f"{service_name} answer")
    return future.result()


def set_one(node, name, value):
    return node.set_parameters([Parameter(name, value=value)])[0]


def test_a_namespace_moves_the_whole_chain_and_the_success_topic_ends_the_goal(ros, tiny_checkpoint_dir):
    """Cameras, joint_states, chunks, status, the action and task_success all under /arm1; /diagnostics stays the
    ROS-wide topic. Nothing of this chain is heard in the root namespace."""
    policy = make_policy(ros, tiny_checkpoint_dir, namespace="arm1")
    robot = ros.add(Node("arm1_robot", namespace="arm1", context=ros.context))
    FakeRobot(robot)
    probe = ros.add(Node("root_probe", context=ros.context))
    chunks, root_chunks, status = [], [], []
    probe.create_subscription(ActionChunk, "/arm1/gem/action_chunk", chunks.append, 100)
    probe.create_subscription(ActionChunk, "/gem/action_chunk", root_chunks.append, 100)
    probe.create_subscription(PolicyStatus, "/arm1/gem/policy_status", status.append, 10)
    success = probe.create_publisher(Bool, "/arm1/gem/task_success", 10)
    bring_up(policy)
    commander = GemCommander(node=probe, namespace="arm1")
    task = commander.run_instruction("pick up the red cube", timeout=60.0)
    ros.wait_for(lambda: sum(c.num_points > 0 for c in chunks) >= 2, 60, "two chunks on /arm1/gem/action_chunk")
    ros.wait_for(lambda: any(s.state == PolicyStatus.RUNNING for s in status), 10, "RUNNING on /arm1")
    endpoints = {name for name, _ in policy.get_publisher_names_and_types_by_node("gem_policy", "/arm1")}
    endpoints |= {name for name, _ in policy.get_subscriber_names_and_types_by_node("gem_policy", "/arm1")}
    outside = {t for t in endpoints if not t.startswith("/arm1/") and not t.startswith("/gem_policy")}
    assert outside == {"/diagnostics", "/parameter_events", "/rosout"}, outside   # the ROS-wide ones only
    assert {"/arm1/camera/scene/image_raw", "/arm1/joint_states", "/arm1/gem/task_success"} <= endpoints
    assert not root_chunks
    ros.wait_for(lambda: success.get_subscription_count() > 0, 10, "the policy hears /arm1/gem/task_success")
    success.publish(Bool(data=True))
    result = task.wait(20)
    assert result is not None and result.outcome_name == "SUCCEEDED", result
    assert result.reason == "task success reported on /arm1/gem/task_success"
    wrong_arm = GemCommander(node=probe, namespace="arm2", server_timeout_s=0.5)
    with pytest.raises(TimeoutError, match="/arm2/gem/execute_instruction"):   # the wrong arm: said, not hung
        wrong_arm.run_instruction("pick up the red cube")
    wrong_arm.close()
    commander.close()


def test_a_goal_ends_on_the_arm_goal_timeout_and_holds(ros, tiny_checkpoint_dir):
    policy = make_policy(ros, tiny_checkpoint_dir, goal_timeout_s=1.5)
    probe = ros.add(Node("timeout_probe", context=ros.context))
    FakeRobot(probe)
    chunks = []
    probe.create_subscription(ActionChunk, "/gem/action_chunk", chunks.append, 100)
    bring_up(policy)
    commander = GemCommander(node=probe)
    task = commander.run_instruction("pick up the red cube", timeout=0.0)   # no timeout of its own: the arm's
    result = task.wait(30)
    assert result is not None and result.outcome_name == "TIMEOUT"
    assert result.reason.startswith("goal timeout after 1.5 s") and "goal_timeout_s" in result.reason
    assert 1.4 <= result.duration_s < 10.0
    ros.wait_for(lambda: chunks and chunks[-1].num_points == 0, 5, "a hold chunk after the timeout")
    assert not policy.worker.snapshot().running
    shorter = commander.run_instruction("pick up the red cube", timeout=0.5)   # the client may ask for less
    result = shorter.wait(30)
    assert result.outcome_name == "TIMEOUT" and result.reason.startswith("goal timeout after 0.5 s"), result.reason
    commander.close()


def test_an_operator_ends_a_goal_as_succeeded_with_the_service(ros, tiny_checkpoint_dir):
    policy = make_policy(ros, tiny_checkpoint_dir)
    probe = ros.add(Node("operator_probe", context=ros.context))
    FakeRobot(probe)
    bring_up(policy)
    idle = call(ros, probe, "/gem_policy/succeed")
    assert not idle.success and "no goal" in idle.message
    commander = GemCommander(node=probe)
    task = commander.run_instruction("pick up the red cube", timeout=60.0)
    ros.wait_for(lambda: policy.worker.snapshot().chunks >= 1, 60, "a chunk")
    answer = call(ros, probe, "/gem_policy/succeed")
    assert answer.success and "pick up the red cube" in answer.message
    result = task.wait(20)
    assert result.outcome_name == "SUCCEEDED"
    assert result.reason == "ended as succeeded by an operator (/gem_policy/succeed)"
    assert not policy.worker.snapshot().running
    late = commander.run_instruction("pick up the blue cube", timeout=60.0)   # the last success was not kept
    ros.wait_for(lambda: policy.worker.snapshot().instruction == "pick up the blue cube", 10, "the next goal runs")
    assert not late.is_done()
    late.cancel()
    assert late.wait(20).outcome_name == "CANCELED"
    commander.close()


def test_parameters_are_refused_with_the_reason_or_take_effect(ros, tiny_checkpoint_dir, tmp_path):
    policy = make_policy(ros, tiny_checkpoint_dir, goal_timeout_s=0.0)
    probe = ros.add(Node("param_probe", context=ros.context))
    FakeRobot(probe)
    bring_up(policy)
    refused = set_one(policy, "checkpoint", str(tmp_path))   # read at configure: a set while active is ignored
    assert not refused.successful and "checkpoint" in refused.reason and "configure" in refused.reason
    assert policy.get_parameter("checkpoint").value == str(tiny_checkpoint_dir)
    assert set_one(policy, "request_threshold_s", 0.5).successful
    assert policy.worker.cfg.request_threshold_s == 0.5        # the running worker uses it
    for bad in (-1.0, float("nan"), 0.0):
        result = set_one(policy, "request_threshold_s", bad)
        assert not result.successful and "request_threshold_s" in result.reason, bad
    assert policy.worker.cfg.request_threshold_s == 0.5
    assert not set_one(policy, "goal_timeout_s", -3.0).successful
    assert not set_one(policy, "goal_timeout_s", math.inf).successful

    commander = GemCommander(node=probe)
    task = commander.run_instruction("pick up the red cube", timeout=0.0)
    ros.wait_for(lambda: policy.worker.snapshot().chunks >= 1, 60, "a chunk")
    assert set_one(policy, "goal_timeout_s", 0.5).successful   # the running goal is held to it at once
    result = task.wait(20)
    assert result.outcome_name == "TIMEOUT" and result.reason.startswith("goal timeout after 0.5 s")
    commander.close()

    assert policy.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert not set_one(policy, "camera_names", ["front"]).successful   # inactive is still configured
    assert policy.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    missing = tmp_path / "no_such_checkpoint"
    assert set_one(policy, "checkpoint", str(missing)).successful      # unconfigured: used at the next configure
    assert policy.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert str(missing) in policy.configure_error
